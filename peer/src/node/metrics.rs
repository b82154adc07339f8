//! Per-round metrics of a peer: one JSON object per line, the same field names on every
//! peer, so runs can be compared and merged.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What one peer measured in one round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundMetrics {
    pub rank: u32,
    pub round: u64,
    pub epoch: u32,
    pub lr: f32,
    pub samples: usize,
    pub local_batches: usize,
    pub offloaded_batches: usize,
    /// Computing the round's gradient (locally or through functions).
    pub compute_time_s: f64,
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
}

/// Appends metrics lines to a file, flushing each so an interrupted run keeps them.
pub struct MetricsWriter {
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl MetricsWriter {
    /// A writer to `path`, or one that discards everything.
    pub fn create(path: Option<&Path>) -> Result<Self> {
        let out = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                Some(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating metrics file {}", p.display()))?,
                ))
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
