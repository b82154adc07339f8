//! The sharded exchange (reduce-scatter, then all-gather) over the in-process transport:
//! the same average as all-to-all, the traffic of a ring all-reduce, and no shard lost
//! for good when its owner disappears.

mod common;

use std::time::Duration;

use common::*;
use peerless_comm::average::reference_mean;
use peerless_comm::exchange::shard_range;
use peerless_comm::wire::RunId;
use peerless_comm::{CodecSpec, Exchange, InProcessHub, OnTimeout, RoundError};

fn sharded(c: &mut peerless_comm::RoundConfig) {
    c.exchange = Exchange::Sharded;
    c.max_chunk_bytes = 64 << 10;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_mean_is_the_all_to_all_mean_bit_for_bit() {
    let n = 100_003;
    for world in [1u32, 2, 3, 5] {
        let grads: Vec<Vec<f32>> = (0..world).map(|r| gradient(u64::from(r) + 7, n)).collect();
        let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let expected = reference_mean(&refs);
        let peers = averagers(
            InProcessHub::new(world).into_endpoints(),
            RunId::random(),
            n,
            CodecSpec::None,
            sharded,
        );
        for (rank, (_, result)) in run_round(peers, 0, &grads).await.iter().enumerate() {
            let (out, stats) = result.as_ref().unwrap_or_else(|e| panic!("{rank}: {e}"));
            assert_bits_eq(out, &expected, &format!("{world} peers, rank {rank}"));
            assert_eq!(stats.contributors, world);
            assert_eq!(stats.rejected.total(), 0, "{:?}", stats.rejected);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_per_peer_is_twice_the_gradient_times_n_minus_1_over_n() {
    let n = 250_000; // 1 MB of f32
    let gradient_bytes = 4.0 * n as f64;
    for world in [2u32, 4, 8, 16] {
        let grads: Vec<Vec<f32>> = (0..world).map(|r| gradient(u64::from(r), n)).collect();
        let peers = averagers(
            InProcessHub::new(world).into_endpoints(),
            RunId::random(),
            n,
            CodecSpec::None,
            sharded,
        );
        let ring = 2.0 * gradient_bytes * f64::from(world - 1) / f64::from(world);
        for (rank, (_, result)) in run_round(peers, 0, &grads).await.iter().enumerate() {
            let (_, stats) = result.as_ref().unwrap_or_else(|e| panic!("{rank}: {e}"));
            let (sent, received) = (stats.bytes_sent as f64, stats.bytes_received as f64);
            // Shards to their owners plus this peer's result once to the broker's
            // fan-out: about one gradient, never more than the ring's 2G(N-1)/N.
            assert!(
                sent <= ring * 1.1 && sent >= gradient_bytes * 0.9,
                "{world} peers, rank {rank}: sent {sent}, ring {ring}"
            );
            assert!(
                (received / ring - 1.0).abs() <= 0.1,
                "{world} peers, rank {rank}: received {received}, ring {ring}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_shards_agree_bit_for_bit_and_stay_near_the_true_mean() {
    let n = 50_000;
    let world = 4;
    for codec in [CodecSpec::Qsgd8, CodecSpec::top_k(0.25).unwrap()] {
        let grads: Vec<Vec<f32>> = (0..world).map(|r| gradient(u64::from(r) + 3, n)).collect();
        let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let truth = reference_mean(&refs);
        let peers = averagers(
            InProcessHub::new(world).into_endpoints(),
            RunId::random(),
            n,
            codec,
            sharded,
        );
        let outcomes = run_round(peers, 0, &grads).await;
        let first = &outcomes[0].1.as_ref().unwrap().0;
        for (rank, (_, result)) in outcomes.iter().enumerate() {
            let (out, _) = result.as_ref().unwrap_or_else(|e| panic!("{rank}: {e}"));
            assert_bits_eq(out, first, &format!("{codec}: rank {rank} vs rank 0"));
        }
        if codec == CodecSpec::Qsgd8 {
            // One quantisation level of the parts plus one of the result.
            let max = grads.iter().flatten().fold(0.0f32, |m, g| m.max(g.abs()));
            let worst = first
                .iter()
                .zip(&truth)
                .fold(0.0f32, |m, (a, t)| m.max((a - t).abs()));
            assert!(
                worst <= 2.0 * max / 255.0 * 1.01,
                "{worst} vs level {}",
                max / 255.0
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_owners_shard_is_skipped_until_the_announced_eviction_then_owned_by_the_next_rank()
 {
    let n = 40_000;
    let world = 4;
    // Ranks 0..3 of a run of 4: rank 3 never comes.
    let present = 3;
    let hub = InProcessHub::new(world);
    let transports: Vec<_> = hub.into_endpoints().into_iter().take(present).collect();
    let mut peers = averagers_of_world(
        transports,
        world,
        RunId::random(),
        n,
        CodecSpec::None,
        |c| {
            sharded(c);
            c.on_timeout = OnTimeout::AverageArrived;
            c.timeout = Duration::from_millis(500);
            c.evict_after = 1;
        },
    );
    let grads: Vec<Vec<f32>> = (0..present).map(|r| gradient(r as u64 + 11, n)).collect();
    let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let expected = reference_mean(&refs);
    let lost = shard_range(3, world, n);
    // Rank 0 decides after round 0 (`evict_after` 1) and announces the eviction for
    // round 2: round 1 still waits for rank 3, on every peer alike.
    for round in 0..3 {
        let outcomes = run_round(peers, round, &grads).await;
        let mut next = Vec::new();
        for (rank, (averager, result)) in outcomes.into_iter().enumerate() {
            let (out, stats) = result.unwrap_or_else(|e| panic!("round {round}, {rank}: {e}"));
            if round < 2 {
                assert_eq!(stats.missing, vec![3], "rank {rank}");
                let evicted = if round == 1 { vec![3] } else { vec![] };
                assert_eq!(stats.evicted, evicted, "round {round}, rank {rank}");
                assert_eq!(stats.skipped_shards, vec![3], "round {round}, rank {rank}");
                assert!(out[lost.clone()].iter().all(|&x| x == 0.0), "rank {rank}");
                assert_bits_eq(
                    &out[..lost.start],
                    &expected[..lost.start],
                    &format!("round {round}, rank {rank}"),
                );
            } else {
                // Rank 0 now owns shard 3: the whole gradient is averaged again.
                assert!(stats.missing.is_empty(), "rank {rank}: {:?}", stats.missing);
                assert!(stats.skipped_shards.is_empty(), "rank {rank}");
                assert_eq!(stats.participants, vec![0, 1, 2]);
                assert_bits_eq(&out, &expected, &format!("round 2, rank {rank}"));
            }
            next.push(averager);
        }
        peers = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_codec_state_restores_and_clip_norm_is_refused() {
    let n = 10_000;
    let codec = CodecSpec::top_k(0.1).unwrap();
    let run = RunId::random();
    let peers = averagers(
        InProcessHub::new(2).into_endpoints(),
        run,
        n,
        codec,
        sharded,
    );
    let grads: Vec<Vec<f32>> = (0..2).map(|r| gradient(r + 5, n)).collect();
    let outcomes = run_round(peers, 0, &grads).await;
    let state = outcomes[0].0.codec_state();
    let mut fresh = averagers(
        InProcessHub::new(2).into_endpoints(),
        run,
        n,
        codec,
        sharded,
    );
    assert_ne!(fresh[0].codec_state(), state, "error feedback was kept");
    fresh[0].restore_codec_state(&state).unwrap();
    assert_eq!(fresh[0].codec_state(), state);
    assert!(fresh[1].restore_codec_state(b"PLSSHRD1\x05").is_err());
    assert!(
        fresh[1]
            .restore_codec_state(&state[..state.len() - 1])
            .is_err()
    );

    let mut config = config(run, 0, 2, n);
    config.exchange = Exchange::Sharded;
    config.clip_norm = Some(1.0);
    let err = peerless_comm::Averager::new(
        config,
        codec.build(1),
        InProcessHub::new(2).into_endpoints().remove(0),
    )
    .unwrap_err();
    assert!(
        matches!(&err, RoundError::Config(m) if m.contains("all-to-all")),
        "{err}"
    );
}

/// Peers that count a rank's misses differently still move its shard at the same round.
/// Rank 2 is played by hand: in round 0 it delivers its result and its part to rank 1,
/// but its part to rank 0 carries another membership view, so rank 0 refuses it
/// (`other_view`) and counts rank 2 missing while rank 1 does not; then rank 2 goes
/// silent. Had each peer evicted on its own counts (`evict_after` 1), rank 0 would have
/// owned shard 2 from round 1 while rank 1 still sent it to rank 2: rank 0 waiting for
/// rank 1's part in vain and the two applying different shard-2 updates. With the
/// eviction announced by rank 0 for round 2, both skip shard 2 in round 1 and both move
/// it to rank 0 in round 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_count_misses_differently_move_a_shard_at_the_same_round() {
    use peerless_comm::Transport;
    use peerless_comm::exchange::view_digest;
    use peerless_comm::wire::MessageKind;

    let n = 30_000;
    let world = 3;
    let run = RunId::random();
    let mut endpoints = InProcessHub::new(world).into_endpoints();
    let fake = endpoints.pop().unwrap();
    let mut peers = averagers_of_world(endpoints, world, run, n, CodecSpec::None, |c| {
        sharded(c);
        c.on_timeout = OnTimeout::AverageArrived;
        c.timeout = Duration::from_millis(400);
        c.evict_after = 1;
    });
    let mut fake_config = config(run, 2, world, n);
    fake_config.max_chunk_bytes = 64 << 10;
    let message = |kind: MessageKind, shard: u32, view: u64, values: &[f32]| {
        hand_made(&fake_config, kind, shard, view, values)
    };
    let all = view_digest(world, &[0, 1, 2]);
    let g2 = gradient(99, n);
    let shard = |s: u32| &g2[shard_range(s, world, n)];
    // Round 0 from rank 2: its result for shard 2 (its own values), its part of shard 1
    // to rank 1, and a part of shard 0 to rank 0 under a view nobody has.
    fake.publish(&message(MessageKind::Reduced, 2, all, shard(2)))
        .await
        .unwrap();
    fake.send_to(1, &message(MessageKind::Shard, 1, all, shard(1)))
        .await
        .unwrap();
    fake.send_to(0, &message(MessageKind::Shard, 0, all ^ 1, shard(0)))
        .await
        .unwrap();

    let grads: Vec<Vec<f32>> = (0..2).map(|r| gradient(r + 40, n)).collect();
    let two = reference_mean(&[&grads[0], &grads[1]]);
    let (s0, s1, s2) = (
        shard_range(0, world, n),
        shard_range(1, world, n),
        shard_range(2, world, n),
    );
    for round in 0..3u64 {
        let outcomes = run_round(peers, round, &grads).await;
        let outs: Vec<_> = outcomes
            .iter()
            .map(|(_, r)| r.as_ref().unwrap_or_else(|e| panic!("round {round}: {e}")))
            .collect();
        for (rank, (out, _)) in outs.iter().enumerate() {
            assert_bits_eq(out, &outs[0].0, &format!("round {round}, rank {rank} vs 0"));
        }
        let (out, s) = (&outs[0].0, [&outs[0].1, &outs[1].1]);
        match round {
            0 => {
                assert_eq!(s[0].rejected.other_view, 1, "{:?}", s[0].rejected);
                assert_eq!(s[0].missing, [2], "rank 0 refused rank 2's part");
                assert!(s[1].missing.is_empty(), "rank 1 had all of rank 2's");
                // Shard 0 without rank 2, shard 1 with it, shard 2 as rank 2 sent it.
                assert_bits_eq(&out[s0.clone()], &two[s0.clone()], "shard 0");
                let three =
                    reference_mean(&[&grads[0][s1.clone()], &grads[1][s1.clone()], shard(1)]);
                assert_bits_eq(&out[s1.clone()], &three, "shard 1");
                assert_bits_eq(&out[s2.clone()], shard(2), "shard 2");
                for stats in s {
                    assert!(stats.evicted.is_empty() && stats.skipped_shards.is_empty());
                }
            }
            1 => {
                for stats in s {
                    assert_eq!(stats.missing, [2]);
                    assert_eq!(stats.skipped_shards, [2]);
                    assert_eq!(stats.evicted, [2], "both at the announced round");
                    assert_eq!(stats.rejected.misrouted, 0, "{:?}", stats.rejected);
                }
                assert!(out[s2.clone()].iter().all(|&x| x == 0.0));
                assert_bits_eq(&out[..s2.start], &two[..s2.start], "shards 0 and 1");
            }
            _ => {
                for stats in s {
                    assert!(stats.missing.is_empty() && stats.skipped_shards.is_empty());
                    assert_eq!(stats.participants, [0, 1]);
                    assert_eq!(stats.rejected.total(), 0, "{:?}", stats.rejected);
                }
                assert_bits_eq(out, &two, "rank 0 owns shard 2: nothing lost for good");
            }
        }
        peers = outcomes.into_iter().map(|(a, _)| a).collect();
    }
    drop(fake);
}
