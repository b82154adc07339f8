use std::time::Instant;

use anyhow::Result;
use peerless_data::{Dataset, Transform};
use peerless_lambda::process_input::batch_seed;
use peerless_models::{Loss, Model};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::setup::BatchBuffers;

use super::{GradientSource, RoundWork, SourceReport, accumulate, finish_mean};

/// Computes every batch on this peer's CPU (the architecture without serverless).
pub struct LocalSource {
    shard: Dataset,
    transform: Transform,
    loss: Loss,
    seed: u64,
    rank: u32,
    batch_grad: Vec<f32>,
    buffers: BatchBuffers,
}

impl LocalSource {
    /// A source over peer `rank`'s `shard` for a model of `num_params` weights.
    pub fn new(
        num_params: usize,
        shard: Dataset,
        transform: Transform,
        loss: Loss,
        seed: u64,
        rank: u32,
    ) -> Self {
        LocalSource {
            rank,
            batch_grad: vec![0.0; num_params],
            shard,
            transform,
            loss,
            seed,
            buffers: BatchBuffers::default(),
        }
    }
}

impl GradientSource for LocalSource {
    fn compute(
        &mut self,
        work: &RoundWork,
        model: &Model,
        _weights: &[f32],
        grad: &mut [f32],
    ) -> Result<SourceReport> {
        let start = Instant::now();
        grad.fill(0.0);
        let mut report = SourceReport::default();
        let mut loss_sum = 0.0f64;
        for (index, range) in &work.batches {
            let indices: Vec<usize> = range.clone().collect();
            // The seed a function computing this batch would use, so augmentation matches.
            let seed = batch_seed(self.seed, work.round, self.rank, *index as u32);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let batch = self
                .buffers
                .fill(&mut self.transform, &self.shard, &indices, &mut rng)?;
            let stats = model.grad_step(&batch, self.loss, &mut self.batch_grad)?;
            accumulate(grad, &self.batch_grad, stats.samples);
            loss_sum += stats.loss as f64 * stats.samples as f64;
            report.correct += stats.correct;
            report.samples += stats.samples;
            report.local_batches += 1;
        }
        finish_mean(grad, report.samples);
        report.loss = loss_sum / report.samples.max(1) as f64;
        report.compute_time_s = start.elapsed().as_secs_f64();
        Ok(report)
    }
}
