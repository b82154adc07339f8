//! What the `peerless` end-to-end tests share: the command builder and the metrics reader.
#![allow(dead_code)]

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
