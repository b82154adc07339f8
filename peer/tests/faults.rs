//! Faults against real components: separate `peerless peer` processes over a RabbitMQ node
//! this test starts itself (own node name, port and data directory; the shared broker on
//! 5672 is never touched), a broker restart mid-run, every peer killed with SIGKILL and
//! restarted, one peer killed and rejoining, and a broker that never comes back. The
//! first three run with each `--exchange` that goes through the broker: all-to-all, and
//! sharded (where the killed peer owns a shard, whose updates stop until the survivors
//! move it to another owner).
//!
//! Every comparison with "an uninterrupted run" is against a run with another run id: a
//! run id names a run and never changes its numbers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{RoundMetrics, SMALL_TRAINING, peer_process, round_metrics, split_synthetic, unique};
use peerless_testkit::rabbit::RabbitNode;

/// One peer of a run of `size` over `broker`, with its metrics in `metrics`.
struct Peer {
    args: Vec<String>,
    metrics: PathBuf,
}

impl Peer {
    fn new(broker: &str, store: &Path, size: usize, rank: usize, run_id: &str, dir: &Path) -> Self {
        let metrics = dir.join(format!("{run_id}-{rank}.jsonl"));
        let args = [
            "peer",
            "--size",
            &size.to_string(),
            "--rank",
            &rank.to_string(),
            "--run-id",
            run_id,
            "--broker",
            broker,
            "--store",
            store.to_str().unwrap(),
            "--metrics-out",
            metrics.to_str().unwrap(),
            "--momentum",
            "0.5",
            "--optimizer",
            "sgd",
        ]
        .iter()
        .chain(&SMALL_TRAINING)
        .map(|s| s.to_string())
        .collect();
        Peer { args, metrics }
    }

    fn with(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self
    }

