//! `--serverless stepfn`: one Step Functions execution per round (aws-sdk-sfn), running the
//! state machine of `peerless stepfn generate`: `process_input` expands the peer's request,
//! a Map state runs `compute_gradient` on each batch with the definition's retries. The
//! peer waits with `DescribeExecution` at a growing interval (50 ms doubling to 1 s) instead
//! of the original's fixed 2 s sleeps: Standard workflows offer no blocking wait.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_sfn::Client;
use aws_sdk_sfn::types::ExecutionStatus;
use backon::Retryable;
use peerless_lambda::{ComputeGradientEvent, ComputeGradientResponse, ProcessInputRequest};
use serde_json::Value;

use super::functions::{
    Attempt, CallPolicy, Failure, Functions, FunctionsRound, Outcome, invocation,
};

/// Which state machine, and how long a round may take.
#[derive(Clone, Debug)]
pub struct StepFnSettings {
    /// ARN of the state machine (`peerless stepfn generate` made its definition).
    pub state_machine_arn: String,
    /// Custom Step Functions endpoint; `None` uses AWS or `AWS_ENDPOINT_URL_SFN`.
    pub endpoint_url: Option<String>,
    /// Region; `None` uses the AWS default chain.
    pub region: Option<String>,
    /// The Map's concurrency (for the offload planner) and the time limit per batch.
    pub policy: CallPolicy,
    /// Memory size assumed for billing when the functions do not report one.
    pub memory_mb: u32,
}

/// Runs a round as one Step Functions execution.
pub struct StepFunctions {
    client: Client,
    settings: StepFnSettings,
}

impl StepFunctions {
    /// A client with credentials from the AWS default chain.
    pub async fn connect(settings: StepFnSettings) -> Self {
        let sdk = peerless_data::store::s3::load_sdk_config(settings.region.as_deref()).await;
        let mut config = aws_sdk_sfn::config::Builder::from(&sdk);
        if let Some(endpoint) = &settings.endpoint_url {
            config = config.endpoint_url(endpoint);
        }
        StepFunctions {
            client: Client::from_conf(config.build()),
            settings,
        }
    }

    /// Time the whole execution may take: every wave of batches with all its retries.
    fn deadline(&self, batches: usize) -> Duration {
        let p = &self.settings.policy;
        let waves = batches.div_ceil(p.concurrency.max(1)) as u32;
        p.timeout * (p.retries + 1) * waves.max(1) + Duration::from_secs(30)
    }

