//! The Step Functions state machine of one peer's round (Amazon States Language): a
//! `process_input` task, then a Map state running `compute_gradient` on every batch with
//! bounded concurrency, instead of the original's K hand-written Parallel branches.

use serde_json::{Value, json};

/// Errors the Lambda service raises for transient reasons, worth retrying.
pub const TRANSIENT_LAMBDA_ERRORS: [&str; 4] = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
];

/// How a failed task is retried (one ASL `Retry` rule): which errors, how often, and the
/// exponential backoff between attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Error names matched (`ErrorEquals`).
    pub errors: Vec<String>,
    /// Seconds before the first retry.
    pub interval_seconds: u32,
    /// Retries after the first attempt (0 disables the rule).
    pub max_attempts: u32,
    /// Multiplier of the interval per retry (at least 1).
    pub backoff_rate: f64,
}

impl Default for RetryPolicy {
    /// Transient Lambda errors, task timeouts and store failures: 3 retries after 1, 2 and
    /// 4 seconds.
    fn default() -> Self {
        let mut errors: Vec<String> = TRANSIENT_LAMBDA_ERRORS.map(String::from).to_vec();
        errors.push("States.Timeout".into());
        errors.push("StoreError".into());
        Self {
            errors,
            interval_seconds: 1,
            max_attempts: 3,
            backoff_rate: 2.0,
        }
    }
}

/// What happens when a batch still fails after its retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnTaskFailure {
    /// Go to a Fail state: the Map state and the execution fail with the function's error
    /// name and message, so the peer's round fails with a clear message.
    #[default]
    FailExecution,
    /// Go to a Pass state that records `{failed: true, batch, error}` in place of the
    /// batch's response, so the peer can recompute just the failed batches itself.
    RecordError,
}

impl std::str::FromStr for OnTaskFailure {
    type Err = String;

    /// `fail` or `record`, as `peerless stepfn generate --on-failure` takes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail" => Ok(OnTaskFailure::FailExecution),
            "record" => Ok(OnTaskFailure::RecordError),
            _ => Err(format!("expected `fail` or `record`, got {s:?}")),
        }
    }
}

/// Everything the generated definition depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct StateMachineConfig {
    /// Batches per peer (K of `peerless data split --batches K`), recorded in the comment
    /// and the default concurrency.
    pub batches: u32,
    /// Largest number of batches computed at once; 0 means all K at once (as the
    /// original's K branches).
    pub max_concurrency: u32,
    /// ARN of the `process_input` function.
    pub process_input_arn: String,
    /// ARN of the `compute_gradient` function.
    pub compute_gradient_arn: String,
    /// Retry rule of both tasks.
    pub retry: RetryPolicy,
    /// Time limit of one `compute_gradient` attempt (`TimeoutSeconds`); `None` leaves the
    /// function's own timeout in charge.
    pub task_timeout_seconds: Option<u32>,
    /// Handling of batches that fail for good.
    pub on_failure: OnTaskFailure,
}

impl StateMachineConfig {
    /// Defaults for K batches: all at once, [`RetryPolicy::default`], no task timeout,
    /// failures fail the execution.
    pub fn new(
        batches: u32,
        process_input_arn: impl Into<String>,
        compute_gradient_arn: impl Into<String>,
    ) -> Self {
        Self {
            batches,
            max_concurrency: 0,
            process_input_arn: process_input_arn.into(),
            compute_gradient_arn: compute_gradient_arn.into(),
            retry: RetryPolicy::default(),
            task_timeout_seconds: None,
            on_failure: OnTaskFailure::default(),
        }
    }
}

/// Why a definition cannot be generated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AslError {
    /// An option is outside its valid range.
    #[error("invalid state machine option: {0}")]
    Invalid(String),
}

/// Names of the states, for tests and for reading execution histories.
pub mod states {
    /// The `process_input` task.
    pub const PROCESS_INPUT: &str = "ProcessInput";
    /// The Map state.
    pub const COMPUTE_GRADIENTS: &str = "ComputeGradients";
    /// The `compute_gradient` task inside the Map.
    pub const COMPUTE_GRADIENT: &str = "ComputeGradient";
    /// Where a batch that failed for good goes.
    pub const BATCH_FAILED: &str = "BatchFailed";
}

