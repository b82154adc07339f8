//! The real `compute_gradient` and `process_input` binaries behind a Lambda Runtime API
//! emulator (`cargo lambda watch --only-lambda-apis`, cargo-lambda 1.9.2 from PyPI),
//! invoked through aws-sdk-lambda as a peer would invoke them on AWS.

mod common;

use std::time::Duration;

use aws_sdk_lambda::config::retry::RetryConfig;
use aws_sdk_lambda::config::timeout::TimeoutConfig;
use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_lambda::error::SdkError;
use aws_sdk_lambda::primitives::Blob;
use common::{fixture, max_abs_diff};
use peerless_lambda::{ComputeGradientResponse, ProcessInputOutput, ProcessInputRequest};
use peerless_testkit::emulator::{Emulator, FunctionConfig};
use serde_json::Value;

const MEMORY_MB: u32 = 1024;

/// The emulator with `instances` processes of `compute_gradient` and one of
/// `process_input`.
fn start(instances: usize) -> Emulator {
    let mut emulator = Emulator::start().unwrap_or_else(|e| panic!("{e}"));
    let compute = FunctionConfig {
        memory_mb: MEMORY_MB,
        instances,
        ..FunctionConfig::new("compute_gradient", env!("CARGO_BIN_EXE_compute_gradient"))
    };
    let expand = FunctionConfig::new("process_input", env!("CARGO_BIN_EXE_process_input"));
    for function in [compute, expand] {
        emulator
            .start_function(&function)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    emulator
}

/// A Lambda client of the emulator with test credentials and no retries.
fn client(emulator: &Emulator) -> aws_sdk_lambda::Client {
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(emulator.endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "peerless-tests",
        ))
        // One invocation per call: a retried function error would run the function twice.
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(110))
                .build(),
        )
        .build();
    aws_sdk_lambda::Client::from_conf(config)
}

/// What an invocation returned: the payload, and for a function error the marker that
/// says so. AWS answers a function error with HTTP 200 and `X-Amz-Function-Error`;
/// cargo-lambda's emulator answers HTTP 500 with the same `{errorType, errorMessage}` body,
/// which the SDK reports as a service error: both end up here the same way.
struct Invocation {
    function_error: Option<String>,
    payload: Value,
}

