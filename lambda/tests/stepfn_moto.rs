//! The generated Step Functions definition executed by moto's Step Functions engine
//! (moto 5.2.1, `execute_state_machine` on), its Lambda tasks answered from queued
//! responses: the execution output is what the peer reads, a function error fails the
//! execution with the function's error name, or is recorded in place of the batch.
//!
//! Facts of moto 5.2.1 these tests work with (see `peerless_testkit::moto`):
//! - only the first `StartExecution` per region works, so every execution below gets a
//!   fresh region (state machine and function ARNs alike) or follows a reset;
//! - queued Lambda responses are popped by whichever task invokes next; the Map state's
//!   iterations run concurrently, so which batch receives which queued response varies
//!   (on AWS each batch gets its own function's response);
//! - a queued payload over 6,000,000 bytes comes back as the function error
//!   `Function.ResponseSizeTooLarge`, the only way to make a task fail.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_sfn::config::retry::RetryConfig;
use aws_sdk_sfn::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
use aws_sdk_sfn::types::ExecutionStatus;
use peerless_lambda::process_input::expand;
use peerless_lambda::{
    ComputeGradientResponse, OnTaskFailure, ProcessInputOutput, ProcessInputRequest, RuntimeInfo,
    StateMachineConfig, Timings, state_machine_definition,
};
use peerless_testkit::moto::MotoServer;
use serde::Deserialize;
use serde_json::Value;

const ACCOUNT: &str = "123456789012";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/sfn";
const BATCHES: u32 = 3;
/// A queued payload this large is answered by moto as a function error.
const FAILING_PAYLOAD_BYTES: usize = 6_000_100;
const EXECUTION_TIMEOUT: Duration = Duration::from_secs(60);

fn function_arn(region: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:{ACCOUNT}:function:{name}")
}

fn client(moto: &MotoServer, region: &str) -> aws_sdk_sfn::Client {
    let config = aws_sdk_sfn::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(moto.endpoint())
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "peerless-tests",
        ))
        // moto's failures are not transient; see them as they are.
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_sfn::Client::from_conf(config)
}

/// The definition for `BATCHES` batches with function ARNs in `region`.
fn definition(region: &str, on_failure: OnTaskFailure) -> String {
    let config = StateMachineConfig {
        on_failure,
        ..StateMachineConfig::new(
            BATCHES,
            function_arn(region, "process_input"),
            function_arn(region, "compute_gradient"),
        )
    };
    state_machine_definition(&config).unwrap().to_string()
}

/// A peer's request for batches 0..3 of rank 1, round 4, and its expansion.
async fn request() -> (ProcessInputRequest, ProcessInputOutput) {
    let f = common::fixture().await;
    let request = ProcessInputRequest {
        context: f.context(4, 1, "runs/sfn/weights.bin"),
        batch_count: BATCHES,
        first_batch: 0,
        seed: common::SEED,
        batch_prefix: String::new(),
        gradient_prefix: "runs/sfn/grads".into(),
    };
    let expanded = expand(&request).unwrap();
    (request, expanded)
}

/// A plausible `compute_gradient` answer for one event.
fn response(expanded: &ProcessInputOutput, batch: u32) -> ComputeGradientResponse {
    let event = &expanded.events[batch as usize];
    ComputeGradientResponse {
        gradient_key: event.gradient_key.clone(),
        run_id: event.context.run_id.clone(),
        round: event.context.round,
        rank: event.context.rank,
        batch,
        loss: 2.25 + batch as f32 / 8.0,
        samples: 12,
        correct: u64::from(batch),
        element_count: 38_282,
        gradient_bytes: 153_200,
        weights_cached: batch > 0,
        model_cached: batch > 0,
        timings: Timings {
            compute_ms: 10.5,
            total_ms: 20.25,
            ..Timings::default()
        },
        runtime: RuntimeInfo {
            function_name: Some("compute_gradient".into()),
            request_id: Some(format!("req-{batch}")),
            memory_limit_mb: Some(1024),
            max_rss_mb: Some(80.5),
            invocation: u64::from(batch) + 1,
        },
    }
}

