//! Robust aggregation against an attacking peer, end to end through `peerless run`: with
//! one of four peers sending its gradient times -10, the median keeps every peer's weights
//! identical and the model learning, while the plain mean is dragged uphill.

mod common;

use std::collections::BTreeSet;

use common::{TWO_EPOCHS, json_lines, training_run};

const PEERS: usize = 4;

/// Runs 4 peers (rank 3 attacking) with `aggregation` and returns whether the run
/// succeeded and every peer's train loss by round (NaN once a model diverged: the metrics
/// then hold null), after checking that all peers held identical weights after every
/// round they finished. A model that diverged leaves no finite gradient to send (each peer
/// withholds its own), so such a run fails at its round timeout.
fn attacked_run(aggregation: &str) -> (bool, Vec<Vec<f64>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mdir = dir.path().join("metrics");
    let out = training_run(PEERS, &store, &mdir)
        .args(TWO_EPOCHS)
        .args(["--attacks", "none,none,none,scale:-10"])
        .args(["--aggregation", aggregation, "--round-timeout", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let peers: Vec<Vec<serde_json::Value>> = (0..PEERS)
        .map(|r| json_lines(&mdir.join(format!("peer-{r}.jsonl"))))
        .collect();
    let rounds = peers.iter().map(Vec::len).min().unwrap();
    for round in 0..rounds {
        let hashes: BTreeSet<_> = peers
            .iter()
            .map(|p| p[round]["weights_hash"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(hashes.len(), 1, "{aggregation} round {round}: {hashes:?}");
    }
    let losses = peers
        .iter()
        .map(|p| {
            p[..rounds]
                .iter()
                .map(|m| m["train_loss"].as_f64().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    let ok = out.status.success() && stdout.contains("identical") && !stdout.contains("DIFFER");
    (ok, losses)
}

/// The honest peers' mean train loss over `rounds`.
fn honest_loss(peers: &[Vec<f64>], rounds: std::ops::Range<usize>) -> f64 {
    let honest = &peers[..PEERS - 1];
    let n = (rounds.len() * honest.len()) as f64;
    rounds
        .flat_map(|r| honest.iter().map(move |p| p[r]))
        .sum::<f64>()
        / n
}

#[test]
fn the_median_withstands_a_scaling_attacker_that_ruins_the_mean() {
    let (ok, median) = attacked_run("median");
    assert!(ok, "the median run must finish with identical weights");
    let rounds = median[0].len();
    assert!(rounds >= 40, "median: {rounds} rounds");
    let (early, late) = (
        honest_loss(&median, 0..5),
        honest_loss(&median, rounds - 10..rounds),
    );
    // Slower than without the attacker (the median of three honest gradients is smaller
    // than their mean), but clearly learning.
    assert!(late < 0.95 * early, "median: train loss {early} -> {late}");

    // The mean follows the attacker uphill until the model diverges and the run stalls,
    // or at least ends clearly worse.
    let (mean_ok, mean) = attacked_run("mean");
    let mean_rounds = mean[0].len();
    let mean_late = honest_loss(&mean, mean_rounds.saturating_sub(10)..mean_rounds);
    assert!(
        !mean_ok || mean_late.is_nan() || mean_late >= 2.0 * late,
        "the mean should suffer: {mean_late} against the median's {late}"
    );
    assert!(
        mean.iter()
            .flatten()
            .any(|l| l.is_nan() || *l > 2.0 * early),
        "the mean's loss should blow up"
    );
}
