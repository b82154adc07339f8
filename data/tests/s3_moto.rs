//! The S3 store against a real S3-compatible server: moto's server ([`MotoServer`]), started
//! by the test on a free loopback port and killed when the test ends (also on failure).

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{expected_keys, small_data, snapshot, test_sdk_config};
use peerless_data::manifest::MANIFEST_KEY;
use peerless_data::store::{LocalStore, S3Store};
use peerless_data::{ObjectStore, S3Options, SplitConfig, SplitReader, StoreError, split};
use peerless_testkit::moto::MotoServer;

fn options(endpoint: &str) -> S3Options {
    S3Options {
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".to_owned()),
        ..S3Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_to_moto_matches_local_layout_byte_for_byte() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    let sdk = test_sdk_config().await;
    let store =
        S3Store::from_sdk_config(&sdk, "peerless-test", "runs/one", &options(moto.endpoint()))
            .unwrap();
    store
        .client()
        .create_bucket()
        .bucket("peerless-test")
        .send()
        .await
        .unwrap();
    assert_eq!(store.url(), "s3://peerless-test/runs/one");

    // Store operations.
    assert!(store.list("").await.unwrap().is_empty());
    store
        .put("a/x.bin", Bytes::from_static(b"123"))
        .await
        .unwrap();
    assert!(store.exists("a/x.bin").await.unwrap());
    assert!(!store.exists("a/y.bin").await.unwrap());
    assert_eq!(store.get("a/x.bin").await.unwrap(), &b"123"[..]);
    let err = store.get("a/y.bin").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("a/y.bin"), "{err}");
    store.rename("a/x.bin", "b/x.bin").await.unwrap();
    assert_eq!(store.list("").await.unwrap(), vec!["b/x.bin"]);
    store.delete("b/x.bin").await.unwrap();
    store.delete("b/x.bin").await.unwrap();
    assert!(store.list("").await.unwrap().is_empty());

    // Split to S3 and to a local directory with the same arguments.
    let (train, test) = small_data(300, 30);
    let cfg = SplitConfig {
        batches_per_peer: Some(3),
        input_size: Some(32),
        ..SplitConfig::new(4)
    };
    let m_s3 = split(&train, &test, &cfg, &store).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::new(dir.path()).unwrap();
    let m_local = split(&train, &test, &cfg, &local).await.unwrap();
    assert_eq!(m_s3, m_local);
    assert_eq!(store.list("").await.unwrap(), expected_keys(4, 3));
    let remote = snapshot(&store).await;
    assert_eq!(remote, snapshot(&local).await);

    // Re-run: same bytes.
    split(&train, &test, &cfg, &store).await.unwrap();
    assert_eq!(snapshot(&store).await, remote);

    // Read back through a reader on S3.
    let reader = SplitReader::open(Arc::new(store.clone())).await.unwrap();
    let local_reader = SplitReader::open(Arc::new(local)).await.unwrap();
    for rank in 0..4 {
        assert_eq!(
            reader.train(rank).await.unwrap(),
            local_reader.train(rank).await.unwrap()
        );
        assert_eq!(reader.batch(rank, 2).await.unwrap().len(), 22);
    }
    assert_eq!(reader.test().await.unwrap(), test);

    // A missing bucket: the split fails naming it, nothing is written.
    let missing =
        S3Store::from_sdk_config(&sdk, "no-such-bucket", "", &options(moto.endpoint())).unwrap();
    let err = split(&train, &test, &cfg, &missing).await.unwrap_err();
    assert!(err.to_string().contains("s3://no-such-bucket"), "{err}");
    assert!(store.exists(MANIFEST_KEY).await.unwrap());
}

#[tokio::test]
async fn unreachable_endpoint_fails_in_bounded_time() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let sdk = test_sdk_config().await;
    let opts = S3Options {
        connect_timeout: Duration::from_secs(1),
        attempt_timeout: Duration::from_secs(2),
        operation_timeout: Duration::from_secs(5),
        max_attempts: 2,
        ..options(&format!("http://127.0.0.1:{port}"))
    };
    let store = S3Store::from_sdk_config(&sdk, "some-bucket", "p", &opts).unwrap();
    let start = Instant::now();
    let err = store.get("k.bin").await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    let msg = err.to_string();
    assert!(
        msg.contains("s3://some-bucket/p") && msg.contains("k.bin"),
        "{msg}"
    );
    assert!(matches!(err, StoreError::Remote { .. }), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_control_requests_and_reset() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    assert!(moto.endpoint().starts_with("http://127.0.0.1:"));
    let sdk = test_sdk_config().await;
    let store = S3Store::from_sdk_config(&sdk, "reset-me", "", &options(moto.endpoint())).unwrap();
    let create = || store.client().create_bucket().bucket("reset-me").send();
    create().await.unwrap();
    store.put("k", Bytes::from_static(b"v")).await.unwrap();
    moto.enable_stepfunctions_execution().unwrap();
    moto.queue_lambda_responses("us-east-1", &["{\"ok\":true}".to_owned()])
        .unwrap();

    // Reset drops every resource: the bucket is gone, and can be created again.
    moto.reset().unwrap();
    let err = store.list("").await.unwrap_err();
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
    create().await.unwrap();
    assert!(store.list("").await.unwrap().is_empty());
    assert!(moto.log().contains("/moto-api/reset"), "{}", moto.log());
}
