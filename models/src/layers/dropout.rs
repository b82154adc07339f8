//! Dropout whose masks, inside a gradient step, come from a generator the step installs on its
//! thread: the parts of a split batch ([`crate::parts`]) run on several threads at once, and
//! drawing from the device's shared generator would hand out masks in whichever order the
//! parts got there. Outside a step it is Burn's own dropout.

use std::cell::RefCell;

use burn::nn::Dropout;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

thread_local! {
    /// The generators of the steps running on this thread, innermost last.
    static MASKS: RefCell<Vec<ChaCha8Rng>> = const { RefCell::new(Vec::new()) };
}

/// Pops this thread's innermost generator when dropped (also on unwinding).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        MASKS.with(|m| m.borrow_mut().pop());
    }
}

/// Runs `f` with every [`dropout`] on this thread drawing its masks from a generator seeded
/// with `seed`.
pub fn with_masks<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    MASKS.with(|m| m.borrow_mut().push(ChaCha8Rng::seed_from_u64(seed)));
    let _installed = Installed;
    f()
}

/// `layer`'s dropout of `x`: zeroes each value with the layer's probability and scales the
/// rest, in training mode on an autodiff device only (as Burn's `Dropout::forward`).
pub fn dropout<const D: usize>(layer: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !layer.training.is_enabled() || !x.device().is_autodiff() || layer.prob == 0.0 {
        return x;
    }
    let keep = 1.0 - layer.prob;
    let dims = x.dims();
    let mask = MASKS.with(|m| {
        m.borrow_mut().last_mut().map(|rng| {
            let scale = (1.0 / keep) as f32;
            (0..dims.iter().product::<usize>())
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<f32>>()
        })
    });
    match mask {
        Some(mask) => {
            let mask = Tensor::from_data(TensorData::new(mask, dims), &x.device());
            x * mask
        }
        None => layer.forward(x),
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::DropoutConfig;
    use burn::tensor::Device;

    use super::*;

    fn ones(device: &Device) -> Tensor<2> {
        Tensor::ones([8, 64], device)
    }

    #[test]
    fn masks_follow_the_installed_seed_and_keep_the_expected_share() {
        let device = Device::flex().autodiff();
        let layer = DropoutConfig::new(0.25).init();
        let draw = |seed| {
            with_masks(seed, || dropout(&layer, ones(&device)))
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let a = draw(7);
        assert_eq!(a, draw(7), "same seed, same mask");
        assert_ne!(a, draw(8), "another seed, another mask");
        let kept = a.iter().filter(|&&v| v != 0.0).count();
        assert!((320..450).contains(&kept), "{kept} of 512 kept at p = 0.25");
        // Kept values are scaled by 1 / (1 - p).
        assert!(a.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn evaluation_passes_values_through() {
        let device = Device::flex();
        let layer = DropoutConfig::new(0.5).init();
        let out = with_masks(1, || dropout(&layer, ones(&device)));
        assert!(
            out.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|&v| v == 1.0)
        );
    }
}
