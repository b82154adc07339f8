//! The CloudFormation stack (`deploy/peerless.yaml`) checked offline by training against
//! it: the stack is created on moto's CloudFormation (`deploy/check_moto.py deploy`, with
//! `CreateBroker=false`: moto has no Amazon MQ, and the local RabbitMQ as
//! `ExternalBrokerUrl`), then two peers train over that broker with their split in the
//! stack's bucket, once on their own, once with `--serverless lambda` invoking the
//! stack's compute_gradient function and once with `--serverless stepfn` starting the
//! stack's state machine, and every round's weights must be the instance run's.
//!
//! The functions are the real `compute_gradient` and `process_input` binaries behind
//! cargo-lambda's emulator, with the memory and environment the stack deployed them with;
//! a [`FunctionRouter`] serves them under the stack's names and ARNs. The state machine
//! runs on moto's Step Functions interpreter (moto 5.2.5, which runs a state machine more
//! than once), whose Lambda tasks invoke the router. What this cannot check is listed in
//! deploy/README.md ("What only real AWS can check").

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{MOTO_CREDENTIALS, RoundMetrics, function_binary, identical_run, moto_training_run};
use peerless_testkit::emulator::{Emulator, FunctionConfig};
use peerless_testkit::lambda_router::FunctionRouter;
use peerless_testkit::moto::{MotoOptions, MotoServer};
use serde::Deserialize;

const REGION: &str = "us-east-1";
/// The stack's `BatchesPerPeer`: the split's batch objects per peer and the state
/// machine's Map concurrency, as the runbook pairs them.
const BATCHES: u32 = 4;
/// Rounds of the runs (one epoch): each peer offloads 2 batches a round.
const ROUNDS: usize = 2;

