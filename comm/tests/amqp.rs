//! The averaging round through the real RabbitMQ broker.
//!
//! The broker URL is `PEERLESS_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Every test uses its own run id,
//! so the tests run in parallel, and deletes its queues and exchange at the end.

mod common;

use std::time::{Duration, Instant};

use common::*;
use peerless_comm::wire::RunId;
use peerless_comm::{AmqpConfig, AmqpTransport, CodecSpec, TransportError};

fn broker_url() -> String {
    std::env::var("PEERLESS_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

async fn connect_all(run_id: RunId, world: u32) -> Vec<AmqpTransport> {
    let mut transports = Vec::new();
    for rank in 0..world {
        let round = config(run_id, rank, world, 1);
        let config = AmqpConfig::for_round(broker_url(), &round);
        assert_eq!(
            (config.run_id, config.rank, config.world_size),
            (run_id, rank, world)
        );
        let transport = AmqpTransport::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("is RabbitMQ running? {e}"));
        transports.push(transport);
    }
    transports
}

async fn cleanup(transports: Vec<AmqpTransport>) {
    transports[0]
        .delete_run()
        .await
        .expect("delete the run's queues");
    for t in transports {
        t.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_get_the_exact_mean() {
    let run = RunId::random();
    let t = exact_mean(
        connect_all(run, 3).await,
        run,
        10_000,
        CodecSpec::None,
        1 << 20,
    )
    .await;
    cleanup(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qsgd8_peers_agree_bit_for_bit() {
    let run = RunId::random();
    let t = exact_mean(
        connect_all(run, 3).await,
        run,
        10_000,
        CodecSpec::Qsgd8,
        1 << 20,
    )
    .await;
    cleanup(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topk_peers_agree_bit_for_bit() {
    let run = RunId::random();
    let codec = CodecSpec::top_k(0.01).unwrap();
    let t = exact_mean(connect_all(run, 3).await, run, 10_000, codec, 1 << 20).await;
    cleanup(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_chunk_gradient_crosses_the_broker_intact() {
    // 3M elements = 12 MB per peer, in 1 MiB chunks: 12 messages each.
    let run = RunId::random();
    let t = exact_mean(
        connect_all(run, 3).await,
        run,
        3_000_000,
        CodecSpec::None,
        1 << 20,
    )
    .await;
    cleanup(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_rank_times_out_or_is_left_out() {
    let run = RunId::random();
    let t = silent_rank(connect_all(run, 3).await, run, Duration::from_secs(1)).await;
    cleanup(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_learn_each_others_compute_time() {
    let run = RunId::random();
    let t = compute_times(connect_all(run, 3).await, run, Duration::from_secs(1)).await;
    cleanup(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_foreign_corrupt_and_future_messages() {
    let run = RunId::random();
    let t = hostile_messages(connect_all(run, 3).await, run).await;
    cleanup(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_peers_are_refused() {
    let run = RunId::random();
    let t = mismatches(connect_all(run, 3).await, run).await;
    cleanup(t).await;
}

#[tokio::test]
async fn unreachable_broker_fails_in_bounded_time_without_the_password() {
    let mut config = AmqpConfig::new("amqp://u:secret@127.0.0.1:1/", RunId::random(), 0, 2);
    config.connect_timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let err = AmqpTransport::connect(&config).await.unwrap_err();
    let elapsed = started.elapsed();
    let msg = err.to_string();
    assert!(
        elapsed >= Duration::from_millis(1400),
        "gave up early, after {elapsed:?}: {msg}"
    );
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
    assert!(!msg.contains("secret"), "{msg}");
    assert!(!format!("{err:?}").contains("secret"));
    assert!(msg.contains("amqp://u:***@127.0.0.1:1/"), "{msg}");
    assert!(
        msg.to_lowercase().contains("refused"),
        "the cause is missing: {msg}"
    );
}

#[tokio::test]
async fn wrong_password_is_refused_at_once_without_the_password() {
    let url = broker_url().replacen("guest:guest", "guest:not-the-password", 1);
    let mut config = AmqpConfig::new(url, RunId::random(), 0, 2);
    config.connect_timeout = Duration::from_secs(20);
    let started = Instant::now();
    let err = AmqpTransport::connect(&config).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "authentication failures must not be retried"
    );
    assert!(!msg.contains("not-the-password"), "{msg}");
    assert!(msg.contains("guest:***@"), "{msg}");
}

#[tokio::test]
async fn tls_url_speaks_tls() {
    // The plain-text port does not answer a TLS handshake: the TLS code path
    // runs (no missing crypto provider) and fails within the bound.
    let url = broker_url().replacen("amqp://", "amqps://", 1);
    let mut config = AmqpConfig::new(url, RunId::random(), 0, 2);
    config.connect_timeout = Duration::from_secs(3);
    let started = Instant::now();
    let err = AmqpTransport::connect(&config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6));
    let msg = err.to_string();
    assert!(msg.contains("amqps://guest:***@"), "{msg}");
}

#[tokio::test]
async fn invalid_rank_is_refused() {
    let config = AmqpConfig::new(broker_url(), RunId::random(), 3, 3);
    let err = AmqpTransport::connect(&config).await.unwrap_err();
    assert!(
        err.to_string().contains("rank 3 is not below world size 3"),
        "{err}"
    );
}
