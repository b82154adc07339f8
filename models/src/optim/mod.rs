//! Optimizers on flat vectors, with PyTorch's update rules and defaults.
//!
//! Every peer applies the same averaged gradient to the same flat weights, so the update is
//! written once over `&mut [f32]`: one fused pass per step (VGG11 has 128.8 M weights), state
//! that is plain vectors, and bit-identical results on every peer. Burn's own optimizers
//! work per tensor and differ from PyTorch in several defaults (SGD dampening, Adam epsilon,
//! AdamW weight decay, RMSprop momentum), which would silently change the study.

mod adagrad;
mod adam;
mod rmsprop;
mod sgd;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use adagrad::Adagrad;
pub use adam::Adam;
pub use rmsprop::RmsProp;
pub use sgd::Sgd;

use crate::{ModelError, Result};

/// Applies a flat gradient to flat weights.
pub trait Optimizer: Send {
    /// One update of `weights` with `grad` at learning rate `lr`.
    fn step(&mut self, weights: &mut [f32], grad: &[f32], lr: f32) -> Result<()>;

    /// Everything the next steps depend on besides the hyper-parameters (moment vectors,
    /// step counter), so a checkpoint can resume training bit-identically.
    fn state(&self) -> OptimizerState;

    /// Replaces the state with one exported by [`Optimizer::state`] of an optimizer of the
    /// same kind, size and options; on error (another kind, missing, unexpected or
    /// wrongly sized vectors) nothing is changed, so a bad checkpoint cannot half-apply.
    fn restore(&mut self, state: OptimizerState) -> Result<()>;
}

/// The exported mutable state of an [`Optimizer`]: what a checkpoint stores so that a
/// restored optimizer's next steps are bit-identical to the original's. Hyper-parameters
/// are not part of it; they come from the run's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// The optimizer that exported it; restoring into another kind is refused.
    pub kind: OptimizerKind,
    /// Steps taken so far where the update depends on it (Adam's bias-correction `t`);
    /// 0 for the other optimizers.
    pub step: u64,
    /// Whether SGD's momentum buffer has been seeded with a first gradient (PyTorch seeds
    /// it undampened); `false` for the other optimizers.
    pub started: bool,
    /// The state vectors by PyTorch's names (`momentum_buffer`, `exp_avg`, `exp_avg_sq`,
    /// `square_avg`, `sum`), each one value per weight.
    pub vectors: BTreeMap<String, Vec<f32>>,
}

impl OptimizerState {
    /// A state of `kind` with the given step counter, flag and vectors.
    pub fn new(
        kind: OptimizerKind,
        step: u64,
        started: bool,
        vectors: impl IntoIterator<Item = (&'static str, Vec<f32>)>,
    ) -> Self {
        OptimizerState {
            kind,
            step,
            started,
            vectors: vectors
                .into_iter()
                .map(|(name, v)| (name.to_string(), v))
                .collect(),
        }
    }

    /// Checks that this state is of `kind` and holds exactly the vectors `expected`
    /// (name, length), and returns them in that order; the error names what differs.
    pub(crate) fn unpack(
        mut self,
        kind: OptimizerKind,
        expected: &[(&str, usize)],
    ) -> Result<(u64, bool, Vec<Vec<f32>>)> {
        let bad = |reason: String| ModelError::OptimizerState {
            optimizer: kind.name(),
            reason,
        };
        if self.kind != kind {
            return Err(bad(format!("the state is of {}", self.kind)));
        }
        let mut vectors = Vec::with_capacity(expected.len());
        for &(name, len) in expected {
            let v = self
                .vectors
                .remove(name)
                .ok_or_else(|| bad(format!("vector `{name}` is missing")))?;
            if v.len() != len {
                return Err(bad(format!(
                    "vector `{name}` has {} values, the optimizer needs {len}",
                    v.len()
                )));
            }
            vectors.push(v);
        }
        if let Some(name) = self.vectors.keys().next() {
            return Err(bad(format!(
                "unexpected vector `{name}` (different options, such as momentum?)"
            )));
        }
        Ok((self.step, self.started, vectors))
    }
}

/// The optimizers the study offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    #[serde(rename = "adamw")]
    AdamW,
    #[serde(rename = "rmsprop")]
    RmsProp,
    Adagrad,
}

impl OptimizerKind {
    /// Every optimizer, in the order help texts list them.
    pub const ALL: [OptimizerKind; 5] = [
        OptimizerKind::Sgd,
        OptimizerKind::Adam,
        OptimizerKind::AdamW,
        OptimizerKind::RmsProp,
        OptimizerKind::Adagrad,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::RmsProp => "rmsprop",
            OptimizerKind::Adagrad => "adagrad",
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OptimizerKind {
    type Err = ModelError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|o| o.name() == wanted)
            .ok_or_else(|| ModelError::unknown("optimizer", s, &Self::ALL.map(|o| o.name())))
    }
}

