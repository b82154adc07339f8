//! Gradient steps run in parts of the batch, one per thread (`peerless_models::Model::grad_step`):
//! the same gradient as the whole batch, reproducible with dropout, and never for models with
//! batch normalisation.

mod common;

use std::sync::{Mutex, MutexGuard};

use common::{model, random_batch};
use peerless_models::{Architecture, Batch, Loss, Model, StepStats};

/// Every step draws from the process-wide device generator: tests that seed it take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn step(m: &Model, batch: &Batch<'_>, threads: usize) -> (StepStats, Vec<f32>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut grad = vec![f32::NAN; m.num_params()];
    let stats = pool
        .install(|| m.grad_step(batch, Loss::CrossEntropy, &mut grad))
        .unwrap();
    (stats, grad)
}

#[test]
fn parts_add_up_to_the_whole_batch_gradient() {
    let _turn = serial();
    let mut m = model(Architecture::TinyCnn, 3);
    // 13 images: parts of 7 and 6 images, weighted by their share.
    let (images, labels, shape) = random_batch(m.spec(), 13, 16, 8);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    assert_eq!(m.step_parts(13), 2);
    assert_eq!(m.step_parts(7), 1, "at least 4 images per part");
    let (parts, split) = step(&m, &batch, 2);
    m.set_split(false);
    assert_eq!(m.step_parts(13), 1);
    let (whole, want) = step(&m, &batch, 2);
    assert!(
        (parts.loss - whole.loss).abs() <= 1e-6 * whole.loss.abs().max(1.0),
        "loss {} vs {}",
        parts.loss,
        whole.loss
    );
    assert_eq!(
        (parts.correct, parts.samples),
        (whole.correct, whole.samples)
    );
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    for (i, (a, b)) in split.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * scale,
            "gradient[{i}]: {a} in parts, {b} whole (scale {scale})"
        );
    }
}

/// A batch's gradient does not depend on where it is computed: peers, functions and
/// machines with other core counts hold the same weights after averaging.
#[test]
fn split_steps_give_the_same_bits_on_any_number_of_threads() {
    let _turn = serial();
    let m = model(Architecture::TinyCnn, 5);
    let (images, labels, shape) = random_batch(m.spec(), 16, 16, 4);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    assert_eq!(m.step_parts(16), 2);
    let (_, one) = step(&m, &batch, 1);
    assert_eq!(one, step(&m, &batch, 2).1);
    assert_eq!(one, step(&m, &batch, 3).1);
}

#[test]
fn split_steps_with_dropout_are_reproducible_from_the_device_seed() {
    let _turn = serial();
    let m = model(Architecture::SqueezeNet1_1, 4);
    assert_eq!(m.step_parts(8), 2);
    let (images, labels, shape) = random_batch(m.spec(), 8, 17, 2);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let seeded = |seed: u64| {
        m.device().seed(seed);
        step(&m, &batch, 2).1
    };
    let first = seeded(5);
    assert_eq!(first, seeded(5), "same seed, same masks, same bits");
    assert_ne!(first, seeded(6), "another seed draws other dropout masks");
}

#[test]
fn models_with_batch_norm_run_whole_batches() {
    let _turn = serial();
    // With batch statistics, a split step would change the gradient itself: MobileNetV3's
    // step must not depend on whether splitting is allowed.
    let mut m = model(Architecture::MobileNetV3Small, 6);
    assert_eq!(m.step_parts(64), 1);
    let (images, labels, shape) = random_batch(m.spec(), 8, 16, 3);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let seeded = |m: &Model| {
        m.device().seed(9);
        step(m, &batch, 2).1
    };
    let allowed = seeded(&m);
    m.set_split(false);
    assert_eq!(allowed, seeded(&m));
}
