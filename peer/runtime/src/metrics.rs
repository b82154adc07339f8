//! The per-round metrics every peer writes (one JSON object per line, the same field names
//! on every peer): written by the [`crate::Node`] of `peerless peer`/`run`, read by the
//! study's cost model, simulator and report (`peerless-bench`), and by users' scripts, so
//! the field names are an interface.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
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
    /// Signing this peer's messages and verifying the others' (part of the encode, receive
    /// and decode times; 0 in an unauthenticated run).
    pub auth_time_s: f64,
    /// The part of `auth_time_s` spent verifying the other peers' messages.
    pub verify_time_s: f64,
    /// Applying the averaged gradient with the optimizer.
    pub update_time_s: f64,
    pub eval_time_s: f64,
    pub round_time_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub rejected_messages: u64,
    /// `rejected_messages` by reason (see `peerless_comm::Rejections`).
    pub rejections: peerless_comm::Rejections,
    pub contributors: u32,
    /// Ranks averaged this round (this one included).
    pub participants: Vec<u32>,
    /// Ranks waited for that did not deliver in time (`--on-timeout partial`).
    pub missing_ranks: Vec<u32>,
    /// Ranks no longer waited for after this round (`--evict-after`).
    pub evicted_ranks: Vec<u32>,
    /// Sharded exchange: shards whose owner's result did not arrive, left unchanged this
    /// round (see `peerless_comm::RoundStats::skipped_shards`).
    pub skipped_shards: Vec<u32>,
    /// Seconds of this round without a broker connection (reconnecting).
    pub broker_outage_s: f64,
    /// Writing this round's checkpoint, when one was written.
    pub checkpoint_time_s: Option<f64>,
    /// NaN once a model diverged (e.g. under attack): written as `null`, read back as NaN.
    #[serde(deserialize_with = "nan_when_null")]
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

/// Appends metrics lines to a file, flushing each so an interrupted run keeps them.
pub struct MetricsWriter {
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl MetricsWriter {
    /// A writer to `path` (emptied first), or one that discards everything.
    pub fn create(path: Option<&Path>) -> Result<Self> {
        Self::open(path, false)
    }

    /// A writer to `path` that keeps the lines already there when `append` (a peer
    /// resuming or rejoining continues its file), or one that discards everything.
    pub fn open(path: Option<&Path>, append: bool) -> Result<Self> {
        let out = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(p)
                    .with_context(|| format!("creating metrics file {}", p.display()))?;
                Some(std::io::BufWriter::new(file))
            }
            None => None,
        };
        Ok(MetricsWriter { out })
    }

    /// Writes one line.
    pub fn write(&mut self, m: &RoundMetrics) -> Result<()> {
        if let Some(w) = self.out.as_mut() {
            serde_json::to_writer(&mut *w, m)?;
            writeln!(w)?;
            w.flush()?;
        }
        Ok(())
    }
}

/// Hex of the first 16 bytes of SHA-256 over the weights' bytes.
pub fn weights_hash(weights: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytemuck::cast_slice::<f32, u8>(weights));
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A round's evaluation: validation over every peer's validation shard, and the test set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RoundEvaluation {
    /// Mean validation loss and accuracy.
    pub val: Option<(f64, f64)>,
    pub test: Option<crate::eval::Evaluation>,
}

impl RoundMetrics {
    /// Records what computing the round's gradient took and where its batches ran.
    pub fn record_compute(&mut self, report: crate::source::SourceReport) {
        self.samples = report.samples;
        self.local_batches = report.local_batches;
        self.offloaded_batches = report.offloaded_batches;
        self.fallback_batches = report.fallback_batches;
        self.compute_time_s = report.compute_time_s;
        self.local_time_s = report.local_time_s;
        self.functions_time_s = report.functions_time_s;
        self.weights_upload_time_s = report.upload_time_s;
        self.gradient_fetch_time_s = report.fetch_time_s;
        self.failed_attempts = report.failed_attempts;
        self.state_transitions = report.state_transitions;
        self.train_loss = report.loss;
        self.train_accuracy = report.correct as f64 / report.samples.max(1) as f64;
        self.invocations = report.invocations;
    }

    /// Records the exchange: traffic, timings, who took part and what was refused.
    pub fn record_exchange(&mut self, stats: &peerless_comm::RoundStats) {
        self.peer_compute_s = stats
            .peer_compute
            .iter()
            .map(|d| d.map(|d| d.as_secs_f64()))
            .collect();
        self.encode_time_s = stats.encode_time.as_secs_f64();
        self.send_time_s = stats.send_time.as_secs_f64();
        self.receive_time_s = stats.receive_time.as_secs_f64();
        self.decode_time_s = stats.decode_time.as_secs_f64();
        self.auth_time_s = stats.auth_time.as_secs_f64();
        self.verify_time_s = stats.verify_time.as_secs_f64();
        self.bytes_sent = stats.bytes_sent;
        self.bytes_received = stats.bytes_received;
        self.messages_sent = stats.messages_sent;
        self.messages_received = stats.messages_received;
        self.rejected_messages = stats.rejected.total();
        self.rejections = stats.rejected;
        self.contributors = stats.contributors;
        self.missing_ranks = stats.missing.clone();
        self.participants = stats.participants.clone();
        self.evicted_ranks = stats.evicted.clone();
        self.skipped_shards = stats.skipped_shards.clone();
        self.broker_outage_s = stats.outage.as_secs_f64();
    }

    /// Records the evaluation after the update.
    pub fn record_evaluation(&mut self, eval: RoundEvaluation) {
        self.val_loss = eval.val.map(|v| v.0);
        self.val_accuracy = eval.val.map(|v| v.1);
        self.test_loss = eval.test.map(|e| e.loss);
        self.test_accuracy = eval.test.map(|e| e.accuracy);
    }

    /// Records the weights after the update and this process's resources so far.
    pub fn record_state(&mut self, weights: &[f32]) {
        self.weights_hash = weights_hash(weights);
        self.peak_rss_bytes = crate::sys::peak_rss_bytes();
        self.cpu_time_s = crate::sys::cpu_time_s();
    }
}

/// The rounds (0-based) after which a peer evaluated (`--eval-every`): those with a test
/// accuracy.
pub fn evaluated_rounds(rounds: &[RoundMetrics]) -> Vec<u64> {
    rounds
        .iter()
        .filter(|m| m.test_accuracy.is_some())
        .map(|m| m.round)
        .collect()
}

/// Reads `null` (how JSON writes a NaN) as NaN, so a diverged run's metrics still load.
fn nan_when_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}
