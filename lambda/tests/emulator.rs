//! The real `compute_gradient` and `process_input` binaries behind a Lambda Runtime API
//! emulator (`cargo lambda watch --only-lambda-apis`, cargo-lambda 1.9.2 from PyPI),
//! invoked through aws-sdk-lambda as a peer would invoke them on AWS.

mod common;

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_lambda::config::retry::RetryConfig;
use aws_sdk_lambda::config::timeout::TimeoutConfig;
use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_lambda::error::SdkError;
use aws_sdk_lambda::primitives::Blob;
use common::{fixture, max_abs_diff};
use peerless_lambda::{ComputeGradientResponse, ProcessInputOutput, ProcessInputRequest};
use serde_json::Value;

const DEFAULT_CARGO_LAMBDA: &str = "/root/.cache/peerless/cargo-lambda";
const MEMORY_MB: u32 = 1024;

/// `cargo-lambda` inside the venv named by `$PEERLESS_CARGO_LAMBDA`.
fn cargo_lambda() -> PathBuf {
    let dir =
        std::env::var("PEERLESS_CARGO_LAMBDA").unwrap_or_else(|_| DEFAULT_CARGO_LAMBDA.into());
    let bin = Path::new(&dir).join("bin/cargo-lambda");
    assert!(
        bin.exists(),
        "cargo-lambda not found at {}: install it with \
         `python3 -m venv {dir} && {dir}/bin/pip install cargo-lambda==1.9.2` \
         (or point PEERLESS_CARGO_LAMBDA at another venv that has it)",
        bin.display()
    );
    bin
}

/// A child process in its own process group, killed with the group when dropped (also
/// when a test fails), with its output in a log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut command: Command, logs: &Path) -> Proc {
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name, child, log }
    }

    fn log(&self) -> String {
        format!(
            "--- {} log ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id())
            && pid > 1
        {
            // SAFETY: signals only the process group this test created for the child.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, emulator: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = emulator.child.try_wait() {
            panic!("the emulator exited with {status}\n{}", emulator.log());
        }
        assert!(
            Instant::now() < deadline,
            "the emulator did not listen on port {port} within 60 s\n{}",
            emulator.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a function binary polling the emulator's runtime API under `name`.
fn start_function(name: &'static str, binary: &str, port: u16, logs: &Path) -> Proc {
    let mut command = Command::new(binary);
    command
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt/{name}"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", MEMORY_MB.to_string())
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("RUST_LOG", "info");
    Proc::spawn(name, command, logs)
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
    procs: &[&Proc],
) -> Invocation {
    let body = serde_json::to_vec(payload).unwrap();
    let call = client
        .invoke()
        .function_name(name)
        .payload(Blob::new(body))
        .send();
    let logs = || procs.iter().map(|p| p.log()).collect::<Vec<_>>().join("\n");
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
        Ok(Err(e)) => panic!("invoking {name}: {e:?}\n{}", logs()),
        Err(_) => panic!("invoking {name} timed out\n{}", logs()),
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
    let cargo_lambda = cargo_lambda();
    let f = fixture().await;
    let weights = f.weights_blob(21);
    f.put("runs/e/weights.bin", weights.clone()).await;
    let logs = f.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    let port = free_port();
    let mut command = Command::new(&cargo_lambda);
    command.args([
        "lambda",
        "watch",
        "--only-lambda-apis",
        "--ignore-changes",
        "--invoke-address",
        "127.0.0.1",
        "--invoke-port",
        &port.to_string(),
        "--manifest-path",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
    ]);
    let mut emulator = Proc::spawn("emulator", command, &logs);
    wait_for_port(port, &mut emulator);
    let compute = start_function(
        "compute_gradient",
        env!("CARGO_BIN_EXE_compute_gradient"),
        port,
        &logs,
    );
    let expand = start_function(
        "process_input",
        env!("CARGO_BIN_EXE_process_input"),
        port,
        &logs,
    );
    let procs = [&emulator, &compute, &expand];

    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{port}"))
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
    let client = aws_sdk_lambda::Client::from_conf(config);

    // process_input expands the peer's request, as the first Step Functions task does.
    let request = ProcessInputRequest {
        context: f.context(3, 0, "runs/e/weights.bin"),
        batch_count: 3,
        first_batch: 0,
        seed: common::SEED,
        batch_prefix: String::new(),
        gradient_prefix: "runs/e/grads".into(),
    };
    let out = invoke(&client, "process_input", &request, &procs).await;
    assert_eq!(out.function_error, None, "{}", out.payload);
    let expanded: ProcessInputOutput = serde_json::from_value(out.payload).unwrap();
    assert_eq!(expanded.events.len(), 3);

    // Each event through compute_gradient; the first is cold, the others warm.
    for (i, event) in expanded.events.iter().enumerate() {
        let out = invoke(&client, "compute_gradient", event, &procs).await;
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
    let out = invoke(&client, "compute_gradient", &missing, &procs).await;
    assert!(
        out.function_error.is_some(),
        "no function error: {}",
        out.payload
    );
    assert_eq!(out.payload["errorType"], "MissingObject", "{}", out.payload);
    let message = out.payload["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("peer-0/batch-0777.bin"), "{message}");

    let out = invoke(&client, "compute_gradient", &expanded.events[1], &procs).await;
    assert_eq!(out.function_error, None, "{}", out.payload);
    let response: ComputeGradientResponse = serde_json::from_value(out.payload).unwrap();
    assert!(response.weights_cached);
    assert_eq!(response.runtime.invocation, 5);
}
