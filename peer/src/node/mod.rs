//! One peer of a data-parallel run: load its shard, and every round compute the shard
//! gradient, exchange it with the other peers, average, and take one optimizer step, so all
//! peers keep bit-identical weights.

pub mod metrics;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use peerless_comm::{
    Averager, CodecSpec, OnTimeout, RoundConfig, RunId, Transport, model_fingerprint,
};
use peerless_data::split::batch_ranges;
use peerless_data::{Dataset, SplitReader, StoreOptions};
use peerless_models::schedule::{EarlyStopping, ReduceLrOnPlateau};
use peerless_models::{Device, Model};

use crate::cli::{ServerlessArgs, ServerlessMode, TrainingArgs};
use crate::eval::evaluate;
use crate::setup::Pipeline;
use crate::source::functions::{AnyFunctions, CallPolicy};
use crate::source::lambda::{LambdaFunctions, LambdaSettings};
use crate::source::offload::OffloadPolicy;
use crate::source::pool::PoolFunctions;
use crate::source::stepfn::{StepFnSettings, StepFunctions};
use crate::source::{LocalSource, Offload, OnFunctionFailure, RoundSource, RoundWork};
use metrics::{MetricsWriter, RoundMetrics, weights_hash};

/// Everything a peer needs to know; identical on every peer of a run except `rank`.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub rank: u32,
    pub size: u32,
    pub run_id: RunId,
    /// Store holding the split written by `peerless data split`.
    pub store: String,
    pub store_options: StoreOptions,
    pub training: TrainingArgs,
    pub resize: Option<usize>,
    /// Evaluate every round: validation loss over every peer's validation shard (drives
    /// the schedule and early stopping identically on all peers) and test accuracy.
    pub evaluation: bool,
    /// Evaluate on at most this many images of each set (faster rounds for big models).
    pub eval_limit: Option<usize>,
    pub codec: CodecSpec,
    /// Rounds per pass over the shard; 1 is the original (one step per epoch).
    pub rounds_per_epoch: usize,
    pub round_timeout: Duration,
    pub on_timeout: OnTimeout,
    pub max_chunk_bytes: usize,
    pub metrics_out: Option<PathBuf>,
    /// Serverless offload (`--serverless none` keeps every batch on the peer).
    pub serverless: ServerlessArgs,
    /// How fast the peer's own batches may run.
    pub capability: Capability,
}

/// A peer's compute capability, enforced on its own batches (not on its functions), so a
/// study can have slow and fast peers on one machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Capability {
    /// Pace relative to this machine, in (0, 1]: a CPU duty cycle.
    pub speed: f64,
    /// Threads of the peer's own batches (`None`: every core).
    pub threads: Option<usize>,
}

impl Default for Capability {
    fn default() -> Self {
        Capability {
            speed: 1.0,
            threads: None,
        }
    }
}

/// How a peer's run ended.
#[derive(Clone, Debug)]
pub struct NodeSummary {
    pub rank: u32,
    pub rounds: Vec<RoundMetrics>,
}

/// A peer with its shard loaded and its replica built, ready to join the exchange: preparing
/// comes first so a bad split or model is reported before any connection is made.
pub struct Node {
    config: NodeConfig,
    model: Model,
    weights: Vec<f32>,
    source: RoundSource,
    ranges: Vec<std::ops::Range<usize>>,
    round_batches: Vec<std::ops::Range<usize>>,
    val_sets: Vec<Dataset>,
    test: Dataset,
    eval_tf: peerless_data::Transform,
}

