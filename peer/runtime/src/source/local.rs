use anyhow::Result;
use peerless_data::{Dataset, Transform};
use peerless_lambda::process_input::{batch_seed, dropout_seed};
use peerless_models::{Loss, Model};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::pipeline::BatchBuffers;

use super::{Totals, accumulate};

/// Computes every batch on this peer's CPU (the architecture without serverless).
pub struct LocalSource {
    shard: Dataset,
    transform: Transform,
    loss: Loss,
    seed: u64,
    rank: u32,
    num_params: usize,
    /// One batch's gradient: allocated for a round's batches and, when big, freed after
    /// them, so a peer does not hold it while it exchanges.
    batch_grad: Vec<f32>,
    buffers: BatchBuffers,
    speed: f64,
    threads: Option<rayon::ThreadPool>,
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
            num_params,
            batch_grad: Vec::new(),
            shard,
            transform,
            loss,
            seed,
            buffers: BatchBuffers::default(),
            speed: 1.0,
            threads: None,
        }
    }

    /// The same source computing on a pool of `threads` threads instead of every core, to
    /// give a peer a smaller machine.
    pub fn with_threads(mut self, threads: usize) -> Result<Self> {
        self.threads = Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("peer-compute-{i}"))
                .build()?,
        );
        Ok(self)
    }

    /// The same source, slowed to `speed` (in (0, 1]) of this machine's pace: after each
    /// batch that kept the CPU busy for `t`, the peer idles `t x (1/speed - 1)`, the duty
    /// cycle a CPU quota (cgroup `cpu.max`) imposes, so a study can have slow peers on one
    /// machine.
    pub fn with_speed(mut self, speed: f64) -> Self {
        self.speed = speed;
        self
    }
}

impl LocalSource {
    /// Adds `samples x batch gradient` of each batch into `acc`, in the given order, and
    /// returns the batches' totals.
    pub fn accumulate(
        &mut self,
        round: u64,
        batches: &[(usize, std::ops::Range<usize>)],
        model: &Model,
        acc: &mut [f32],
    ) -> Result<Totals> {
        self.batch_grad.resize(self.num_params, 0.0);
        let result = match self.threads.take() {
            Some(pool) => {
                let result = pool.install(|| self.accumulate_here(round, batches, model, acc));
                self.threads = Some(pool);
                result
            }
            None => self.accumulate_here(round, batches, model, acc),
        };
        peerless_comm::buffer::release_if_big(&mut self.batch_grad);
        result
    }

    fn accumulate_here(
        &mut self,
        round: u64,
        batches: &[(usize, std::ops::Range<usize>)],
        model: &Model,
        acc: &mut [f32],
    ) -> Result<Totals> {
        let mut totals = Totals::default();
        for (index, range) in batches {
            let busy = std::time::Instant::now();
            let indices: Vec<usize> = range.clone().collect();
            // The seed a function computing this batch would use, so augmentation (and
            // dropout) match.
            let seed = batch_seed(self.seed, round, self.rank, *index as u32);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let batch = self
                .buffers
                .fill(&mut self.transform, &self.shard, &indices, &mut rng)?;
            // Dropout masks as a function computing this batch would draw them.
            let stats = model.grad_step_seeded(
                &batch,
                self.loss,
                &mut self.batch_grad,
                dropout_seed(seed),
            )?;
            accumulate(acc, &self.batch_grad, stats.samples);
            totals.add(stats.loss as f64, stats.correct, stats.samples);
            if self.speed < 1.0 {
                std::thread::sleep(busy.elapsed().mul_f64(1.0 / self.speed - 1.0));
            }
        }
        Ok(totals)
    }
}
