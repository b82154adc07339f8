use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::{Batch, Loss, Model, Result, StepStats};

/// A model with its master flat weights, a reusable gradient buffer and an optimizer: what a
/// single process (or one peer, between exchanges) needs to take training steps.
pub struct Trainer {
    model: Model,
    optimizer: Box<dyn Optimizer>,
    weights: Vec<f32>,
    grad: Vec<f32>,
    loss: Loss,
}

impl Trainer {
    /// Wraps `model` with the chosen optimizer.
    pub fn new(
        model: Model,
        loss: Loss,
        kind: OptimizerKind,
        config: &OptimizerConfig,
    ) -> Result<Self> {
        let weights = model.params()?;
        let optimizer = config.build(kind, weights.len())?;
        Ok(Trainer {
            grad: vec![0.0; weights.len()],
            model,
            optimizer,
            weights,
            loss,
        })
    }

    /// The model (for evaluation and export).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The loss being trained.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// The master weights (identical to the model's).
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// Computes the gradient of `batch` into the internal buffer without updating.
    pub fn compute_grad(&mut self, batch: &Batch<'_>) -> Result<StepStats> {
        self.model.grad_step(batch, self.loss, &mut self.grad)
    }

    /// The last gradient computed by [`Trainer::compute_grad`] or [`Trainer::step`].
    pub fn grad(&self) -> &[f32] {
        &self.grad
    }

    /// Applies an externally computed (for example averaged) gradient.
    pub fn apply(&mut self, grad: &[f32], lr: f32) -> Result<()> {
        self.optimizer.step(&mut self.weights, grad, lr)?;
        self.model.set_params(&self.weights)
    }

    /// One local step: gradient of `batch`, then the optimizer update.
    pub fn step(&mut self, batch: &Batch<'_>, lr: f32) -> Result<StepStats> {
        let stats = self.model.grad_step(batch, self.loss, &mut self.grad)?;
        self.optimizer.step(&mut self.weights, &self.grad, lr)?;
        self.model.set_params(&self.weights)?;
        Ok(stats)
    }
}
