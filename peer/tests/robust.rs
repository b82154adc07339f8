//! Robust aggregation against an attacking peer, end to end through `peerless run`: with
//! one of four peers sending its gradient times -10, the median keeps every peer's weights
//! identical and the model learning, while the plain mean is dragged uphill.

mod common;

use std::collections::BTreeSet;

use common::{RoundMetrics, peer_metrics, training_run};
use predicates::prelude::*;

const PEERS: usize = 4;
const ROUNDS: usize = 20;

/// Runs 4 peers (rank 3 attacking) with `aggregation` and returns every peer's rounds,
/// after checking that all peers hold identical weights after every round.
fn attacked_run(aggregation: &str) -> Vec<Vec<RoundMetrics>> {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mdir = dir.path().join("metrics");
    training_run(PEERS, &store, &mdir)
        .args(["--epochs", "2", "--rounds-per-epoch", "10"])
        .args(["--attacks", "none,none,none,scale:-10"])
        .args(["--aggregation", aggregation])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("identical").and(predicate::str::contains("DIFFER").not()),
        );
    let peers = peer_metrics(&mdir, PEERS);
    for (rank, p) in peers.iter().enumerate() {
        assert_eq!(p.len(), ROUNDS, "{aggregation}: peer {rank} rounds");
    }
    for round in 0..ROUNDS {
        let hashes: BTreeSet<_> = peers
            .iter()
            .map(|p| p[round].weights_hash.as_str())
            .collect();
        assert_eq!(hashes.len(), 1, "{aggregation} round {round}: {hashes:?}");
    }
    peers
}

/// The honest peers' mean train loss over `rounds`.
fn honest_loss(peers: &[Vec<RoundMetrics>], rounds: std::ops::Range<usize>) -> f64 {
    let honest = &peers[..PEERS - 1];
    let n = (rounds.len() * honest.len()) as f64;
    rounds
        .flat_map(|r| honest.iter().map(move |p| p[r].train_loss))
        .sum::<f64>()
        / n
}

#[test]
fn the_median_withstands_a_scaling_attacker_that_ruins_the_mean() {
    let median = attacked_run("median");
    let (early, late) = (
        honest_loss(&median, 0..5),
        honest_loss(&median, ROUNDS - 5..ROUNDS),
    );
    assert!(late < 0.5 * early, "median: train loss {early} -> {late}");

    let mean = attacked_run("mean");
    let mean_late = honest_loss(&mean, ROUNDS - 5..ROUNDS);
    // NaN or infinity (a diverged model) counts as worse too.
    assert!(
        !(mean_late < 2.0 * late),
        "the mean should suffer: {mean_late} against the median's {late}"
    );
}
