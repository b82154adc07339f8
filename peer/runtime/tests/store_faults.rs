//! Store blips around offloaded rounds, against real components: peers offload every batch
//! to the in-process function pool through moto's S3, behind a [`FaultProxy`] that fails
//! chosen requests. Blips are retried; failures that outlast the retries fall back to the
//! peer with `--on-function-failure local` (same weights as a run without faults) or fail
//! the round with a clear error; either way the round's exchange objects are deleted.

use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

use peerless_data::{DatasetKind, S3Options, StoreOptions, open_store};
use peerless_models::Device;
use peerless_runtime::metrics::RoundMetrics;
use peerless_runtime::{
    Capability, ExchangeConfig, LocalRunConfig, OffloadPolicy, OnFunctionFailure, ServerlessConfig,
    ServerlessMode, SplitSource, TrainingConfig, run_local,
};
use peerless_testkit::faults::{FaultProxy, FaultRule, Method};
use peerless_testkit::moto::MotoServer;

const BUCKET: &str = "peerless-faults";

/// Attempts per store request in these runs (the proxy's counts are multiples of it).
const ATTEMPTS: u32 = 3;

/// Credentials for moto: the peers and the function pool open the store through the SDK's
/// default chain, which reads the environment.
fn set_test_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: this file's only test calls this first, before it starts any thread or
        // runtime, and nothing else in the process changes the environment.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_REGION", "us-east-1");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
}

/// `peers` peers on synthetic data, one epoch of two rounds, four batch objects per peer,
/// every batch offloaded to two pool functions; the store is `s3://BUCKET/<store>` behind
/// the proxy, with quick retries.
fn run(dir: &Path, proxy: &FaultProxy, store: &str, name: &str, peers: u32) -> LocalRunConfig {
    LocalRunConfig {
        peers,
        run_id: Some(name.to_owned()),
        metrics_dir: dir.join(name),
        split: SplitSource {
            dataset: DatasetKind::Synthetic,
            batches: Some(4),
            limit: Some(400),
            ..SplitSource::default()
        },
        resize: None,
        training: TrainingConfig {
            lr: 0.05,
            epochs: 1,
            ..TrainingConfig::default()
        },
        exchange: ExchangeConfig {
            store: format!("s3://{BUCKET}/{store}"),
            store_options: StoreOptions {
                s3: S3Options {
                    endpoint_url: Some(proxy.endpoint().to_owned()),
                    region: Some("us-east-1".to_owned()),
                    max_attempts: ATTEMPTS,
                    initial_backoff: Duration::from_millis(20),
                    ..S3Options::default()
                },
            },
            rounds_per_epoch: 2,
            round_timeout: Duration::from_secs(120),
            serverless: ServerlessConfig {
                mode: ServerlessMode::Local,
                offload: Some(OffloadPolicy::Fixed(1.0)),
                concurrency: Some(2),
                on_failure: OnFunctionFailure::Local,
                ..ServerlessConfig::default()
            },
            ..ExchangeConfig::default()
        },
        capabilities: vec![Capability {
            speed: 1.0,
            threads: Some(1),
        }],
        attacks: Vec::new(),
    }
}

fn hashes(rounds: &[RoundMetrics]) -> Vec<&str> {
    rounds.iter().map(|m| m.weights_hash.as_str()).collect()
}

/// The exchange objects left under `s3://BUCKET/<store>`, read from moto directly.
fn leftovers(moto: &MotoServer, store: &str) -> Vec<String> {
    let options = StoreOptions {
        s3: S3Options {
            endpoint_url: Some(moto.endpoint().to_owned()),
            region: Some("us-east-1".to_owned()),
            ..S3Options::default()
        },
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open_store(&format!("s3://{BUCKET}/{store}"), &options)
            .await
            .unwrap();
        // The split is still there: the listing works and is not vacuous.
        assert!(!store.list("peer-0/").await.unwrap().is_empty());
        store.list("exchange/").await.unwrap()
    })
}

