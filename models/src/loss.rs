//! The losses of the original study, on Burn tensors.

use std::fmt;
use std::str::FromStr;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Training loss. Both average over the batch, as PyTorch's default `reduction="mean"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// `nn.CrossEntropyLoss` on the model's logits.
    CrossEntropy,
    /// `nn.NLLLoss` on log-probabilities: the model's head gains a `LogSoftmax`, as the
    /// original's models did when trained with `F.nll_loss`.
    Nll,
}

impl Loss {
    /// Every loss, in the order help texts list them.
    pub const ALL: [Loss; 2] = [Loss::CrossEntropy, Loss::Nll];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Loss::CrossEntropy => "cross_entropy",
            Loss::Nll => "nll",
        }
    }

    /// Turns the network's logits into what this loss consumes (logits or log-probabilities).
    pub fn head(self, logits: Tensor<2>) -> Tensor<2> {
        match self {
            Loss::CrossEntropy => logits,
            Loss::Nll => log_softmax(logits, 1),
        }
    }

    /// Mean loss of `output` (from [`Loss::head`]) against integer class `labels`.
    pub fn forward(self, output: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
        let log_probs = match self {
            Loss::CrossEntropy => log_softmax(output, 1),
            Loss::Nll => output,
        };
        nll(log_probs, labels)
    }
}

/// `-mean(log_probs[i, labels[i]])`.
fn nll(log_probs: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = log_probs.dims();
    log_probs.gather(1, labels.reshape([n, 1])).mean().neg()
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Loss {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        let wanted = match wanted.as_str() {
            "crossentropy" | "ce" => "cross_entropy",
            other => other,
        };
        Self::ALL
            .into_iter()
            .find(|l| l.name() == wanted)
            .ok_or_else(|| ModelError::unknown("loss", s, &Self::ALL.map(|l| l.name())))
    }
}
