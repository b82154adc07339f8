use super::{Optimizer, OptimizerKind, OptimizerState, check_lengths, for_each_chunk};
use crate::Result;

/// `torch.optim.Adagrad` (no learning-rate decay, zero initial accumulator).
pub struct Adagrad {
    eps: f32,
    weight_decay: f32,
    sum: Vec<f32>,
}

impl Adagrad {
    /// Adagrad for `len` weights.
    pub fn new(len: usize, eps: f32, weight_decay: f32) -> Self {
        Adagrad {
            eps,
            weight_decay,
            sum: vec![0.0; len],
        }
    }
}

impl Optimizer for Adagrad {
    fn step(&mut self, weights: &mut [f32], grad: &[f32], lr: f32) -> Result<()> {
        check_lengths(weights, grad, self.sum.len())?;
        let (eps, wd) = (self.eps, self.weight_decay);
        for_each_chunk(weights, grad, &mut self.sum, &mut [], |w, g, sum, _| {
            for i in 0..w.len() {
                let gi = g[i] + wd * w[i];
                sum[i] += gi * gi;
                w[i] -= lr * gi / (sum[i].sqrt() + eps);
            }
        });
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        OptimizerState::new(
            OptimizerKind::Adagrad,
            0,
            false,
            [("sum", self.sum.clone())],
        )
    }

    fn restore(&mut self, state: OptimizerState) -> Result<()> {
        let len = self.sum.len();
        let (_, _, mut vectors) = state.unpack(OptimizerKind::Adagrad, &[("sum", len)])?;
        self.sum = vectors.pop().expect("unpack returns every expected vector");
        Ok(())
    }
}
