//! Turning the shared training flags into a model spec and input transforms that fit the
//! dataset: one place, so `train`, `peer` and the functions agree on what a batch is.

use anyhow::{Result, bail};
use peerless_data::{Dataset, DatasetKind, ImageShape, Transform, TransformSpec};
use peerless_models::{Architecture, Batch, ModelSpec};
use rand::Rng;

/// The model and the image pipeline for one (model, dataset) pair.
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub spec: ModelSpec,
    pub train: TransformSpec,
    pub eval: TransformSpec,
}

impl Pipeline {
    /// torchvision models take 3 channels (gray images are repeated, as the original did)
    /// at the study's input size; the small CNN takes the images as they are.
    pub fn new(
        arch: Architecture,
        kind: DatasetKind,
        shape: ImageShape,
        num_classes: usize,
        resize: Option<usize>,
    ) -> Result<Self> {
        let channels = match arch {
            Architecture::TinyCnn => shape.channels,
            _ => 3,
        };
        let size = resize.unwrap_or(match arch {
            Architecture::TinyCnn => shape.height,
            _ => arch.default_input_size(),
        });
        if size < arch.min_input_size() {
            bail!(
                "{arch} needs inputs of at least {0}x{0} pixels; --resize {size} is too small",
                arch.min_input_size()
            );
        }
        let spec = ModelSpec::new(arch)
            .with_in_channels(channels)
            .with_num_classes(num_classes);
        let eval = TransformSpec::new(channels, size);
        let train = eval.clone().with_augment(kind == DatasetKind::Cifar10);
        Ok(Pipeline { spec, train, eval })
    }

    /// Prepared transforms (training, evaluation) for images of `shape`.
    pub fn transforms(
        &self,
        kind: DatasetKind,
        shape: ImageShape,
    ) -> Result<(Transform, Transform)> {
        Ok((
            Transform::new(&self.train, shape, kind)?,
            Transform::new(&self.eval, shape, kind)?,
        ))
    }
}

/// Reusable buffers that turn dataset samples into a model batch (transformed pixels, `u8`
/// labels widened to the models' `i64`), so every loop fills batches the same way.
#[derive(Default)]
pub struct BatchBuffers {
    images: Vec<f32>,
    labels_u8: Vec<u8>,
    labels: Vec<i64>,
}

impl BatchBuffers {
    /// Transforms the samples at `indices` of `dataset` and returns them as a batch.
    pub fn fill<R: Rng + ?Sized>(
        &mut self,
        transform: &mut Transform,
        dataset: &Dataset,
        indices: &[usize],
        rng: &mut R,
    ) -> Result<Batch<'_>> {
        transform.fill_batch(dataset, indices, rng, &mut self.images, &mut self.labels_u8)?;
        self.labels.clear();
        self.labels
            .extend(self.labels_u8.iter().map(|&l| i64::from(l)));
        let s = transform.output_shape();
        Ok(Batch {
            images: &self.images,
            labels: &self.labels,
            shape: [indices.len(), s.channels, s.height, s.width],
        })
    }
}
