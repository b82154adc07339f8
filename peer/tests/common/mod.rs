//! What the `peerless` end-to-end tests share: the command builder and the metrics reader.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

/// The `peerless` binary with a clean configuration and quiet logs.
pub fn peerless() -> Command {
    let mut cmd = Command::cargo_bin("peerless").unwrap();
    cmd.env_remove("PEERLESS_CONFIG")
        .env_remove("PEERLESS_SERVERLESS")
        .env("PEERLESS_LOG", "warn");
    cmd
}

/// `peerless run` of `peers` peers training the small CNN on synthetic data at learning
/// rate 0.05, split into `store`, metrics into `metrics`: the command every training test
/// starts from before adding its own flags.
pub fn training_run(peers: usize, store: impl AsRef<OsStr>, metrics: &Path) -> Command {
    let mut cmd = peerless();
    cmd.args(["run", "--peers", &peers.to_string()])
        .args([
            "--dataset",
            "synthetic",
            "--model",
            "tiny_cnn",
            "--lr",
            "0.05",
        ])
        .arg("--store")
        .arg(store)
        .arg("--metrics-dir")
        .arg(metrics);
    cmd
}

/// Every peer's metrics after a run into `metrics`, by rank.
pub fn peer_metrics(metrics: &Path, peers: usize) -> Vec<Vec<Value>> {
    (0..peers)
        .map(|r| json_lines(&metrics.join(format!("peer-{r}.jsonl"))))
        .collect()
}

/// The JSON objects of a JSON-lines file.
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A name no other test run uses (run ids, buckets).
pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
