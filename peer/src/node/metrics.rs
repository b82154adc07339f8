//! Per-round metrics of a peer: one JSON object per line, the same field names on every
//! peer, so runs can be compared and merged.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

pub use peerless_bench::metrics::RoundMetrics;

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
