//! Helpers shared by the model tests.

use peerless_models::{Architecture, Device, Model, ModelSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn cpu() -> Device {
    Device::flex()
}

pub fn model(arch: Architecture, seed: u64) -> Model {
    Model::new(ModelSpec::new(arch), &cpu(), seed).unwrap()
}

/// Random images in [-1, 1] and random labels for `spec`.
pub fn random_batch(
    spec: &ModelSpec,
    n: usize,
    size: usize,
    seed: u64,
) -> (Vec<f32>, Vec<i64>, [usize; 4]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shape = [n, spec.in_channels, size, size];
    let images = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let labels = (0..n)
        .map(|_| rng.random_range(0..spec.num_classes as i64))
        .collect();
    (images, labels, shape)
}
