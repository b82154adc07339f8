use super::{Optimizer, OptimizerKind, OptimizerState, check_lengths, for_each_chunk};
use crate::ModelError;
use crate::Result;

/// `torch.optim.Adam` (L2 decay added to the gradient) and `torch.optim.AdamW` (decoupled
/// decay `w *= 1 - lr * wd`), without amsgrad.
pub struct Adam {
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: bool,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    /// Adam (`decoupled = false`) or AdamW (`decoupled = true`) for `len` weights.
    pub fn new(
        len: usize,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
        decoupled: bool,
    ) -> Self {
        Adam {
            beta1: betas.0,
            beta2: betas.1,
            eps,
            weight_decay,
            decoupled,
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, weights: &mut [f32], grad: &[f32], lr: f32) -> Result<()> {
        check_lengths(weights, grad, self.m.len())?;
        self.t += 1;
        let (b1, b2, eps, wd, decoupled) = (
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            self.decoupled,
        );
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2_sqrt = (1.0 - b2.powi(self.t)).sqrt();
        let step_size = lr / bc1;
        for_each_chunk(weights, grad, &mut self.m, &mut self.v, |w, g, m, v| {
            for i in 0..w.len() {
                let mut gi = g[i];
                if decoupled {
                    w[i] *= 1.0 - lr * wd;
                } else {
                    gi += wd * w[i];
                }
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                w[i] -= step_size * m[i] / denom;
            }
        });
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        OptimizerState::new(
            self.kind(),
            u64::try_from(self.t).unwrap_or(0),
            false,
            [("exp_avg", self.m.clone()), ("exp_avg_sq", self.v.clone())],
        )
    }

    fn restore(&mut self, state: OptimizerState) -> Result<()> {
        let kind = self.kind();
        let len = self.m.len();
        let (step, _, vectors) = state.unpack(kind, &[("exp_avg", len), ("exp_avg_sq", len)])?;
        let t = i32::try_from(step).map_err(|_| ModelError::OptimizerState {
            optimizer: kind.name(),
            reason: format!("step counter {step} exceeds {}", i32::MAX),
        })?;
        let [m, v]: [Vec<f32>; 2] = vectors.try_into().expect("unpack returns both vectors");
        (self.m, self.v, self.t) = (m, v, t);
        Ok(())
    }
}

impl Adam {
    fn kind(&self) -> OptimizerKind {
        if self.decoupled {
            OptimizerKind::AdamW
        } else {
            OptimizerKind::Adam
        }
    }
}