    fn spawn(&self) -> Child {
        peer_process()
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn rounds(&self) -> Vec<RoundMetrics> {
        if self.metrics.exists() {
            round_metrics(&self.metrics)
        } else {
            Vec::new()
        }
    }

    /// Waits until this peer has written `n` rounds (panics after `limit`).
    fn wait_rounds(&self, n: usize, limit: Duration) {
        let started = Instant::now();
        while self.lines() < n {
            assert!(
                started.elapsed() < limit,
                "{} never reached {n} rounds",
                self.metrics.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lines(&self) -> usize {
        std::fs::read_to_string(&self.metrics)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

/// Waits for every child; returns each one's final weights hash (from its last stdout line).
fn finish(children: Vec<Child>) -> Vec<String> {
    children
        .into_iter()
        .enumerate()
        .map(|(rank, child)| {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "peer {rank} failed: {stderr}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            stdout
                .split("weights ")
                .nth(1)
                .unwrap_or_else(|| panic!("peer {rank} printed no weights: {stdout}"))
                .trim()
                .to_string()
        })
        .collect()
}

fn run(peers: &[Peer]) -> Vec<String> {
    finish(peers.iter().map(Peer::spawn).collect())
}

fn one(hashes: &[String]) -> String {
    let set: BTreeSet<_> = hashes.iter().collect();
    assert_eq!(set.len(), 1, "peers ended with different weights: {set:?}");
    hashes[0].clone()
}

const ROUNDS: &[&str] = &["--epochs", "2", "--rounds-per-epoch", "24"];

/// Whether `exchange` is the sharded one.
fn is_sharded(exchange: &str) -> bool {
    exchange == "sharded"
}

/// Asserts that no shard went without its owner's result in any of `rounds`.
fn no_shard_skipped(rounds: &[RoundMetrics], who: &str) {
    for m in rounds {
        assert!(
            m.skipped_shards.is_empty(),
            "{who}, round {}: shards {:?} skipped",
            m.round,
            m.skipped_shards
        );
    }
}

#[test]
fn broker_restart_and_killed_peers_change_nothing_in_the_result() {
    broker_restart_and_killed_peers(ALL_TO_ALL);
}

#[test]
fn sharded_broker_restart_and_killed_peers_change_nothing_in_the_result() {
    broker_restart_and_killed_peers(SHARDED);
}

const ALL_TO_ALL: &str = "all-to-all";
const SHARDED: &str = "sharded";

fn broker_restart_and_killed_peers(exchange: &str) {
    let mut node = RabbitNode::start().expect("a private RabbitMQ node");
    let url = node.url();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    split_synthetic(&store, 3);
    let peers = |run_id: &str, extra: &[&str]| -> Vec<Peer> {
        (0..3)
            .map(|r| {
                Peer::new(&url, &store, 3, r, run_id, dir.path())
                    .with(ROUNDS)
                    .with(&["--exchange", exchange])
                    .with(extra)
            })
            .collect()
    };

    // The uninterrupted run.
    let reference_peers = peers(&unique("reference"), &[]);
    let reference = one(&run(&reference_peers));
    for p in &reference_peers {
        let rounds = p.rounds();
        assert_eq!(rounds.len(), 48);
        no_shard_skipped(&rounds, "reference");
    }

    // A broker restart mid-run: peers reconnect, publish their round again, and finish
    // with the same weights.
    // (Slowed to a third of the machine's pace, which changes timings, not numbers, so
    // the restart lands mid-run.)
    let restarted = peers(&unique("restart"), &["--speed", "0.3"]);
    let children: Vec<Child> = restarted.iter().map(Peer::spawn).collect();
    restarted[0].wait_rounds(10, Duration::from_secs(120));
    let stopped = Instant::now();
    node.stop_app().unwrap();
    let done_at_stop = restarted[0].lines();
    assert!(
        done_at_stop < 40,
        "the run was nearly over ({done_at_stop} rounds)"
    );
    std::thread::sleep(Duration::from_secs(3));
    node.start_app().unwrap();
    let down = stopped.elapsed();
    let hashes = finish(children);
    assert_eq!(
        one(&hashes),
        reference,
        "a broker restart changed the result"
    );
    let outage: f64 = restarted
        .iter()
        .flat_map(|p| p.rounds())
        .map(|m| m.broker_outage_s)
        .sum();
    assert!(
        outage > 1.0,
        "peers saw {outage:.1} s of outage (broker down {down:?})"
    );
    let slowest = restarted[0]
        .rounds()
        .iter()
        .map(|m| m.round_time_s)
        .fold(0.0, f64::max);
    eprintln!(
        "restart ({exchange}): broker restarted in {down:.1?}; peers saw {outage:.1} s of \
         outage in total, slowest round {slowest:.1} s; final weights equal to the \
         uninterrupted run"
    );
    let per_round: Vec<Vec<RoundMetrics>> = restarted.iter().map(Peer::rounds).collect();
    for (rank, rounds) in per_round.iter().enumerate() {
        assert_eq!(rounds.len(), 48);
        // Every round of every peer complete: nobody missing, no shard skipped, and the
        // same weights as the uninterrupted run after every round.
        for (m, r) in rounds.iter().zip(reference_peers[rank].rounds()) {
            assert!(m.missing_ranks.is_empty(), "round {}: {m:?}", m.round);
            assert_eq!(m.participants, [0, 1, 2], "round {}", m.round);
            assert_eq!(
                m.weights_hash, r.weights_hash,
                "rank {rank}, round {}",
                m.round
            );
        }
        no_shard_skipped(rounds, "restart");
    }

    // Every peer killed with SIGKILL mid-run, then started again with the same commands:
    // they resume from their newest common checkpoint, with the same final weights.
    let crashed = peers(&unique("crash"), &["--checkpoint-every", "4"]);
    let mut children: Vec<Child> = crashed.iter().map(Peer::spawn).collect();
    crashed[0].wait_rounds(19, Duration::from_secs(120));
    for child in &mut children {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let before: Vec<usize> = crashed.iter().map(Peer::lines).collect();
    let hashes = run(&crashed);
    assert_eq!(one(&hashes), reference, "resuming changed the result");
    for (p, before) in crashed.iter().zip(before) {
        let rounds = p.rounds();
        // The second attempt starts at a checkpoint round (a multiple of 4), not at 0.
        let resumed = rounds[before].round;
        assert!(
            resumed > 0 && resumed % 4 == 0,
            "resumed at round {resumed}"
        );
        assert!(resumed as usize <= before);
        assert_eq!(rounds.last().unwrap().round, 47);
        eprintln!(
            "resume ({exchange}): killed after {before} rounds, resumed at round {resumed} \
             ({} redone)",
            before - resumed as usize
        );
        no_shard_skipped(&rounds, "resume");
    }
}

#[test]
fn a_killed_peer_rejoins_and_catches_up() {
    a_killed_peer_rejoins(ALL_TO_ALL);
}

/// Rank 3 owns shard 3: while it is dead every survivor leaves shard 3 unchanged, until
/// the eviction announced by rank 0 gives the shard to rank 0.
#[test]
fn sharded_a_killed_shard_owner_is_evicted_its_shard_moves_and_it_rejoins() {
    a_killed_peer_rejoins(SHARDED);
}

fn a_killed_peer_rejoins(exchange: &str) {
    let sharded = is_sharded(exchange);
    let node = RabbitNode::start().expect("a private RabbitMQ node");
    let url = node.url();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    split_synthetic(&store, 4);
    let run_id = unique("rejoin");
    let peers: Vec<Peer> = (0..4)
        .map(|r| {
            Peer::new(&url, &store, 4, r, &run_id, dir.path()).with(&[
                "--epochs",
                "3",
                "--rounds-per-epoch",
                "20",
                "--on-timeout",
                "partial",
                "--round-timeout",
                "3",
                "--evict-after",
                "2",
                "--exchange",
                exchange,
            ])
        })
        .collect();
    let mut children: Vec<Child> = peers.iter().map(Peer::spawn).collect();
    // Kill rank 3 about a third of the way, restart it once the others evicted it.
    peers[3].wait_rounds(20, Duration::from_secs(180));
    children[3].kill().unwrap();
    children[3].wait().unwrap();
    let died_after = peers[3].lines();
    let killed = Instant::now();
    while !peers[0].rounds().iter().any(|m| m.evicted_ranks == [3]) {
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "rank 3 not evicted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    children[3] = peers[3].spawn();
    let hashes = finish(children);
    one(&hashes);

    let rounds: Vec<Vec<RoundMetrics>> = peers.iter().map(Peer::rounds).collect();
    // The survivors stopped waiting for the dead rank and recorded who took part.
    let survivor = &rounds[0];
    assert!(
        survivor.iter().any(|m| m.evicted_ranks == [3]),
        "rank 3 was never evicted"
    );
    let without: Vec<u64> = survivor
        .iter()
        .filter(|m| m.participants == [0, 1, 2])
        .map(|m| m.round)
        .collect();
    assert!(!without.is_empty(), "no round ran without rank 3");
    // Once evicted, rounds return to their normal time (well under the 3 s timeout).
    let evicted_at = survivor
        .iter()
        .position(|m| m.evicted_ranks == [3])
        .unwrap();
    let next = &survivor[evicted_at + 1];
    assert!(
        next.participants == [0, 1, 2] && next.round_time_s < 2.0 || next.participants.len() == 4,
        "{next:?}"
    );

    // The restarted peer started from the survivors' state, not from round 0 or its own
    // checkpoint, and within 3 rounds held the same weights as everybody.
    let rejoined = &rounds[3][died_after..];
    let first = rejoined[0].round;
    assert!(first > died_after as u64, "rejoined at round {first}");
    let by_round = |r: u64| survivor.iter().find(|m| m.round == r).unwrap();
    assert!(
        rejoined[..3]
            .iter()
            .any(|m| m.weights_hash == by_round(m.round).weights_hash),
        "no equal weights within 3 rounds of rejoining at {first}"
    );
    // Sharded, the rejoined rank listens in its first round (it enters the owners' view
    // only once every peer has heard of the join).
    let listening = usize::from(sharded);
    for (i, m) in rejoined.iter().enumerate() {
        assert_eq!(
            m.weights_hash,
            by_round(m.round).weights_hash,
            "round {}",
            m.round
        );
        let expected: &[u32] = if i < listening {
            &[0, 1, 2]
        } else {
            &[0, 1, 2, 3]
        };
        assert_eq!(m.participants, expected, "round {}", m.round);
        assert_eq!(
            by_round(m.round).participants,
            expected,
            "round {}",
            m.round
        );
        assert!(m.skipped_shards.is_empty(), "round {}: {m:?}", m.round);
    }
    // Shard accounting, on every survivor: a shard is skipped exactly in the rounds its
    // owner (rank 3) is missing, as many rounds as it takes to evict it (one more when
    // the eviction is announced), and never again once it moved.
    let waited_rounds = 2 + usize::from(sharded);
    for (rank, rounds) in rounds[..3].iter().enumerate() {
        let mut skipped = 0;
        for m in rounds {
            let expected: &[u32] = if sharded && m.missing_ranks.contains(&3) {
                &[3]
            } else {
                &[]
            };
            assert_eq!(m.skipped_shards, expected, "rank {rank}, round {}", m.round);
            skipped += usize::from(!m.skipped_shards.is_empty());
            assert_eq!(m.rejections.other_view, 0, "rank {rank}, round {}", m.round);
            assert_eq!(m.rejections.misrouted, 0, "rank {rank}, round {}", m.round);
        }
        let missed = rounds.iter().filter(|m| m.missing_ranks == [3]).count();
        assert_eq!(missed, waited_rounds, "rank {rank}");
        assert_eq!(
            skipped,
            if sharded { waited_rounds } else { 0 },
            "rank {rank}"
        );
        assert_eq!(
            rounds.iter().map(|m| &m.weights_hash).collect::<Vec<_>>(),
            survivor.iter().map(|m| &m.weights_hash).collect::<Vec<_>>(),
            "rank {rank}'s weights differ from rank 0's"
        );
    }
    assert_eq!(rejoined.last().unwrap().round, 59);
    let normal: f64 = survivor[2..10].iter().map(|m| m.round_time_s).sum::<f64>() / 8.0;
    let waited: Vec<String> = survivor
        .iter()
        .filter(|m| m.missing_ranks == [3])
        .map(|m| format!("{:.1}", m.round_time_s))
        .collect();
    eprintln!(
        "rejoin ({exchange}): rank 3 killed after {died_after} rounds; survivors waited {waited:?} s \
         (normal round {normal:.2} s), evicted it after round {}, ran {} rounds without it \
         (next round {:.2} s); it rejoined at round {first} with equal weights from its first round",
        survivor[evicted_at].round,
        without.len(),
        next.round_time_s
    );
    // And the run still learned: final loss below the first epoch's.
    let first_epoch: f64 = survivor[..20].iter().map(|m| m.train_loss).sum::<f64>() / 20.0;
    let last = survivor.last().unwrap().train_loss;
    assert!(last < first_epoch, "loss {first_epoch} -> {last}");
}

#[test]
fn a_broker_that_never_comes_back_fails_naming_it_without_the_password() {
    let node = RabbitNode::start().expect("a private RabbitMQ node");
    let url = node.url();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    split_synthetic(&store, 2);
    let run_id = unique("gone");
    let peers: Vec<Peer> = (0..2)
        .map(|r| {
            Peer::new(&url, &store, 2, r, &run_id, dir.path()).with(&[
                "--epochs",
                "50",
                "--rounds-per-epoch",
                "20",
                "--reconnect-timeout",
                "3",
            ])
        })
        .collect();
    let children: Vec<Child> = peers.iter().map(Peer::spawn).collect();
    peers[0].wait_rounds(3, Duration::from_secs(120));
    node.stop_app().unwrap();
    let stopped = Instant::now();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let masked = format!("amqp://guest:***@127.0.0.1:{}", node.port());
        assert!(err.contains(&masked), "{err}");
        assert!(err.contains("reconnect timeout of 3s"), "{err}");
        assert!(!err.contains("guest:guest"), "{err}");
        assert_ne!(out.status.code(), Some(101), "{err}");
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "{:?}",
        stopped.elapsed()
    );
    eprintln!(
        "gone: both peers failed {:.1?} after the broker stopped (--reconnect-timeout 3)",
        stopped.elapsed()
    );
}
