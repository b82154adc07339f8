//! Gradient steps run in parts of the batch, one per thread (`peerless_models::Model::grad_step`):
//! the same gradient as the whole batch, with batch normalisation and dropout, reproducible,
//! and safe when several threads step at once.

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

/// Batch normalisation pools its statistics over the parts and dropout draws the rows the
/// whole batch would: a split step gives the whole batch's loss, gradient and running
/// statistics, up to rounding.
#[test]
fn split_steps_match_whole_steps_with_batch_norm_and_dropout() {
    let _turn = serial();
    for arch in [Architecture::MobileNetV3Small, Architecture::SqueezeNet1_1] {
        let mut m = model(arch, 6);
        // 13 images: parts of 7 and 6.
        let (images, labels, shape) = random_batch(m.spec(), 13, 17, 3);
        let batch = Batch {
            images: &images,
            labels: &labels,
            shape,
        };
        assert_eq!(m.step_parts(13), 2, "{arch}");
        let seeded = |m: &mut Model, split: bool| {
            m.set_split(split);
            let before = m.buffers().unwrap();
            m.device().seed(9);
            let (stats, grad) = step(m, &batch, 2);
            let after = m.buffers().unwrap();
            m.set_buffers(&before).unwrap();
            (stats, grad, after)
        };
        let (parts, split, split_buffers) = seeded(&mut m, true);
        let (whole, want, want_buffers) = seeded(&mut m, false);
        assert!(
            (parts.loss - whole.loss).abs() <= 1e-5 * whole.loss.abs().max(1.0),
            "{arch}: loss {} in parts, {} whole",
            parts.loss,
            whole.loss
        );
        assert_eq!(parts.correct, whole.correct, "{arch}");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (i, (a, b)) in split.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{arch}: gradient[{i}]: {a} in parts, {b} whole (scale {scale})"
            );
        }
        assert_eq!(split_buffers.len(), want_buffers.len());
        for (i, (a, b)) in split_buffers.iter().zip(&want_buffers).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{arch}: running statistic {i}: {a} in parts, {b} whole"
            );
        }
        if arch == Architecture::MobileNetV3Small {
            assert_ne!(split_buffers, m.buffers().unwrap(), "the step updated them");
        }
    }
}

/// With batch normalisation too, a split step's bits do not depend on the threads: on one
/// thread the parts take turns and meet all the same.
#[test]
fn batch_norm_steps_give_the_same_bits_on_any_number_of_threads() {
    let _turn = serial();
    let m = model(Architecture::MobileNetV3Small, 2);
    let (images, labels, shape) = random_batch(m.spec(), 8, 16, 5);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let seeded = |threads| {
        m.device().seed(4);
        step(&m, &batch, threads).1
    };
    let one = seeded(1);
    assert_eq!(one, seeded(2));
    assert_eq!(one, seeded(3));
}

/// Steps running at once on other threads (peers and functions in one process) each get
/// parts of their own: none waits for ever on another's, and each gets the gradient it
/// would get alone.
#[test]
fn steps_on_several_threads_at_once_split_independently() {
    let _turn = serial();
    let mut m = model(Architecture::MobileNetV3Small, 3);
    let (images, labels, shape) = random_batch(m.spec(), 8, 16, 20);
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let weights = m.params().unwrap();
    // Three steps one after another, each with the next draw of the device generator (its
    // dropout masks)...
    m.device().seed(1);
    let alone: Vec<Vec<f32>> = (0..3).map(|_| step(&m, &batch, 2).1).collect();
    assert!(alone[0] != alone[1] && alone[1] != alone[2]);
    for _ in 0..2 {
        // ...and at once, right after new weights (fresh leaves: Burn would merge the
        // graphs of parts that shared them).
        m.set_params(&weights).unwrap();
        m.device().seed(1);
        let together: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3).map(|_| s.spawn(|| step(&m, &batch, 2).1)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // The threads drew in some order: the same three gradients.
        for (i, grad) in together.iter().enumerate() {
            let matched = alone.iter().filter(|a| *a == grad).count();
            assert_eq!(matched, 1, "thread {i}'s gradient is one of the three");
        }
        assert!(together[0] != together[1] && together[1] != together[2]);
    }
}