/// Optimizer hyper-parameters; `None` means PyTorch's default for the chosen optimizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    /// Momentum (SGD, RMSprop). PyTorch default 0.
    pub momentum: Option<f32>,
    /// SGD momentum dampening. PyTorch default 0.
    pub dampening: Option<f32>,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
    /// L2 penalty (decoupled for AdamW). PyTorch default 0, AdamW 0.01.
    pub weight_decay: Option<f32>,
    /// Adam/AdamW `(beta1, beta2)`. PyTorch default (0.9, 0.999).
    pub betas: Option<(f32, f32)>,
    /// Denominator epsilon. PyTorch default 1e-8, Adagrad 1e-10.
    pub eps: Option<f32>,
    /// RMSprop smoothing constant. PyTorch default 0.99.
    pub alpha: Option<f32>,
}

impl OptimizerConfig {
    /// Builds the optimizer for `len` weights, validating every value.
    pub fn build(&self, kind: OptimizerKind, len: usize) -> Result<Box<dyn Optimizer>> {
        let check = |name: &str, v: f32, lo: f32, hi: f32| {
            if v.is_finite() && v >= lo && v < hi {
                Ok(v)
            } else {
                Err(ModelError::InvalidConfig(format!(
                    "{kind} {name} must be in [{lo}, {hi}), got {v}"
                )))
            }
        };
        let momentum = check("momentum", self.momentum.unwrap_or(0.0), 0.0, 1.0)?;
        let dampening = check(
            "dampening",
            self.dampening.unwrap_or(0.0),
            0.0,
            1.0 + f32::EPSILON,
        )?;
        let default_wd = if kind == OptimizerKind::AdamW {
            0.01
        } else {
            0.0
        };
        let weight_decay = check(
            "weight decay",
            self.weight_decay.unwrap_or(default_wd),
            0.0,
            f32::INFINITY,
        )?;
        let (b1, b2) = self.betas.unwrap_or((0.9, 0.999));
        let betas = (check("beta1", b1, 0.0, 1.0)?, check("beta2", b2, 0.0, 1.0)?);
        let default_eps = if kind == OptimizerKind::Adagrad {
            1e-10
        } else {
            1e-8
        };
        let eps = check("eps", self.eps.unwrap_or(default_eps), 0.0, f32::INFINITY)?;
        let alpha = check("alpha", self.alpha.unwrap_or(0.99), 0.0, 1.0)?;
        if self.nesterov && (momentum == 0.0 || dampening != 0.0) {
            return Err(ModelError::InvalidConfig(
                "Nesterov momentum needs a momentum > 0 and zero dampening".into(),
            ));
        }
        Ok(match kind {
            OptimizerKind::Sgd => Box::new(Sgd::new(
                len,
                momentum,
                dampening,
                self.nesterov,
                weight_decay,
            )),
            OptimizerKind::Adam => Box::new(Adam::new(len, betas, eps, weight_decay, false)),
            OptimizerKind::AdamW => Box::new(Adam::new(len, betas, eps, weight_decay, true)),
            OptimizerKind::RmsProp => {
                Box::new(RmsProp::new(len, alpha, eps, weight_decay, momentum))
            }
            OptimizerKind::Adagrad => Box::new(Adagrad::new(len, eps, weight_decay)),
        })
    }
}

/// Chunk size of the parallel update loops: big enough to amortise scheduling, small enough
/// to spread VGG11's vectors over every core.
const CHUNK: usize = 1 << 16;

/// Runs `f` over matching chunks of the weights, the gradient and up to two state vectors,
/// in parallel. Each element's update depends only on its own index, so the result is the
/// same whatever the thread count.
pub(crate) fn for_each_chunk<F>(
    weights: &mut [f32],
    grad: &[f32],
    s1: &mut [f32],
    s2: &mut [f32],
    f: F,
) where
    F: Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync,
{
    fn split(v: &mut [f32]) -> Vec<&mut [f32]> {
        v.chunks_mut(CHUNK).collect()
    }
    let n_chunks = weights.len().div_ceil(CHUNK);
    let mut s1_chunks = split(s1);
    let mut s2_chunks = split(s2);
    s1_chunks.resize_with(n_chunks, Default::default);
    s2_chunks.resize_with(n_chunks, Default::default);
    weights
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(s1_chunks.into_par_iter().zip(s2_chunks.into_par_iter()))
        .for_each(|((w, g), (a, b))| f(w, g, a, b));
}

pub(crate) fn check_lengths(weights: &[f32], grad: &[f32], state: usize) -> Result<()> {
    for (what, got) in [("weight vector", weights.len()), ("gradient", grad.len())] {
        if got != state {
            return Err(ModelError::LengthMismatch {
                what,
                expected: state,
                got,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
