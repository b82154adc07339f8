//! The `compute_gradient` handler on S3 (moto's server): batches split into
//! `s3://bucket/prefix`, weights put there, an event naming the bucket and moto's endpoint;
//! the gradient written to S3 equals `Model::grad_step` on the same weights and batch.

mod common;

use common::{BATCHES, fixture_at, max_abs_diff};
use peerless_data::store::S3Store;
use peerless_data::{ObjectStore, S3Options};
use peerless_lambda::{ComputeGradient, StoreLocation};
use peerless_testkit::moto::MotoServer;

const BUCKET: &str = "peerless-lambda";
const PREFIX: &str = "runs/s3";
const TOLERANCE: f32 = 1e-5;

#[test]
fn gradient_written_to_s3_equals_direct_grad_step() {
    // The handler, like a deployed function, takes credentials and region from the AWS
    // default chain, i.e. from these variables.
    // SAFETY: this is the only test of this binary and no other thread exists yet (the
    // runtime is built below), so nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = S3Options {
            endpoint_url: Some(moto.endpoint().to_owned()),
            ..S3Options::default()
        };
        let bucket = S3Store::connect(BUCKET, "", &options).await.unwrap();
        bucket
            .client()
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();

        let location = StoreLocation {
            endpoint_url: Some(moto.endpoint().to_owned()),
            ..StoreLocation::new(format!("s3://{BUCKET}/{PREFIX}"))
        };
        let f = fixture_at(location, tempfile::tempdir().unwrap()).await;
        let blob = f.weights_blob(13);
        f.put("weights/round-2.bin", blob.clone()).await;

        let mut handler = ComputeGradient::new();
        for batch in 0..BATCHES as u32 {
            let event = f.event(2, 1, batch, "weights/round-2.bin");
            let response = handler.handle(&event).await.unwrap();
            let (expected, stats) = f.reference(&event, &blob).await;
            let written = f.read_gradient(&event).await;
            let diff = max_abs_diff(&written, &expected);
            assert!(
                diff < TOLERANCE,
                "batch {batch}: gradient differs by {diff}"
            );
            assert!(expected.iter().any(|&g| g != 0.0));
            assert_eq!(response.samples, stats.samples as u64);
            assert!((response.loss - stats.loss).abs() <= 1e-6);
            assert_eq!(response.weights_cached, batch > 0, "batch {batch}");
            assert!(response.timings.load_batch_ms > 0.0);
        }

        // The objects sit below the prefix, where a peer reading the bucket finds them.
        let keys = bucket.list(&format!("{PREFIX}/grads/")).await.unwrap();
        let expected: Vec<String> = (0..BATCHES as u32)
            .map(|b| format!("{PREFIX}/{}", f.event(2, 1, b, "w").gradient_key))
            .collect();
        assert_eq!(keys, expected);
        assert!(
            bucket
                .exists(&format!("{PREFIX}/manifest.json"))
                .await
                .unwrap()
        );
    });
}
