//! The AWS paths of serverless offload against real local stand-ins: S3 on moto's server,
//! the real `compute_gradient` binary behind cargo-lambda's Lambda Runtime API emulator
//! (invoked by the peer through aws-sdk-lambda), and Step Functions on moto's ASL
//! interpreter (its Lambda tasks answer with queued responses, which this test computes
//! with the real handler beforehand).

mod common;

use std::path::Path;

use common::{
    MOTO_CREDENTIALS, RoundMetrics, function_binary, identical_run, moto_training_run, peerless,
    round_metrics,
};
use peerless_comm::RunId;
use peerless_data::{SplitReader, StoreOptions};
use peerless_lambda::process_input::expand;
use peerless_lambda::{ComputeGradient, ProcessInputRequest, RoundContext, StoreLocation};
use peerless_models::{Architecture, Device, Loss, Model, ModelSpec, weights};
use peerless_testkit::emulator::{Emulator, FunctionConfig};
use peerless_testkit::moto::MotoServer;

const BUCKET: &str = "peerless";
const MEMORY_MB: u32 = 1536;

fn moto() -> MotoServer {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket(BUCKET).unwrap();
    moto
}

/// `peerless run` of 2 peers on the split in `store` (written by the first call).
fn run(moto: &MotoServer, store: &str, metrics: &Path, extra: &[&str]) -> Vec<Vec<RoundMetrics>> {
    let mut cmd = moto_training_run(2, store, metrics, moto.endpoint(), "us-east-1");
    cmd.args(["--batches", "4", "--rounds-per-epoch", "2", "--epochs", "1"])
        .args(extra);
    identical_run(&mut cmd, metrics, 2)
}

/// The flags of `--serverless lambda` through the emulator at `endpoint`.
fn lambda_flags(endpoint: &str) -> Vec<&str> {
    vec![
        "--serverless",
        "lambda",
        "--function",
        "compute_gradient",
        "--lambda-endpoint",
        endpoint,
    ]
}

fn hashes(peers: &[Vec<RoundMetrics>]) -> Vec<Vec<String>> {
    peers
        .iter()
        .map(|p| p.iter().map(|m| m.weights_hash.clone()).collect())
        .collect()
}

