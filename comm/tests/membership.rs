//! Membership over the in-process transport: starting together from a common
//! checkpoint, refusing differently configured peers, evicting a dead rank, and
//! admitting a restarted one with the running peers' state.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{config, gradient, hand_made};
use peerless_comm::average::reference_mean;
use peerless_comm::exchange::shard_range;
use peerless_comm::wire::RunId;
use peerless_comm::{
    Averager, CodecSpec, Exchange, Identity, InProcessHub, InProcessTransport, MessageKind,
    OnTimeout, RoundError, Start, Transport,
};

const N: usize = 1000;

fn identity(seed: &str) -> Identity {
    [("model", "tiny_cnn"), ("seed", seed), ("batch_size", "32")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn averager(
    transport: InProcessTransport,
    run_id: RunId,
    world: u32,
    timeout: Duration,
) -> Averager<InProcessTransport> {
    averager_for(transport, run_id, world, timeout, Exchange::AllToAll)
}

fn averager_for(
    transport: InProcessTransport,
    run_id: RunId,
    world: u32,
    timeout: Duration,
    exchange: Exchange,
) -> Averager<InProcessTransport> {
    let rank = transport.rank();
    let mut c = config(run_id, rank, world, N);
    c.timeout = timeout;
    c.on_timeout = OnTimeout::AverageArrived;
    c.evict_after = 2;
    c.exchange = exchange;
    Averager::new(c, CodecSpec::None.build(0), transport).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_start_together_from_the_newest_common_checkpoint() {
    let run_id = RunId::random();
    let held: [&[u64]; 3] = [&[4, 6], &[2, 4], &[4, 6]];
    let tasks: Vec<_> = InProcessHub::new(3)
        .into_endpoints()
        .into_iter()
        .map(|t| {
            let checkpoints = held[t.rank() as usize].to_vec();
            tokio::spawn(async move {
                let mut a = averager(t, run_id, 3, Duration::from_secs(5));
                a.start(&identity("1"), &checkpoints, Duration::from_secs(10))
                    .await
            })
        })
        .collect();
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Start::Together { round } => assert_eq!(round, 4),
            other => panic!("expected a joint start, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_differently_configured_peer_is_refused_naming_the_field() {
    let run_id = RunId::random();
    let tasks: Vec<_> = InProcessHub::new(2)
        .into_endpoints()
        .into_iter()
        .map(|t| {
            let seed = if t.rank() == 1 { "2" } else { "1" };
            tokio::spawn(async move {
                let mut a = averager(t, run_id, 2, Duration::from_secs(5));
                a.start(&identity(seed), &[], Duration::from_secs(5)).await
            })
        })
        .collect();
    for task in tasks {
        let error = task.await.unwrap().unwrap_err();
        assert!(
            matches!(error, RoundError::IdentityMismatch { .. }),
            "{error}"
        );
        let text = error.to_string();
        assert!(text.contains("seed ("), "{text}");
        assert!(!text.contains("model"), "only differing fields: {text}");
    }
}

/// A sharded peer that is already running sends its round-0 part and result while the
/// other still waits for its last `Hello`: both are kept for round 0, not dropped (which
/// left the other waiting for them until the round timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_messages_that_arrive_while_starting_are_kept_for_their_round() {
    let run_id = RunId::random();
    let [t0, t1]: [InProcessTransport; 2] =
        InProcessHub::new(2).into_endpoints().try_into().unwrap();
    let sharded = |rank: u32| {
        let mut c = config(run_id, rank, 2, N);
        c.exchange = Exchange::Sharded;
        c.timeout = Duration::from_secs(3);
        c.on_timeout = OnTimeout::Fail;
        c
    };
    let (c0, c1) = (sharded(0), sharded(1));
    // Rank 1's round 0, sent before either peer starts: its part of shard 0 (rank 0's) and
    // its result for shard 1 (its own), here simply its own values.
    let g0 = gradient(10, N);
    let g1 = gradient(11, N);
    // Both ranks take part in round 0.
    let view = peerless_comm::exchange::view_digest(2, &[0, 1]);
    let message =
        |kind: MessageKind, shard: u32, values: &[f32]| hand_made(&c1, kind, shard, view, values);
    let (s0, s1) = (shard_range(0, 2, N), shard_range(1, 2, N));
    let mut early = message(MessageKind::Shard, 0, &g1[s0.clone()]);
    early.extend(message(MessageKind::Reduced, 1, &g1[s1.clone()]));
    let early_bytes: u64 = early.iter().map(|m| m.len() as u64).sum();
    t1.send_to(0, &early).await.unwrap();

    let one = tokio::spawn(async move {
        let mut a = Averager::new(c1, CodecSpec::None.build(0), t1).unwrap();
        a.start(&identity("1"), &[], Duration::from_secs(10))
            .await
            .unwrap();
        // Rank 1 sends nothing more: rank 0's round 0 has only what came early.
        a
    });
    let mut a0 = Averager::new(c0, CodecSpec::None.build(0), t0).unwrap();
    a0.start(&identity("1"), &[], Duration::from_secs(10))
        .await
        .unwrap();
    let mut out = vec![0.0; N];
    let stats = a0.average(0, &g0, &mut out).await.unwrap();
    assert_eq!(stats.contributors, 2);
    // What came while starting is counted in the round's received bytes, once.
    assert_eq!(
        (stats.messages_received, stats.bytes_received),
        (early.len() as u64, early_bytes)
    );
    let mean = reference_mean(&[&g0[s0.clone()], &g1[s0.clone()]]);
    assert_eq!(&out[s0], mean.as_slice());
    assert_eq!(&out[s1.clone()], &g1[s1]);
    drop(one.await.unwrap());
}

/// Runs `round` on every averager with rank-seeded gradients; returns each one's average.
async fn round_all(
    averagers: &mut [Averager<InProcessTransport>],
    round: u64,
) -> Vec<(Vec<f32>, peerless_comm::RoundStats)> {
    let futures = averagers.iter_mut().map(|a| async move {
        let g = gradient(round * 10 + u64::from(a.config().rank), N);
        let mut out = vec![0.0; N];
        let stats = a.average(round, &g, &mut out).await.unwrap();
        (out, stats)
    });
    futures::future::join_all(futures).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_rank_is_evicted_and_a_restarted_one_rejoins_with_the_state() {
    dead_rank_is_evicted_and_rejoins(Exchange::AllToAll).await;
}

/// The same with shard owners: a dead owner's shard is skipped until the announced
/// eviction moves it, and the join reproduces the mid-round race deterministically: the
/// answering rank 0 admits rank 2 between rounds, and rank 1 starts the next round
/// before it reads the `Join` (it only reads its queue inside a round). Owners taken
/// from each peer's own membership left rank 1 sending rank 2's shard to rank 0 while
/// rank 0 and rank 2 waited for it elsewhere; with the agreed view all three average the
/// same shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sharded_dead_owner_is_evicted_and_a_restarted_one_rejoins_with_agreed_owners() {
    dead_rank_is_evicted_and_rejoins(Exchange::Sharded).await;
}

async fn dead_rank_is_evicted_and_rejoins(exchange: Exchange) {
    let sharded = exchange == Exchange::Sharded;
    // An announced eviction takes effect a round later than a local decision, and a
    // rejoined rank listens for a round before it owns a shard.
    let lag = u64::from(sharded);
    let run_id = RunId::random();
    let timeout = Duration::from_millis(400);
    let mut endpoints = InProcessHub::new(3).into_endpoints();
    let rank2 = endpoints.pop().unwrap();
    let mut all: Vec<_> = endpoints
        .into_iter()
        .map(|t| averager_for(t, run_id, 3, timeout, exchange))
        .collect();
    all.push(averager_for(rank2, run_id, 3, timeout, exchange));

    // All three start, then rank 2 dies after round 0 (its queue stays, as on a broker).
    let id = identity("1");
    let starts = futures::future::join_all(
        all.iter_mut()
            .map(|a| a.start(&id, &[], Duration::from_secs(5))),
    )
    .await;
    assert!(
        starts
            .iter()
            .all(|s| matches!(s, Ok(Start::Together { round: 0 })))
    );
    let outs = round_all(&mut all, 0).await;
    assert!(outs.iter().all(|(_, s)| s.participants == [0, 1, 2]));
    let third = all.pop().unwrap();
    let mut running = all;

    // Rounds 1 and 2 (and 3, sharded) wait for the dead rank until the deadline, then
    // evict it.
    let evicted_after = 2 + lag;
    for round in 1..=evicted_after {
        let started = Instant::now();
        let outs = round_all(&mut running, round).await;
        assert!(started.elapsed() >= timeout);
        for (out, s) in &outs {
            assert_eq!(s.participants, [0, 1]);
            assert_eq!(s.missing, [2]);
            let last = round == evicted_after;
            assert_eq!(s.evicted, if last { vec![2] } else { vec![] });
            // Shard 2's owner is dead: its part of the average is skipped, on both.
            assert_eq!(s.skipped_shards, if sharded { vec![2] } else { vec![] });
            assert_eq!(out, &outs[0].0, "round {round}");
        }
    }
    // The next round no longer waits, and shard 2 has an owner again.
    let started = Instant::now();
    let outs = round_all(&mut running, evicted_after + 1).await;
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    for (out, s) in &outs {
        assert!(s.missing.is_empty() && s.participants == [0, 1], "{s:?}");
        assert!(s.skipped_shards.is_empty(), "{s:?}");
        assert_eq!(s.rejected.total(), 0, "{:?}", s.rejected);
        assert_eq!(out, &outs[0].0);
    }
    let g = |rank: u64| gradient((evicted_after + 1) * 10 + rank, N);
    let (g0, g1) = (g(0), g(1));
    assert_eq!(
        outs[0].0,
        reference_mean(&[&g0, &g1]),
        "nothing lost for good"
    );

    // Rank 2 restarts: a new process (new incarnation) on the same queue, which still
    // holds the rounds it missed.
    let transport = third.into_transport();
    let mut restarted = averager_for(transport, run_id, 3, timeout, exchange);
    let joiner = tokio::spawn(async move {
        let start = restarted
            .start(&identity("1"), &[], Duration::from_secs(10))
            .await
            .unwrap();
        (restarted, start)
    });
    let mut round = evicted_after + 2;
    let joined_at = loop {
        round_all(&mut running, round).await;
        round += 1;
        let mut admitted = None;
        for a in running.iter_mut() {
            for request in a.join_requests(&identity("1")).await.unwrap() {
                assert_eq!(a.config().rank, 0, "only the lowest rank answers");
                let state = format!("state for round {round}");
                a.admit(&request, round, state.as_bytes()).await.unwrap();
                admitted = Some(round);
            }
        }
        if let Some(r) = admitted {
            break r;
        }
        assert!(round < 40, "the restarted peer was never admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (restarted, start) = joiner.await.unwrap();
    match start {
        Start::Rejoin { round, state, from } => {
            assert_eq!(round, joined_at);
            assert_eq!(from, 0);
            assert_eq!(state, Bytes::from(format!("state for round {joined_at}")));
        }
        other => panic!("expected a rejoin, got {other:?}"),
    }
    running.push(restarted);
    for round in joined_at..joined_at + 3 {
        let started = Instant::now();
        let outs = round_all(&mut running, round).await;
        // Sharded, the rejoined rank listens in its first round: rank 1 began it not
        // knowing of the join, and nobody waited for anyone.
        let listening = sharded && round == joined_at;
        assert!(started.elapsed() < timeout, "round {round} waited");
        for (out, s) in &outs {
            let expected: &[u32] = if listening { &[0, 1] } else { &[0, 1, 2] };
            assert_eq!(s.participants, expected, "round {round}");
            assert!(s.missing.is_empty(), "round {round}: {s:?}");
            assert!(s.skipped_shards.is_empty(), "round {round}: {s:?}");
            // (The restarted rank drops what its predecessor's queue held: stale rounds.)
            let r = &s.rejected;
            assert_eq!(
                r.misrouted + r.not_member + r.other_view,
                0,
                "round {round}: {r:?}"
            );
            assert_eq!(
                out, &outs[0].0,
                "every peer averages the same contributions"
            );
        }
        let g = |rank: u64| gradient(round * 10 + rank, N);
        let (g0, g1, g2) = (g(0), g(1), g(2));
        let mean = if listening {
            reference_mean(&[&g0, &g1])
        } else {
            reference_mean(&[&g0, &g1, &g2])
        };
        assert_eq!(outs[0].0, mean, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_finite_gradients_are_withheld_or_rejected() {
    let run_id = RunId::random();
    let timeout = Duration::from_millis(300);
    let mut peers: Vec<_> = InProcessHub::new(3)
        .into_endpoints()
        .into_iter()
        .map(|t| averager(t, run_id, 3, timeout))
        .collect();
    // Rank 1 checks its own gradient and withholds it; rank 2 (an attacker that skips
    // the check) sends NaN, which the others reject after decoding.
    let mut bad = peerless_comm::RoundConfig::clone(peers[2].config());
    bad.check_own = false;
    let transport = peers.pop().unwrap().into_transport();
    peers.push(Averager::new(bad, CodecSpec::None.build(0), transport).unwrap());
    let futures = peers.iter_mut().map(|a| async move {
        let rank = a.config().rank;
        let mut g = gradient(u64::from(rank), N);
        if rank > 0 {
            g[7] = f32::NAN;
        }
        let mut out = vec![0.0; N];
        let stats = a.average(0, &g, &mut out).await.unwrap();
        (out, stats)
    });
    let outs = futures::future::join_all(futures).await;
    let (out0, s0) = &outs[0];
    assert!(
        s0.rejected.malformed >= 1,
        "rank 2's NaN gradient: {:?}",
        s0.rejected
    );
    assert_eq!(s0.participants, [0]);
    assert!(out0.iter().all(|v| v.is_finite()));
    assert!(outs[1].1.withheld && !outs[0].1.withheld);
    assert_eq!(
        outs[1].1.participants,
        [0],
        "rank 1 averages the others' only"
    );
    assert_eq!(outs[1].0, *out0);
}
