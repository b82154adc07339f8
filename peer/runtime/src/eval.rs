//! Loss and accuracy of a model over a whole dataset, in evaluation mode.

use anyhow::Result;
use peerless_data::{Dataset, Transform};
use peerless_models::{Loss, Model};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::pipeline::BatchBuffers;

/// Mean loss and accuracy over a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
}

/// Evaluates `model` on every image of `dataset` in batches of `batch_size`.
pub fn evaluate(
    model: &Model,
    dataset: &Dataset,
    transform: &mut Transform,
    loss: Loss,
    batch_size: usize,
) -> Result<Evaluation> {
    let indices: Vec<usize> = (0..dataset.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut buffers = BatchBuffers::default();
    let (mut total_loss, mut correct) = (0.0f64, 0usize);
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = buffers.fill(transform, dataset, chunk, &mut rng)?;
        let stats = model.evaluate(&batch, loss)?;
        total_loss += stats.loss as f64 * chunk.len() as f64;
        correct += stats.correct;
    }
    let n = dataset.len().max(1) as f64;
    Ok(Evaluation {
        loss: total_loss / n,
        accuracy: correct as f64 / n,
        samples: dataset.len(),
    })
}