#[test]
fn store_failures_of_offloaded_batches_are_retried_fall_back_and_leave_nothing_behind() {
    set_test_credentials();
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket(BUCKET).unwrap_or_else(|e| panic!("{e}"));
    let proxy = FaultProxy::start(moto.endpoint()).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();

    // Without faults (this run also writes the split).
    let clean = run_local(&run(dir.path(), &proxy, "two", "clean", 2), &device)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", moto.log()));
    assert_eq!(proxy.injected(), 0);
    assert!(clean.iter().all(|s| s.rounds.len() == 2));
    assert_eq!(leftovers(&moto, "two"), Vec::<String>::new());

    // Rank 0's weights upload of round 0 and rank 1's gradient reads of round 1 fail for
    // good; rank 1's gradient reads of round 0 meet two blips that retries ride out.
    let upload = proxy.fail_next(
        FaultRule::status(503, 1000)
            .method(Method::PUT)
            .path_contains("/round-000000/rank-000/weights.bin"),
    );
    let fetch = proxy.fail_next(
        FaultRule::status(500, 1000)
            .method(Method::GET)
            .path_contains("/round-000001/rank-001/batch-"),
    );
    let blips = proxy.fail_next(
        FaultRule::status(503, 2)
            .method(Method::GET)
            .path_contains("/round-000000/rank-001/batch-"),
    );
    let start = Instant::now();
    let faulty = run_local(&run(dir.path(), &proxy, "two", "blips", 2), &device)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("run with store faults: {:?}", start.elapsed());
    assert_eq!(upload.injected(), ATTEMPTS as usize);
    assert_eq!(fetch.injected(), 2 * ATTEMPTS as usize, "two batches");
    assert_eq!(blips.injected(), 2);
    for (s, reference) in faulty.iter().zip(&clean) {
        assert_eq!(
            hashes(&s.rounds),
            hashes(&reference.rounds),
            "rank {}",
            s.rank
        );
    }
    // Where batches ran, as the metrics record it: (rank, round) -> (fallbacks, calls).
    let placed: Vec<(u32, u64, usize, usize)> = faulty
        .iter()
        .flat_map(|s| &s.rounds)
        .map(|m| {
            assert_eq!(m.offloaded_batches, 2);
            (m.rank, m.round, m.fallback_batches, m.invocations.len())
        })
        .collect();
    assert_eq!(
        placed,
        [
            (0, 0, 2, 0), // the upload failed: no function ran
            (0, 1, 0, 2),
            (1, 0, 0, 2), // blips retried
            (1, 1, 2, 2), // the functions ran, their gradients were out of reach
        ]
    );
    let failed = |rank: usize, round: usize| faulty[rank].rounds[round].failed_attempts;
    assert!(failed(0, 0) >= 1 && failed(1, 1) >= 2, "{faulty:?}");
    assert_eq!((failed(0, 1), failed(1, 0)), (0, 0));
    assert_eq!(leftovers(&moto, "two"), Vec::<String>::new());

    // With `--on-function-failure fail`, an unreadable gradient fails the run, naming the
    // object and the cause, and the round's objects are still deleted.
    proxy.clear_rules();
    let solo_fetch = proxy.fail_next(
        FaultRule::status(500, 1000)
            .method(Method::GET)
            .path_contains("/round-000000/rank-000/batch-"),
    );
    let mut fail = run(dir.path(), &proxy, "one", "fails", 1);
    fail.exchange.serverless.on_failure = OnFunctionFailure::Fail;
    let err = format!("{:#}", run_local(&fail, &device).unwrap_err());
    for part in [
        "round 0",
        "round-000000/rank-000/batch-",
        ".grad",
        "InternalError",
        "--on-function-failure local",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(solo_fetch.injected() >= ATTEMPTS as usize);
    let deleted = proxy
        .log()
        .iter()
        .filter(|s| s.method == Method::DELETE && s.path.contains("/one/exchange/"))
        .count();
    assert_eq!(deleted, 3, "two gradients and the weights");
    assert_eq!(leftovers(&moto, "one"), Vec::<String>::new());
}
