//! Learning-rate reduction and early stopping on the validation loss, as the original study
//! used them (`ReduceLROnPlateau(factor=0.1, patience=5, min_lr=1e-6)`, early stopping with
//! patience 10).

use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// `torch.optim.lr_scheduler.ReduceLROnPlateau` in `min` mode with a relative threshold:
/// cuts the learning rate by `factor` after `patience` epochs without improvement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReduceLrOnPlateau {
    factor: f32,
    patience: usize,
    min_lr: f32,
    threshold: f32,
    best: f32,
    bad_epochs: usize,
    lr: f32,
}

impl ReduceLrOnPlateau {
    /// A scheduler starting at `lr`; PyTorch's threshold (1e-4, relative) and no cooldown.
    pub fn new(lr: f32, factor: f32, patience: usize, min_lr: f32) -> Result<Self> {
        if !(factor > 0.0 && factor < 1.0) {
            return Err(ModelError::InvalidConfig(format!(
                "the plateau factor must be in (0, 1), got {factor}"
            )));
        }
        if !(min_lr >= 0.0 && lr > 0.0 && lr.is_finite()) {
            return Err(ModelError::InvalidConfig(format!(
                "learning rates must be positive (lr {lr}, min_lr {min_lr})"
            )));
        }
        Ok(ReduceLrOnPlateau {
            factor,
            patience,
            min_lr,
            threshold: 1e-4,
            best: f32::INFINITY,
            bad_epochs: 0,
            lr,
        })
    }

    /// The original study's settings: factor 0.1, patience 5, min_lr 1e-6.
    pub fn original(lr: f32) -> Result<Self> {
        Self::new(lr, 0.1, 5, 1e-6)
    }

    /// The current learning rate.
    pub fn lr(&self) -> f32 {
        self.lr
    }

    /// Records one epoch's validation loss and returns the learning rate for the next.
    pub fn step(&mut self, metric: f32) -> f32 {
        if metric < self.best * (1.0 - self.threshold) {
            self.best = metric;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        if self.bad_epochs > self.patience {
            let new_lr = (self.lr * self.factor).max(self.min_lr);
            if self.lr - new_lr > 1e-8 {
                self.lr = new_lr;
            }
            self.bad_epochs = 0;
        }
        self.lr
    }
}

/// Stops training after `patience` epochs without the validation loss improving by more
/// than `min_delta`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EarlyStopping {
    patience: usize,
    min_delta: f32,
    best: f32,
    bad_epochs: usize,
}

impl EarlyStopping {
    /// Early stopping with the given patience (the original used 10).
    pub fn new(patience: usize, min_delta: f32) -> Self {
        EarlyStopping {
            patience,
            min_delta,
            best: f32::INFINITY,
            bad_epochs: 0,
        }
    }

    /// Records one epoch's validation loss; true when training should stop.
    pub fn should_stop(&mut self, metric: f32) -> bool {
        if metric < self.best - self.min_delta {
            self.best = metric;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        self.bad_epochs >= self.patience
    }

    /// The best validation loss seen so far.
    pub fn best(&self) -> f32 {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_cuts_after_patience_bad_epochs_and_respects_min_lr() {
        let mut s = ReduceLrOnPlateau::new(0.1, 0.1, 2, 0.005).unwrap();
        assert_eq!(s.step(1.0), 0.1); // best
        assert_eq!(s.step(1.0), 0.1); // bad 1
        assert_eq!(s.step(1.0), 0.1); // bad 2
        assert!((s.step(1.0) - 0.01).abs() < 1e-9); // bad 3 > patience: cut
        assert!((s.step(0.5) - 0.01).abs() < 1e-9); // improvement
        for _ in 0..2 {
            s.step(0.6);
        }
        assert!((s.step(0.6) - 0.005).abs() < 1e-9); // floored at min_lr
    }

    #[test]
    fn improvements_below_the_relative_threshold_do_not_count() {
        let mut s = ReduceLrOnPlateau::new(1.0, 0.5, 0, 0.0).unwrap();
        s.step(1.0);
        assert_eq!(s.step(0.99999), 0.5);
    }

    #[test]
    fn early_stopping_counts_epochs_without_improvement() {
        let mut e = EarlyStopping::new(2, 0.0);
        assert!(!e.should_stop(1.0));
        assert!(!e.should_stop(0.9));
        assert!(!e.should_stop(0.95));
        assert!(e.should_stop(0.91));
        assert_eq!(e.best(), 0.9);
    }

    #[test]
    fn bad_factor_is_rejected() {
        assert!(ReduceLrOnPlateau::new(0.1, 1.5, 5, 0.0).is_err());
    }
}
