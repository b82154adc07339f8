//! Peer-to-peer training without serverless, end to end through the `peerless` binary: peers
//! as threads over the in-process transport and over the real RabbitMQ on 127.0.0.1:5672,
//! peers as separate processes, compression, timeouts and refusals.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{
    RoundMetrics, TWO_EPOCHS, peer_metrics, peer_process, peerless, round_metrics as metrics,
    split_synthetic, training_run, unique,
};
use peerless_testkit::rabbit::{RabbitNode, RabbitOptions};
use predicates::prelude::*;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn broker() -> String {
    std::env::var("PEERLESS_AMQP_URL").unwrap_or_else(|_| BROKER.to_string())
}

/// Runs `peerless run` with the small CNN on synthetic data and checks the outcome: every
/// peer has every round, identical weights after each round, and a lower loss at the end.
fn run_and_check(extra: &[&str], rounds: usize) -> Vec<Vec<RoundMetrics>> {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mdir = dir.path().join("metrics");
    training_run(3, &store, &mdir)
        .args(TWO_EPOCHS)
        .args(extra)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("identical").and(predicate::str::contains("DIFFER").not()),
        );
    let peers = peer_metrics(&mdir, 3);
    for (rank, p) in peers.iter().enumerate() {
        assert_eq!(p.len(), rounds, "peer {rank} rounds");
    }
    for round in 0..rounds {
        let hashes: BTreeSet<_> = peers
            .iter()
            .map(|p| p[round].weights_hash.as_str())
            .collect();
        assert_eq!(
            hashes.len(),
            1,
            "round {round}: weights differ across peers: {hashes:?}"
        );
    }
    // Mean train loss over all peers in a window of rounds: early vs late.
    let window = |rounds: std::ops::Range<usize>| {
        let n = (rounds.len() * peers.len()) as f64;
        rounds
            .flat_map(|r| peers.iter().map(move |p| p[r].train_loss))
            .sum::<f64>()
            / n
    };
    let (early, late) = (window(0..5), window(rounds - 10..rounds));
    assert!(late < 0.5 * early, "mean train loss {early} -> {late}");
    for p in &peers {
        assert!(p[0].bytes_sent > 10_000, "{:?}", p[0]);
        assert_eq!(p[0].contributors, 3);
    }
    peers
}

#[test]
fn three_peers_in_process_keep_identical_weights_and_learn() {
    run_and_check(&[], 58);
}

#[test]
fn three_peers_over_rabbitmq_keep_identical_weights_and_learn() {
    let peers = run_and_check(
        &["--broker", &broker(), "--evaluation", "--eval-limit", "200"],
        58,
    );
    let acc = peers[0].last().unwrap().test_accuracy.unwrap();
    assert!(acc > 0.2, "test accuracy {acc}");
    for p in &peers {
        assert_eq!(evaluated(p), vec![28, 57], "once per epoch");
    }
}

use peerless_runtime::metrics::evaluated_rounds as evaluated;

#[test]
fn evaluation_runs_once_per_epoch_by_default_or_after_every_eval_every_rounds() {
    // 2 epochs of 29 rounds: evaluated after rounds 28 and 57 by default; `run_and_check`
    // checks the weights are identical on every peer after every round.
    let eval = ["--evaluation", "--eval-limit", "100"];
    for p in &run_and_check(&eval, 58) {
        assert_eq!(evaluated(p), vec![28, 57]);
        assert!(
            p.iter()
                .all(|m| (m.eval_time_s > 0.0) == m.val_loss.is_some())
        );
    }
    // Every round: the schedule steps every round, so keep it from stopping the run.
    let every = [
        &eval[..],
        &[
            "--eval-every",
            "1",
            "--patience",
            "1000",
            "--plateau-patience",
            "1000",
        ],
    ]
    .concat();
    for p in &run_and_check(&every, 58) {
        assert_eq!(evaluated(p), (0..58).collect::<Vec<_>>());
    }
    // Every 20 rounds, and after the last.
    let twenty = [&eval[..], &["--eval-every", "20"]].concat();
    for p in &run_and_check(&twenty, 58) {
        assert_eq!(evaluated(p), vec![19, 39, 57]);
    }
}

#[test]
fn sharded_exchange_over_rabbitmq_trains_to_the_all_to_all_weights() {
    // Without compression both exchanges sum the same values in the same order: the
    // runs end with the same bits, while a sharded peer sends and receives about
    // 2G(N-1)/N a round instead of G and (N-1)G.
    let all = run_and_check(&["--broker", &broker()], 58);
    let sharded = run_and_check(&["--broker", &broker(), "--exchange", "sharded"], 58);
    for round in [0, 57] {
        assert_eq!(
            sharded[0][round].weights_hash, all[0][round].weights_hash,
            "round {round}"
        );
    }
    let gradient = 4.0 * 38_282.0;
    for peer in &sharded {
        let m = &peer[0];
        let ring = 2.0 * gradient * 2.0 / 3.0;
        assert!(
            (m.bytes_received as f64 / ring - 1.0).abs() < 0.1,
            "received {} vs {ring}",
            m.bytes_received
        );
        assert!(m.bytes_sent as f64 <= 1.1 * ring, "sent {}", m.bytes_sent);
    }
}

