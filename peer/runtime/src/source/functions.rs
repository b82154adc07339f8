//! Where offloaded batches run. One trait, [`Functions`], with its implementations beside it:
//! the in-process pool ([`super::pool`]), AWS Lambda ([`super::lambda`]) and Step Functions
//! ([`super::stepfn`]). Each takes a round's per-batch `compute_gradient` events and reports,
//! per batch, the function's response and what it cost; gradients stay in the store.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::metrics::BillingSource;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use peerless_lambda::{ComputeGradientEvent, ComputeGradientResponse, ProcessInputRequest};

use super::lambda::LambdaFunctions;
use super::pool::PoolFunctions;
use super::stepfn::StepFunctions;

/// One batch that a function computed: its response plus what the call cost.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// What the function returned.
    pub response: ComputeGradientResponse,
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// Wall time seen by the peer, from the first attempt to the response, milliseconds.
    pub wall_ms: f64,
    /// Billed duration, milliseconds (AWS rounds up to 1 ms).
    pub billed_ms: u64,
    /// Memory the function was configured with, MB (Lambda bills memory x duration).
    pub memory_mb: u32,
    /// Initialisation time of a cold start, when the platform reported one.
    pub init_ms: Option<f64>,
    /// Where `billed_ms` and `memory_mb` come from.
    pub billing: BillingSource,
}

/// A batch that no function computed, after every attempt.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Attempts made.
    pub attempts: u32,
    /// The last error, with its cause chain.
    pub message: String,
}

/// What happened to one offloaded batch.
pub type Outcome = Result<Invocation, Failure>;

/// Everything a whole round of functions reports.
#[derive(Clone, Debug, Default)]
pub struct FunctionsRound {
    /// One outcome per event, in event order.
    pub outcomes: Vec<Outcome>,
    /// Step Functions state transitions billed for the round (0 for direct invocations).
    pub state_transitions: u64,
    /// Wall time from the start of the first call to the last outcome.
    pub elapsed: Duration,
}

/// A place that runs `compute_gradient` for a round's offloaded batches.
pub trait Functions: Send + Sync + 'static {
    /// Runs every event; `request` is what `process_input` expanded into `events` (Step
    /// Functions sends it instead of the events).
    fn run(
        &self,
        request: &ProcessInputRequest,
        events: &[ComputeGradientEvent],
    ) -> impl Future<Output = FunctionsRound> + Send;

    /// How many batches run at once, for the offload planner.
    fn concurrency(&self) -> usize;
}

/// The backend a peer was configured with; an enum so a round can be spawned onto the
/// runtime while the peer computes its own batches.
#[derive(Clone)]
pub enum AnyFunctions {
    /// `--serverless local`.
    Pool(Arc<PoolFunctions>),
    /// `--serverless lambda`.
    Lambda(Arc<LambdaFunctions>),
    /// `--serverless stepfn`.
    StepFn(Arc<StepFunctions>),
}

impl AnyFunctions {
    /// Starts the round on the runtime and returns at once.
    pub fn spawn(
        &self,
        request: ProcessInputRequest,
        events: Vec<ComputeGradientEvent>,
    ) -> tokio::task::JoinHandle<FunctionsRound> {
        let functions = self.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut round = match functions {
                Self::Pool(f) => f.run(&request, &events).await,
                Self::Lambda(f) => f.run(&request, &events).await,
                Self::StepFn(f) => f.run(&request, &events).await,
            };
            // Step Functions answers for a whole round, out of reach of `call_each`'s
            // check: a response for another batch is a failed batch whatever the backend.
            for (outcome, event) in round.outcomes.iter_mut().zip(&events) {
                if let Ok(invocation) = outcome
                    && let Err(e) = check_response(event, &invocation.response)
                {
                    *outcome = Err(Failure {
                        attempts: invocation.attempts,
                        message: format!("{e:#}"),
                    });
                }
            }
            round.elapsed = start.elapsed();
            round
        })
    }

    /// Batches run at once.
    pub fn concurrency(&self) -> usize {
        match self {
            Self::Pool(f) => f.concurrency(),
            Self::Lambda(f) => f.concurrency(),
            Self::StepFn(f) => f.concurrency(),
        }
    }
}

/// Retry and timeout rules of per-batch invocations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallPolicy {
    /// Batches in flight at once.
    pub concurrency: usize,
    /// Retries after a failed attempt.
    pub retries: u32,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Delay before the first retry (doubling after that).
    pub first_backoff: Duration,
}

