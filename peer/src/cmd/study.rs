//! `peerless study`: the same training job under each deployment (instance-only,
//! serverless, hybrid offload) with unequal peers, then the time / cost / accuracy report
//! (`peerless_bench::study`). Every check on the config and prices runs before training;
//! each finished deployment is kept, so rerunning an interrupted study resumes it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use peerless_bench::study::{
    Day, DeploymentRun, Prices, StudyConfig, StudyRun, project, stale_prices_note, write_report,
};
use peerless_data::StoreOptions;
use peerless_models::{DeviceChoice, select_device};
use peerless_runtime::memory::check_machine;
use peerless_runtime::{
    Capability, ExchangeConfig, LocalRunConfig, ServerlessConfig, ServerlessMode, SplitSource,
    TrainingConfig, run_local,
};
use serde::{Deserialize, Serialize};

use crate::cli::StudyArgs;

/// The default study, used without `--config` (also at `bench/study/default.toml`).
const DEFAULT_CONFIG: &str = include_str!("../../../bench/study/default.toml");
/// The prices shipped with peerless (also at `bench/prices/aws-us-east-1.toml`).
const DEFAULT_PRICES: &str = include_str!("../../../bench/prices/aws-us-east-1.toml");
/// Written into a deployment's folder once its run finished.
const DONE: &str = "done.json";

/// The contents of [`DONE`].
#[derive(Serialize, Deserialize)]
struct Done {
    wall_time_s: f64,
}

pub fn run(args: StudyArgs, config: Option<PathBuf>, device: DeviceChoice) -> Result<()> {
    let explicit = config.is_some();
    let mut config = match &config {
        Some(path) => StudyConfig::load(path)?,
        None => StudyConfig::from_toml_str(DEFAULT_CONFIG)?,
    };
    if !args.models.is_empty() {
        config.select_models(&args.models)?;
    }
    let studies = config.per_model();
    let mut prepared = Vec::new();
    for (model, study) in &studies {
        let prices = load_prices(study, explicit)?;
        prices.check_covers(study)?;
        let peers = study.peers.len();
        let offloads = study.deployments.iter().any(|d| d.offload().is_some());
        let functions = if offloads && study.serverless == ServerlessMode::Local {
            peers * study.function_concurrency
        } else {
            0
        };
        check_machine(*model, peers, functions, study.broker.is_some()).map_err(|e| {
            anyhow::anyhow!(
                "{e}. Leave it out (`--models` names the models to run), use fewer peers or a \
                 lower function_concurrency, or a machine with more memory."
            )
        })?;
        prepared.push((study.clone(), prices));
    }
    for (study, prices) in prepared {
        let out = if studies.len() > 1 {
            args.out.join(&study.name)
        } else {
            args.out.clone()
        };
        run_study(&study, &prices, &out, device)?;
    }
    Ok(())
}

/// The prices the config names; the shipped file when the default config's relative path
/// does not resolve from here.
fn load_prices(config: &StudyConfig, explicit: bool) -> Result<Prices> {
    let path = config.prices_path();
    if !explicit && !path.exists() {
        return Ok(Prices::from_toml_str(
            DEFAULT_PRICES,
            "aws-us-east-1.toml (built in)",
        )?);
    }
    Ok(Prices::load(&path)?)
}

fn run_study(
    config: &StudyConfig,
    prices: &Prices,
    out: &Path,
    device: DeviceChoice,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_config_copy(config, out)?;
    let store = config
        .store
        .clone()
        .unwrap_or_else(|| out.join("store").display().to_string());
    let mut runs = Vec::new();
    for study_run in config.runs() {
        let name = study_run.name.as_str();
        let dir = out.join(name);
        let wall = match finished(&dir)? {
            Some(wall) => {
                eprintln!("study: {name} already finished ({wall:.1} s), kept");
                wall
            }
            None => {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("clearing the unfinished {}", dir.display()))?;
                }
                eprintln!("study: running {name} ...");
                let start = Instant::now();
                let run = run_config(config, &study_run, &store, &dir);
                let device = select_device(device)?;
                match run_local(&run, &device) {
                    Ok(_) => {}
                    // A run that collapses under attack (every honest gradient withheld as
                    // non-finite, rounds timing out) is a result: its rounds so far are
                    // reported.
                    Err(e) if study_run.attacked && dir.join("peer-0.jsonl").exists() => {
                        eprintln!("study: the {name} run collapsed under attack: {e:#}");
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!(
                                "the {name} run of the study failed; the finished runs are kept \
                                 in {}: rerun the same command to resume",
                                out.display()
                            )
                        });
                    }
                }
                let wall = start.elapsed().as_secs_f64();
                let done = Done { wall_time_s: wall };
                std::fs::write(dir.join(DONE), serde_json::to_string(&done)?)?;
                wall
            }
        };
        runs.push(DeploymentRun::load_dir(name, &dir, config, wall)?);
    }
    let projection = project(config, &runs, prices)?;
    let files = write_report(out, config, &runs, prices, &projection, Day::today_utc())?;
    if let Some(headline) = files.headlines.first() {
        println!("{headline}");
    }
    let price_count = prices.dates().len();
    if let Some(note) = stale_prices_note(files.run_date, &files.stale_prices, price_count) {
        println!("stale prices: {note}");
    }
    println!(
        "report: {} and {} (plots and CSV beside them)",
        files.markdown.display(),
        files.html.display()
    );
    Ok(())
}