impl Node {
    /// Loads the peer's shard (and evaluation sets) from the store and builds its replica.
    pub async fn prepare(config: &NodeConfig, device: &Device) -> Result<Node> {
        let t = &config.training;
        let reader = SplitReader::open_url(&config.store, &config.store_options)
            .await
            .with_context(|| format!("opening the split in {}", config.store))?;
        let manifest = reader.manifest().clone();
        if manifest.peers != config.size as usize {
            bail!(
                "the split in {} has {} peer shards but this run has --size {}; split again \
                 with `peerless data split --size {}`",
                config.store,
                manifest.peers,
                config.size,
                config.size
            );
        }
        let rank = config.rank as usize;
        let train = reader.train(rank).await?;
        let test = limit(reader.test().await?, config.eval_limit)?;
        let mut val_sets = Vec::new();
        if config.evaluation {
            for r in 0..manifest.peers {
                val_sets.push(limit(reader.val(r).await?, config.eval_limit)?);
            }
        }
        let kind = manifest.dataset;
        let pipeline = Pipeline::new(
            t.model,
            kind,
            train.shape(),
            manifest.num_classes,
            config.resize,
        )?;
        let (train_tf, eval_tf) = pipeline.transforms(kind, train.shape())?;
        let model = Model::new(pipeline.spec, device, t.seed)?;
        let weights = model.params()?;
        // Batches: the stored batch objects when the split has them, else batch-size chunks.
        let ranges: Vec<_> = match manifest.batches_per_peer {
            Some(k) => batch_ranges(train.len(), k),
            None => (0..train.len())
                .step_by(t.batch_size as usize)
                .map(|s| s..(s + t.batch_size as usize).min(train.len()))
                .collect(),
        };
        // Exactly `rounds_per_epoch` rounds per pass (at most one per batch), each a
        // contiguous run of batches.
        let round_batches =
            batch_ranges(ranges.len(), config.rounds_per_epoch.clamp(1, ranges.len()));
        let mut local =
            LocalSource::new(weights.len(), train, train_tf, t.loss, t.seed, config.rank)
                .with_speed(config.capability.speed);
        if let Some(threads) = config.capability.threads {
            local = local.with_threads(threads)?;
        }
        let offload = offload(config, &pipeline, manifest.batches_per_peer, device).await?;
        let source = RoundSource::new(local, offload);
        Ok(Node {
            config: config.clone(),
            model,
            weights,
            source,
            ranges,
            round_batches,
            val_sets,
            test,
            eval_tf,
        })
    }

