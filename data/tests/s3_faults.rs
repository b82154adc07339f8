//! The S3 store meeting store blips: moto behind a [`FaultProxy`] that answers chosen
//! requests with S3 errors, drops connections or delays them. Transient failures are
//! retried with backoff until they pass; failures that outlast the attempts, and refusals
//! (which are never retried), fail naming the store, the key and the cause.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::test_sdk_config;
use peerless_data::store::S3Store;
use peerless_data::{ObjectStore, S3Options, StoreError};
use peerless_testkit::faults::{Fault, FaultProxy, FaultRule, Method};
use peerless_testkit::moto::MotoServer;

const BUCKET: &str = "blips";

/// A store on `endpoint` with the default attempts and a short first backoff.
async fn store(endpoint: &str, bucket: &str, options: S3Options) -> S3Store {
    let options = S3Options {
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".to_owned()),
        ..options
    };
    S3Store::from_sdk_config(&test_sdk_config().await, bucket, "runs", &options).unwrap()
}

fn quick() -> S3Options {
    S3Options {
        initial_backoff: Duration::from_millis(100),
        ..S3Options::default()
    }
}

/// Requests the proxy saw with `method` on a path containing `key`.
fn seen(proxy: &FaultProxy, method: Method, key: &str) -> usize {
    proxy
        .log()
        .iter()
        .filter(|s| s.method == method && s.path.contains(key))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_they_pass() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket(BUCKET).unwrap();
    let proxy = FaultProxy::start(moto.endpoint()).unwrap();
    let store = store(proxy.endpoint(), BUCKET, quick()).await;
    let direct = store_direct(&moto).await;
    assert_eq!(S3Options::default().max_attempts, 5);

    // Two throttled PUTs (503 SlowDown), then the third attempt lands.
    let put = proxy.fail_next(
        FaultRule::status(503, 2)
            .method(Method::PUT)
            .path_contains("w/weights.bin"),
    );
    let start = Instant::now();
    store
        .put("w/weights.bin", Bytes::from_static(b"weights"))
        .await
        .unwrap();
    eprintln!("put through 2 x 503: {:?}", start.elapsed());
    assert_eq!(put.injected(), 2);
    assert_eq!(seen(&proxy, Method::PUT, "w/weights.bin"), 3);
    assert_eq!(direct.get("w/weights.bin").await.unwrap(), &b"weights"[..]);

    // Two internal errors (500) on a GET, then the object.
    let get = proxy.fail_next(
        FaultRule::status(500, 2)
            .method(Method::GET)
            .path_contains("w/weights.bin"),
    );
    let start = Instant::now();
    assert_eq!(store.get("w/weights.bin").await.unwrap(), &b"weights"[..]);
    eprintln!("get through 2 x 500: {:?}", start.elapsed());
    assert_eq!(get.injected(), 2);
    assert_eq!(seen(&proxy, Method::GET, "w/weights.bin"), 3);

    // Dropped connections on a listing, a throttled delete.
    let list = proxy.fail_next(FaultRule::new(Fault::Disconnect, 2).method(Method::GET));
    assert_eq!(store.list("w/").await.unwrap(), ["w/weights.bin"]);
    assert_eq!(list.injected(), 2);
    let delete = proxy.fail_next(FaultRule::status(503, 1).method(Method::DELETE));
    store.delete("w/weights.bin").await.unwrap();
    assert_eq!(delete.injected(), 1);
    assert!(!direct.exists("w/weights.bin").await.unwrap());

    // A server slower than the attempt timeout: the attempt is abandoned and repeated.
    store
        .put("slow.bin", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let patient = store_with(
        proxy.endpoint(),
        S3Options {
            attempt_timeout: Duration::from_millis(500),
            ..quick()
        },
    )
    .await;
    let slow = proxy.fail_next(
        FaultRule::new(Fault::Delay(Duration::from_secs(3)), 1).path_contains("slow.bin"),
    );
    let start = Instant::now();
    assert_eq!(patient.get("slow.bin").await.unwrap(), &b"x"[..]);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(slow.injected(), 1);
    assert_eq!(seen(&proxy, Method::GET, "slow.bin"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_outlasting_the_attempts_and_refusals_fail_with_the_key_and_cause() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket(BUCKET).unwrap();
    let proxy = FaultProxy::start(moto.endpoint()).unwrap();
    let three = S3Options {
        max_attempts: 3,
        ..quick()
    };
    let store = store(proxy.endpoint(), BUCKET, three.clone()).await;
    store
        .put("g/batch-0001.grad", Bytes::from_static(b"g"))
        .await
        .unwrap();

    // More failures than attempts: exactly `max_attempts` requests, then an error naming
    // the store, the key and the cause.
    let down = proxy.fail_next(
        FaultRule::status(503, 10)
            .method(Method::GET)
            .path_contains("g/batch-0001.grad"),
    );
    let start = Instant::now();
    let err = store.get("g/batch-0001.grad").await.unwrap_err();
    eprintln!("get giving up after 3 x 503: {:?}: {err}", start.elapsed());
    assert_eq!(down.injected(), 3);
    assert_eq!(seen(&proxy, Method::GET, "g/batch-0001.grad"), 3);
    assert!(matches!(err, StoreError::Remote { .. }), "{err}");
    let message = err.to_string();
    for part in [
        "s3://blips/runs",
        "g/batch-0001.grad",
        "SlowDown",
        "transient",
        "3 attempts",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    let put = proxy.fail_next(FaultRule::status(500, 10).method(Method::PUT));
    let message = store
        .put("g/batch-0002.grad", Bytes::from_static(b"g"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("put") && message.contains("g/batch-0002.grad"),
        "{message}"
    );
    assert!(message.contains("InternalError"), "{message}");
    assert_eq!(put.injected(), 3);
    proxy.clear_rules();

    // Refusals are not retried: one request each.
    let denied = proxy.fail_next(
        FaultRule::status(403, 10)
            .method(Method::GET)
            .path_contains("g/batch-0001.grad"),
    );
    let message = store
        .get("g/batch-0001.grad")
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("AccessDenied"), "{message}");
    assert!(!message.contains("transient"), "{message}");
    assert_eq!(denied.injected(), 1);
    proxy.clear_rules();

    let before = proxy.requests();
    let err = store.get("g/missing.grad").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("g/missing.grad"), "{err}");
    assert_eq!(proxy.requests() - before, 1);

    let nowhere = self::store(proxy.endpoint(), "no-such-bucket", three).await;
    let before = proxy.requests();
    let message = nowhere
        .put("k.bin", Bytes::from_static(b"k"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("NoSuchBucket") && message.contains("k.bin"),
        "{message}"
    );
    assert_eq!(proxy.requests() - before, 1);
}

/// A store on `endpoint` in [`BUCKET`] with `options`.
async fn store_with(endpoint: &str, options: S3Options) -> S3Store {
    store(endpoint, BUCKET, options).await
}

/// A store talking to moto directly, to check what really landed.
async fn store_direct(moto: &MotoServer) -> S3Store {
    store(moto.endpoint(), BUCKET, S3Options::default()).await
}
