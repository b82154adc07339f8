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
        let mut upload_failed = false;
        if let (Some(o), Some(first)) = (&self.offload, theirs.first()) {
            let t = Instant::now();
            let uploaded = upload_round(o, work.round, first.0, theirs.len(), model, weights).await;
            report.upload_time_s = t.elapsed().as_secs_f64();
            let key = weights_key(&o.prefix, work.round, o.context.rank);
            match uploaded {
                Ok(request) => match process_input::expand(&request) {
                    Ok(events) => {
                        let handle = o.functions.spawn(request, events.events.clone());
                        pending = Some((handle, events));
                    }
                    Err(e) => {
                        delete_all(o, std::iter::once(key)).await;
                        return Err(e.into());
                    }
                },
                Err(e) => {
                    // The weights may have landed although the answer was lost: delete them
                    // either way, so a failed round leaves nothing behind.
                    delete_all(o, std::iter::once(key)).await;
                    if o.on_failure == OnFunctionFailure::Fail {
                        return Err(e.context(format!(
                            "round {}: preparing the functions (add --on-function-failure \
                             local to compute the batches on the peer when the store fails)",
                            work.round
                        )));
                    }
                    tracing::warn!(
                        round = work.round,
                        batches = theirs.len(),
                        "preparing the functions failed ({e:#}); computing their batches here"
                    );
                    report.failed_attempts += 1;
                    upload_failed = true;
                }
            }
        }

        let t = Instant::now();
        let local = &mut self.local;
        let mine_done =
            tokio::task::block_in_place(|| local.accumulate(work.round, mine, model, grad));
        let mut local_time = t.elapsed();
        let mut totals = match mine_done {
            Ok(totals) => totals,
            Err(e) => {
                // Let the functions finish before deleting what they write.
                if let (Some((handle, events)), Some(o)) = (pending, &self.offload) {
                    let _ = handle.await;
                    cleanup(o, &events.events).await;
                }
                return Err(e);
            }
        };
        self.estimates.observe_local(mine.len(), local_time);

        if upload_failed {
            let t = Instant::now();
            let local = &mut self.local;
            let done =
                tokio::task::block_in_place(|| local.accumulate(work.round, theirs, model, grad))?;
            local_time += t.elapsed();
            totals.merge(done);
            report.fallback_batches += theirs.len();
        }

        if let (Some((handle, events)), Some(o)) = (pending, &self.offload) {
            let round = match handle.await {
                Ok(round) => round,
                Err(e) => {
                    cleanup(o, &events.events).await;
                    return Err(anyhow::Error::new(e).context("the function calls panicked"));
                }
            };
            report.functions_time_s = round.elapsed.as_secs_f64();
            report.state_transitions = round.state_transitions;
            let t = Instant::now();
            let gathered = gather(
                o,
                &mut self.local,
                Gather {
                    work,
                    theirs,
                    round: &round,
                    events: &events.events,
                    model,
                    weights,
                },
                grad,
                &mut totals,
                &mut report,
            )
            .await;
            // Success or not, the round's exchange objects go.
            cleanup(o, &events.events).await;
            let fallback_time = gathered?;
            local_time += fallback_time;
            let fetch = t.elapsed().saturating_sub(fallback_time);
            report.fetch_time_s = fetch.as_secs_f64();
            self.estimates.observe_remote(
                theirs.len() - report.fallback_batches,
                o.functions.concurrency(),
                round.elapsed,
                Duration::from_secs_f64(report.upload_time_s) + fetch,
            );
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

/// What [`gather`] reads: one round's offloaded batches and what the functions did.
struct Gather<'a> {
    work: &'a RoundWork,
    theirs: &'a [(usize, std::ops::Range<usize>)],
    round: &'a functions::FunctionsRound,
    events: &'a [peerless_lambda::ComputeGradientEvent],
    model: &'a Model,
    weights: &'a [f32],
}