#[test]
fn qsgd8_compression_over_rabbitmq() {
    let peers = run_and_check(&["--broker", &broker(), "--compression", "qsgd8"], 58);
    // 8-bit levels plus a sign bitmap: well under half the raw f32 size.
    let raw = 4 * 38_282u64;
    assert!(peers[0][0].bytes_sent < raw / 2);
}

#[test]
fn topk_compression_over_rabbitmq() {
    let peers = run_and_check(&["--broker", &broker(), "--compression", "topk:0.1"], 58);
    let raw = 4 * 38_282u64;
    assert!(peers[0][0].bytes_sent < raw / 2);
}

/// `peerless run` of squeezenet1_1 (2.9 MB gradients) over `url`, with `extra` flags.
fn squeezenet_run(url: &str, dir: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    peerless()
        .args([
            "run",
            "--peers",
            "2",
            "--dataset",
            "synthetic",
            "--model",
            "squeezenet1_1",
            "--resize",
            "17",
            "--epochs",
            "1",
            "--rounds-per-epoch",
            "2",
            "--round-timeout",
            "60",
            "--broker",
            url,
            "--store",
        ])
        .arg(dir.join("store"))
        .arg("--metrics-dir")
        .arg(dir.join("m"))
        .args(extra)
        .assert()
}

#[test]
fn gradients_cross_a_broker_limited_to_512_kib_in_chunks() {
    // A private node refusing messages above 512 KiB, as Amazon MQ's current brokers do.
    let node = RabbitNode::start_with(RabbitOptions {
        max_message_size: Some(512 << 10),
    })
    .expect("a private RabbitMQ node");
    let dir = tempfile::tempdir().unwrap();
    squeezenet_run(&node.url(), dir.path(), &[])
        .success()
        .stdout(predicate::str::contains("identical"));
    let m = metrics(&dir.path().join("m/peer-0.jsonl"));
    // 2.9 MB of gradient in chunks of at most 448 KiB, each message under the limit.
    assert!(m[0].messages_sent >= 7, "{:?}", m[0]);
    assert!(
        m[0].bytes_sent <= m[0].messages_sent * (512 << 10),
        "{:?}",
        m[0]
    );
    assert_eq!(
        m[0].weights_hash,
        metrics(&dir.path().join("m/peer-1.jsonl"))[0].weights_hash
    );

    // Chunks above the limit: an error that names the cause and the flag, no hang.
    let dir = tempfile::tempdir().unwrap();
    squeezenet_run(&node.url(), dir.path(), &["--chunk-kib", "1024"])
        .failure()
        .stderr(
            predicate::str::contains("too large")
                .and(predicate::str::contains("--chunk-kib"))
                .and(predicate::str::contains("panicked").not()),
        );
}

fn split(store: &Path, peers: &str) {
    split_synthetic(store, peers.parse().unwrap());
}

fn spawn_peer(store: &Path, size: &str, rank: u32, run_id: &str, extra: &[&str]) -> Child {
    spawn_peer_as(store, size, &rank.to_string(), run_id, extra)
}

/// A `peerless peer` process with `--rank rank` (a number or `auto`).
fn spawn_peer_as(store: &Path, size: &str, rank: &str, run_id: &str, extra: &[&str]) -> Child {
    peer_process()
        .args(["peer", "--size", size, "--rank", rank, "--run-id", run_id])
        .args([
            "--broker",
            &broker(),
            "--dataset",
            "synthetic",
            "--epochs",
            "2",
            "--lr",
            "0.1",
        ])
        .args(["--rounds-per-epoch", "2", "--store"])
        .arg(store)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn separate_peer_processes_over_rabbitmq_end_with_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    split(&store, "3");
    let run_id = unique("procs");
    let children: Vec<Child> = (0..3)
        .map(|r| spawn_peer(&store, "3", r, &run_id, &[]))
        .collect();
    let mut finals = BTreeSet::new();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "peer {rank}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hash = stdout.split("weights ").nth(1).unwrap().trim().to_string();
        finals.insert(hash);
    }
    assert_eq!(finals.len(), 1, "{finals:?}");
}

