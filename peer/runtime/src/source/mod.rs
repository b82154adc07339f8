//! Where a peer's shard gradient comes from: its own CPU ([`LocalSource`]) and, with
//! `--serverless`, functions behind the [`functions::Functions`] seam (an in-process pool,
//! AWS Lambda or Step Functions). [`RoundSource`] splits each round's batches between the
//! two (`--offload`), runs both sides at once and sums the batch gradients in batch order,
//! so the result does not depend on where each batch ran.

pub mod functions;
pub mod lambda;
mod local;
pub mod pool;
pub mod stepfn;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::metrics::InvocationRecord;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
pub use local::LocalSource;
use peerless_data::ObjectStore;
use peerless_lambda::gradient::{self, ExpectedGradient};
use peerless_lambda::{ProcessInputRequest, RoundContext, process_input};
use peerless_models::{Model, weights};

use crate::config::OnFunctionFailure;
use crate::offload::{self, OffloadPolicy, SpeedEstimates};
use functions::{AnyFunctions, Invocation};

/// The part of a peer's training shard one round covers: contiguous slices of the shard,
/// each one batch (and, when the split has batch objects, exactly one stored object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundWork {
    /// The round number (0-based, global across epochs).
    pub round: u64,
    /// `(batch index, range of shard samples)` per batch, in batch order.
    pub batches: Vec<(usize, std::ops::Range<usize>)>,
}

/// Running sums over batches, from which the round's mean loss and accuracy follow.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Sum of `batch loss x batch samples`.
    pub loss_sum: f64,
    /// Correctly classified samples.
    pub correct: usize,
    /// Samples.
    pub samples: usize,
}

impl Totals {
    /// Adds one batch with mean loss `loss`.
    pub fn add(&mut self, loss: f64, correct: usize, samples: usize) {
        self.loss_sum += loss * samples as f64;
        self.correct += correct;
        self.samples += samples;
    }

    /// Adds another set of batches.
    pub fn merge(&mut self, other: Totals) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.samples += other.samples;
    }
}

impl From<&Invocation> for InvocationRecord {
    fn from(i: &Invocation) -> Self {
        let r = &i.response;
        InvocationRecord {
            batch: r.batch,
            attempts: i.attempts,
            wall_ms: i.wall_ms,
            billed_ms: i.billed_ms,
            memory_mb: i.memory_mb,
            init_ms: i.init_ms,
            billing: i.billing,
            cold: !r.model_cached,
            load_weights_ms: r.timings.load_weights_ms,
            load_batch_ms: r.timings.load_batch_ms,
            compute_ms: r.timings.compute_ms,
            upload_ms: r.timings.upload_ms,
            handler_ms: r.timings.total_ms,
            gradient_bytes: r.gradient_bytes,
        }
    }
}

/// A shard gradient: the sample-weighted mean of the batch gradients (which equals the mean
/// gradient over every sample of the round), and where its batches ran.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceReport {
    /// Mean training loss over the round's samples.
    pub loss: f64,
    /// Correctly classified training samples (training mode).
    pub correct: usize,
    /// Samples covered.
    pub samples: usize,
    /// Batches computed on this peer as planned.
    pub local_batches: usize,
    /// Batches sent to functions.
    pub offloaded_batches: usize,
    /// Offloaded batches that failed for good and were computed here instead.
    pub fallback_batches: usize,
    /// Wall time of the whole computation, seconds.
    pub compute_time_s: f64,
    /// This peer's own batches (fallbacks included), seconds.
    pub local_time_s: f64,
    /// From the first function call to the last outcome, seconds.
    pub functions_time_s: f64,
    /// Uploading the round's weights for the functions, seconds.
    pub upload_time_s: f64,
    /// Reading and summing the functions' gradients, seconds.
    pub fetch_time_s: f64,
    /// Failed attempts that were retried or fell back.
    pub failed_attempts: u32,
    /// Step Functions state transitions billed.
    pub state_transitions: u64,
    /// Every successful function call.
    pub invocations: Vec<InvocationRecord>,
}

