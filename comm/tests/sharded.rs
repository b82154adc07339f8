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
async fn a_missing_owners_shard_is_skipped_once_then_owned_by_the_next_rank() {
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
    for round in 0..2 {
        let outcomes = run_round(peers, round, &grads).await;
        let mut next = Vec::new();
        for (rank, (averager, result)) in outcomes.into_iter().enumerate() {
            let (out, stats) = result.unwrap_or_else(|e| panic!("round {round}, {rank}: {e}"));
            if round == 0 {
                assert_eq!(stats.missing, vec![3], "rank {rank}");
                assert_eq!(stats.evicted, vec![3], "rank {rank}");
                assert!(out[lost.clone()].iter().all(|&x| x == 0.0), "rank {rank}");
                assert_bits_eq(
                    &out[..lost.start],
                    &expected[..lost.start],
                    &format!("round 0, rank {rank}"),
                );
            } else {
                // Rank 0 now owns shard 3: the whole gradient is averaged again.
                assert!(stats.missing.is_empty(), "rank {rank}: {:?}", stats.missing);
                assert_eq!(stats.participants, vec![0, 1, 2]);
                assert_bits_eq(&out, &expected, &format!("round 1, rank {rank}"));
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