/// The ASL definition of one peer's round. The execution input is a
/// [`crate::ProcessInputRequest`]; the output is the array of
/// [`crate::ComputeGradientResponse`]s in batch order (with
/// [`OnTaskFailure::RecordError`], failed batches appear as `{failed: true, ...}`).
pub fn state_machine_definition(config: &StateMachineConfig) -> Result<Value, AslError> {
    let invalid = |m: String| Err(AslError::Invalid(m));
    if config.batches == 0 {
        return invalid("batches (K) must be at least 1".into());
    }
    for (name, arn) in [
        ("process_input", &config.process_input_arn),
        ("compute_gradient", &config.compute_gradient_arn),
    ] {
        if arn.trim().is_empty() {
            return invalid(format!("the {name} ARN is empty"));
        }
    }
    let retry = &config.retry;
    if !(retry.backoff_rate.is_finite() && retry.backoff_rate >= 1.0) {
        return invalid(format!(
            "backoff rate {} must be at least 1",
            retry.backoff_rate
        ));
    }
    if retry.max_attempts > 0 && retry.errors.is_empty() {
        return invalid("retries requested for no error names".into());
    }
    if config.task_timeout_seconds == Some(0) {
        return invalid("task timeout must be at least 1 second".into());
    }
    let retries = json!([{
        "ErrorEquals": retry.errors,
        "IntervalSeconds": retry.interval_seconds.max(1),
        "MaxAttempts": retry.max_attempts,
        "BackoffRate": retry.backoff_rate,
    }]);
    let concurrency = if config.max_concurrency == 0 {
        config.batches
    } else {
        config.max_concurrency.min(config.batches)
    };

    let mut compute = json!({
        "Type": "Task",
        "Comment": "Gradient of one batch, written to the store; returns its key, loss and timings",
        "Resource": config.compute_gradient_arn,
        "Catch": [{
            "ErrorEquals": ["States.ALL"],
            "ResultPath": "$.error",
            "Next": states::BATCH_FAILED,
        }],
        "End": true,
    });
    if let Some(t) = config.task_timeout_seconds {
        compute["TimeoutSeconds"] = json!(t);
    }
    let mut process_input = json!({
        "Type": "Task",
        "Comment": "Expand {rank, batch_count, ...} into one compute_gradient event per batch",
        "Resource": config.process_input_arn,
        "Next": states::COMPUTE_GRADIENTS,
    });
    if retry.max_attempts > 0 {
        compute["Retry"] = retries.clone();
        process_input["Retry"] = retries;
    }
    let failed = match config.on_failure {
        OnTaskFailure::FailExecution => json!({
            "Type": "Fail",
            "Comment": "A batch failed after its retries: the round fails with the function's error",
            "ErrorPath": "$.error.Error",
            "CausePath": "$.error.Cause",
        }),
        OnTaskFailure::RecordError => json!({
            "Type": "Pass",
            "Comment": "A batch failed after its retries: record it so the peer computes it itself",
            "Parameters": {
                "failed": true,
                "batch.$": "$.batch",
                "rank.$": "$.rank",
                "round.$": "$.round",
                "batch_key.$": "$.batch_key",
                "gradient_key.$": "$.gradient_key",
                "error.$": "$.error",
            },
            "End": true,
        }),
    };

    Ok(json!({
        "Comment": format!(
            "peerless batch processing: process_input expands a peer's request into per-batch events \
             (K = {} batches per peer), a Map state runs compute_gradient on each, at most {} at once",
            config.batches, concurrency
        ),
        "StartAt": states::PROCESS_INPUT,
        "States": {
            states::PROCESS_INPUT: process_input,
            states::COMPUTE_GRADIENTS: {
                "Type": "Map",
                "ItemsPath": "$.events",
                "MaxConcurrency": concurrency,
                "ItemProcessor": {
                    "ProcessorConfig": { "Mode": "INLINE" },
                    "StartAt": states::COMPUTE_GRADIENT,
                    "States": {
                        states::COMPUTE_GRADIENT: compute,
                        states::BATCH_FAILED: failed,
                    },
                },
                "End": true,
            },
        },
    }))
}
