//! The averaging round over the in-process transport.

mod common;

use std::time::Duration;

use common::*;
use peerless_comm::wire::RunId;
use peerless_comm::{Averager, CodecSpec, InProcessHub, InProcessTransport, RoundError};

fn endpoints(world: u32) -> Vec<InProcessTransport> {
    InProcessHub::new(world).into_endpoints()
}

fn assert_all_acked(transports: &[InProcessTransport]) {
    for t in transports {
        assert_eq!(
            t.unacked(),
            0,
            "rank {} left deliveries unacknowledged",
            t.rank()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_get_the_exact_mean() {
    let t = exact_mean(
        endpoints(3),
        RunId::random(),
        10_000,
        CodecSpec::None,
        1 << 20,
    )
    .await;
    assert_all_acked(&t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qsgd8_peers_agree_bit_for_bit() {
    exact_mean(
        endpoints(3),
        RunId::random(),
        10_000,
        CodecSpec::Qsgd8,
        1 << 20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topk_peers_agree_bit_for_bit() {
    exact_mean(
        endpoints(3),
        RunId::random(),
        10_000,
        CodecSpec::top_k(0.01).unwrap(),
        1 << 20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_chunk_gradients_reassemble() {
    // 300k elements = 1.2 MB in chunks of 64 KiB: 19 chunks per peer.
    let t = exact_mean(
        endpoints(4),
        RunId::random(),
        300_000,
        CodecSpec::None,
        64 << 10,
    )
    .await;
    assert_all_acked(&t);
    exact_mean(
        endpoints(3),
        RunId::random(),
        300_000,
        CodecSpec::Qsgd8,
        40_000,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_rank_times_out_or_is_left_out() {
    silent_rank(endpoints(3), RunId::random(), Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_learn_each_others_compute_time() {
    let t = compute_times(endpoints(3), RunId::random(), Duration::from_millis(300)).await;
    assert_all_acked(&t[..2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_foreign_corrupt_and_future_messages() {
    let t = hostile_messages(endpoints(3), RunId::random()).await;
    assert_all_acked(&t[..2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_peers_are_refused() {
    mismatches(endpoints(3), RunId::random()).await;
}

#[tokio::test]
async fn single_peer_averages_alone() {
    let n = 1000;
    let mut averager = Averager::new(
        config(RunId::random(), 0, 1, n),
        CodecSpec::None.build(0),
        endpoints(1).pop().unwrap(),
    )
    .unwrap();
    let grad = gradient(3, n);
    let mut out = vec![0.0; n];
    let stats = averager.average(0, &grad, &mut out).await.unwrap();
    assert_eq!(out, grad);
    assert_eq!(stats.contributors, 1);
}

#[tokio::test]
async fn wrong_buffer_lengths_and_config_are_refused() {
    let n = 10;
    let run = RunId::random();
    let mut averager = Averager::new(
        config(run, 0, 2, n),
        CodecSpec::None.build(0),
        endpoints(2).remove(0),
    )
    .unwrap();
    let err = averager
        .average(0, &[0.0; 9], &mut [0.0; 10])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RoundError::LocalLength {
                expected: 10,
                got: 9,
                ..
            }
        ),
        "{err}"
    );
    let err = averager
        .average(0, &[0.0; 10], &mut [0.0; 11])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RoundError::LocalLength {
                expected: 10,
                got: 11,
                ..
            }
        ),
        "{err}"
    );
    let bad = Averager::new(
        config(run, 2, 2, n),
        CodecSpec::None.build(0),
        endpoints(2).remove(0),
    );
    assert!(matches!(bad, Err(RoundError::Config(_))));
    let mut zero_chunk = config(run, 0, 2, n);
    zero_chunk.max_chunk_bytes = 0;
    assert!(Averager::new(zero_chunk, CodecSpec::None.build(0), endpoints(2).remove(0)).is_err());
}
