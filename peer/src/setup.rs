//! Turning the shared training flags into a model spec and input transforms that fit the
//! dataset: one place, so `train`, `peer` and the functions agree on what a batch is.

use anyhow::{Result, bail};
use peerless_data::{DatasetKind, ImageShape, Transform, TransformSpec};
use peerless_models::{Architecture, ModelSpec};

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
