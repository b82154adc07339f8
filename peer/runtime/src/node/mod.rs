//! One peer of a data-parallel run: load its shard, and every round compute the shard
//! gradient, exchange it with the other peers, average, and take one optimizer step, so all
//! peers keep bit-identical weights.

use std::time::{Duration, Instant};

mod claims;
mod identity;

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use peerless_comm::membership::START_TIMEOUT;
use peerless_comm::{
    Averager, Identity, Keyring, RoundConfig, Start, Transport, model_fingerprint,
};
use peerless_data::ObjectStore;
use peerless_data::split::batch_ranges;
use peerless_data::{Dataset, SplitReader};
use peerless_models::{Device, Model};

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::config::{NodeConfig, Resume, ServerlessMode};
use crate::eval::evaluate;
use crate::metrics::{MetricsWriter, RoundEvaluation, RoundMetrics};
use crate::pipeline::Pipeline;
use crate::source::functions::{AnyFunctions, CallPolicy};
use crate::source::lambda::{LambdaFunctions, LambdaSettings};
use crate::source::pool::PoolFunctions;
use crate::source::stepfn::{StepFnSettings, StepFunctions};
use crate::source::{LocalSource, Offload, RoundSource, RoundWork};

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
    evaluator: Evaluator,
    /// What every peer of the run must agree on.
    identity: Identity,
    /// Where checkpoints go (the split's store).
    store: Arc<dyn ObjectStore>,
}

/// The sets a peer evaluates on after the rounds of the evaluation schedule, with their
/// transform.
struct Evaluator {
    val_sets: Vec<Dataset>,
    test: Dataset,
    transform: peerless_data::Transform,
}

impl Evaluator {
    /// Validation over every peer's validation shard (the same value on every peer, so
    /// every peer takes the same schedule decisions) and test accuracy.
    fn evaluate(&mut self, model: &Model, loss: peerless_models::Loss) -> Result<RoundEvaluation> {
        let (mut val_loss, mut correct, mut count) = (0.0, 0.0, 0usize);
        for set in &self.val_sets {
            let e = evaluate(model, set, &mut self.transform, loss, 256)?;
            val_loss += e.loss * e.samples as f64;
            correct += e.accuracy * e.samples as f64;
            count += e.samples;
        }
        let n = count.max(1) as f64;
        Ok(RoundEvaluation {
            val: Some((val_loss / n, correct / n)),
            test: Some(evaluate(model, &self.test, &mut self.transform, loss, 256)?),
        })
    }
}