/// Creates the state machine in `region`, queues `results` for the functions of that
/// region, starts one execution with `request` and polls it to completion.
async fn execute(
    moto: &MotoServer,
    region: &str,
    definition: String,
    request: &ProcessInputRequest,
    results: &[String],
) -> DescribeExecutionOutput {
    let sfn = client(moto, region);
    let machine = sfn
        .create_state_machine()
        .name(format!("peerless-round-{region}"))
        .definition(definition)
        .role_arn(ROLE_ARN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateStateMachine: {e:?}\n{}", moto.log()));
    moto.queue_lambda_responses(region, results)
        .unwrap_or_else(|e| panic!("{e}"));
    let started = sfn
        .start_execution()
        .state_machine_arn(machine.state_machine_arn())
        .input(serde_json::to_string(request).unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("StartExecution in {region}: {e:?}\n{}", moto.log()));
    wait(&sfn, started.execution_arn(), moto).await
}

/// Polls DescribeExecution (20 ms, doubling to 500 ms) until the execution ends.
async fn wait(sfn: &aws_sdk_sfn::Client, arn: &str, moto: &MotoServer) -> DescribeExecutionOutput {
    let deadline = Instant::now() + EXECUTION_TIMEOUT;
    let mut delay = Duration::from_millis(20);
    loop {
        let out = sfn
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeExecution: {e:?}"));
        if out.status() != &ExecutionStatus::Running {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "execution {arn} still running after {EXECUTION_TIMEOUT:?}\n{}",
            moto.log()
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// The queue for a successful round: `process_input`'s output, then one response per batch.
fn success_results(expanded: &ProcessInputOutput) -> Vec<String> {
    let mut results = vec![serde_json::to_string(expanded).unwrap()];
    results.extend((0..BATCHES).map(|b| serde_json::to_string(&response(expanded, b)).unwrap()));
    results
}

fn start_moto() -> MotoServer {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.enable_stepfunctions_execution()
        .unwrap_or_else(|e| panic!("{e}"));
    moto
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_output_is_the_array_of_batch_responses() {
    let moto = start_moto();
    let (request, expanded) = request().await;
    let region = "us-east-1";
    let out = execute(
        &moto,
        region,
        definition(region, OnTaskFailure::FailExecution),
        &request,
        &success_results(&expanded),
    )
    .await;
    assert_eq!(
        out.status(),
        &ExecutionStatus::Succeeded,
        "{:?} {:?}\n{}",
        out.error(),
        out.cause(),
        moto.log()
    );
    // The Map state's result replaces the whole state: the output is a top-level JSON
    // array with one `compute_gradient` response per batch, in batch (item) order.
    let output = out.output().expect("a succeeded execution has an output");
    let value: Value = serde_json::from_str(output).unwrap();
    assert!(value.is_array(), "{output}");
    let mut responses: Vec<ComputeGradientResponse> = serde_json::from_str(output).unwrap();
    assert_eq!(responses.len(), BATCHES as usize);
    // moto hands the queued responses to the concurrent iterations in any order.
    responses.sort_by_key(|r| r.batch);
    let queued: Vec<_> = (0..BATCHES).map(|b| response(&expanded, b)).collect();
    assert_eq!(responses, queued);

    // The Map iterated `$.events`: every compute_gradient task got one expanded event.
    let history = client(&moto, region)
        .get_execution_history()
        .execution_arn(out.execution_arn())
        .send()
        .await
        .unwrap();
    let mut inputs: Vec<Value> = history
        .events()
        .iter()
        .filter_map(|e| e.lambda_function_scheduled_event_details())
        .filter(|d| d.resource().ends_with(":compute_gradient"))
        .map(|d| serde_json::from_str(d.input().unwrap_or("null")).unwrap())
        .collect();
    inputs.sort_by_key(|v| v["batch"].as_u64());
    let events: Vec<Value> = expanded
        .events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(inputs, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_execution_per_region_unless_reset() {
    let moto = start_moto();
    let (request, expanded) = request().await;
    let results = success_results(&expanded);
    let succeeded = |out: &DescribeExecutionOutput| out.status() == &ExecutionStatus::Succeeded;

    let out = execute(
        &moto,
        "us-east-1",
        definition("us-east-1", OnTaskFailure::FailExecution),
        &request,
        &results,
    )
    .await;
    assert!(succeeded(&out), "{out:?}");

    // A second StartExecution in the region, even of another state machine, fails
    // (moto 5.2.1 bug; if this starts to succeed, the workarounds can go).
    let sfn = client(&moto, "us-east-1");
    let machine = sfn
        .create_state_machine()
        .name("second")
        .definition(definition("us-east-1", OnTaskFailure::FailExecution))
        .role_arn(ROLE_ARN)
        .send()
        .await
        .unwrap();
    let err = sfn
        .start_execution()
        .state_machine_arn(machine.state_machine_arn())
        .input(serde_json::to_string(&request).unwrap())
        .send()
        .await
        .expect_err("moto 5.2.1 refuses a second execution in a region");
    let status = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(status, Some(500), "{err:?}");

    // Workaround 1: a fresh region (state machine and functions).
    let out = execute(
        &moto,
        "us-west-2",
        definition("us-west-2", OnTaskFailure::FailExecution),
        &request,
        &results,
    )
    .await;
    assert!(succeeded(&out), "{out:?}");

    // Workaround 2: reset moto (which keeps the execution config) and reuse the region.
    moto.reset().unwrap();
    let out = execute(
        &moto,
        "us-east-1",
        definition("us-east-1", OnTaskFailure::FailExecution),
        &request,
        &results,
    )
    .await;
    assert!(succeeded(&out), "{out:?}\n{}", moto.log());
}

/// What [`OnTaskFailure::RecordError`] puts in place of a failed batch's response.
#[derive(Debug, Deserialize)]
struct FailedBatch {
    failed: bool,
    batch: u32,
    rank: u32,
    round: u64,
    batch_key: String,
    gradient_key: String,
    error: TaskError,
}

/// The `{Error, Cause}` object a `Catch` with `ResultPath: $.error` adds.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TaskError {
    error: String,
    cause: String,
}

/// One element of a RecordError execution's output.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BatchOutcome {
    Failed(FailedBatch),
    Done(Box<ComputeGradientResponse>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_the_execution_or_is_recorded() {
    let moto = start_moto();
    let (request, expanded) = request().await;
    let mut results = success_results(&expanded);
    results[2] = "x".repeat(FAILING_PAYLOAD_BYTES);

    // FailExecution: the Fail state raises the function's error name and message.
    let region = "eu-west-1";
    let out = execute(
        &moto,
        region,
        definition(region, OnTaskFailure::FailExecution),
        &request,
        &results,
    )
    .await;
    assert_eq!(out.status(), &ExecutionStatus::Failed, "{out:?}");
    assert_eq!(
        out.error(),
        Some("Function.ResponseSizeTooLarge"),
        "{out:?}"
    );
    let cause: Value = serde_json::from_str(out.cause().unwrap_or_default()).unwrap();
    assert_eq!(cause["errorType"], "Function.ResponseSizeTooLarge");
    assert!(out.output().is_none());

    // RecordError: the execution succeeds and the failed batch is a record at its index.
    let region = "eu-central-1";
    let out = execute(
        &moto,
        region,
        definition(region, OnTaskFailure::RecordError),
        &request,
        &results,
    )
    .await;
    assert_eq!(out.status(), &ExecutionStatus::Succeeded, "{out:?}");
    let outcomes: Vec<BatchOutcome> = serde_json::from_str(out.output().unwrap()).unwrap();
    assert_eq!(outcomes.len(), BATCHES as usize);
    let mut failed = 0;
    for (index, outcome) in outcomes.iter().enumerate() {
        match outcome {
            BatchOutcome::Failed(f) => {
                failed += 1;
                let event = &expanded.events[index];
                assert!(f.failed);
                assert_eq!(f.batch, event.batch);
                assert_eq!((f.rank, f.round), (1, 4));
                assert_eq!(f.batch_key, event.batch_key);
                assert_eq!(f.gradient_key, event.gradient_key);
                assert_eq!(f.error.error, "Function.ResponseSizeTooLarge");
                let cause: Value = serde_json::from_str(&f.error.cause).unwrap();
                assert_eq!(cause["errorType"], "Function.ResponseSizeTooLarge");
            }
            BatchOutcome::Done(r) => assert_eq!(r.samples, 12),
        }
    }
    assert_eq!(failed, 1, "{outcomes:?}");
}