    async fn execute(
        &self,
        request: &ProcessInputRequest,
        events: &[ComputeGradientEvent],
    ) -> Result<(Vec<Outcome>, u64)> {
        let start = Instant::now();
        let ctx = &request.context;
        let name = format!(
            "peerless-{}-r{}-{}-{:08x}",
            ctx.run_id,
            ctx.rank,
            ctx.round,
            rand::random::<u32>()
        );
        let input = serde_json::to_string(request).context("serialising the request")?;
        let arn = &self.settings.state_machine_arn;
        let started = self
            .client
            .start_execution()
            .state_machine_arn(arn)
            .name(&name)
            .input(input)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "starting an execution of {arn}: {}",
                    aws_sdk_sfn::error::DisplayErrorContext(&e)
                )
            })?;
        let execution = started.execution_arn().to_owned();
        let deadline = start + self.deadline(events.len());
        let mut pause = Duration::from_millis(50);
        let described = loop {
            let d = self
                .client
                .describe_execution()
                .execution_arn(&execution)
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "waiting for {execution}: {}",
                        aws_sdk_sfn::error::DisplayErrorContext(&e)
                    )
                })?;
            if *d.status() != ExecutionStatus::Running {
                break d;
            }
            if Instant::now() + pause > deadline {
                let _ = self
                    .client
                    .stop_execution()
                    .execution_arn(&execution)
                    .error("PeerTimeout")
                    .send()
                    .await;
                bail!(
                    "execution {execution} still running after {:.0} s; stopped it",
                    start.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        };
        let transitions = self.state_transitions(&execution).await;
        match described.status() {
            ExecutionStatus::Succeeded => {
                let output = described.output().unwrap_or("null");
                let results: Vec<Value> = serde_json::from_str(output).with_context(|| {
                    format!("execution {execution} output is not a JSON array of results")
                })?;
                if results.len() != events.len() {
                    bail!(
                        "execution {execution} returned {} results for {} batches",
                        results.len(),
                        events.len()
                    );
                }
                // Results are matched to batches by their batch number, not their position.
                let mut by_batch: std::collections::HashMap<u64, Value> = results
                    .into_iter()
                    .filter_map(|v| Some((v.get("batch")?.as_u64()?, v)))
                    .collect();
                let memory = self.settings.memory_mb;
                let outcomes = events
                    .iter()
                    .map(|event| match by_batch.remove(&u64::from(event.batch)) {
                        Some(value) => outcome(value, start, memory),
                        None => Err(Failure {
                            attempts: 1,
                            message: format!(
                                "execution {execution} returned no result for batch {}",
                                event.batch
                            ),
                        }),
                    })
                    .collect();
                Ok((outcomes, transitions))
            }
            status => bail!(
                "execution {execution} ended {}: {}: {}",
                status.as_str(),
                described.error().unwrap_or("no error name"),
                described.cause().unwrap_or("no cause given")
            ),
        }
    }

    /// State transitions of the execution, which Step Functions Standard bills: one per
    /// state entered (retries included).
    async fn state_transitions(&self, execution: &str) -> u64 {
        let mut pages = self
            .client
            .get_execution_history()
            .execution_arn(execution)
            .max_results(1000)
            .into_paginator()
            .send();
        let mut count = 0u64;
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => {
                    count += page
                        .events()
                        .iter()
                        .filter(|e| e.r#type().as_str().ends_with("StateEntered"))
                        .count() as u64;
                }
                Err(e) => {
                    tracing::debug!(
                        "execution history of {execution} unavailable: {}",
                        aws_sdk_sfn::error::DisplayErrorContext(&e)
                    );
                    break;
                }
            }
        }
        count
    }
}

/// One element of the Map's output: a response, or the record of a failed batch.
fn outcome(value: Value, start: Instant, memory_mb: u32) -> Outcome {
    if value.get("failed").and_then(Value::as_bool) == Some(true) {
        let error = value.get("error").cloned().unwrap_or(Value::Null);
        return Err(Failure {
            attempts: 1,
            message: format!(
                "{}: {}",
                error
                    .get("Error")
                    .and_then(Value::as_str)
                    .unwrap_or("error"),
                error
                    .get("Cause")
                    .and_then(Value::as_str)
                    .unwrap_or("no cause given")
            ),
        });
    }
    match serde_json::from_value::<ComputeGradientResponse>(value) {
        Ok(response) => Ok(invocation(
            Attempt {
                response,
                report: None,
            },
            1,
            start,
            memory_mb,
        )),
        Err(e) => Err(Failure {
            attempts: 1,
            message: format!("not a compute_gradient response: {e}"),
        }),
    }
}

impl Functions for StepFunctions {
    async fn run(
        &self,
        request: &ProcessInputRequest,
        events: &[ComputeGradientEvent],
    ) -> FunctionsRound {
        let attempts = AtomicU32::new(0);
        let execution = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.execute(request, events).await
        };
        let result = execution
            .retry(self.settings.policy.backoff())
            .notify(|e, wait| {
                tracing::warn!("Step Functions round failed, retrying in {wait:?}: {e:#}")
            })
            .await;
        match result {
            Ok((outcomes, state_transitions)) => FunctionsRound {
                outcomes,
                state_transitions,
                ..FunctionsRound::default()
            },
            Err(e) => {
                let (attempts, message) = (attempts.into_inner(), format!("{e:#}"));
                FunctionsRound {
                    outcomes: events
                        .iter()
                        .map(|_| {
                            Err(Failure {
                                attempts,
                                message: message.clone(),
                            })
                        })
                        .collect(),
                    ..FunctionsRound::default()
                }
            }
        }
    }

    fn concurrency(&self) -> usize {
        self.settings.policy.concurrency.max(1)
    }
}
