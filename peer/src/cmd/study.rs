//! `peerless study`: the same training job under each architecture (instance-only,
//! serverless, hybrid offload) with unequal peers, then the time / cost / accuracy report
//! (`peerless_bench::study`). Every check on the config and prices runs before training;
//! each finished architecture is kept, so rerunning an interrupted study resumes it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use peerless_bench::study::{
    Architecture, ArchitectureRun, FunctionBackend, Prices, StudyConfig, project, write_report,
};
use peerless_models::DeviceChoice;

use crate::cli::{Cli, Command, StudyArgs};

/// The default study, used without `--config` (also at `bench/study/default.toml`).
const DEFAULT_CONFIG: &str = include_str!("../../../bench/study/default.toml");
/// The prices shipped with peerless (also at `bench/prices/aws-us-east-1.toml`).
const DEFAULT_PRICES: &str = include_str!("../../../bench/prices/aws-us-east-1.toml");
/// Written into an architecture's folder once its run finished.
const DONE: &str = "done.json";

pub fn run(args: StudyArgs, config: Option<PathBuf>, device: DeviceChoice) -> Result<()> {
    let explicit = config.is_some();
    let config = match &config {
        Some(path) => StudyConfig::load(path)?,
        None => StudyConfig::from_toml_str(DEFAULT_CONFIG)?,
    };
    let studies = config.per_model();
    let mut prepared = Vec::new();
    for (_, study) in &studies {
        let prices = load_prices(study, explicit)?;
        prices.check_covers(study)?;
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
    std::fs::write(out.join("study.toml"), config.to_toml_string())?;
    let store = config
        .store
        .clone()
        .unwrap_or_else(|| out.join("store").display().to_string());
    let mut runs = Vec::new();
    for &arch in &config.architectures {
        let dir = out.join(arch.name());
        let wall = match finished(&dir)? {
            Some(wall) => {
                eprintln!(
                    "study: {} already finished ({wall:.1} s), kept",
                    arch.name()
                );
                wall
            }
            None => {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("clearing the unfinished {}", dir.display()))?;
                }
                eprintln!("study: running {} ...", arch.name());
                let start = Instant::now();
                let argv = run_argv(config, arch, &store, &dir);
                let parsed = Cli::try_parse_from(&argv)
                    .with_context(|| format!("study flags for {}: {argv:?}", arch.name()))?;
                let Command::Run(run_args) = parsed.command else {
                    unreachable!("the argv starts with `run`")
                };
                crate::cmd::run::run(run_args, device).with_context(|| {
                    format!(
                        "the {} run of the study failed; the finished runs are kept in {}: \
                         rerun the same command to resume",
                        arch.name(),
                        out.display()
                    )
                })?;
                let wall = start.elapsed().as_secs_f64();
                std::fs::write(
                    dir.join(DONE),
                    serde_json::json!({ "wall_time_s": wall }).to_string(),
                )?;
                wall
            }
        };
        runs.push(ArchitectureRun::load_dir(arch.name(), &dir, config, wall)?);
    }
    let projection = project(config, &runs, prices)?;
    let files = write_report(out, config, &runs, prices, &projection)?;
    let report = std::fs::read_to_string(&files.markdown)?;
    if let Some(line) = report.lines().find(|l| l.contains("computation time")) {
        println!("{}", line.trim_start_matches(['#', '>', ' ', '*']));
    }
    println!(
        "report: {} and {} (plots and CSV beside them)",
        files.markdown.display(),
        files.html.display()
    );
    Ok(())
}

/// The wall time of an architecture that already finished in `dir`.
fn finished(dir: &Path) -> Result<Option<f64>> {
    let path = dir.join(DONE);
    if !path.exists() {
        return Ok(None);
    }
    let done: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    match done["wall_time_s"].as_f64() {
        Some(wall) => Ok(Some(wall)),
        None => bail!("{} has no wall_time_s; delete it to rerun", path.display()),
    }
}

/// The `peerless run` command line of one architecture: the same job everywhere, only
/// the serverless flags differ.
fn run_argv(config: &StudyConfig, arch: Architecture, store: &str, dir: &Path) -> Vec<String> {
    let model = config.model.expect("per_model() sets one model per study");
    let list = |v: Vec<String>| v.join(",");
    let mut argv: Vec<String> = [
        "peerless",
        "run",
        "--peers",
        &config.peers.len().to_string(),
        "--dataset",
        config.dataset.name(),
        "--model",
        model.name(),
        "--batch-size",
        &config.batch_size.to_string(),
        "--batches",
        &config.batches_per_peer.to_string(),
        "--rounds-per-epoch",
        &config.rounds_per_epoch.to_string(),
        "--epochs",
        &config.epochs.to_string(),
        "--lr",
        &config.lr.to_string(),
        "--momentum",
        &config.momentum.to_string(),
        "--seed",
        &config.seed.to_string(),
        // The original's patience counts epochs (10 for early stopping, 5 for the
        // learning-rate plateau); rounds are finer, so scale them.
        "--patience",
        &(10 * config.rounds_per_epoch).to_string(),
        "--plateau-patience",
        &(5 * config.rounds_per_epoch).to_string(),
        "--store",
        store,
        "--run-id",
        &format!(
            "study-{}-{}-{}",
            config.name,
            arch.name(),
            std::process::id()
        ),
        "--speeds",
        &list(
            (0..config.peers.len())
                .map(|r| config.peer_speed(r).to_string())
                .collect(),
        ),
    ]
    .map(String::from)
    .to_vec();
    argv.push("--metrics-dir".into());
    argv.push(dir.display().to_string());
    if config.peers.iter().any(|p| p.threads.is_some()) {
        argv.push("--threads".into());
        argv.push(list(
            config
                .peers
                .iter()
                .map(|p| p.threads.unwrap_or(0).to_string())
                .collect(),
        ));
    }
    if let Some(limit) = config.limit {
        argv.extend(["--limit".into(), limit.to_string()]);
    }
    if let Some(d) = &config.data_dir {
        argv.extend(["--data-dir".into(), d.display().to_string()]);
    }
    if config.evaluation {
        argv.push("--evaluation".into());
    }
    if let Some(limit) = config.eval_limit {
        argv.extend(["--eval-limit".into(), limit.to_string()]);
    }
    if let Some(broker) = &config.broker {
        argv.extend(["--broker".into(), broker.clone()]);
    }
    if let Some(offload) = arch.offload() {
        argv.extend([
            "--serverless".into(),
            config.serverless.name().into(),
            "--offload".into(),
            offload.into(),
            "--function-concurrency".into(),
            config.function_concurrency.to_string(),
            "--function-memory-mb".into(),
            config.lambda_memory_mb.to_string(),
        ]);
        match config.serverless {
            FunctionBackend::Local => {}
            FunctionBackend::Lambda => {
                if let Some(e) = &config.lambda_endpoint {
                    argv.extend(["--lambda-endpoint".into(), e.clone()]);
                }
            }
            FunctionBackend::Stepfn => {
                if let Some(arn) = &config.state_machine_arn {
                    argv.extend(["--state-machine-arn".into(), arn.clone()]);
                }
            }
        }
    }
    argv
}
