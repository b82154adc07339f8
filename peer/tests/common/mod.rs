//! What the `peerless` end-to-end tests share: the command builder and the metrics reader.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

/// The schema of a peer's per-round metrics lines: the one path to change when it moves.
pub use peerless_runtime::metrics::RoundMetrics;

/// The `peerless` binary with a clean configuration and quiet logs.
pub fn peerless() -> Command {
    let mut cmd = Command::cargo_bin("peerless").unwrap();
    cmd.env_remove("PEERLESS_CONFIG")
        .env_remove("PEERLESS_SERVERLESS")
        .env("PEERLESS_LOG", "warn");
    cmd
}

/// The `peerless` binary as a plain process (to spawn peers side by side and kill them),
/// with a clean configuration and quiet logs.
pub fn peer_process() -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("peerless"));
    cmd.env("PEERLESS_LOG", "warn")
        .env_remove("PEERLESS_CONFIG");
    cmd
}

/// A function binary of the lambda crate, next to the `peerless` binary; built when a
/// narrower `cargo test` did not build it.
pub fn function_binary(name: &str) -> PathBuf {
    let peerless = assert_cmd::cargo::cargo_bin("peerless");
    let path = peerless.with_file_name(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "peerless-lambda", "--bin", name])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building {name}");
    }
    path
}

/// Splits the synthetic dataset for `peers` peers into `store`.
pub fn split_synthetic(store: &Path, peers: usize) {
    peerless()
        .args(["data", "split", "--dataset", "synthetic", "--size"])
        .arg(peers.to_string())
        .arg("--to")
        .arg(store)
        .assert()
        .success();
}

/// The small CNN on synthetic data at learning rate 0.05: what training tests train.
pub const SMALL_TRAINING: [&str; 6] = [
    "--dataset",
    "synthetic",
    "--model",
    "tiny_cnn",
    "--lr",
    "0.05",
];

/// Two epochs of 29 rounds with momentum 0.5: the training runs' usual length.
pub const TWO_EPOCHS: [&str; 6] = [
    "--epochs",
    "2",
    "--rounds-per-epoch",
    "29",
    "--momentum",
    "0.5",
];

/// `peerless run` of `peers` peers training the small CNN on synthetic data at learning
/// rate 0.05, split into `store`, metrics into `metrics`: the command every training test
/// starts from before adding its own flags.
pub fn training_run(peers: usize, store: impl AsRef<OsStr>, metrics: &Path) -> Command {
    let mut cmd = peerless();
    cmd.args(["run", "--peers", &peers.to_string()])
        .args(SMALL_TRAINING)
        .arg("--store")
        .arg(store)
        .arg("--metrics-dir")
        .arg(metrics);
    cmd
}

/// Credentials moto accepts; tests never use real ones.
pub const MOTO_CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
];

/// [`training_run`] against moto's S3 at `endpoint` (credentials, region, endpoint set).
pub fn moto_training_run(
    peers: usize,
    store: impl AsRef<OsStr>,
    metrics: &Path,
    endpoint: &str,
    region: &str,
) -> Command {
    let mut cmd = training_run(peers, store, metrics);
    cmd.envs(MOTO_CREDENTIALS)
        .env("AWS_REGION", region)
        .args(["--s3-endpoint", endpoint]);
    cmd
}

/// Runs a training command, requires it to succeed with every peer's weights identical,
/// and returns the `peers` peers' metrics.
pub fn identical_run(cmd: &mut Command, metrics: &Path, peers: usize) -> Vec<Vec<RoundMetrics>> {
    cmd.assert()
        .success()
        .stdout(predicates::str::contains("identical"));
    peer_metrics(metrics, peers)
}

/// Every peer's metrics after a run into `metrics`, by rank.
pub fn peer_metrics(metrics: &Path, peers: usize) -> Vec<Vec<RoundMetrics>> {
    (0..peers)
        .map(|r| round_metrics(&metrics.join(format!("peer-{r}.jsonl"))))
        .collect()
}

/// The rounds of a metrics file. Each line must have exactly the keys of [`RoundMetrics`]
/// (nested ones included): a key the peer stopped writing fails here instead of reading
/// as its default.
pub fn round_metrics(path: &Path) -> Vec<RoundMetrics> {
    json_lines(path)
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let at = format!("{} line {}", path.display(), i + 1);
            let m: RoundMetrics =
                serde_json::from_value(line.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
            assert_same_keys(&line, &serde_json::to_value(&m).unwrap(), &at);
            m
        })
        .collect()
}

/// Panics unless `file` and `schema` have the same object keys at every level.
fn assert_same_keys(file: &Value, schema: &Value, at: &str) {
    match (file, schema) {
        (Value::Object(f), Value::Object(s)) => {
            let keys =
                |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<BTreeSet<_>>();
            assert_eq!(keys(f), keys(s), "{at}: the file's keys vs the schema's");
            for (k, v) in f {
                assert_same_keys(v, &s[k], &format!("{at}: {k}"));
            }
        }
        (Value::Array(f), Value::Array(s)) => {
            for (i, (v, w)) in f.iter().zip(s).enumerate() {
                assert_same_keys(v, w, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
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
