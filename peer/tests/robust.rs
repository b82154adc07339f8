//! Robust aggregation against an attacking peer, end to end through `peerless run`: with
//! one of four peers sending its gradient times -10, the median keeps every peer's weights
//! identical and the model learning, while the plain mean is dragged uphill.

mod common;

use std::collections::BTreeSet;

use common::{json_lines, training_run};
use predicates::prelude::*;

const PEERS: usize = 4;

/// Runs 4 peers (rank 3 attacking) with `aggregation` and returns every peer's train loss
/// by round (NaN once a model diverged: the metrics then hold null), after checking that
/// all peers hold identical weights after every round.
fn attacked_run(aggregation: &str) -> Vec<Vec<f64>> {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mdir = dir.path().join("metrics");
    training_run(PEERS, &store, &mdir)
        .args([
            "--epochs",
            "2",
            "--rounds-per-epoch",
            "29",
            "--momentum",
            "0.5",
        ])
        .args(["--attacks", "none,none,none,scale:-10"])
        .args(["--aggregation", aggregation])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("identical").and(predicate::str::contains("DIFFER").not()),
        );
    let peers: Vec<Vec<serde_json::Value>> = (0..PEERS)
        .map(|r| json_lines(&mdir.join(format!("peer-{r}.jsonl"))))
        .collect();
    let rounds = peers[0].len();
    assert!(rounds >= 40, "{aggregation}: {rounds} rounds");
    for (rank, p) in peers.iter().enumerate() {
        assert_eq!(p.len(), rounds, "{aggregation}: peer {rank} rounds");
    }
    for round in 0..rounds {
        let hashes: BTreeSet<_> = peers
            .iter()
            .map(|p| p[round]["weights_hash"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(hashes.len(), 1, "{aggregation} round {round}: {hashes:?}");
    }
    peers
        .iter()
        .map(|p| {
            p.iter()
                .map(|m| m["train_loss"].as_f64().unwrap_or(f64::NAN))
                .collect()
        })
        .collect()
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
    let median = attacked_run("median");
    let rounds = median[0].len();
    let (early, late) = (
        honest_loss(&median, 0..5),
        honest_loss(&median, rounds - 10..rounds),
    );
    // Slower than without the attacker (the median of three honest gradients is smaller
    // than their mean), but clearly learning.
    assert!(late < 0.95 * early, "median: train loss {early} -> {late}");

    let mean = attacked_run("mean");
    let mean_late = honest_loss(&mean, rounds - 10..rounds);
    // The mean follows the attacker uphill until the model diverges (NaN counts as worse).
    assert!(
        mean_late.is_nan() || mean_late >= 2.0 * late,
        "the mean should suffer: {mean_late} against the median's {late}"
    );
}
