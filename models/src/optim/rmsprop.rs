use super::{Optimizer, OptimizerKind, OptimizerState, check_lengths, for_each_chunk};
use crate::Result;

/// `torch.optim.RMSprop` (not centered), with optional momentum.
pub struct RmsProp {
    alpha: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
    square_avg: Vec<f32>,
    buffer: Vec<f32>,
}

impl RmsProp {
    /// RMSprop for `len` weights.
    pub fn new(len: usize, alpha: f32, eps: f32, weight_decay: f32, momentum: f32) -> Self {
        RmsProp {
            alpha,
            eps,
            weight_decay,
            momentum,
            square_avg: vec![0.0; len],
            buffer: if momentum > 0.0 {
                vec![0.0; len]
            } else {
                Vec::new()
            },
        }
    }
}

impl Optimizer for RmsProp {
    fn step(&mut self, weights: &mut [f32], grad: &[f32], lr: f32) -> Result<()> {
        check_lengths(weights, grad, self.square_avg.len())?;
        let (alpha, eps, wd, mom) = (self.alpha, self.eps, self.weight_decay, self.momentum);
        for_each_chunk(
            weights,
            grad,
            &mut self.square_avg,
            &mut self.buffer,
            |w, g, sq, buf| {
                for i in 0..w.len() {
                    let gi = g[i] + wd * w[i];
                    sq[i] = alpha * sq[i] + (1.0 - alpha) * gi * gi;
                    let avg = sq[i].sqrt() + eps;
                    if mom > 0.0 {
                        buf[i] = mom * buf[i] + gi / avg;
                        w[i] -= lr * buf[i];
                    } else {
                        w[i] -= lr * gi / avg;
                    }
                }
            },
        );
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        let mut vectors = vec![("square_avg", self.square_avg.clone())];
        if self.momentum > 0.0 {
            vectors.push(("momentum_buffer", self.buffer.clone()));
        }
        OptimizerState::new(OptimizerKind::RmsProp, 0, false, vectors)
    }

    fn restore(&mut self, state: OptimizerState) -> Result<()> {
        let len = self.square_avg.len();
        let mut expected = vec![("square_avg", len)];
        if self.momentum > 0.0 {
            expected.push(("momentum_buffer", len));
        }
        let (_, _, mut vectors) = state.unpack(OptimizerKind::RmsProp, &expected)?;
        if self.momentum > 0.0 {
            self.buffer = vectors.pop().expect("unpack returns every expected vector");
        }
        self.square_avg = vectors.pop().expect("unpack returns every expected vector");
        Ok(())
    }
}
