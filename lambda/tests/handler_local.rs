//! The `compute_gradient` handler in-process on a local-directory store: the gradient it
//! writes equals `Model::grad_step` on the same weights and batch, warm invocations reuse
//! the weights, a new round re-reads them, and failures name what is wrong.

mod common;

use common::{BATCHES, fixture, max_abs_diff};
use lambda_runtime::Diagnostic;
use peerless_lambda::{ComputeGradient, ComputeGradientError};
use peerless_models::ModelSpec;

const TOLERANCE: f32 = 1e-6;

#[tokio::test]
async fn gradient_equals_direct_grad_step_and_weights_are_cached_per_round() {
    let f = fixture().await;
    let round1 = f.weights_blob(7);
    f.put("runs/w/weights.bin", round1.clone()).await;
    let mut handler = ComputeGradient::new();

    // Cold: builds the model, reads the weights.
    let event = f.event(1, 1, 2, "runs/w/weights.bin");
    let response = handler.handle(&event).await.unwrap();
    let (expected, stats) = f.reference(&event, &round1).await;
    let written = f.read_gradient(&event).await;
    let diff = max_abs_diff(&written, &expected);
    assert!(diff <= TOLERANCE, "gradient differs by {diff}");
    assert!(
        expected.iter().any(|&g| g != 0.0),
        "reference gradient is all zeros"
    );
    assert_eq!(response.gradient_key, event.gradient_key);
    assert_eq!(response.samples, 12);
    assert_eq!(response.samples, stats.samples as u64);
    assert_eq!(response.correct, stats.correct as u64);
    assert!(
        (response.loss - stats.loss).abs() <= 1e-6,
        "{} vs {}",
        response.loss,
        stats.loss
    );
    assert_eq!(response.element_count, expected.len() as u64);
    assert_eq!((response.round, response.rank, response.batch), (1, 1, 2));
    assert!(!response.weights_cached && !response.model_cached);
    assert_eq!(response.runtime.invocation, 1);
    assert!(response.runtime.max_rss_mb.unwrap() > 1.0);
    let t = response.timings;
    assert!(t.compute_ms > 0.0 && t.load_weights_ms > 0.0);
    assert!(t.total_ms >= t.load_weights_ms + t.load_batch_ms + t.compute_ms + t.upload_ms);

    // Warm, same round, another batch: weights come from the cache.
    let event = f.event(1, 1, 0, "runs/w/weights.bin");
    let response = handler.handle(&event).await.unwrap();
    assert!(response.weights_cached && response.model_cached);
    assert_eq!(response.timings.load_weights_ms, 0.0);
    let (expected, _) = f.reference(&event, &round1).await;
    assert!(max_abs_diff(&f.read_gradient(&event).await, &expected) <= TOLERANCE);

    // Next round under the same key with new contents: the round change forces a re-read.
    let round2 = f.perturbed_blob(&round1);
    f.put("runs/w/weights.bin", round2.clone()).await;
    let event = f.event(2, 1, 0, "runs/w/weights.bin");
    let response = handler.handle(&event).await.unwrap();
    assert!(!response.weights_cached && response.model_cached);
    let (expected, _) = f.reference(&event, &round2).await;
    let (stale, _) = f.reference(&event, &round1).await;
    let written = f.read_gradient(&event).await;
    assert!(max_abs_diff(&written, &expected) <= TOLERANCE);
    assert!(
        max_abs_diff(&written, &stale) > 1e-4,
        "round 2 used round 1's weights"
    );
    assert_eq!(response.runtime.invocation, 3);
}

#[tokio::test]
async fn every_batch_of_both_peers_matches() {
    let f = fixture().await;
    let blob = f.weights_blob(3);
    f.put("w.bin", blob.clone()).await;
    let mut handler = ComputeGradient::new();
    let mut total = 0;
    for rank in 0..2 {
        for batch in 0..BATCHES as u32 {
            let event = f.event(4, rank, batch, "w.bin");
            let response = handler.handle(&event).await.unwrap();
            let (expected, stats) = f.reference(&event, &blob).await;
            assert!(max_abs_diff(&f.read_gradient(&event).await, &expected) <= TOLERANCE);
            assert_eq!(response.samples, stats.samples as u64);
            total += response.samples;
        }
    }
    // 80 images, 2 peers: 36 training images each.
    assert_eq!(total, 72);
}