    /// Trains to the end over `transport`.
    pub async fn run<T: Transport>(self, transport: T) -> Result<NodeSummary> {
        let Node {
            config,
            mut model,
            mut weights,
            mut source,
            ranges,
            round_batches,
            val_sets,
            test,
            mut eval_tf,
        } = self;
        let config = &config;
        let t = &config.training;
        let n = weights.len();
        let mut optimizer = crate::cmd::train::optimizer_config(t).build(t.optimizer, n)?;
        let mut plateau = ReduceLrOnPlateau::new(
            t.lr,
            t.plateau_factor,
            t.plateau_patience as usize,
            t.min_lr,
        )?;
        let mut stopper = EarlyStopping::new(t.patience as usize, 0.0);

        let mut round_config = RoundConfig::new(
            config.run_id,
            config.rank,
            config.size,
            model_fingerprint(t.model.name(), n as u64),
            n,
        );
        round_config.timeout = config.round_timeout;
        round_config.on_timeout = config.on_timeout;
        round_config.max_chunk_bytes = config.max_chunk_bytes;
        let codec = config.codec.build(t.seed ^ u64::from(config.rank));
        let mut averager = Averager::new(round_config, codec, transport)?;

        let mut metrics_out = MetricsWriter::create(config.metrics_out.as_deref())?;
        let mut grad = vec![0.0f32; n];
        let mut avg = vec![0.0f32; n];
        let mut rounds = Vec::new();
        let mut round = 0u64;
        // The shortest gradient time any peer reported last round (`--offload auto`).
        let mut fastest: Option<Duration> = None;
        'epochs: for epoch in 1..=t.epochs {
            for batch_indices in &round_batches {
                let start = Instant::now();
                let lr = plateau.lr();
                let work = RoundWork {
                    round,
                    batches: batch_indices
                        .clone()
                        .map(|b| (b, ranges[b].clone()))
                        .collect(),
                };
                let report = source
                    .compute(&work, &model, &weights, fastest, &mut grad)
                    .await
                    .with_context(|| format!("peer {}: computing round {round}", config.rank))?;
                averager.set_compute_time(Duration::from_secs_f64(report.compute_time_s));
                let stats = averager
                    .average(round, &grad, &mut avg)
                    .await
                    .with_context(|| format!("peer {}: averaging round {round}", config.rank))?;
                if !stats.missing.is_empty() {
                    tracing::warn!(
                        "round {round}: averaged without rank(s) {:?} (--on-timeout partial)",
                        stats.missing
                    );
                }
                fastest = stats.peer_compute.iter().flatten().min().copied();
                let update_start = Instant::now();
                optimizer.step(&mut weights, &avg, lr)?;
                model.set_params(&weights)?;
                let update_time = update_start.elapsed().as_secs_f64();

                let eval_start = Instant::now();
                let (mut val, mut test_eval) = (None, None);
                if config.evaluation {
                    let (mut loss, mut correct, mut count) = (0.0, 0.0, 0usize);
                    for set in &val_sets {
                        let e = evaluate(&model, set, &mut eval_tf, t.loss, 256)?;
                        loss += e.loss * e.samples as f64;
                        correct += e.accuracy * e.samples as f64;
                        count += e.samples;
                    }
                    val = Some((loss / count.max(1) as f64, correct / count.max(1) as f64));
                    test_eval = Some(evaluate(&model, &test, &mut eval_tf, t.loss, 256)?);
                }
                let eval_time = eval_start.elapsed().as_secs_f64();
                let m = RoundMetrics {
                    rank: config.rank,
                    round,
                    epoch,
                    lr,
                    samples: report.samples,
                    serverless: config.serverless.serverless.name().to_string(),
                    local_batches: report.local_batches,
                    offloaded_batches: report.offloaded_batches,
                    fallback_batches: report.fallback_batches,
                    compute_time_s: report.compute_time_s,
                    local_time_s: report.local_time_s,
                    functions_time_s: report.functions_time_s,
                    weights_upload_time_s: report.upload_time_s,
                    gradient_fetch_time_s: report.fetch_time_s,
                    failed_attempts: report.failed_attempts,
                    state_transitions: report.state_transitions,
                    peer_compute_s: stats
                        .peer_compute
                        .iter()
                        .map(|d| d.map(|d| d.as_secs_f64()))
                        .collect(),
                    encode_time_s: stats.encode_time.as_secs_f64(),
                    send_time_s: stats.send_time.as_secs_f64(),
                    receive_time_s: stats.receive_time.as_secs_f64(),
                    decode_time_s: stats.decode_time.as_secs_f64(),
                    update_time_s: update_time,
                    eval_time_s: eval_time,
                    round_time_s: start.elapsed().as_secs_f64(),
                    bytes_sent: stats.bytes_sent,
                    bytes_received: stats.bytes_received,
                    messages_sent: stats.messages_sent,
                    messages_received: stats.messages_received,
                    rejected_messages: stats.rejected.total(),
                    contributors: stats.contributors,
                    missing_ranks: stats.missing.clone(),
                    train_loss: report.loss,
                    train_accuracy: report.correct as f64 / report.samples.max(1) as f64,
                    val_loss: val.map(|v| v.0),
                    val_accuracy: val.map(|v| v.1),
                    test_loss: test_eval.map(|e| e.loss),
                    test_accuracy: test_eval.map(|e| e.accuracy),
                    weights_hash: weights_hash(&weights),
                    peak_rss_bytes: peerless_bench::sys::peak_rss_bytes(),
                    cpu_time_s: peerless_bench::sys::cpu_time_s(),
                    invocations: report.invocations,
                };
                tracing::info!(
                    rank = config.rank,
                    round,
                    train_loss = format!("{:.4}", m.train_loss),
                    test_accuracy = m.test_accuracy.map(|a| format!("{:.2}%", 100.0 * a)),
                    weights = %m.weights_hash,
                    "round done in {:.2}s",
                    m.round_time_s
                );
                metrics_out.write(&m)?;
                rounds.push(m);
                round += 1;
                if let Some((val_loss, _)) = val {
                    // The same value on every peer (same weights, same validation sets), so
                    // every peer takes the same schedule decisions and weights stay identical.
                    plateau.step(val_loss as f32);
                    if stopper.should_stop(val_loss as f32) {
                        tracing::info!(rank = config.rank, "early stopping after round {round}");
                        break 'epochs;
                    }
                }
            }
        }
        Ok(NodeSummary {
            rank: config.rank,
            rounds,
        })
    }
}

