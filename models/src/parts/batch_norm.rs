//! Batch normalisation over the whole batch in a step cut into parts: the parts pool their
//! per-channel statistics (forward) and gradient sums (backward) through the [`Part::share`]
//! meetings, so each part normalises as an uncut step would.

use super::Part;
use crate::kernels::batch_norm::{self, NormShape};

/// What the parts of a step share at a batch normalisation: its sizes and direction, the
/// same in every part when they are in step.
fn share_tag(s: NormShape, backward: bool) -> u64 {
    ((s.pixels as u64) << 33) | ((s.channels as u64) << 1) | u64::from(backward)
}

/// The whole batch's mean and variance per channel, pooled from every part's.
pub(crate) fn whole_batch_stats(
    part: &Part,
    s: NormShape,
    mean: Vec<f32>,
    var: Vec<f32>,
) -> (Vec<f32>, Vec<f32>) {
    let c = s.channels;
    let all = part.share(share_tag(s, false), [mean, var].concat());
    let views: Vec<_> = all
        .iter()
        .zip(part.sizes())
        .map(|(v, &n)| (n, &v[..c], &v[c..]))
        .collect();
    batch_norm::pooled_stats(&views)
}

/// The sums of `dy` and `dy * xhat` per channel over the whole batch, on this part's scale,
/// and the number of values they are over. Each part's loss is the mean over its own images
/// and its gradient counts with its share of the batch, so part `q`'s sums weigh
/// `size(q) / size(this part)` here.
pub(crate) fn whole_batch_sums(
    part: &Part,
    s: NormShape,
    dgamma: &[f32],
    dbeta: &[f32],
) -> ([Vec<f32>; 2], usize) {
    let c = s.channels;
    let all = part.share(share_tag(s, true), [dbeta, dgamma].concat());
    let sizes = part.sizes();
    let mine = sizes[part.index()] as f32;
    let mut total = vec![0.0f32; 2 * c];
    for (values, &n) in all.iter().zip(sizes) {
        let w = n as f32 / mine;
        total.iter_mut().zip(values).for_each(|(t, v)| *t += w * v);
    }
    let sum_dy_xhat = total.split_off(c);
    ([total, sum_dy_xhat], sizes.iter().sum::<usize>() * s.pixels)
}