async fn invoke(
    client: &aws_sdk_lambda::Client,
    name: &str,
    payload: &impl serde::Serialize,
    emulator: &Emulator,
) -> Invocation {
    let body = serde_json::to_vec(payload).unwrap();
    let call = client
        .invoke()
        .function_name(name)
        .payload(Blob::new(body))
        .send();
    let (function_error, payload) = match tokio::time::timeout(Duration::from_secs(120), call).await
    {
        Ok(Ok(out)) => (
            out.function_error().map(str::to_owned),
            out.payload()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default(),
        ),
        Ok(Err(SdkError::ServiceError(e))) if e.raw().status().as_u16() == 500 => (
            Some("Unhandled (HTTP 500)".to_owned()),
            e.raw().body().bytes().unwrap_or_default().to_vec(),
        ),
        Ok(Err(e)) => panic!("invoking {name}: {e:?}\n{}", emulator.logs()),
        Err(_) => panic!("invoking {name} timed out\n{}", emulator.logs()),
    };
    Invocation {
        function_error,
        payload: serde_json::from_slice(&payload).unwrap_or_else(|e| {
            panic!(
                "{name} returned non-JSON ({e}): {}",
                String::from_utf8_lossy(&payload)
            )
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_behind_the_runtime_api_emulator() {
    let f = fixture().await;
    let weights = f.weights_blob(21);
    f.put("runs/e/weights.bin", weights.clone()).await;
    let emulator = start(1);
    let client = client(&emulator);

    // process_input expands the peer's request, as the first Step Functions task does.
    let request = ProcessInputRequest {
        context: f.context(3, 0, "runs/e/weights.bin"),
        batch_count: 3,
        first_batch: 0,
        seed: common::SEED,
        batch_prefix: String::new(),
        gradient_prefix: "runs/e/grads".into(),
    };
    let out = invoke(&client, "process_input", &request, &emulator).await;
    assert_eq!(out.function_error, None, "{}", out.payload);
    let expanded: ProcessInputOutput = serde_json::from_value(out.payload).unwrap();
    assert_eq!(expanded.events.len(), 3);

    // Each event through compute_gradient; the first is cold, the others warm.
    for (i, event) in expanded.events.iter().enumerate() {
        let out = invoke(&client, "compute_gradient", event, &emulator).await;
        assert_eq!(out.function_error, None, "{}", out.payload);
        let response: ComputeGradientResponse = serde_json::from_value(out.payload).unwrap();
        let (expected, stats) = f.reference(event, &weights).await;
        let written = f.read_gradient(event).await;
        let diff = max_abs_diff(&written, &expected);
        assert!(diff <= 1e-6, "batch {i}: gradient differs by {diff}");
        assert_eq!(response.gradient_key, event.gradient_key);
        assert_eq!(response.samples, stats.samples as u64);
        assert!((response.loss - stats.loss).abs() <= 1e-6);
        assert_eq!(response.weights_cached, i > 0, "batch {i}");
        assert_eq!(response.model_cached, i > 0, "batch {i}");
        assert_eq!(response.runtime.invocation, i as u64 + 1);
        assert_eq!(
            response.runtime.function_name.as_deref(),
            Some("compute_gradient")
        );
        assert_eq!(response.runtime.memory_limit_mb, Some(MEMORY_MB));
        assert!(
            !response
                .runtime
                .request_id
                .clone()
                .unwrap_or_default()
                .is_empty()
        );
    }

    // A missing batch: a Lambda function error naming the key, and the function lives on.
    let mut missing = expanded.events[0].clone();
    missing.batch_key = "peer-0/batch-0777.bin".into();
    let out = invoke(&client, "compute_gradient", &missing, &emulator).await;
    assert!(
        out.function_error.is_some(),
        "no function error: {}",
        out.payload
    );
    assert_eq!(out.payload["errorType"], "MissingObject", "{}", out.payload);
    let message = out.payload["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("peer-0/batch-0777.bin"), "{message}");

    let out = invoke(&client, "compute_gradient", &expanded.events[1], &emulator).await;
    assert_eq!(out.function_error, None, "{}", out.payload);
    let response: ComputeGradientResponse = serde_json::from_value(out.payload).unwrap();
    assert!(response.weights_cached);
    assert_eq!(response.runtime.invocation, 5);
}

/// Each function process is one execution environment: with two processes, two
/// invocations at once are served by both (each process's first invocation), not queued
/// behind one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_serve_invocations_concurrently() {
    let f = fixture().await;
    let weights = f.weights_blob(5);
    f.put("runs/c/weights.bin", weights.clone()).await;
    let emulator = start(2);
    let client = client(&emulator);
    let events = [
        f.event(1, 0, 0, "runs/c/weights.bin"),
        f.event(1, 0, 1, "runs/c/weights.bin"),
    ];
    let (a, b) = tokio::join!(
        invoke(&client, "compute_gradient", &events[0], &emulator),
        invoke(&client, "compute_gradient", &events[1], &emulator),
    );
    for (out, event) in [(a, &events[0]), (b, &events[1])] {
        assert_eq!(out.function_error, None, "{}", out.payload);
        let response: ComputeGradientResponse = serde_json::from_value(out.payload).unwrap();
        assert_eq!(response.gradient_key, event.gradient_key);
        assert_eq!(
            response.runtime.invocation,
            1,
            "one process served both invocations\n{}",
            emulator.logs()
        );
        assert!(!response.weights_cached);
        let (expected, _) = f.reference(event, &weights).await;
        assert!(max_abs_diff(&f.read_gradient(event).await, &expected) <= 1e-6);
    }
}