/// Reads the functions' gradients and adds them into `grad` in batch order; with
/// `--on-function-failure local`, batches whose function failed or whose gradient could not
/// be read (after the store's retries) are computed by `local` instead. Returns the time
/// spent on such fallbacks. The caller deletes the round's objects, whatever happens here.
async fn gather(
    o: &Offload,
    local: &mut LocalSource,
    g: Gather<'_>,
    grad: &mut [f32],
    totals: &mut Totals,
    report: &mut SourceReport,
) -> Result<Duration> {
    let round_no = g.work.round;
    let expected = ExpectedGradient {
        run_id: o.context.run_id.parse()?,
        round: round_no,
        model_fingerprint: gradient::fingerprint(g.model.spec(), g.weights.len()),
        element_count: g.weights.len() as u64,
    };
    let store = o.store.clone();
    // The key the peer chose, never one a response names (`check_response` also refuses
    // responses naming another key).
    let mut fetched = futures::stream::iter(g.round.outcomes.iter().zip(g.events).map(
        |(outcome, event)| {
            let store = store.clone();
            let key = outcome.as_ref().ok().map(|_| event.gradient_key.clone());
            async move {
                match key {
                    Some(key) => Some(store.get(&key).await.map(|b| (key, b))),
                    None => None,
                }
            }
        },
    ))
    .buffered(4);
    let mut fallback_time = Duration::ZERO;
    for ((outcome, event), batch) in g.round.outcomes.iter().zip(g.events).zip(g.theirs) {
        let got = fetched.next().await.flatten();
        let why_local = match (outcome, got) {
            (Ok(inv), Some(Ok((key, bytes)))) => {
                let r = &inv.response;
                let samples = batch.1.len();
                match add_gradient(&bytes, &expected, r.samples, samples, grad) {
                    Ok(()) => {
                        totals.add(f64::from(r.loss), r.correct as usize, samples);
                        report.failed_attempts += inv.attempts - 1;
                        report.invocations.push(InvocationRecord::from(inv));
                        continue;
                    }
                    Err(e) => {
                        // The function ran (and was billed) but its gradient is unusable.
                        report.failed_attempts += inv.attempts;
                        report.invocations.push(InvocationRecord::from(inv));
                        format!("its gradient object {key} was refused: {e}")
                    }
                }
            }
            (Ok(inv), Some(Err(e))) => {
                // The function ran (and was billed); its gradient is out of reach.
                report.failed_attempts += inv.attempts;
                report.invocations.push(InvocationRecord::from(inv));
                format!("reading its gradient failed: {e}")
            }
            (Err(failure), _) => {
                report.failed_attempts += failure.attempts;
                format!(
                    "its function failed after {} attempt(s): {}",
                    failure.attempts, failure.message
                )
            }
            (Ok(_), None) => bail!("batch {}: a successful call without a fetch", event.batch),
        };
        if o.on_failure == OnFunctionFailure::Fail {
            bail!(
                "round {round_no}: batch {} failed: {why_local}\n(add --on-function-failure \
                 local to compute failed batches on the peer instead)",
                event.batch,
            );
        }
        tracing::warn!(
            round = round_no,
            batch = event.batch,
            "{why_local}; computing the batch here"
        );
        let t = Instant::now();
        let one = std::slice::from_ref(batch);
        let done = tokio::task::block_in_place(|| local.accumulate(round_no, one, g.model, grad))?;
        fallback_time += t.elapsed();
        totals.merge(done);
        report.fallback_batches += 1;
    }
    Ok(fallback_time)
}

/// Adds `samples x` a function's gradient into `grad` if it is one this peer can use: of
/// this run, round and model, finite, and computed over the batch's `samples` images as
/// the response says; else leaves `grad` as it was.
fn add_gradient(
    bytes: &[u8],
    expected: &ExpectedGradient,
    reported_samples: u64,
    samples: usize,
    grad: &mut [f32],
) -> Result<()> {
    if reported_samples != samples as u64 {
        bail!("the response counts {reported_samples} samples, the batch has {samples}");
    }
    Ok(gradient::accumulate(bytes, expected, grad, samples as f32)?)
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
    delete_all(o, keys).await;
}

/// Deletes `keys` from the exchange store, 16 at once (each delete retried by the store);
/// failures are logged.
async fn delete_all(o: &Offload, keys: impl Iterator<Item = String>) {
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
