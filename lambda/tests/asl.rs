//! The generated Step Functions definitions, checked for structure and validated by the
//! real `asl-validator` (npm); a deliberately broken definition must be rejected.

use std::path::{Path, PathBuf};
use std::process::Command;

use peerless_lambda::asl::{AslError, states};
use peerless_lambda::{OnTaskFailure, RetryPolicy, StateMachineConfig, state_machine_definition};
use serde_json::{Value, json};

const PROCESS_INPUT_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:process_input";
const COMPUTE_GRADIENT_ARN: &str =
    "arn:aws:lambda:us-east-1:123456789012:function:compute_gradient";
const DEFAULT_VALIDATOR_DIR: &str = "/root/.cache/peerless/node";

/// The `asl-validator` executable under `$PEERLESS_ASL_VALIDATOR` (an npm prefix).
fn validator() -> PathBuf {
    let dir =
        std::env::var("PEERLESS_ASL_VALIDATOR").unwrap_or_else(|_| DEFAULT_VALIDATOR_DIR.into());
    let bin = Path::new(&dir).join("node_modules/.bin/asl-validator");
    assert!(
        bin.exists(),
        "asl-validator not found at {}: install it with \
         `npm install --prefix {dir} asl-validator@4.0.0` \
         (or point PEERLESS_ASL_VALIDATOR at another npm prefix that has it)",
        bin.display()
    );
    bin
}

/// Runs the validator on `definition`; returns whether it accepted it, and its output.
fn validate(definition: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine.json");
    std::fs::write(&path, serde_json::to_vec_pretty(definition).unwrap()).unwrap();
    let out = Command::new(validator())
        .arg("--json-path")
        .arg(&path)
        .output()
        .expect("running asl-validator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn config(batches: u32) -> StateMachineConfig {
    StateMachineConfig::new(batches, PROCESS_INPUT_ARN, COMPUTE_GRADIENT_ARN)
}

fn map_state(def: &Value) -> &Value {
    &def["States"][states::COMPUTE_GRADIENTS]
}

fn task_state(def: &Value) -> &Value {
    &map_state(def)["ItemProcessor"]["States"][states::COMPUTE_GRADIENT]
}

#[test]
fn definitions_have_the_expected_shape() {
    let def = state_machine_definition(&config(8)).unwrap();
    assert_eq!(def["StartAt"], json!(states::PROCESS_INPUT));
    let first = &def["States"][states::PROCESS_INPUT];
    assert_eq!(first["Type"], json!("Task"));
    assert_eq!(first["Resource"], json!(PROCESS_INPUT_ARN));
    assert_eq!(first["Next"], json!(states::COMPUTE_GRADIENTS));
    let map = map_state(&def);
    assert_eq!(map["Type"], json!("Map"));
    assert_eq!(map["ItemsPath"], json!("$.events"));
    assert_eq!(
        map["MaxConcurrency"],
        json!(8),
        "0 means all K batches at once"
    );
    assert_eq!(map["End"], json!(true));
    let task = task_state(&def);
    assert_eq!(task["Resource"], json!(COMPUTE_GRADIENT_ARN));
    let retry = &task["Retry"][0];
    let errors = retry["ErrorEquals"].as_array().unwrap();
    for e in [
        "Lambda.ServiceException",
        "Lambda.TooManyRequestsException",
        "States.Timeout",
    ] {
        assert!(errors.contains(&json!(e)), "{e} not retried: {retry}");
    }
    assert_eq!(retry["MaxAttempts"], json!(3));
    assert_eq!(retry["BackoffRate"], json!(2.0));
    assert_eq!(task["Catch"][0]["Next"], json!(states::BATCH_FAILED));
    assert!(task.get("TimeoutSeconds").is_none());
    let failed = &map["ItemProcessor"]["States"][states::BATCH_FAILED];
    assert_eq!(failed["Type"], json!("Fail"));

    let mut c = config(8);
    c.max_concurrency = 3;
    c.task_timeout_seconds = Some(120);
    c.on_failure = OnTaskFailure::RecordError;
    c.retry = RetryPolicy {
        errors: vec!["Lambda.ServiceException".into()],
        interval_seconds: 2,
        max_attempts: 5,
        backoff_rate: 1.5,
    };
    let def = state_machine_definition(&c).unwrap();
    assert_eq!(map_state(&def)["MaxConcurrency"], json!(3));
    let task = task_state(&def);
    assert_eq!(task["TimeoutSeconds"], json!(120));
    assert_eq!(task["Retry"][0]["MaxAttempts"], json!(5));
    assert_eq!(task["Retry"][0]["IntervalSeconds"], json!(2));
    let failed = &map_state(&def)["ItemProcessor"]["States"][states::BATCH_FAILED];
    assert_eq!(failed["Type"], json!("Pass"));
    assert_eq!(failed["Parameters"]["failed"], json!(true));

    c.max_concurrency = 50;
    let def = state_machine_definition(&c).unwrap();
    assert_eq!(map_state(&def)["MaxConcurrency"], json!(8), "clamped to K");
}

#[test]
fn bad_options_are_refused() {
    assert!(matches!(
        state_machine_definition(&config(0)),
        Err(AslError::Invalid(_))
    ));
    let mut c = config(4);
    c.compute_gradient_arn = " ".into();
    let err = state_machine_definition(&c).unwrap_err();
    assert!(err.to_string().contains("compute_gradient ARN"), "{err}");
    let mut c = config(4);
    c.retry.backoff_rate = 0.5;
    assert!(state_machine_definition(&c).is_err());
    let mut c = config(4);
    c.task_timeout_seconds = Some(0);
    assert!(state_machine_definition(&c).is_err());
}

#[test]
fn generated_definitions_pass_asl_validator() {
    let mut configs = vec![config(1), config(16)];
    let mut c = config(32);
    c.max_concurrency = 4;
    c.task_timeout_seconds = Some(300);
    c.on_failure = OnTaskFailure::RecordError;
    configs.push(c);
    let mut c = config(4);
    c.retry.max_attempts = 0;
    configs.push(c);
    for c in &configs {
        let def = state_machine_definition(c).unwrap();
        let (ok, output) = validate(&def);
        assert!(
            ok,
            "asl-validator rejected the definition for {c:?}: {output}\n{def:#}"
        );
    }
}

#[test]
fn asl_validator_rejects_broken_definitions() {
    // A Catch pointing at a state that does not exist.
    let mut def = state_machine_definition(&config(4)).unwrap();
    def["States"][states::COMPUTE_GRADIENTS]["ItemProcessor"]["States"]
        .as_object_mut()
        .unwrap()
        .remove(states::BATCH_FAILED);
    let (ok, output) = validate(&def);
    assert!(
        !ok,
        "asl-validator accepted a Catch to a missing state: {output}"
    );

    // A Map state without its processor.
    let mut def = state_machine_definition(&config(4)).unwrap();
    def["States"][states::COMPUTE_GRADIENTS]
        .as_object_mut()
        .unwrap()
        .remove("ItemProcessor");
    let (ok, output) = validate(&def);
    assert!(
        !ok,
        "asl-validator accepted a Map without ItemProcessor: {output}"
    );
}
