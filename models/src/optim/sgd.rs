use super::{Optimizer, OptimizerKind, OptimizerState, check_lengths, for_each_chunk};
use crate::Result;

/// `torch.optim.SGD`: optional L2 weight decay, momentum with dampening, Nesterov.
pub struct Sgd {
    momentum: f32,
    dampening: f32,
    nesterov: bool,
    weight_decay: f32,
    buffer: Vec<f32>,
    len: usize,
    started: bool,
}

impl Sgd {
    /// SGD for `len` weights.
    pub fn new(
        len: usize,
        momentum: f32,
        dampening: f32,
        nesterov: bool,
        weight_decay: f32,
    ) -> Self {
        Sgd {
            momentum,
            dampening,
            nesterov,
            weight_decay,
            buffer: if momentum > 0.0 {
                vec![0.0; len]
            } else {
                Vec::new()
            },
            len,
            started: false,
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, weights: &mut [f32], grad: &[f32], lr: f32) -> Result<()> {
        check_lengths(weights, grad, self.len)?;
        let (m, damp, nesterov, wd, first) = (
            self.momentum,
            self.dampening,
            self.nesterov,
            self.weight_decay,
            !self.started,
        );
        for_each_chunk(weights, grad, &mut self.buffer, &mut [], |w, g, buf, _| {
            for i in 0..w.len() {
                let mut d = g[i] + wd * w[i];
                if m > 0.0 {
                    // PyTorch seeds the buffer with the first gradient, undampened.
                    buf[i] = if first {
                        d
                    } else {
                        m * buf[i] + (1.0 - damp) * d
                    };
                    d = if nesterov { d + m * buf[i] } else { buf[i] };
                }
                w[i] -= lr * d;
            }
        });
        self.started = true;
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        let vectors = (self.momentum > 0.0).then(|| ("momentum_buffer", self.buffer.clone()));
        OptimizerState::new(OptimizerKind::Sgd, 0, self.started, vectors)
    }

    fn restore(&mut self, state: OptimizerState) -> Result<()> {
        let expected: &[(&str, usize)] = if self.momentum > 0.0 {
            &[("momentum_buffer", self.len)]
        } else {
            &[]
        };
        let (_, started, mut vectors) = state.unpack(OptimizerKind::Sgd, expected)?;
        self.buffer = vectors.pop().unwrap_or_default();
        self.started = started;
        Ok(())
    }
}