/// Keeps a copy of the config (passwords masked) in `out/study.toml`, unless that file is
/// the config itself: masking would overwrite the password the user's file holds.
fn write_config_copy(config: &StudyConfig, out: &Path) -> Result<()> {
    let copy = out.join("study.toml");
    let same_file = match (&config.source, copy.canonicalize()) {
        (Some(source), Ok(copy)) => source.canonicalize().is_ok_and(|s| s == copy),
        _ => false,
    };
    if !same_file {
        std::fs::write(&copy, config.to_toml_string())
            .with_context(|| format!("writing {}", copy.display()))?;
    }
    Ok(())
}

/// The wall time of a deployment that already finished in `dir`.
fn finished(dir: &Path) -> Result<Option<f64>> {
    let path = dir.join(DONE);
    if !path.exists() {
        return Ok(None);
    }
    let done: Done = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("reading {}; delete it to rerun", path.display()))?;
    Ok(Some(done.wall_time_s))
}

/// The local run of one deployment: the same job everywhere, only the serverless settings,
/// the aggregation and the attacks differ.
fn run_config(
    config: &StudyConfig,
    study_run: &StudyRun,
    store: &str,
    dir: &Path,
) -> LocalRunConfig {
    let deployment = study_run.deployment;
    let model = config.model.expect("per_model() sets one model per study");
    let rpe = config.rounds_per_epoch as u32;
    // The original's patience counts epochs (10 for early stopping, 5 for the
    // learning-rate plateau); the schedule steps once per evaluation, so scale them by
    // the evaluations an epoch holds (1 with the default schedule).
    let per_epoch = config
        .rounds_per_epoch
        .clamp(1, config.batches_per_peer.max(1));
    let evaluations_per_epoch = (per_epoch / config.eval_interval()).max(1) as u32;
    let training = TrainingConfig {
        model,
        batch_size: config.batch_size as u32,
        lr: config.lr as f32,
        momentum: Some(config.momentum as f32),
        epochs: config.epochs as u32,
        seed: config.seed,
        patience: 10 * evaluations_per_epoch,
        plateau_patience: 5 * evaluations_per_epoch,
        ..TrainingConfig::default()
    };
    let serverless = match deployment.offload() {
        None => ServerlessConfig::default(),
        Some(policy) => ServerlessConfig {
            mode: config.serverless,
            offload: Some(policy),
            concurrency: Some(config.function_concurrency),
            memory_mb: config.lambda_memory_mb,
            lambda_endpoint: config.lambda_endpoint.clone(),
            state_machine_arn: config.state_machine_arn.clone(),
            ..ServerlessConfig::default()
        },
    };
    LocalRunConfig {
        peers: config.peers.len() as u32,
        run_id: Some(format!(
            "study-{}-{}-{}",
            config.name,
            study_run.name,
            std::process::id()
        )),
        metrics_dir: dir.to_path_buf(),
        split: SplitSource {
            dataset: config.dataset,
            data_dir: config.data_dir.clone(),
            limit: config.limit,
            batches: Some(config.batches_per_peer),
            partition: peerless_data::Partition::Iid,
        },
        resize: None,
        training,
        exchange: ExchangeConfig {
            store: store.to_string(),
            store_options: StoreOptions::default(),
            broker: config.broker.clone(),
            evaluation: config.evaluation,
            eval_every: config.eval_every.map(|k| k as u32),
            eval_limit: config.eval_limit,
            rounds_per_epoch: rpe,
            serverless,
            aggregation: study_run.aggregation,
            clip_norm: config.clip_norm,
            exchange: study_run.exchange,
            // Under attack a diverged model stalls its rounds (no finite gradient left to
            // send): give up on them after a minute rather than ten.
            round_timeout: if study_run.attacked {
                std::time::Duration::from_secs(60)
            } else {
                ExchangeConfig::default().round_timeout
            },
            ..ExchangeConfig::default()
        },
        capabilities: (0..config.peers.len())
            .map(|r| Capability {
                speed: config.peer_speed(r),
                threads: config.peers[r].threads,
            })
            .collect(),
        attacks: config
            .peers
            .iter()
            .map(|p| {
                if study_run.attacked {
                    p.attack
                } else {
                    Default::default()
                }
            })
            .collect(),
    }
}
