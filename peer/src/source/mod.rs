//! Where a peer's shard gradient comes from. One trait, with its implementations beside it:
//! the peer's own CPU ([`LocalSource`]) today; serverless functions build on the same seam.

mod local;

pub use local::LocalSource;

use anyhow::Result;
use peerless_models::Model;

/// The part of a peer's training shard one round covers: contiguous slices of the shard,
/// each one batch (and, when the split has batch objects, exactly one stored object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundWork {
    /// The round number (0-based, global across epochs).
    pub round: u64,
    /// `(batch index, range of shard samples)` per batch.
    pub batches: Vec<(usize, std::ops::Range<usize>)>,
}

/// A shard gradient: the sample-weighted mean of the batch gradients, which equals the
/// mean gradient over every sample of the round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceReport {
    /// Mean training loss over the round's samples.
    pub loss: f64,
    /// Correctly classified training samples (training mode).
    pub correct: usize,
    /// Samples covered.
    pub samples: usize,
    /// Batches computed on this peer.
    pub local_batches: usize,
    /// Batches computed elsewhere (functions).
    pub offloaded_batches: usize,
    /// Wall time of the whole computation, seconds.
    pub compute_time_s: f64,
}

/// Computes the round's mean gradient for the current weights into `grad`.
pub trait GradientSource {
    /// `model` is the peer's replica, already holding `weights` (the flat weights every
    /// peer holds this round); sources that compute elsewhere ship `weights` instead.
    fn compute(
        &mut self,
        work: &RoundWork,
        model: &Model,
        weights: &[f32],
        grad: &mut [f32],
    ) -> Result<SourceReport>;
}

/// Adds `n * batch_grad` into `acc`: the running numerator of a sample-weighted mean.
pub(crate) fn accumulate(acc: &mut [f32], batch_grad: &[f32], n: usize) {
    let w = n as f32;
    for (a, g) in acc.iter_mut().zip(batch_grad) {
        *a += w * g;
    }
}

/// Divides the accumulated numerator by the sample count.
pub(crate) fn finish_mean(acc: &mut [f32], samples: usize) {
    let inv = 1.0 / samples.max(1) as f32;
    for a in acc.iter_mut() {
        *a *= inv;
    }
}