/// The serverless side of a peer: functions, the store they share with it, and the plan.
pub struct Offload {
    /// Where offloaded batches run.
    pub functions: AnyFunctions,
    /// The store holding the split, where weights and gradients are exchanged.
    pub store: Arc<dyn ObjectStore>,
    /// Run, rank, model, transform and store as the functions see them; `round` and
    /// `weights_key` are filled in each round.
    pub context: RoundContext,
    /// The run's base seed (per-batch augmentation seeds derive from it).
    pub seed: u64,
    /// How many batches to offload.
    pub policy: OffloadPolicy,
    /// What to do with batches that failed for good.
    pub on_failure: OnFunctionFailure,
    /// Key prefix of this run's exchange objects.
    pub prefix: String,
}

/// Computes a peer's round gradient: its own batches on its CPU, the others through
/// functions, both at once.
pub struct RoundSource {
    local: LocalSource,
    offload: Option<Offload>,
    estimates: SpeedEstimates,
}

impl RoundSource {
    /// A source computing everything on this peer, or offloading through `offload`.
    pub fn new(local: LocalSource, offload: Option<Offload>) -> Self {
        RoundSource {
            local,
            offload,
            estimates: SpeedEstimates::default(),
        }
    }

    /// Computes the round's mean gradient for `model` (which holds `weights`) into `grad`.
    /// `target` is the shortest gradient time any peer reported last round, for
    /// `--offload auto`.
    pub async fn compute(
        &mut self,
        work: &RoundWork,
        model: &Model,
        weights: &[f32],
        target: Option<Duration>,
        grad: &mut [f32],
    ) -> Result<SourceReport> {
        let start = Instant::now();
        grad.fill(0.0);
        let total = work.batches.len();
        let offloaded = match &self.offload {
            Some(o) => offload::plan(
                o.policy,
                total,
                o.functions.concurrency(),
                &self.estimates,
                target,
            ),
            None => 0,
        };
        let (mine, theirs) = work.batches.split_at(total - offloaded);
        let mut report = SourceReport {
            local_batches: mine.len(),
            offloaded_batches: theirs.len(),
            ..SourceReport::default()
        };

        // Start the functions first, so they run while this peer computes its share.
        let mut pending = None;
        if let (Some(o), Some(first)) = (&self.offload, theirs.first()) {
            let t = Instant::now();
            let request = upload_round(o, work.round, first.0, theirs.len(), model, weights)
                .await
                .with_context(|| format!("round {}: preparing the functions", work.round))?;
            report.upload_time_s = t.elapsed().as_secs_f64();
            let events = process_input::expand(&request)?;
            pending = Some((o.functions.spawn(request, events.events.clone()), events));
        }

        let t = Instant::now();
        let local = &mut self.local;
        let mut totals =
            tokio::task::block_in_place(|| local.accumulate(work.round, mine, model, grad))?;
        let mut local_time = t.elapsed();
        self.estimates.observe_local(mine.len(), local_time);

        if let (Some((handle, events)), Some(o)) = (pending, &self.offload) {
            let round = handle.await.context("the function calls panicked")?;
            report.functions_time_s = round.elapsed.as_secs_f64();
            report.state_transitions = round.state_transitions;
            let t = Instant::now();
            let expected = ExpectedGradient {
                run_id: o.context.run_id.parse()?,
                round: work.round,
                model_fingerprint: gradient::fingerprint(model.spec(), weights.len()),
                element_count: weights.len() as u64,
            };
            let store = o.store.clone();
            let mut fetched = futures::stream::iter(round.outcomes.iter().map(|outcome| {
                let store = store.clone();
                let key = outcome
                    .as_ref()
                    .ok()
                    .map(|i| i.response.gradient_key.clone());
                async move {
                    match key {
                        Some(key) => Some(store.get(&key).await.map(|b| (key, b))),
                        None => None,
                    }
                }
            }))
            .buffered(4);
            let mut fallback_time = Duration::ZERO;
            for ((outcome, event), batch) in round.outcomes.iter().zip(&events.events).zip(theirs) {
                let got = fetched.next().await.flatten();
                match (outcome, got) {
                    (Ok(inv), Some(object)) => {
                        let (key, bytes) = object
                            .with_context(|| format!("reading batch {}'s gradient", batch.0))?;
                        let g = gradient::decode(&bytes, &expected)
                            .with_context(|| format!("gradient object {key}"))?;
                        let r = &inv.response;
                        accumulate(grad, &g, r.samples as usize);
                        totals.add(f64::from(r.loss), r.correct as usize, r.samples as usize);
                        report.failed_attempts += inv.attempts - 1;
                        report.invocations.push(InvocationRecord::from(inv));
                    }
                    (Err(failure), _) => {
                        report.failed_attempts += failure.attempts;
                        if o.on_failure == OnFunctionFailure::Fail {
                            cleanup(o, &events.events).await;
                            bail!(
                                "round {}: batch {} failed after {} attempt(s): {}\n(add \
                                 --on-function-failure local to compute failed batches on \
                                 the peer instead)",
                                work.round,
                                event.batch,
                                failure.attempts,
                                failure.message
                            );
                        }
                        tracing::warn!(
                            round = work.round,
                            batch = event.batch,
                            "function failed ({}); computing the batch here",
                            failure.message
                        );
                        let t = Instant::now();
                        let one = std::slice::from_ref(batch);
                        let local = &mut self.local;
                        let done = tokio::task::block_in_place(|| {
                            local.accumulate(work.round, one, model, grad)
                        })?;
                        fallback_time += t.elapsed();
                        totals.merge(done);
                        report.fallback_batches += 1;
                    }
                    (Ok(_), None) => unreachable!("a successful outcome always has a fetch"),
                }
            }
            drop(fetched);
            local_time += fallback_time;
            let fetch = t.elapsed() - fallback_time;
            report.fetch_time_s = fetch.as_secs_f64();
            self.estimates.observe_remote(
                theirs.len() - report.fallback_batches,
                o.functions.concurrency(),
                round.elapsed,
                Duration::from_secs_f64(report.upload_time_s) + fetch,
            );
            cleanup(o, &events.events).await;
        }

        finish_mean(grad, totals.samples);
        report.loss = totals.loss_sum / totals.samples.max(1) as f64;
        report.correct = totals.correct;
        report.samples = totals.samples;
        report.local_time_s = local_time.as_secs_f64();
        report.compute_time_s = start.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// Key of the weights the functions load in `round`.
fn weights_key(prefix: &str, round: u64, rank: u32) -> String {
    format!("{prefix}/round-{round:06}/rank-{rank:03}/weights.bin")
}

/// Uploads the round's weights and returns the `process_input` request for batches
/// `first .. first + count`.
async fn upload_round(
    o: &Offload,
    round: u64,
    first: usize,
    count: usize,
    model: &Model,
    weights: &[f32],
) -> Result<ProcessInputRequest> {
    let mut context = o.context.clone();
    context.round = round;
    context.weights_key = weights_key(&o.prefix, round, context.rank);
    let blob = weights::encode(model.spec(), weights, &model.buffers()?);
    o.store
        .put(&context.weights_key, blob.into())
        .await
        .with_context(|| format!("uploading the weights to {}", context.weights_key))?;
    Ok(ProcessInputRequest {
        context,
        batch_count: u32::try_from(count)?,
        first_batch: u32::try_from(first)?,
        seed: o.seed,
        batch_prefix: String::new(),
        gradient_prefix: o.prefix.clone(),
    })
}

/// Deletes the round's exchange objects (the weights the events name and their gradients);
/// failures only cost storage, so they are logged, not raised.
async fn cleanup(o: &Offload, events: &[peerless_lambda::ComputeGradientEvent]) {
    let weights = events.first().map(|e| e.context.weights_key.clone());
    let keys = events.iter().map(|e| e.gradient_key.clone()).chain(weights);
    let store = &o.store;
    futures::stream::iter(keys)
        .for_each_concurrent(16, |key| async move {
            if let Err(e) = store.delete(&key).await {
                tracing::warn!("could not delete {key}: {e}");
            }
        })
        .await;
}

/// Adds `n * batch_grad` into `acc`: the running numerator of a sample-weighted mean.
pub(crate) fn accumulate(acc: &mut [f32], batch_grad: &[f32], n: usize) {
    let w = n as f32;
    for (a, g) in acc.iter_mut().zip(batch_grad) {
        *a += w * g;
    }
}

/// Divides the accumulated numerator by the sample count.
pub(crate) fn finish_mean(acc: &mut [f32], samples: usize) {
    let inv = 1.0 / samples.max(1) as f32;
    for a in acc.iter_mut() {
        *a *= inv;
    }
}