impl CallPolicy {
    /// The waits between attempts: exponential from `first_backoff`, at most 10 s, at most
    /// `retries` of them. Per-batch calls and Step Functions executions retry the same way.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first_backoff)
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.retries as usize)
    }
}

/// What one attempt produced when it succeeded: the response plus billing facts the
/// backend could read.
pub struct Attempt {
    /// The function's response.
    pub response: ComputeGradientResponse,
    /// Billed duration, memory and init time when the platform reported them.
    pub report: Option<peerless_lambda::billing::InvocationReport>,
}

/// Runs `call` on every event, at most `policy.concurrency` at once, retrying each failed or
/// timed-out attempt up to `policy.retries` times with exponential backoff; outcomes come
/// back in event order. `memory_mb` is used for billing when the platform does not report.
pub async fn call_each<F, Fut>(
    events: &[ComputeGradientEvent],
    policy: CallPolicy,
    memory_mb: u32,
    call: F,
) -> Vec<Outcome>
where
    F: Fn(ComputeGradientEvent) -> Fut + Send + Sync,
    Fut: Future<Output = anyhow::Result<Attempt>> + Send,
{
    let call = &call;
    let runs = events
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, event)| async move {
            let start = Instant::now();
            let attempts = std::sync::atomic::AtomicU32::new(0);
            let attempt = || {
                let event = event.clone();
                let attempts = &attempts;
                async move {
                    let n = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    let answer = tokio::time::timeout(policy.timeout, call(event.clone()))
                        .await
                        .map(|r| {
                            r.and_then(|done| {
                                check_response(&event, &done.response)?;
                                Ok(done)
                            })
                        });
                    match answer {
                        Ok(Ok(done)) => Ok(done),
                        Ok(Err(e)) => {
                            tracing::warn!(
                                batch = event.batch,
                                attempt = n,
                                "invocation failed: {e:#}"
                            );
                            Err(e)
                        }
                        Err(_) => {
                            tracing::warn!(
                                batch = event.batch,
                                attempt = n,
                                "invocation timed out"
                            );
                            Err(anyhow::anyhow!(
                                "timed out after {:.1} s (--function-timeout)",
                                policy.timeout.as_secs_f64()
                            ))
                        }
                    }
                }
            };
            let result = attempt.retry(policy.backoff()).await;
            let attempts = attempts.into_inner();
            let outcome = match result {
                Ok(done) => Ok(invocation(done, attempts, start, memory_mb)),
                Err(e) => Err(Failure {
                    attempts,
                    message: format!("{e:#}"),
                }),
            };
            (index, outcome)
        });
    let mut done: Vec<(usize, Outcome)> = futures::stream::iter(runs)
        .buffer_unordered(policy.concurrency.max(1))
        .collect()
        .await;
    done.sort_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, outcome)| outcome).collect()
}

