//! The JSON documents the functions exchange: what a peer (or Step Functions) sends to
//! `process_input` and `compute_gradient`, and what `compute_gradient` answers.
//!
//! Events carry object keys, never tensors: a synchronous Lambda payload is limited to
//! 6 MB and a Step Functions state to 256 KiB, while a gradient can be hundreds of MB.

use peerless_data::{S3Options, StoreOptions, TransformSpec};
use peerless_models::{Loss, ModelSpec};
use serde::{Deserialize, Serialize};

/// Where a function reads weights and batches and writes gradients, so one event names
/// a local directory (in-process pool, tests) or an S3 bucket (AWS, moto) alike.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoreLocation {
    /// `file:///abs/dir`, a plain directory path, or `s3://bucket[/prefix]`.
    pub url: String,
    /// S3-compatible endpoint such as `http://127.0.0.1:5000`; `None` uses AWS (or
    /// `AWS_ENDPOINT_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// S3 region; `None` uses the function's own region (`AWS_REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl StoreLocation {
    /// A location without endpoint or region overrides.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            endpoint_url: None,
            region: None,
        }
    }

    /// The options `peerless_data::open_store` needs for this location.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            s3: S3Options {
                endpoint_url: self.endpoint_url.clone(),
                region: self.region.clone(),
                ..S3Options::default()
            },
        }
    }
}

/// The fields that are the same for every batch of one peer's round; shared by the
/// `process_input` request and each `compute_gradient` event so neither repeats them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundContext {
    /// The run id as 32 hex digits (`peerless_comm::RunId`'s `Display` form).
    pub run_id: String,
    /// Training round (optimizer step) the weights belong to.
    pub round: u64,
    /// The peer whose batches these are (the original's `worker`).
    #[serde(alias = "worker")]
    pub rank: u32,
    /// Number of peers in the run, written into the gradient's wire header.
    pub world_size: u32,
    /// The network; must equal the model stored in the weights blob.
    pub model: ModelSpec,
    /// The training loss.
    pub loss: Loss,
    /// How raw batch images become model inputs.
    pub transform: TransformSpec,
    /// The store holding weights, batches and gradients.
    pub store: StoreLocation,
    /// Key of the round's weights blob (`peerless_models::weights::encode`).
    pub weights_key: String,
}

/// One `compute_gradient` invocation: which batch to take, with which augmentation seed,
/// and where to write its gradient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeGradientEvent {
    /// Run, round, model and store.
    #[serde(flatten)]
    pub context: RoundContext,
    /// Index of the batch within the peer's shard.
    pub batch: u32,
    /// Seed of the augmentation generator (`ChaCha8Rng::seed_from_u64`); irrelevant when
    /// the transform does not augment. [`crate::batch_seed`] derives it per batch.
    pub augment_seed: u64,
    /// Key of the batch object (`peerless data split --batches K`).
    pub batch_key: String,
    /// Key the gradient message is written to.
    pub gradient_key: String,
}

/// What one `compute_gradient` invocation did: where the gradient is, the batch's loss
/// and size for weighting, and timings and memory for the cost model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeGradientResponse {
    /// Key of the gradient message written (the event's `gradient_key`).
    pub gradient_key: String,
    /// Run id of the event, echoed.
    pub run_id: String,
    /// Round of the event, echoed.
    pub round: u64,
    /// Rank of the event, echoed.
    pub rank: u32,
    /// Batch index of the event, echoed.
    pub batch: u32,
    /// Mean loss over the batch.
    pub loss: f32,
    /// Images in the batch (the weight of this gradient in the peer's average).
    pub samples: u64,
    /// Correctly classified images.
    pub correct: u64,
    /// Number of `f32` elements of the gradient.
    pub element_count: u64,
    /// Size of the gradient object in bytes (wire header included).
    pub gradient_bytes: u64,
    /// True when the weights were already loaded by an earlier (warm) invocation.
    pub weights_cached: bool,
    /// True when the model was already built by an earlier invocation.
    pub model_cached: bool,
    /// Where the time went.
    pub timings: Timings,
    /// Function and process facts for billing estimates.
    pub runtime: RuntimeInfo,
}

/// Wall-clock milliseconds of each phase of one invocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Reading and decoding the weights and loading them into the model (0 when cached).
    pub load_weights_ms: f64,
    /// Reading, decoding and transforming the batch.
    pub load_batch_ms: f64,
    /// Forward, loss and backward.
    pub compute_ms: f64,
    /// Encoding and writing the gradient.
    pub upload_ms: f64,
    /// The whole handler, including model construction on a cold start.
    pub total_ms: f64,
}

/// Facts about the process that served the invocation; Lambda bills by configured memory
/// times duration, so the peer's cost model needs both.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Lambda function name (`None` in-process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_name: Option<String>,
    /// Lambda request id (`None` in-process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Configured function memory in MB (`None` in-process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u32>,
    /// Peak resident memory of the process so far, in MB (Linux only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_mb: Option<f64>,
    /// How many invocations this handler state has served, this one included.
    pub invocation: u64,
}

/// A peer's request to `process_input`: its round context and which of its batches to
/// offload; the original's `{worker, batch_number}` plus what the functions need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessInputRequest {
    /// Run, round, rank, model and store.
    #[serde(flatten)]
    pub context: RoundContext,
    /// Number of batches to expand (the original's `batch_number`).
    #[serde(alias = "batch_number")]
    pub batch_count: u32,
    /// Index of the first batch; a peer that keeps batches `0..f` for itself sends `f`.
    #[serde(default)]
    pub first_batch: u32,
    /// Base augmentation seed of the run; each batch gets [`crate::batch_seed`] of it.
    #[serde(default)]
    pub seed: u64,
    /// Prefix of the batch objects in the store (empty when the split is at its root).
    #[serde(default)]
    pub batch_prefix: String,
    /// Prefix under which gradients are written ([`crate::gradient_key`]).
    pub gradient_prefix: String,
}

/// What `process_input` returns: one `compute_gradient` event per batch, under `events`
/// so the Map state iterates `$.events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessInputOutput {
    /// The per-batch events, in batch order.
    pub events: Vec<ComputeGradientEvent>,
}