#[test]
fn lambda_functions_behind_the_emulator_train_like_the_instance_run() {
    let moto = moto();
    let mut emulator = Emulator::start().unwrap_or_else(|e| panic!("{e}"));
    let mut env: Vec<(String, String)> = MOTO_CREDENTIALS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("AWS_REGION".into(), "us-east-1".into()));
    let function = FunctionConfig {
        memory_mb: MEMORY_MB,
        instances: 2,
        env: env.clone(),
        ..FunctionConfig::new("compute_gradient", function_binary("compute_gradient"))
    };
    emulator.start_function(&function).unwrap();
    // A second emulator whose function fails its first invocation: the peer retries it.
    let mut flaky = Emulator::start().unwrap_or_else(|e| panic!("{e}"));
    flaky
        .start_function(&FunctionConfig {
            instances: 1,
            env: [env, vec![("PEERLESS_INJECT_FAILURES".into(), "1".into())]].concat(),
            ..function.clone()
        })
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = format!("s3://{BUCKET}/lambda");
    let instance = run(&moto, &store, &dir.path().join("instance"), &[]);
    let serverless = run(
        &moto,
        &store,
        &dir.path().join("lambda"),
        &lambda_flags(emulator.endpoint()),
    );
    assert_eq!(hashes(&serverless), hashes(&instance), "weights differ");
    for peer in &serverless {
        for m in peer {
            assert_eq!(m.serverless, "lambda");
            assert_eq!(m.offloaded_batches, 2, "{m:?}");
            for call in &m.invocations {
                assert_eq!(call.memory_mb, MEMORY_MB, "{call:?}");
                assert!(call.billed_ms >= 1, "{call:?}");
                assert!(call.compute_ms > 0.0, "{call:?}");
            }
        }
    }

    let retried = run(
        &moto,
        &store,
        &dir.path().join("flaky"),
        &[
            lambda_flags(flaky.endpoint()),
            vec!["--function-concurrency", "1"],
        ]
        .concat(),
    );
    assert_eq!(
        hashes(&retried),
        hashes(&instance),
        "weights differ after a retry"
    );
    let failed: u32 = retried.iter().flatten().map(|m| m.failed_attempts).sum();
    assert_eq!(failed, 1, "exactly the one injected failure is retried");
    assert!(
        retried
            .iter()
            .flatten()
            .flat_map(|m| &m.invocations)
            .any(|c| c.attempts == 2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_functions_round_on_motos_interpreter_yields_the_local_gradient() {
    let moto = moto();
    moto.enable_stepfunctions_execution().unwrap();
    // The peer's S3 and Step Functions clients, and the handler below, read these.
    // SAFETY: set before any thread of this test reads the environment.
    unsafe {
        for (k, v) in MOTO_CREDENTIALS {
            std::env::set_var(k, v);
        }
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let dir = tempfile::tempdir().unwrap();
    let store = format!("s3://{BUCKET}/stepfn");
    let peer = |run_id: &str, metrics: &Path, extra: &[&str]| {
        let mut cmd = peerless();
        cmd.args(["peer", "--size", "1", "--rank", "0", "--run-id", run_id])
            .args(["--dataset", "synthetic", "--epochs", "1", "--lr", "0.05"])
            .args(["--store", &store, "--s3-endpoint", moto.endpoint()])
            .arg("--metrics-out")
            .arg(metrics)
            .args(extra);
        cmd
    };
    peerless()
        .args(["data", "split", "--dataset", "synthetic", "--size", "1"])
        .args([
            "--batches",
            "2",
            "--to",
            &store,
            "--s3-endpoint",
            moto.endpoint(),
        ])
        .assert()
        .success();
    let instance_metrics = dir.path().join("instance.jsonl");
    peer("sfn-instance", &instance_metrics, &[])
        .assert()
        .success();

    // What the peer will ask for in round 0: its request, expanded, computed by the real
    // handler (which writes the gradient objects), queued as moto's Lambda answers.
    let run_id = RunId::from_name("sfn-offload");
    let location = StoreLocation {
        url: store.clone(),
        endpoint_url: Some(moto.endpoint().to_owned()),
        region: None,
    };
    let options = StoreOptions {
        s3: peerless_data::S3Options {
            endpoint_url: location.endpoint_url.clone(),
            ..Default::default()
        },
    };
    let reader = SplitReader::open_url(&store, &options).await.unwrap();
    let shape = reader.train(0).await.unwrap().shape();
    let spec = ModelSpec::new(Architecture::TinyCnn)
        .with_in_channels(shape.channels)
        .with_num_classes(reader.manifest().num_classes);
    let model = Model::new(spec, &Device::flex(), 1234).unwrap();
    let prefix = format!("exchange/{run_id}");
    let context = RoundContext {
        run_id: run_id.to_string(),
        round: 0,
        rank: 0,
        world_size: 1,
        model: spec,
        loss: Loss::CrossEntropy,
        transform: peerless_data::TransformSpec::new(shape.channels, shape.height),
        store: location,
        weights_key: format!("{prefix}/round-000000/rank-000/weights.bin"),
    };
    let store_handle = peerless_data::open_store(&store, &options).await.unwrap();
    let blob = weights::encode(&spec, &model.params().unwrap(), &model.buffers().unwrap());
    store_handle
        .put(&context.weights_key, blob.into())
        .await
        .unwrap();
    let request = ProcessInputRequest {
        context,
        batch_count: 2,
        first_batch: 0,
        seed: 1234,
        batch_prefix: String::new(),
        gradient_prefix: prefix,
    };
    let expanded = expand(&request).unwrap();
    let mut handler = ComputeGradient::new();
    let mut queued = vec![serde_json::to_string(&expanded).unwrap()];
    for event in &expanded.events {
        let response = handler.handle(event).await.unwrap();
        queued.push(serde_json::to_string(&response).unwrap());
    }

    // The state machine from `peerless stepfn generate`, created on moto.
    let region = "us-east-1";
    let arn = |name: &str| format!("arn:aws:lambda:{region}:123456789012:function:{name}");
    let definition = dir.path().join("machine.json");
    peerless()
        .args([
            "stepfn",
            "generate",
            "--batches",
            "2",
            "--max-concurrency",
            "2",
        ])
        .args(["--process-input-arn", &arn("process_input")])
        .args(["--compute-gradient-arn", &arn("compute_gradient")])
        .arg("--out")
        .arg(&definition)
        .assert()
        .success();
    let sfn = aws_sdk_sfn::Client::from_conf(
        aws_sdk_sfn::Config::builder()
            .behavior_version(aws_sdk_sfn::config::BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
            .region(aws_sdk_sfn::config::Region::new(region))
            .credentials_provider(aws_sdk_sfn::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .build(),
    );
    let machine = sfn
        .create_state_machine()
        .name("peerless-round")
        .role_arn("arn:aws:iam::123456789012:role/sfn")
        .definition(std::fs::read_to_string(&definition).unwrap())
        .send()
        .await
        .unwrap();
    moto.queue_lambda_responses(region, &queued).unwrap();

    let offload_metrics = dir.path().join("stepfn.jsonl");
    let flags = [
        "--serverless",
        "stepfn",
        "--state-machine-arn",
        machine.state_machine_arn(),
        "--sfn-endpoint",
        moto.endpoint(),
        "--function-retries",
        "0",
    ];
    let mut cmd = peer("sfn-offload", &offload_metrics, &flags);
    tokio::task::spawn_blocking(move || cmd.assert().success())
        .await
        .unwrap();
    let instance = round_metrics(&instance_metrics);
    let offload = round_metrics(&offload_metrics);
    assert_eq!(offload.len(), 1);
    assert_eq!(offload[0].serverless, "stepfn");
    assert_eq!(offload[0].offloaded_batches, 2, "{:?}", offload[0]);
    assert_eq!(
        offload[0].weights_hash, instance[0].weights_hash,
        "the Step Functions gradient differs from the local one"
    );
    assert_eq!(offload[0].invocations.len(), 2);
    assert!(offload[0].state_transitions >= 2, "{:?}", offload[0]);
    // The round's exchange objects are gone.
    for event in &expanded.events {
        assert!(!store_handle.exists(&event.gradient_key).await.unwrap());
    }
}
