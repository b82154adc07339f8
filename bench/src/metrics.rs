//! The per-round metrics every peer writes (one JSON object per line, the same field names
//! on every peer): written by `peerless peer`/`run`, read by the study's cost model,
//! simulator and report.

use serde::{Deserialize, Serialize};

/// What one peer measured in one round. Fields missing from older files read as their
/// defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoundMetrics {
    pub rank: u32,
    pub round: u64,
    pub epoch: u32,
    pub lr: f32,
    pub samples: usize,
    /// Where batches could run: none, local, lambda or stepfn.
    pub serverless: String,
    /// Batches computed on the peer as planned.
    pub local_batches: usize,
    /// Batches sent to functions.
    pub offloaded_batches: usize,
    /// Offloaded batches that failed for good and were computed on the peer.
    pub fallback_batches: usize,
    /// Computing the round's gradient (locally and through functions, side by side).
    pub compute_time_s: f64,
    /// The peer's own batches, fallbacks included.
    pub local_time_s: f64,
    /// From the first function call to the last response.
    pub functions_time_s: f64,
    /// Uploading the weights the functions load.
    pub weights_upload_time_s: f64,
    /// Reading and summing the functions' gradients.
    pub gradient_fetch_time_s: f64,
    /// Function attempts that failed (retried or fell back).
    pub failed_attempts: u32,
    /// Step Functions state transitions billed this round.
    pub state_transitions: u64,
    /// Each rank's gradient time this round, as its message reported (by rank).
    pub peer_compute_s: Vec<Option<f64>>,
    pub encode_time_s: f64,
    pub send_time_s: f64,
    /// From the end of encoding until every other rank had delivered: includes waiting for
    /// slower peers.
    pub receive_time_s: f64,
    pub decode_time_s: f64,
    /// Applying the averaged gradient with the optimizer.
    pub update_time_s: f64,
    pub eval_time_s: f64,
    pub round_time_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub rejected_messages: u64,
    pub contributors: u32,
    pub missing_ranks: Vec<u32>,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// SHA-256 (first 16 bytes, hex) of the flat weights after the update: equal on every
    /// peer of a healthy run.
    pub weights_hash: String,
    pub peak_rss_bytes: Option<u64>,
    pub cpu_time_s: Option<f64>,
    /// Every successful function call: billed duration, memory and the handler's timings.
    pub invocations: Vec<InvocationRecord>,
}

/// How an invocation's billed duration and memory were obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingSource {
    /// From the `REPORT` line Lambda returned with the invocation (what AWS bills).
    Report,
    /// Estimated: the handler's own duration rounded up to the next millisecond, at the
    /// configured memory size (the pool, emulators, Step Functions tasks).
    #[default]
    Estimate,
}

/// One function call as the cost model needs it: the platform's billing facts plus the
/// handler's own timings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub batch: u32,
    pub attempts: u32,
    /// Wall time the peer saw, milliseconds.
    pub wall_ms: f64,
    /// Billed duration, milliseconds (rounded up to 1 ms, as AWS bills).
    pub billed_ms: u64,
    /// Configured memory, MB.
    pub memory_mb: u32,
    pub init_ms: Option<f64>,
    pub billing: BillingSource,
    /// The function built its model in this call (a cold execution environment).
    pub cold: bool,
    pub load_weights_ms: f64,
    pub load_batch_ms: f64,
    pub compute_ms: f64,
    pub upload_ms: f64,
    pub handler_ms: f64,
    pub gradient_bytes: u64,
}
