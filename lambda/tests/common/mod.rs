//! Helpers shared by the function tests: a small split in a local directory, weights
//! blobs, events, and the reference gradient computed directly with `Model::grad_step`.

#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use peerless_comm::RunId;
use peerless_data::formats::synthetic::SyntheticConfig;
use peerless_data::{ObjectStore, SplitConfig, Transform, TransformSpec, open_store, shard, split};
use peerless_lambda::gradient::{self, ExpectedGradient};
use peerless_lambda::{ComputeGradientEvent, RoundContext, StoreLocation, batch_seed};
use peerless_models::{Architecture, Batch, Device, Loss, Model, ModelSpec, StepStats, weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;

/// Peers of the test split.
pub const PEERS: usize = 2;
/// Batches per peer of the test split.
pub const BATCHES: usize = 3;
/// Base augmentation seed of the test run.
pub const SEED: u64 = 99;

/// A split of synthetic 1x10x10 images for 2 peers with 3 batch objects each, in a store
/// that also receives weights and gradients.
pub struct Fixture {
    /// Temporary directory of a local store (unused for other stores), removed on drop.
    pub dir: TempDir,
    pub location: StoreLocation,
    pub store: Arc<dyn ObjectStore>,
    pub spec: ModelSpec,
    pub transform: TransformSpec,
    pub run_id: RunId,
}

/// The test split in a temporary local directory.
pub async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("store").display());
    fixture_at(StoreLocation::new(url), dir).await
}

/// The test split in the store at `location` (e.g. `s3://bucket/prefix` on moto, whose
/// bucket must exist; credentials from the AWS default chain).
pub async fn fixture_at(location: StoreLocation, dir: TempDir) -> Fixture {
    let store = open_store(&location.url, &location.store_options())
        .await
        .unwrap();
    let data = |count, seed| {
        SyntheticConfig {
            count,
            height: 10,
            width: 10,
            seed,
            ..SyntheticConfig::default()
        }
        .generate()
        .unwrap()
    };
    let config = SplitConfig {
        batches_per_peer: Some(BATCHES),
        ..SplitConfig::new(PEERS)
    };
    split(&data(80, 1), &data(10, 2), &config, store.as_ref())
        .await
        .unwrap();
    Fixture {
        dir,
        location,
        store,
        spec: ModelSpec::new(Architecture::TinyCnn),
        // Augmentation on, so the test also checks that function and reference draw the
        // same crops and flips from the event's seed.
        transform: TransformSpec::new(1, 12).with_augment(true),
        run_id: RunId::from_name("lambda-tests"),
    }
}

impl Fixture {
    /// Weights of a model initialised with `seed`, as the peer uploads them.
    pub fn weights_blob(&self, seed: u64) -> Vec<u8> {
        let model = Model::new(self.spec, &Device::flex(), seed).unwrap();
        model.to_bytes().unwrap()
    }

    /// The same weights with every value nudged, for a "next round".
    pub fn perturbed_blob(&self, blob: &[u8]) -> Vec<u8> {
        let mut d = weights::decode(blob).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        d.weights
            .iter_mut()
            .for_each(|w| *w += rng.random_range(-0.05..0.05));
        weights::encode(&d.spec, &d.weights, &d.buffers)
    }

    pub async fn put(&self, key: &str, blob: Vec<u8>) {
        self.store.put(key, Bytes::from(blob)).await.unwrap();
    }

    pub fn context(&self, round: u64, rank: u32, weights_key: &str) -> RoundContext {
        RoundContext {
            run_id: self.run_id.to_string(),
            round,
            rank,
            world_size: PEERS as u32,
            model: self.spec,
            loss: Loss::CrossEntropy,
            transform: self.transform.clone(),
            store: self.location.clone(),
            weights_key: weights_key.to_owned(),
        }
    }

    pub fn event(
        &self,
        round: u64,
        rank: u32,
        batch: u32,
        weights_key: &str,
    ) -> ComputeGradientEvent {
        ComputeGradientEvent {
            context: self.context(round, rank, weights_key),
            batch,
            augment_seed: batch_seed(SEED, round, rank, batch),
            batch_key: peerless_data::manifest::batch_key(rank as usize, batch as usize),
            gradient_key: peerless_lambda::gradient_key("grads", round, rank, batch),
        }
    }

    /// The gradient the peer would compute itself for `event`: the blob's weights in a
    /// fresh model, the batch object transformed with the event's seed, `grad_step_seeded`
    /// with the batch's dropout seed.
    pub async fn reference(
        &self,
        event: &ComputeGradientEvent,
        blob: &[u8],
    ) -> (Vec<f32>, StepStats) {
        let decoded = weights::decode(blob).unwrap();
        let mut model = Model::new(decoded.spec, &Device::flex(), 1).unwrap();
        model.set_params(&decoded.weights).unwrap();
        model.set_buffers(&decoded.buffers).unwrap();
        let bytes = self.store.get(&event.batch_key).await.unwrap();
        let dataset = shard::decode(&bytes).unwrap();
        let mut transform = Transform::for_dataset(&self.transform, &dataset).unwrap();
        let indices: Vec<usize> = (0..dataset.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(event.augment_seed);
        let b = transform.batch(&dataset, &indices, &mut rng).unwrap();
        let labels: Vec<i64> = b.labels.iter().map(|&l| i64::from(l)).collect();
        let batch = Batch {
            images: &b.images,
            labels: &labels,
            shape: b.shape,
        };
        let mut grad = vec![0.0; model.num_params()];
        let mask_seed = peerless_lambda::dropout_seed(event.augment_seed);
        let stats = model
            .grad_step_seeded(&batch, event.context.loss, &mut grad, mask_seed)
            .unwrap();
        (grad, stats)
    }

    /// Reads and validates the gradient object an event asked for.
    pub async fn read_gradient(&self, event: &ComputeGradientEvent) -> Vec<f32> {
        let bytes = self.store.get(&event.gradient_key).await.unwrap();
        let n = Model::new(self.spec, &Device::flex(), 0)
            .unwrap()
            .num_params();
        let expected = ExpectedGradient {
            run_id: self.run_id,
            round: event.context.round,
            model_fingerprint: gradient::fingerprint(&self.spec, n),
            element_count: n as u64,
        };
        gradient::decode(&bytes, &expected).unwrap()
    }
}

/// Largest absolute difference, after checking the lengths agree.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "gradient lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
