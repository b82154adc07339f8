//! PyTorch's version of the gradient step, timed in the same run as ours when a Python
//! with torch and torchvision is available (`peerless bench --torch PYTHON`, or
//! `PEERLESS_TORCH_PYTHON` for `cargo bench`), so the two are compared on one machine in
//! one window.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::gradstep::GradStepBench;

/// The script each configuration runs in a fresh Python process.
const STEP_SCRIPT: &str = include_str!("../torch/step.py");

/// Environment variable naming the Python for `cargo bench`.
pub const TORCH_PYTHON_ENV: &str = "PEERLESS_TORCH_PYTHON";

/// PyTorch's timing of one configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TorchStep {
    /// Median over the timed steps.
    pub ms_per_step: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Peak resident memory of the Python process, MiB.
    pub peak_rss_mib: f64,
    /// torch version.
    pub torch: String,
    /// Intra-op threads torch used.
    pub threads: usize,
}

/// Why PyTorch could not be timed.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    /// The Python could not be started.
    #[error("cannot run {python}: {source}")]
    Spawn {
        python: String,
        source: std::io::Error,
    },
    /// The script failed (torch missing, model unknown, out of memory).
    #[error("{python} failed timing {model} at batch {batch}: {stderr}")]
    Failed {
        python: String,
        model: String,
        batch: usize,
        stderr: String,
    },
    /// The script's output is not the expected JSON.
    #[error("unexpected output from {python}: {output}")]
    Output { python: String, output: String },
}

/// Times `b` with PyTorch using `python`, on as many threads as this process may use.
pub fn measure_torch(python: &Path, b: &GradStepBench) -> Result<TorchStep, TorchError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shown = python.display().to_string();
    let output = Command::new(python)
        .arg("-c")
        .arg(STEP_SCRIPT)
        .arg(b.arch.name())
        .args([b.batch, b.size, b.steps, b.warmup, threads].map(|v| v.to_string()))
        .output()
        .map_err(|source| TorchError::Spawn {
            python: shown.clone(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(TorchError::Failed {
            python: shown,
            model: b.arch.name().to_string(),
            batch: b.batch,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).map_err(|_| TorchError::Output {
        python: shown,
        output: stdout.chars().take(300).collect(),
    })
}