impl Node {
    /// Loads the peer's shard (and evaluation sets) from the store and builds its replica.
    pub async fn prepare(config: &NodeConfig, device: &Device) -> Result<Node> {
        config.validate()?;
        let t = &config.training;
        let x = &config.exchange;
        let reader = SplitReader::open_url(&x.store, &x.store_options)
            .await
            .with_context(|| format!("opening the split in {}", x.store))?;
        let manifest = reader.manifest().clone();
        if manifest.peers != config.size as usize {
            bail!(
                "the split in {} has {} peer shards but this run has --size {}; split again \
                 with `peerless data split --size {}`",
                x.store,
                manifest.peers,
                config.size,
                config.size
            );
        }
        let rank = config.rank as usize;
        let train = reader.train(rank).await?;
        let test = limit(reader.test().await?, x.eval_limit)?;
        let mut val_sets = Vec::new();
        if x.evaluation {
            for r in 0..manifest.peers {
                val_sets.push(limit(reader.val(r).await?, x.eval_limit)?);
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
        let round_batches = batch_ranges(
            ranges.len(),
            (x.rounds_per_epoch as usize).clamp(1, ranges.len()),
        );
        let mut local =
            LocalSource::new(weights.len(), train, train_tf, t.loss, t.seed, config.rank)
                .with_speed(config.capability.speed);
        if let Some(threads) = config.capability.threads {
            local = local.with_threads(threads)?;
        }
        let offload = offload(config, &pipeline, manifest.batches_per_peer, device).await?;
        let source = RoundSource::new(local, offload);
        let identity = identity::run_identity(config, &manifest, round_batches.len() as u64);
        let store = peerless_data::open_store(&x.store, &x.store_options)
            .await
            .with_context(|| format!("opening {} for checkpoints", x.store))?;
        Ok(Node {
            identity,
            store,
            config: config.clone(),
            model,
            weights,
            source,
            ranges,
            round_batches,
            evaluator: Evaluator {
                val_sets,
                test,
                transform: eval_tf,
            },
        })
    }

    /// Trains to the end over `transport`: joins the run (starting together, resuming
    /// from the newest common checkpoint, or catching up from a running peer's state),
    /// then runs every remaining round, checkpointing and admitting restarted peers at
    /// round boundaries.
    pub async fn run<T: Transport>(self, transport: T) -> Result<NodeSummary> {
        let Node {
            config,
            mut model,
            mut weights,
            mut source,
            ranges,
            round_batches,
            mut evaluator,
            identity,
            store,
        } = self;
        let config = &config;
        let t = &config.training;
        let x = &config.exchange;
        let n = weights.len();
        let mut optimizer = t.optimizer_config().build(t.optimizer, n)?;
        let (mut plateau, mut stopper) = t.schedule()?;

        let mut round_config = RoundConfig::new(
            config.run_id,
            config.rank,
            config.size,
            model_fingerprint(t.model.name(), n as u64),
            n,
        );
        round_config.timeout = x.round_timeout;
        round_config.on_timeout = x.on_timeout;
        round_config.max_chunk_bytes = x.max_chunk_bytes;
        round_config.evict_after = x.evict_after;
        round_config.aggregation = x.aggregation;
        round_config.clip_norm = x.clip_norm;
        round_config.exchange = x.exchange;
        // An attacker sends its corrupted gradient even when it is not finite (a `nan`
        // attack), so the other peers' checks are what is tested.
        round_config.check_own = !config.attack.is_active();
        round_config.keyring = Arc::new(match &x.keys {
            Some(dir) => Keyring::load(dir, config.rank, config.size)
                .with_context(|| format!("loading the keys of rank {}", config.rank))?,
            None => {
                if config.size > 1 {
                    tracing::warn!(
                        rank = config.rank,
                        "the exchange is unauthenticated: anyone who can publish to the broker \
                         can send gradients (make keys with `peerless keys generate`, start \
                         peers with --keys)"
                    );
                }
                Keyring::none()
            }
        });
        let codec = x.codec.build(t.seed ^ u64::from(config.rank));
        let mut averager = Averager::new(round_config, codec, transport)?;
        if x.exchange == peerless_comm::Exchange::S3 {
            averager.set_claim_store(Arc::new(claims::StoreClaims(store.clone())));
        }

        let fingerprint = identity::fingerprint(&identity);
        let checkpoints =
            CheckpointStore::new(store, &config.run_id.to_string(), config.rank, &fingerprint)?;
        let held = match x.resume {
            Resume::Auto => checkpoints
                .list_rounds()
                .await
                .context("listing this peer's checkpoints")?,
            Resume::Never => {
                // An earlier attempt's checkpoints would otherwise look newer than this
                // attempt's and be resumed from after a later crash.
                checkpoints
                    .delete_all()
                    .await
                    .context("deleting the checkpoints of an earlier attempt")?;
                Vec::new()
            }
        };
        let per_epoch = round_batches.len() as u64;
        let total_rounds = per_epoch * u64::from(t.epochs);
        let start = averager
            .start(&identity, &held, START_TIMEOUT)
            .await
            .with_context(|| format!("peer {}: joining run {}", config.rank, config.run_id))?;
        let (first_round, restored) = match start {
            Start::Together { round: 0 } => (0, None),
            Start::Together { round } => {
                let checkpoint = checkpoints.load(round).await?;
                tracing::info!(rank = config.rank, round, "resuming from checkpoint");
                (round, Some((checkpoint, true)))
            }
            Start::Rejoin { round, state, from } => {
                let checkpoint = Checkpoint::decode(&state)
                    .with_context(|| format!("decoding the state sent by rank {from}"))?;
                tracing::info!(rank = config.rank, round, from, "rejoining the run");
                (round, Some((checkpoint, false)))
            }
        };
        if let Some((c, own)) = restored {
            if c.weights.len() != n || c.round != first_round {
                bail!(
                    "the state for round {first_round} does not fit this run ({} weights for \
                     round {}, this model has {n})",
                    c.weights.len(),
                    c.round
                );
            }
            weights = c.weights;
            model.set_params(&weights)?;
            if !c.buffers.is_empty() {
                model.set_buffers(&c.buffers)?;
            }
            optimizer.restore(c.optimizer)?;
            plateau = c.plateau;
            stopper = c.early_stopping;
            // The codec's state is per rank: only a peer's own checkpoint carries it.
            if own {
                averager.restore_codec_state(&c.codec_state)?;
            }
        }

        let mut metrics_out = MetricsWriter::open(config.metrics_out.as_deref(), first_round > 0)?;
        let mut rounds = Vec::new();
        // The shortest gradient time any peer reported last round (`--offload auto`).
        let mut fastest: Option<Duration> = None;
        let interval = u64::from(x.checkpoint_interval());
        for round in first_round..total_rounds {
            let epoch = (round / per_epoch) as u32 + 1;
            let batch_indices = &round_batches[(round % per_epoch) as usize];
            let start = Instant::now();
            let lr = plateau.lr();
            let mut m = RoundMetrics {
                rank: config.rank,
                round,
                epoch,
                lr,
                serverless: x.serverless.mode.name().to_string(),
                ..RoundMetrics::default()
            };
            let work = RoundWork {
                round,
                batches: batch_indices
                    .clone()
                    .map(|b| (b, ranges[b].clone()))
                    .collect(),
            };
            // The round's gradient and average are allocated every round (untouched pages
            // cost nothing) and freed after the update, so a peer does not hold them while
            // it evaluates, or the average while it computes.
            let mut grad = vec![0.0f32; n];
            let report = source
                .compute(&work, &model, &weights, fastest, &mut grad)
                .await
                .with_context(|| format!("peer {}: computing round {round}", config.rank))?;
            // The attack corrupts what is sent; the round's own-gradient check is off for an
            // attacker (`check_own` above), so a `nan` attacker still sends its NaN gradient.
            config.attack.apply(&mut grad, t.seed, config.rank, round);
            averager.set_compute_time(Duration::from_secs_f64(report.compute_time_s));
            m.record_compute(report);
            let mut avg = vec![0.0f32; n];
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
            m.record_exchange(&stats);

            let update_start = Instant::now();
            optimizer.step(&mut weights, &avg, lr)?;
            drop((grad, avg));
            model.set_params(&weights)?;
            crate::memory::release_freed_memory(n * size_of::<f32>());
            m.update_time_s = update_start.elapsed().as_secs_f64();

            // Every peer evaluates after the same rounds (the schedule depends only on
            // the round and settings in the run's identity); the others record no
            // accuracy and no evaluation time.
            let eval = if x.evaluates_after(round, per_epoch, total_rounds) {
                let eval_start = Instant::now();
                let eval = evaluator.evaluate(&model, t.loss)?;
                m.eval_time_s = eval_start.elapsed().as_secs_f64();
                eval
            } else {
                RoundEvaluation::default()
            };
            m.record_evaluation(eval);
            let mut stop = false;
            if let Some((val_loss, _)) = eval.val {
                // The same value on every peer (same weights, same validation sets), so
                // every peer takes the same schedule decisions and weights stay identical;
                // the schedule and early stopping step on evaluated rounds only.
                plateau.step(val_loss as f32);
                stop = stopper.should_stop(val_loss as f32);
            }
            let next = round + 1;
            let snapshot = |model: &Model,
                            optimizer: &dyn peerless_models::optim::Optimizer,
                            codec_state: Vec<u8>|
             -> Result<Checkpoint> {
                Ok(Checkpoint {
                    run_id: config.run_id.to_string(),
                    rank: config.rank,
                    world_size: config.size,
                    round: next,
                    epoch: next / per_epoch,
                    epoch_round: next % per_epoch,
                    config_fingerprint: fingerprint.clone(),
                    weights: weights.clone(),
                    buffers: model.buffers()?,
                    optimizer: optimizer.state(),
                    plateau: plateau.clone(),
                    early_stopping: stopper.clone(),
                    codec_state,
                    extra: Default::default(),
                })
            };
            if interval > 0 && next % interval == 0 && next < total_rounds && !stop {
                let saved = Instant::now();
                let checkpoint = snapshot(&model, optimizer.as_ref(), averager.codec_state())?;
                let key = checkpoints
                    .save(&checkpoint)
                    .await
                    .with_context(|| format!("peer {}: checkpointing round {next}", config.rank))?;
                m.checkpoint_time_s = Some(saved.elapsed().as_secs_f64());
                tracing::debug!(rank = config.rank, %key, "checkpoint written");
            }
            if !stop && next < total_rounds {
                for request in averager.join_requests(&identity).await? {
                    let state = snapshot(&model, optimizer.as_ref(), Vec::new())?
                        .encode()
                        .map_err(|e| {
                            anyhow!("encoding the state for rank {}: {e}", request.rank)
                        })?;
                    averager
                        .admit(&request, next, &state)
                        .await
                        .with_context(|| format!("admitting rank {}", request.rank))?;
                }
            }
            m.round_time_s = start.elapsed().as_secs_f64();
            m.record_state(&weights);
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
            if stop {
                tracing::info!(rank = config.rank, "early stopping after round {next}");
                break;
            }
        }
        averager.delete_claims().await;
        Ok(NodeSummary {
            rank: config.rank,
            rounds,
        })
    }
}

/// The serverless side of the peer, or `None` with `--serverless none`.
async fn offload(
    config: &NodeConfig,
    pipeline: &Pipeline,
    batches_per_peer: Option<usize>,
    device: &Device,
) -> Result<Option<Offload>> {
    let x = &config.exchange;
    let s = &x.serverless;
    if s.mode == ServerlessMode::None {
        return Ok(None);
    }
    if batches_per_peer.is_none() {
        bail!(
            "--serverless {} needs a split with batch objects for the functions to read: \
             split again with `peerless data split --batches K` (or `peerless run --batches K`)",
            s.mode
        );
    }
    let policy = CallPolicy {
        concurrency: s.concurrency(),
        retries: s.retries,
        timeout: s.timeout,
        first_backoff: Duration::from_millis(200),
    };
    let region = x.store_options.s3.region.clone();
    let functions = match s.mode {
        ServerlessMode::None => return Ok(None),
        ServerlessMode::Local => AnyFunctions::Pool(std::sync::Arc::new(PoolFunctions::start(
            device,
            policy,
            s.memory_mb,
        )?)),
        ServerlessMode::Lambda => AnyFunctions::Lambda(std::sync::Arc::new(
            LambdaFunctions::connect(LambdaSettings {
                function: s.function.clone(),
                endpoint_url: s.lambda_endpoint.clone(),
                region,
                policy,
                memory_mb: s.memory_mb,
            })
            .await,
        )),
        ServerlessMode::Stepfn => AnyFunctions::StepFn(std::sync::Arc::new(
            StepFunctions::connect(StepFnSettings {
                state_machine_arn: s.state_machine_arn.clone().unwrap_or_default(),
                endpoint_url: s.sfn_endpoint.clone(),
                region,
                policy,
                memory_mb: s.memory_mb,
            })
            .await,
        )),
    };
    let store = peerless_data::open_store(&x.store, &x.store_options)
        .await
        .with_context(|| format!("opening {} for the functions", x.store))?;
    let location = peerless_lambda::StoreLocation {
        url: x.store.clone(),
        endpoint_url: x.store_options.s3.endpoint_url.clone(),
        region: x.store_options.s3.region.clone(),
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
        policy: s.policy(),
        on_failure: s.on_failure,
        prefix: format!("exchange/{}", config.run_id),
    }))
}

fn limit(set: Dataset, max: Option<usize>) -> Result<Dataset> {
    match max {
        Some(m) if m < set.len() => Ok(set.slice(0..m)?),
        _ => Ok(set),
    }
}