/// Checks the serverless flags that need no store or service, so mistakes show before any
/// data is split or loaded.
pub fn check_serverless_flags(s: &ServerlessArgs, store: &str) -> Result<()> {
    if s.serverless == ServerlessMode::None {
        if s.offload.is_some() {
            bail!("--offload needs --serverless local, lambda or stepfn");
        }
        return Ok(());
    }
    if !(s.function_timeout > 0.0 && s.function_timeout.is_finite()) {
        bail!("--function-timeout must be a positive number of seconds");
    }
    if s.serverless != ServerlessMode::Local && !store.starts_with("s3://") {
        bail!(
            "--serverless {:?} runs functions in AWS, which cannot read the local store {store}: \
             use an s3:// --store",
            s.serverless
        );
    }
    if s.serverless == ServerlessMode::Stepfn && s.state_machine_arn.is_none() {
        bail!(
            "--serverless stepfn needs --state-machine-arn ARN (a state machine made from \
             `peerless stepfn generate`)"
        );
    }
    Ok(())
}

/// The serverless side of the peer, or `None` with `--serverless none`.
async fn offload(
    config: &NodeConfig,
    pipeline: &Pipeline,
    batches_per_peer: Option<usize>,
    device: &Device,
) -> Result<Option<Offload>> {
    let s = &config.serverless;
    if s.serverless == ServerlessMode::None {
        return Ok(None);
    }
    if batches_per_peer.is_none() {
        bail!(
            "--serverless {:?} needs a split with batch objects for the functions to read: \
             split again with `peerless data split --batches K` (or `peerless run --batches K`)",
            s.serverless
        );
    }
    let policy = CallPolicy {
        concurrency: s.function_concurrency.map_or_else(
            || match s.serverless {
                ServerlessMode::Local => {
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                }
                _ => 64,
            },
            |n| n as usize,
        ),
        retries: s.function_retries,
        timeout: Duration::from_secs_f64(s.function_timeout),
        first_backoff: Duration::from_millis(200),
    };
    let region = config.store_options.s3.region.clone();
    let functions = match s.serverless {
        ServerlessMode::None => unreachable!("handled above"),
        ServerlessMode::Local => AnyFunctions::Pool(std::sync::Arc::new(PoolFunctions::start(
            device,
            policy,
            s.function_memory_mb,
        )?)),
        ServerlessMode::Lambda => AnyFunctions::Lambda(std::sync::Arc::new(
            LambdaFunctions::connect(LambdaSettings {
                function: s.function.clone(),
                endpoint_url: s.lambda_endpoint.clone(),
                region,
                policy,
                memory_mb: s.function_memory_mb,
            })
            .await,
        )),
        ServerlessMode::Stepfn => AnyFunctions::StepFn(std::sync::Arc::new(
            StepFunctions::connect(StepFnSettings {
                state_machine_arn: s.state_machine_arn.clone().unwrap_or_default(),
                endpoint_url: s.sfn_endpoint.clone(),
                region,
                policy,
                memory_mb: s.function_memory_mb,
            })
            .await,
        )),
    };
    let store = peerless_data::open_store(&config.store, &config.store_options)
        .await
        .with_context(|| format!("opening {} for the functions", config.store))?;
    let location = peerless_lambda::StoreLocation {
        url: config.store.clone(),
        endpoint_url: config.store_options.s3.endpoint_url.clone(),
        region: config.store_options.s3.region.clone(),
    };
    let context = peerless_lambda::RoundContext {
        run_id: config.run_id.to_string(),
        round: 0,
        rank: config.rank,
        world_size: config.size,
        model: pipeline.spec,
        loss: config.training.loss,
        transform: pipeline.train.clone(),
        store: location,
        weights_key: String::new(),
    };
    Ok(Some(Offload {
        functions,
        store,
        context,
        seed: config.training.seed,
        policy: s.offload.unwrap_or(OffloadPolicy::Fixed(1.0)),
        on_failure: match s.on_function_failure.as_str() {
            "local" => OnFunctionFailure::Local,
            _ => OnFunctionFailure::Fail,
        },
        prefix: format!("exchange/{}", config.run_id),
    }))
}

fn limit(set: Dataset, max: Option<usize>) -> Result<Dataset> {
    match max {
        Some(m) if m < set.len() => Ok(set.slice(0..m)?),
        _ => Ok(set),
    }
}