#[test]
fn peers_started_with_rank_auto_claim_distinct_ranks_and_train_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    split(&store, "3");
    let run_id = unique("auto");
    let metrics_files: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("m{i}.jsonl")))
        .collect();
    let children: Vec<Child> = metrics_files
        .iter()
        .map(|m| {
            spawn_peer_as(
                &store,
                "3",
                "auto",
                &run_id,
                &["--metrics-out", m.to_str().unwrap()],
            )
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let runs: Vec<Vec<RoundMetrics>> = metrics_files.iter().map(|m| metrics(m)).collect();
    let ranks: BTreeSet<u32> = runs.iter().map(|r| r[0].rank).collect();
    assert_eq!(ranks, BTreeSet::from([0, 1, 2]));
    let last: BTreeSet<_> = runs
        .iter()
        .map(|r| r.last().unwrap().weights_hash.clone())
        .collect();
    assert_eq!(last.len(), 1, "{last:?}");

    // A fourth peer finds every rank taken, and says how to go on.
    let out = spawn_peer_as(&store, "3", "auto", &run_id, &[])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("all 3 ranks") && err.contains("--rank"),
        "{err}"
    );
}

#[test]
fn a_peer_that_never_arrives_times_out_or_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    split(&store, "3");

    // Fail mode: ranks 0 and 1 run, rank 2 never starts.
    let run_id = unique("timeout");
    let started = Instant::now();
    let children: Vec<Child> = (0..2)
        .map(|r| spawn_peer(&store, "3", r, &run_id, &["--round-timeout", "3"]))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("rank(s) 2"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(60));

    // Partial mode: the two present peers average each other and record who was missing.
    let run_id = unique("partial");
    let m0 = dir.path().join("p0.jsonl");
    let m1 = dir.path().join("p1.jsonl");
    let a = spawn_peer(
        &store,
        "3",
        0,
        &run_id,
        &[
            "--round-timeout",
            "2",
            "--on-timeout",
            "partial",
            "--metrics-out",
            m0.to_str().unwrap(),
        ],
    );
    let b = spawn_peer(
        &store,
        "3",
        1,
        &run_id,
        &[
            "--round-timeout",
            "2",
            "--on-timeout",
            "partial",
            "--metrics-out",
            m1.to_str().unwrap(),
        ],
    );
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (p0, p1) = (metrics(&m0), metrics(&m1));
    assert_eq!(p0.len(), 4);
    for (x, y) in p0.iter().zip(&p1) {
        // Waited for in the first two rounds, then evicted (--evict-after 2).
        let waited = x.round < 2;
        assert_eq!(x.missing_ranks, if waited { vec![2] } else { vec![] });
        assert_eq!(x.evicted_ranks, if x.round == 1 { vec![2] } else { vec![] });
        assert_eq!(x.participants, [0, 1]);
        assert_eq!(x.contributors, 2);
        assert_eq!(x.weights_hash, y.weights_hash);
    }
}

#[test]
fn a_peer_with_another_model_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    split(&store, "2");
    let run_id = unique("model");
    // Small rounds and a generous timeout: the refusal, not a timeout, must end the run.
    let a = spawn_peer(
        &store,
        "2",
        0,
        &run_id,
        &["--round-timeout", "120", "--rounds-per-epoch", "30"],
    );
    let b = spawn_peer(
        &store,
        "2",
        1,
        &run_id,
        &[
            "--round-timeout",
            "120",
            "--rounds-per-epoch",
            "30",
            "--model",
            "squeezenet1_1",
            "--resize",
            "17",
        ],
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(!a.status.success() && !b.status.success());
    let err = String::from_utf8_lossy(&a.stderr);
    assert!(
        err.contains("model (tiny_cnn here, squeezenet1_1 there)")
            && err.contains("input_size (None here, Some(17) there)"),
        "rank 0: {err}\nrank 1: {}",
        String::from_utf8_lossy(&b.stderr)
    );
}

#[test]
fn a_split_for_another_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    split(&store, "2");
    peerless()
        .args([
            "peer",
            "--size",
            "3",
            "--rank",
            "0",
            "--run-id",
            "x",
            "--broker",
            &broker(),
            "--store",
        ])
        .arg(&store)
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("2 peer shards").and(predicate::str::contains("--size 3")),
        );
}

#[test]
fn an_unreachable_broker_fails_fast_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    split(&store, "2");
    let started = Instant::now();
    peerless()
        .args([
            "peer",
            "--size",
            "2",
            "--rank",
            "0",
            "--run-id",
            "x",
            "--broker",
            "amqp://user:hunter2@127.0.0.1:1/%2f",
            "--store",
        ])
        .arg(&store)
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("127.0.0.1:1").and(predicate::str::contains("hunter2").not()),
        );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn multi_peer_runs_need_a_broker_and_a_run_id() {
    peerless()
        .args(["peer", "--size", "2", "--rank", "0", "--broker", &broker()])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--run-id"));
    peerless()
        .args(["peer", "--size", "2", "--rank", "5", "--run-id", "x"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("below --size 2"));
}