#[tokio::test]
async fn handlers_run_in_parallel_on_worker_threads() {
    let f = std::sync::Arc::new(fixture().await);
    let blob = f.weights_blob(11);
    f.put("w.bin", blob.clone()).await;
    let mut tasks = Vec::new();
    for batch in 0..BATCHES as u32 {
        let f = f.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut handler = ComputeGradient::new();
            let event = f.event(1, 0, batch, "w.bin");
            let response = rt.block_on(handler.handle(&event)).unwrap();
            (event, response)
        }));
    }
    for task in tasks {
        let (event, response) = task.await.unwrap();
        let (expected, _) = f.reference(&event, &blob).await;
        assert!(max_abs_diff(&f.read_gradient(&event).await, &expected) <= TOLERANCE);
        assert!(!response.weights_cached);
    }
    // The handler future can be spawned on a multi-threaded runtime.
    fn assert_send<T: Send>(_: &T) {}
    let mut handler = ComputeGradient::new();
    let event = f.event(1, 0, 0, "w.bin");
    let future = handler.handle(&event);
    assert_send(&future);
    future.await.unwrap();
}

#[tokio::test]
async fn failures_name_the_object_or_field() {
    let f = fixture().await;
    f.put("w.bin", f.weights_blob(1)).await;
    let mut handler = ComputeGradient::new();

    let mut event = f.event(1, 0, 0, "w.bin");
    event.batch_key = "peer-0/batch-0042.bin".into();
    let err = handler.handle(&event).await.unwrap_err();
    assert!(
        matches!(
            err,
            ComputeGradientError::MissingObject { what: "batch", .. }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("peer-0/batch-0042.bin") && message.contains("batch"),
        "{message}"
    );
    let diagnostic = Diagnostic::from(err);
    assert_eq!(diagnostic.error_type, "MissingObject");
    assert_eq!(diagnostic.error_message, message);

    let event = f.event(1, 0, 0, "runs/absent/weights.bin");
    let err = handler.handle(&event).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("weights object \"runs/absent/weights.bin\" not found"),
        "{err}"
    );

    let mut event = f.event(1, 0, 0, "w.bin");
    event.context.model = ModelSpec {
        num_classes: 5,
        ..f.spec
    };
    let err = handler.handle(&event).await.unwrap_err();
    assert_eq!(err.error_type(), "WrongModel");
    assert!(
        err.to_string().contains("10 classes") && err.to_string().contains("5 classes"),
        "{err}"
    );

    f.put("junk.bin", b"not weights".to_vec()).await;
    let err = handler
        .handle(&f.event(1, 0, 0, "junk.bin"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "InvalidWeights");
    assert!(err.to_string().contains("junk.bin"), "{err}");

    let mut event = f.event(1, 0, 0, "w.bin");
    event.batch_key = "w.bin".into();
    let err = handler.handle(&event).await.unwrap_err();
    assert_eq!(err.error_type(), "InvalidBatch");

    let mut event = f.event(1, 0, 0, "w.bin");
    event.context.run_id = "not-hex".into();
    let err = handler.handle(&event).await.unwrap_err();
    assert_eq!(err.error_type(), "InvalidEvent");
    assert!(err.to_string().contains("not-hex"), "{err}");

    let mut event = f.event(1, 0, 0, "w.bin");
    event.gradient_key = "../escape".into();
    assert_eq!(
        handler.handle(&event).await.unwrap_err().error_type(),
        "InvalidEvent"
    );

    // After all that, a valid event still works with the same state.
    let event = f.event(1, 0, 1, "w.bin");
    handler.handle(&event).await.unwrap();
}