/// The local RabbitMQ (shared: every run has its own run id), the stack's
/// `ExternalBrokerUrl` and the peers' broker, as the user data passes it.
fn broker() -> String {
    std::env::var("PEERLESS_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// What `check_moto.py deploy` prints.
#[derive(Debug, Deserialize)]
struct Deployed {
    outputs: BTreeMap<String, String>,
    functions: BTreeMap<String, DeployedFunction>,
}

/// A function as the stack deployed it.
#[derive(Debug, Deserialize)]
struct DeployedFunction {
    memory_mb: u32,
    environment: BTreeMap<String, String>,
}

impl Deployed {
    fn output(&self, key: &str) -> &str {
        self.outputs
            .get(key)
            .unwrap_or_else(|| panic!("the stack has no output {key}: {:?}", self.outputs))
    }

    /// The function name of an output holding a function's ARN.
    fn function_name(&self, key: &str) -> &str {
        let arn = self.output(key);
        arn.rsplit_once(":function:").map_or(arn, |(_, name)| name)
    }

    fn function(&self, key: &str) -> &DeployedFunction {
        let name = self.function_name(key);
        self.functions
            .get(name)
            .unwrap_or_else(|| panic!("no function {name} deployed: {:?}", self.functions))
    }
}

/// Creates the stack on `moto` with `check_moto.py deploy` run by `python`.
fn deploy(python: &Path, moto: &MotoServer, stack: &str, run_name: &str) -> Deployed {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/check_moto.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(["deploy", "--endpoint", moto.endpoint(), "--stack", stack])
        .arg(format!("RunName={run_name}"))
        .arg(format!("BatchesPerPeer={BATCHES}"))
        .arg(format!("ExternalBrokerUrl={}", broker()))
        .output()
        .expect("running check_moto.py deploy");
    assert!(
        out.status.success(),
        "check_moto.py deploy failed: {}\n--- moto ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        moto.log()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check_moto.py deploy printed no stack: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `peerless run` of 2 peers over the broker on the stack's store (its split written by
/// the first call), with the stack's choices in the variables the peers' user data sets.
fn run(
    moto: &MotoServer,
    store: &str,
    metrics: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Vec<Vec<RoundMetrics>> {
    let mut cmd = moto_training_run(2, store, metrics, moto.endpoint(), REGION);
    cmd.env("PEERLESS_BROKER", broker())
        .envs(env.iter().copied())
        .args(["--batches", &BATCHES.to_string()])
        .args(["--rounds-per-epoch", &ROUNDS.to_string(), "--epochs", "1"])
        .args(extra);
    identical_run(&mut cmd, metrics, 2)
}

fn hashes(peers: &[Vec<RoundMetrics>]) -> Vec<Vec<String>> {
    peers
        .iter()
        .map(|p| p.iter().map(|m| m.weights_hash.clone()).collect())
        .collect()
}

/// Every round of every peer ran `mode` and offloaded 2 batches, each invocation billed
/// at `memory_mb`; returns the offloaded batches.
fn assert_offloaded(peers: &[Vec<RoundMetrics>], mode: &str, memory_mb: u32) -> usize {
    let mut offloaded = 0;
    for (rank, peer) in peers.iter().enumerate() {
        assert_eq!(peer.len(), ROUNDS, "rank {rank}");
        for m in peer {
            assert_eq!(m.serverless, mode, "rank {rank}: {m:?}");
            assert_eq!(m.offloaded_batches, 2, "rank {rank}: {m:?}");
            assert_eq!(m.failed_attempts, 0, "rank {rank}: {m:?}");
            assert_eq!(m.invocations.len(), 2, "rank {rank}: {m:?}");
            for call in &m.invocations {
                assert_eq!(call.memory_mb, memory_mb, "rank {rank}: {call:?}");
            }
            offloaded += m.offloaded_batches;
        }
    }
    offloaded
}

#[test]
fn two_peers_train_against_the_stack_on_moto_like_the_instance_run() {
    let moto_options = MotoOptions::executing();
    let python = moto_options.python.clone();

    // The functions first: moto's Step Functions must know where to invoke them.
    let mut emulator = Emulator::start().unwrap_or_else(|e| panic!("{e}"));
    let stack = "peerless-offline";
    let (cg_name, pi_name) = (
        format!("{stack}-compute-gradient"),
        format!("{stack}-process-input"),
    );
    let router = FunctionRouter::start(
        emulator.endpoint(),
        &[
            (cg_name.as_str(), "compute_gradient"),
            (pi_name.as_str(), "process_input"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let moto = MotoServer::start_with(&moto_options.lambda_port(router.port()))
        .unwrap_or_else(|e| panic!("{e}"));

    let run_name = "offline-1";
    let deployed = deploy(&python, &moto, stack, run_name);
    let store = deployed.output("StoreUrl").to_owned();
    assert_eq!(
        store,
        format!("s3://{}/runs/{run_name}", deployed.output("RunBucketName"))
    );
    assert_eq!(
        deployed.function_name("ComputeGradientFunctionArn"),
        cg_name,
        "the stack names its functions as the router serves them"
    );
    assert_eq!(deployed.function_name("ProcessInputFunctionArn"), pi_name);
    let compute_gradient = deployed.function("ComputeGradientFunctionArn");
    let process_input = deployed.function("ProcessInputFunctionArn");
    assert_eq!(
        compute_gradient.environment.get("PEERLESS_ALLOWED_STORE"),
        Some(&store)
    );

    // Each function with the memory and environment the stack gave it; the endpoint is
    // moto's (on AWS the functions use S3's own, and the stack sets no endpoint).
    let mut base_env: Vec<(String, String)> = MOTO_CREDENTIALS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    base_env.push(("AWS_REGION".into(), REGION.into()));
    base_env.push(("PEERLESS_ALLOWED_ENDPOINT".into(), moto.endpoint().into()));
    for (binary, deployed_fn, instances) in [
        ("compute_gradient", compute_gradient, 2),
        ("process_input", process_input, 1),
    ] {
        let mut env = base_env.clone();
        env.extend(deployed_fn.environment.clone());
        emulator
            .start_function(&FunctionConfig {
                memory_mb: deployed_fn.memory_mb,
                instances,
                env,
                ..FunctionConfig::new(binary, function_binary(binary))
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    let dir = tempfile::tempdir().unwrap();
    let instance = run(&moto, &store, &dir.path().join("instance"), &[], &[]);
    let memory = compute_gradient.memory_mb.to_string();

    let lambda = run(
        &moto,
        &store,
        &dir.path().join("lambda"),
        &[
            ("PEERLESS_SERVERLESS", "lambda"),
            ("PEERLESS_OFFLOAD", "1"),
            (
                "PEERLESS_FUNCTION",
                deployed.output("ComputeGradientFunctionArn"),
            ),
        ],
        &[
            "--lambda-endpoint",
            router.endpoint(),
            "--function-memory-mb",
            &memory,
        ],
    );
    assert_eq!(
        hashes(&lambda),
        hashes(&instance),
        "--serverless lambda: weights differ from the instance run\n{}",
        emulator.logs()
    );
    let offloaded = assert_offloaded(&lambda, "lambda", compute_gradient.memory_mb);
    assert_eq!(offloaded, 2 * ROUNDS * 2);
    assert_eq!(
        router.count(&cg_name),
        offloaded,
        "{:?}",
        router.invocations()
    );
    assert_eq!(
        router.count(&pi_name),
        0,
        "a peer never invokes process_input"
    );

    let stepfn = run(
        &moto,
        &store,
        &dir.path().join("stepfn"),
        &[
            ("PEERLESS_SERVERLESS", "stepfn"),
            ("PEERLESS_OFFLOAD", "1"),
            (
                "PEERLESS_STATE_MACHINE_ARN",
                deployed.output("StateMachineArn"),
            ),
        ],
        &[
            "--sfn-endpoint",
            moto.endpoint(),
            "--function-memory-mb",
            &memory,
        ],
    );
    assert_eq!(
        hashes(&stepfn),
        hashes(&instance),
        "--serverless stepfn: weights differ from the instance run\n{}",
        emulator.logs()
    );
    let offloaded_sfn = assert_offloaded(&stepfn, "stepfn", compute_gradient.memory_mb);
    for peer in &stepfn {
        for m in peer {
            // ProcessInput, the Map state, and a task per batch at least.
            assert!(m.state_transitions >= 4, "{m:?}");
        }
    }
    // One execution per peer and round, each through the stack's two functions.
    assert_eq!(
        router.count(&pi_name),
        2 * ROUNDS,
        "{:?}",
        router.invocations()
    );
    assert_eq!(router.count(&cg_name), offloaded + offloaded_sfn);
    assert!(
        router
            .invocations()
            .iter()
            .all(|r| r.binary.is_some() && r.status == Some(200)),
        "{:?}",
        router.invocations()
    );
}
