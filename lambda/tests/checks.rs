//! What a function refuses (issue 16, item 6): `compute_gradient` events naming a store
//! other than the one the function is deployed for, `process_input` requests beyond its
//! limits (refused before allocating), and gradient objects that are not finite.

mod common;

use common::fixture;
use peerless_comm::CodecSpec;
use peerless_comm::wire::Header;
use peerless_lambda::gradient::{self, ExpectedGradient, GradientError};
use peerless_lambda::process_input::{MAX_BATCH_COUNT, expand};
use peerless_lambda::{
    AllowedStore, ComputeGradient, ComputeGradientError, ProcessInputError, ProcessInputRequest,
    StoreLocation,
};

#[tokio::test]
async fn compute_gradient_only_serves_the_store_it_is_deployed_for() {
    let f = fixture().await;
    f.put("w.bin", f.weights_blob(1)).await;
    let allowed = AllowedStore::new(f.location.url.clone(), None);
    let mut handler = ComputeGradient::new().with_allowed_store(Some(allowed));

    // Its own store works.
    let event = f.event(0, 0, 0, "w.bin");
    handler.handle(&event).await.unwrap();

    // Another folder, a sibling with the same prefix, an escape with `..`, another
    // endpoint: refused before anything is read or written.
    let other = tempfile::tempdir().unwrap();
    let own = f.location.url.trim_end_matches('/').to_owned();
    for (url, endpoint) in [
        (format!("file://{}", other.path().display()), None),
        (format!("{own}-sibling"), None),
        (format!("{own}/../elsewhere"), None),
        ("s3://someone-elses-bucket/data".to_owned(), None),
        (own.clone(), Some("http://127.0.0.1:1".to_owned())),
    ] {
        let mut event = f.event(0, 0, 1, "w.bin");
        event.context.store = StoreLocation {
            url: url.clone(),
            endpoint_url: endpoint,
            region: None,
        };
        let err = handler.handle(&event).await.unwrap_err();
        assert!(
            matches!(err, ComputeGradientError::ForbiddenStore(_)),
            "{url}: {err}"
        );
        assert_eq!(err.error_type(), "ForbiddenStore");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("PEERLESS_ALLOWED_"), "{err}");
    }
    assert!(
        std::fs::read_dir(other.path()).unwrap().next().is_none(),
        "a refused event wrote into another store"
    );

    // Unrestricted (the variable unset): any store, as before.
    let mut open = ComputeGradient::new().with_allowed_store(None);
    open.handle(&f.event(0, 1, 0, "w.bin")).await.unwrap();
}

#[tokio::test]
async fn process_input_refuses_huge_counts_before_allocating() {
    let f = fixture().await;
    let request = |first_batch: u32, batch_count: u32| ProcessInputRequest {
        context: f.context(0, 0, "w.bin"),
        batch_count,
        first_batch,
        seed: 1,
        batch_prefix: String::new(),
        gradient_prefix: "g".into(),
    };
    let start = std::time::Instant::now();
    for (first, count) in [
        (0, u32::MAX),
        (0, MAX_BATCH_COUNT + 1),
        (MAX_BATCH_COUNT, 1),
        (u32::MAX - 1, 1),
    ] {
        let err = expand(&request(first, count)).unwrap_err();
        assert!(
            matches!(err, ProcessInputError::InvalidRequest(_)),
            "{first}+{count}: {err:?}"
        );
        assert!(err.to_string().contains("limit"), "{err}");
    }
    // Within the count limit but far beyond a Step Functions state: refused from the size
    // of one event, without building the others.
    match expand(&request(0, MAX_BATCH_COUNT)).unwrap_err() {
        ProcessInputError::TooLarge { batches, .. } => assert_eq!(batches, MAX_BATCH_COUNT),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(1),
        "refusing took {:?}",
        start.elapsed()
    );
    // What fits still expands.
    assert_eq!(expand(&request(3, 5)).unwrap().events.len(), 5);
}

#[test]
fn gradients_that_are_not_finite_are_refused() {
    let run_id = peerless_comm::RunId::from_name("checks");
    let expected = ExpectedGradient {
        run_id,
        round: 2,
        model_fingerprint: 7,
        element_count: 4,
    };
    let header = Header::gradient(run_id, 2, 0, 1, 7, CodecSpec::None, 4);
    let good = gradient::encode(&header, &[1.0, -2.0, 0.5, 0.0]).unwrap();
    assert_eq!(
        gradient::decode(&good, &expected).unwrap(),
        [1.0, -2.0, 0.5, 0.0]
    );
    // Added in place, weighted, as the peer sums its batches.
    let mut acc = [0.5f32, 0.25, -1.0, 2.0];
    gradient::accumulate(&good, &expected, &mut acc, 3.0).unwrap();
    assert_eq!(acc, [0.5 + 3.0, 0.25 - 6.0, -1.0 + 1.5, 2.0]);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let message = gradient::encode(&header, &[1.0, bad, 0.5, 0.0]).unwrap();
        // Refused before anything is added.
        let mut acc = [1.0f32; 4];
        assert!(gradient::accumulate(&message, &expected, &mut acc, 2.0).is_err());
        assert_eq!(acc, [1.0; 4]);
        // The codec refuses it, or else the check after decoding: either way, named.
        match gradient::decode(&message, &expected) {
            Err(e @ (GradientError::NotFinite { index: 1, .. } | GradientError::Codec(_))) => {
                let text = e.to_string();
                let names_it = text.contains("index 1") || text.contains("value 1 ");
                assert!(text.contains("not finite") && names_it, "{text}");
            }
            other => panic!("{bad}: expected a refusal, got {other:?}"),
        }
    }
    // Another model's gradient (fingerprint) is refused too.
    let other = Header::gradient(run_id, 2, 0, 1, 8, CodecSpec::None, 4);
    let message = gradient::encode(&other, &[0.0; 4]).unwrap();
    assert!(matches!(
        gradient::decode(&message, &expected),
        Err(GradientError::Mismatch(_))
    ));
}
