//! Dropout whose masks, inside a gradient step, are a function of the step's seed and of each
//! value's place in the whole batch: the parts of a split batch ([`crate::parts`]) run on
//! several threads at once, and drawing from the device's shared generator would hand out
//! masks in whichever order the parts got there. A part draws the rows of the masks the
//! uncut batch would draw, so splitting a step changes nothing but rounding. Outside a step
//! it is Burn's own dropout.

use std::cell::RefCell;

use burn::nn::Dropout;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The masks of one step (or one part of it) on this thread.
struct Masks {
    seed: u64,
    /// The first image of this part in the whole batch.
    first: usize,
    /// Dropout layers met so far in this step: each draws from a stream of its own.
    layers: u64,
}

thread_local! {
    /// The steps running on this thread, innermost last.
    static MASKS: RefCell<Vec<Masks>> = const { RefCell::new(Vec::new()) };
}

/// Pops this thread's innermost step when dropped (also on unwinding).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        MASKS.with(|m| m.borrow_mut().pop());
    }
}

/// Runs `f` with every [`dropout`] on this thread drawing the masks of a step seeded with
/// `seed`, for the images from `first` on of that step's batch.
pub fn with_masks<R>(seed: u64, first: usize, f: impl FnOnce() -> R) -> R {
    MASKS.with(|m| {
        m.borrow_mut().push(Masks {
            seed,
            first,
            layers: 0,
        })
    });
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
    let len = dims.iter().product::<usize>();
    let mask = MASKS.with(|m| {
        m.borrow_mut().last_mut().map(|masks| {
            let mut rng = ChaCha8Rng::seed_from_u64(masks.seed);
            rng.set_stream(masks.layers);
            masks.layers += 1;
            // Two words per draw; this part's values start after the earlier images'.
            let per_image = len / dims[0].max(1);
            rng.set_word_pos(2 * (masks.first * per_image) as u128);
            let scale = (1.0 / keep) as f32;
            (0..len)
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
            with_masks(seed, 0, || dropout(&layer, ones(&device)))
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

    /// A part of a batch draws the rows the whole batch would draw, layer after layer.
    #[test]
    fn parts_draw_the_rows_of_the_whole_batch_masks() {
        let device = Device::flex().autodiff();
        let layer = DropoutConfig::new(0.5).init();
        let rows = |first: usize, n: usize| {
            with_masks(3, first, || {
                let x = Tensor::<2>::ones([n, 64], &device);
                let once = dropout(&layer, x.clone());
                let twice = dropout(&layer, x);
                [once, twice].map(|t| t.into_data().try_to_vec::<f32>().unwrap())
            })
        };
        let whole = rows(0, 8);
        let (head, tail) = (rows(0, 5), rows(5, 3));
        for l in 0..2 {
            assert_eq!(
                whole[l],
                [head[l].clone(), tail[l].clone()].concat(),
                "layer {l}"
            );
        }
        assert_ne!(whole[0], whole[1], "each layer draws a mask of its own");
    }

    #[test]
    fn evaluation_passes_values_through() {
        let device = Device::flex();
        let layer = DropoutConfig::new(0.5).init();
        let out = with_masks(1, 0, || dropout(&layer, ones(&device)));
        assert!(
            out.into_data()
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|&v| v == 1.0)
        );
    }
}