/// Checks that a function answered the event it was given: same run, round, rank, batch
/// and gradient key, and a finite loss over a plausible number of samples. A response that
/// names another key would make the peer read (and average) an object it never asked for,
/// so a mismatch is a failed call, retried and then handled by `--on-function-failure`.
pub fn check_response(
    event: &ComputeGradientEvent,
    response: &ComputeGradientResponse,
) -> anyhow::Result<()> {
    let ctx = &event.context;
    let mut wrong = Vec::new();
    if response.gradient_key != event.gradient_key {
        wrong.push(format!(
            "gradient key {:?} (asked for {:?})",
            response.gradient_key, event.gradient_key
        ));
    }
    if response.batch != event.batch {
        wrong.push(format!(
            "batch {} (asked for {})",
            response.batch, event.batch
        ));
    }
    if response.run_id != ctx.run_id {
        wrong.push(format!(
            "run {} (asked for {})",
            response.run_id, ctx.run_id
        ));
    }
    if response.round != ctx.round {
        wrong.push(format!(
            "round {} (asked for {})",
            response.round, ctx.round
        ));
    }
    if response.rank != ctx.rank {
        wrong.push(format!("rank {} (asked for {})", response.rank, ctx.rank));
    }
    if !response.loss.is_finite() {
        wrong.push(format!("a loss of {}", response.loss));
    }
    if response.samples == 0 || response.correct > response.samples {
        wrong.push(format!(
            "{} correct of {} samples",
            response.correct, response.samples
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "the function's response does not match the call for batch {}: {}",
            event.batch,
            wrong.join(", ")
        )
    }
}

/// An [`Invocation`] from a successful attempt, with billing from the platform's report or
/// estimated from the handler's own duration.
pub fn invocation(done: Attempt, attempts: u32, start: Instant, memory_mb: u32) -> Invocation {
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    match done.report {
        Some(r) => Invocation {
            billed_ms: r.billed_duration_ms,
            memory_mb: r.memory_size_mb,
            init_ms: r.init_duration_ms,
            billing: BillingSource::Report,
            response: done.response,
            attempts,
            wall_ms,
        },
        None => Invocation {
            billed_ms: peerless_lambda::billing::billed_ms(done.response.timings.total_ms),
            memory_mb: done.response.runtime.memory_limit_mb.unwrap_or(memory_mb),
            init_ms: None,
            billing: BillingSource::Estimate,
            response: done.response,
            attempts,
            wall_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerless_lambda::{RoundContext, StoreLocation};
    use peerless_models::{Architecture, Loss, ModelSpec};

    fn event(batch: u32) -> ComputeGradientEvent {
        ComputeGradientEvent {
            context: RoundContext {
                run_id: "0123456789abcdef0123456789abcdef".into(),
                round: 4,
                rank: 1,
                world_size: 2,
                model: ModelSpec::new(Architecture::TinyCnn),
                loss: Loss::CrossEntropy,
                transform: peerless_data::TransformSpec::new(1, 28),
                store: StoreLocation::new("/tmp/store"),
                weights_key: "w.bin".into(),
            },
            batch,
            augment_seed: 0,
            batch_key: format!("b-{batch}"),
            gradient_key: format!("g/batch-{batch}.grad"),
        }
    }

    fn answer(event: &ComputeGradientEvent) -> ComputeGradientResponse {
        ComputeGradientResponse {
            gradient_key: event.gradient_key.clone(),
            run_id: event.context.run_id.clone(),
            round: event.context.round,
            rank: event.context.rank,
            batch: event.batch,
            loss: 0.5,
            samples: 8,
            correct: 3,
            element_count: 10,
            gradient_bytes: 100,
            weights_cached: false,
            model_cached: false,
            timings: Default::default(),
            runtime: Default::default(),
        }
    }

    #[test]
    fn responses_must_answer_the_call() {
        let e = event(2);
        assert!(check_response(&e, &answer(&e)).is_ok());
        let wrong: [fn(&mut ComputeGradientResponse); 7] = [
            |r| r.gradient_key = "g/batch-0.grad".into(),
            |r| r.batch = 0,
            |r| r.run_id = "ffffffffffffffffffffffffffffffff".into(),
            |r| r.round = 5,
            |r| r.rank = 0,
            |r| r.loss = f32::NAN,
            |r| r.correct = 9,
        ];
        for change in wrong {
            let mut r = answer(&e);
            change(&mut r);
            let err = check_response(&e, &r).unwrap_err().to_string();
            assert!(err.contains("does not match the call for batch 2"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_mismatched_response_is_a_failed_attempt_and_retried() {
        let policy = CallPolicy {
            concurrency: 2,
            retries: 2,
            timeout: Duration::from_secs(5),
            first_backoff: Duration::from_millis(1),
        };
        let calls = std::sync::atomic::AtomicU32::new(0);
        let events = [event(0), event(1)];
        // Batch 0 answers for another key on its first attempt only; batch 1 always does.
        let outcomes = call_each(&events, policy, 128, |e| {
            let n = match e.batch {
                0 => calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                _ => u32::MAX,
            };
            async move {
                let mut response = answer(&e);
                if e.batch == 1 || n == 0 {
                    response.gradient_key = "someone/else.grad".into();
                }
                Ok(Attempt {
                    response,
                    report: None,
                })
            }
        })
        .await;
        let first = outcomes[0].as_ref().expect("batch 0 succeeds when retried");
        assert_eq!(first.attempts, 2);
        assert_eq!(first.response.gradient_key, events[0].gradient_key);
        let failed = outcomes[1]
            .as_ref()
            .expect_err("batch 1 never answers right");
        assert_eq!(failed.attempts, 3);
        assert!(
            failed.message.contains("someone/else.grad"),
            "{}",
            failed.message
        );
    }
}
