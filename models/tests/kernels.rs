//! Whole gradient steps through our kernels (convolution, fully connected, max pooling,
//! gradient sinks) against the same steps through Burn's own operations.
//!
//! One test in its own binary: it flips the process-wide kernel switch.

mod common;

use common::{model, random_batch};
use peerless_models::kernels::burn_ext;
use peerless_models::{Architecture, Batch, Loss};

#[test]
fn gradient_steps_match_burns_own_operations() {
    for (arch, size) in [
        (Architecture::TinyCnn, 28),
        (Architecture::SqueezeNet1_1, 33),
        (Architecture::MobileNetV3Small, 32),
    ] {
        let m = model(arch, 5);
        let (images, labels, shape) = random_batch(m.spec(), 4, size, 6);
        let batch = Batch {
            images: &images,
            labels: &labels,
            shape,
        };
        let step = |kernels: bool| {
            burn_ext::set_enabled(kernels);
            // The same dropout masks on both paths.
            m.device().seed(42);
            let mut grad = vec![f32::NAN; m.num_params()];
            let stats = m.grad_step(&batch, Loss::CrossEntropy, &mut grad).unwrap();
            burn_ext::set_enabled(true);
            (stats.loss, grad)
        };
        let (loss, ours) = step(true);
        let (want_loss, theirs) = step(false);
        assert!(
            (loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
            "{arch}: loss {loss} vs {want_loss}"
        );
        let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{arch}: a zero gradient proves nothing");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{arch}: gradient[{i}] = {a}, Burn's own operations give {b} (scale {scale})"
            );
        }
    }
}
