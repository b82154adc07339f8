//! Every subcommand given extreme values: each is refused up front as a usage error (exit
//! code 2, naming the flag), never a panic (101), an allocation failure or a hang.

mod common;

use std::time::Duration;

use common::peerless;

/// `args` must exit with code 2 within a minute, saying something that contains `says`.
fn refused(args: &[&str], says: &str) {
    let out = peerless()
        .args(args)
        .env("PEERLESS_LOG", "error")
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(says),
        "{args:?} should mention {says:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

const RUN: [&str; 8] = [
    "run",
    "--peers",
    "2",
    "--dataset",
    "synthetic",
    "--store",
    "/nonexistent/peerless-flags",
    "--epochs=1",
];

/// `base` followed by `extra`.
fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

fn run_with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    with(&RUN, extra)
}

const PEER: [&str; 9] = [
    "peer",
    "--size",
    "2",
    "--rank",
    "0",
    "--run-id",
    "flags",
    "--store",
    "/nonexistent/peerless-flags",
];

fn peer_with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    with(&PEER, extra)
}

#[test]
fn sizes_and_counts_beyond_their_range_are_usage_errors() {
    refused(&["bench", "--size", "4000000000"], "--size");
    refused(&["bench", "--batch", "4000000000"], "--batch");
    refused(
        &["train", "--dataset", "synthetic", "--resize", "4000000000"],
        "--resize",
    );
    refused(
        &["train", "--dataset", "synthetic", "--epochs", "99999999999"],
        "--epochs",
    );
    refused(
        &["train", "--dataset", "synthetic", "--limit", "1"],
        "--limit",
    );
    refused(
        &[
            "data",
            "split",
            "--dataset",
            "synthetic",
            "--size",
            "18446744073709551615",
            "--to",
            "/nonexistent/x",
        ],
        "--size",
    );
    refused(&run_with(&["--peers", "4000000000"]), "--peers");
    refused(&run_with(&["--threads", "100000000000"]), "--threads");
    refused(&run_with(&["--chunk-kib", "63"]), "--chunk-kib");
    refused(&run_with(&["--chunk-kib", "131073"]), "--chunk-kib");
    refused(
        &run_with(&["--rounds-per-epoch", "0"]),
        "--rounds-per-epoch",
    );
    refused(
        &run_with(&["--evaluation", "--eval-every", "0"]),
        "--eval-every",
    );
    refused(&peer_with(&["--eval-every", "0"]), "--eval-every");
    refused(&run_with(&["--eval-every=-1"]), "--eval-every");
    refused(
        &run_with(&[
            "--serverless",
            "local",
            "--function-concurrency",
            "4000000000",
        ]),
        "--function-concurrency",
    );
    refused(
        &run_with(&["--serverless", "local", "--function-concurrency", "500"]),
        "--function-concurrency",
    );
    refused(&peer_with(&["--size", "4000000000"]), "--size");
    refused(
        &[
            "peer",
            "--size",
            "2",
            "--rank",
            "4294967295",
            "--run-id",
            "flags",
        ],
        "below --size 2",
    );
    refused(&peer_with(&["--threads", "100000000000"]), "--threads");
}

#[test]
fn numbers_that_are_not_finite_or_overflow_a_deadline_are_usage_errors() {
    refused(
        &["train", "--dataset", "synthetic", "--momentum", "NaN"],
        "--momentum",
    );
    refused(
        &["train", "--dataset", "synthetic", "--min-lr=-1e40"],
        "--min-lr",
    );
    refused(&["train", "--dataset", "synthetic", "--lr", "1e39"], "--lr");
    refused(
        &["train", "--dataset", "synthetic", "--weight-decay", "inf"],
        "--weight-decay",
    );
    refused(&run_with(&["--round-timeout", "1e20"]), "--round-timeout");
    refused(&run_with(&["--round-timeout=-5"]), "--round-timeout");
    refused(
        &run_with(&["--serverless", "local", "--function-timeout", "1e300"]),
        "--function-timeout",
    );
    refused(&run_with(&["--speeds", "NaN,1"]), "(0, 1]");
    refused(&peer_with(&["--speed", "1e308"]), "(0, 1]");
    refused(&peer_with(&["--round-timeout", "inf"]), "--round-timeout");
    refused(
        &peer_with(&["--reconnect-timeout", "1e20"]),
        "--reconnect-timeout",
    );
    refused(
        &run_with(&["--reconnect-timeout", "0"]),
        "--reconnect-timeout",
    );
    refused(
        &run_with(&["--checkpoint-every", "99999999999"]),
        "--checkpoint-every",
    );
    refused(&run_with(&["--evict-after=-1"]), "--evict-after");
    refused(&run_with(&["--resume", "sometimes"]), "--resume");
    refused(&run_with(&["--clip-norm", "0"]), "--clip-norm");
    refused(&peer_with(&["--clip-norm", "inf"]), "--clip-norm");
    refused(&peer_with(&["--clip-norm=-3"]), "--clip-norm");
    refused(
        &run_with(&["--aggregation", "trimmed-mean:0"]),
        "--aggregation",
    );
    refused(&peer_with(&["--aggregation", "average"]), "--aggregation");
    refused(&peer_with(&["--attack", "scale:nan"]), "--attack");
    refused(&run_with(&["--attacks", "none,noise:-1"]), "--attacks");
    refused(
        &run_with(&["--attacks", "none,none,sign-flip"]),
        "--attacks lists 3 peers",
    );
}

#[test]
fn extreme_values_a_command_can_honour_are_honoured() {
    let out = peerless()
        .args([
            "stepfn",
            "generate",
            "--batches",
            "4294967295",
            "--process-input-arn",
            "arn:aws:lambda:us-east-1:1:function:p",
            "--compute-gradient-arn",
            "arn:aws:lambda:us-east-1:1:function:c",
            "--retries",
            "4294967295",
            "--task-timeout",
            "4294967295",
            "--max-concurrency",
            "4294967295",
        ])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let definition: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = definition.to_string();
    assert!(text.contains("4294967295"), "{text}");
}
