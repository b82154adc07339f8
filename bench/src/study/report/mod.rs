//! The study's report: `report.md`, a self-contained `report.html`, PNG and SVG plots, the
//! raw metrics as CSV and the projection as JSON, all from the runs' metrics, the prices
//! and the projection.
//!
//! How a round's time is split for the tables and plot (a), per peer, mean per round:
//! **compute** = `compute_time_s` minus the weights upload and gradient fetch it contains;
//! **communication** = encode + send + decode + weights upload + gradient fetch;
//! **update** = `update_time_s`; **waiting** = `receive_time_s` (waiting for the other
//! peers' gradients) without the part the previous round's evaluation caused
//! ([`DeploymentRun::waiting_s`]). Evaluation is in none of them.

mod csv;
mod doc;
mod figures;
mod machine;
mod plots;
mod sections;

use std::path::{Path, PathBuf};

use doc::Block;
use figures::{attack_plot, cost_plot, projection_plot, time_split_plot, training_plot};
pub use sections::Headline;
use sections::{
    attack_section, cost_section, deployments_section, files_section, headlines,
    projection_section, setup_section, summary_section,
};

use super::config::StudyConfig;
use super::cost::run_cost;
use super::error::StudyError;
use super::prices::{Day, Prices, StalePrice};
use super::runs::{DeploymentRun, mean};
use super::simulate::Projection;
use peerless_runtime::metrics::RoundMetrics;

pub use csv::{invocations_csv, metrics_csv};

/// The report's section headings, in order (tests and readers can rely on them); a study
/// with an attacking peer also has an "Attacks" section after "Deployments".
pub const SECTIONS: [&str; 6] = [
    "Summary",
    "Setup",
    "Deployments",
    "Cost",
    "Projection",
    "Files",
];

/// Every file [`write_report`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub metrics_csv: PathBuf,
    pub invocations_csv: PathBuf,
    /// The projection (calibration, grid, exchanges, validation) as JSON.
    pub projection_json: PathBuf,
    /// PNG and SVG of every plot.
    pub plots: Vec<PathBuf>,
    /// The summary's headlines (serverless and hybrid against instance), as plain text.
    pub headlines: Vec<Headline>,
    /// The run's date the prices' age is counted against.
    pub run_date: Day,
    /// The prices dated more than a year before `run_date` ([`Prices::stale`]): the
    /// summary and the price table flag them, and `peerless study` prints them.
    pub stale_prices: Vec<StalePrice>,
}

/// One sentence on the prices dated more than a year before `today` (`stale`, out of
/// `total` prices), naming each with its date, or `None` when every price is recent
/// enough: the report's summary and `peerless study`'s output say the same.
pub fn stale_prices_note(today: Day, stale: &[StalePrice], total: usize) -> Option<String> {
    if stale.is_empty() {
        return None;
    }
    let list: Vec<String> = stale
        .iter()
        .map(|p| format!("{} ({})", p.key, p.date))
        .collect();
    Some(format!(
        "{} of {total} prices are dated more than a year before this run ({today}), so \
         the dollars that use them may be out of date; re-check them against their source: \
         {}.",
        stale.len(),
        list.join(", ")
    ))
}

/// Mean time split of one peer's rounds, seconds (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimeSplit {
    pub compute: f64,
    pub communication: f64,
    pub update: f64,
    pub waiting: f64,
}

impl TimeSplit {
    /// The split of one round of one peer, given its waiting (see
    /// [`DeploymentRun::waiting_s`]).
    pub fn of_round(m: &RoundMetrics, waiting: f64) -> TimeSplit {
        let remote_io = m.weights_upload_time_s + m.gradient_fetch_time_s;
        TimeSplit {
            compute: (m.compute_time_s - remote_io).max(0.0),
            communication: m.encode_time_s + m.send_time_s + m.decode_time_s + remote_io,
            update: m.update_time_s,
            waiting,
        }
    }

    /// The mean split of the rounds of `run`'s peer at index `peer`.
    pub fn of_peer(run: &DeploymentRun, peer: usize) -> TimeSplit {
        let Some(p) = run.peers.get(peer) else {
            return TimeSplit::default();
        };
        let splits: Vec<TimeSplit> = p
            .rounds
            .iter()
            .enumerate()
            .map(|(r, m)| TimeSplit::of_round(m, run.waiting_s(peer, r)))
            .collect();
        let avg = |f: fn(&TimeSplit) -> f64| mean(splits.iter().map(f));
        TimeSplit {
            compute: avg(|s| s.compute),
            communication: avg(|s| s.communication),
            update: avg(|s| s.update),
            waiting: avg(|s| s.waiting),
        }
    }

    fn parts(&self) -> Vec<f64> {
        vec![self.compute, self.communication, self.update, self.waiting]
    }
}

/// Writes the whole report into `out_dir` (created if needed): `report.md`,
/// `report.html`, `metrics.csv`, `invocations.csv`, `projection.json` and
/// `plots/*.png|svg`. `run_date` is the day of the run (`Day::today_utc()` for a study
/// that just ran): prices dated more than a year before it are flagged.
pub fn write_report(
    out_dir: &Path,
    config: &StudyConfig,
    runs: &[DeploymentRun],
    prices: &Prices,
    projection: &Projection,
    run_date: Day,
) -> Result<ReportFiles, StudyError> {
    let plot_dir = out_dir.join("plots");
    std::fs::create_dir_all(&plot_dir).map_err(|e| StudyError::io(&plot_dir, e))?;
    let costs = runs
        .iter()
        .map(|r| run_cost(r, config, prices))
        .collect::<Result<Vec<_>, _>>()?;
    let has_accuracy = runs
        .iter()
        .flat_map(|r| r.all_rounds())
        .any(|m| m.test_accuracy.is_some());

    let mut svgs: Vec<(String, String)> = Vec::new();
    let mut plot_files = Vec::new();
    let mut figure = |name: &str, svg: String| -> Block {
        plot_files.push(plot_dir.join(format!("{name}.png")));
        plot_files.push(plot_dir.join(format!("{name}.svg")));
        let svg_rel = format!("plots/{name}.svg");
        svgs.push((svg_rel.clone(), svg));
        Block::Figure {
            caption: String::new(),
            png: format!("plots/{name}.png"),
            svg: svg_rel,
        }
    };
    let time_fig = figure(
        "time_split",
        plots::render(&time_split_plot(runs), &plot_dir)?,
    );
    let training_fig = figure(
        "training",
        plots::render(
            &training_plot(runs, config, prices, has_accuracy)?,
            &plot_dir,
        )?,
    );
    let cost_fig = figure("cost", plots::render(&cost_plot(runs, &costs), &plot_dir)?);
    let attack_fig = if config.attacks() {
        Some(figure(
            "attacks",
            plots::render(&attack_plot(runs, config), &plot_dir)?,
        ))
    } else {
        None
    };
    let projection_fig = if projection.points.is_empty() {
        None
    } else {
        Some(figure(
            "projection",
            plots::render(&projection_plot(config, projection), &plot_dir)?,
        ))
    };

    let files = ReportFiles {
        markdown: out_dir.join("report.md"),
        html: out_dir.join("report.html"),
        metrics_csv: out_dir.join("metrics.csv"),
        invocations_csv: out_dir.join("invocations.csv"),
        projection_json: out_dir.join("projection.json"),
        plots: plot_files,
        headlines: headlines(runs, &costs),
        run_date,
        stale_prices: prices.stale(run_date),
    };
    let mut blocks = vec![Block::Heading(1, format!("Study report: {}", config.name))];
    summary_section(
        &mut blocks,
        config,
        runs,
        &costs,
        &files.headlines,
        has_accuracy,
    );
    let price_count = prices.dates().len();
    if let Some(note) = stale_prices_note(run_date, &files.stale_prices, price_count) {
        blocks.push(Block::Paragraph(format!("**Stale prices**: {note}")));
    }
    setup_section(&mut blocks, config, prices);
    deployments_section(
        &mut blocks,
        config,
        runs,
        time_fig,
        training_fig,
        has_accuracy,
    );
    if let Some(fig) = attack_fig {
        attack_section(&mut blocks, config, runs, fig);
    }
    cost_section(
        &mut blocks,
        runs,
        &costs,
        prices,
        &files.stale_prices,
        cost_fig,
    );
    projection_section(&mut blocks, config, projection, projection_fig);
    files_section(&mut blocks, out_dir, &files);

    write(&files.metrics_csv, &metrics_csv(runs))?;
    write(&files.invocations_csv, &invocations_csv(runs))?;
    let json = serde_json::to_string_pretty(projection)
        .map_err(|e| StudyError::missing(format!("the projection as JSON: {e}")))?;
    write(&files.projection_json, &json)?;
    write(&files.markdown, &doc::markdown(&blocks))?;
    let svg_of = |rel: &str| svgs.iter().find(|(r, _)| r == rel).map(|(_, s)| s.clone());
    write(
        &files.html,
        &doc::html(&format!("Study report: {}", config.name), &blocks, &svg_of),
    )?;
    Ok(files)
}

fn write(path: &Path, text: &str) -> Result<(), StudyError> {
    std::fs::write(path, text).map_err(|e| StudyError::io(path, e))
}

fn with_caption(mut fig: Block, text: &str) -> Block {
    if let Block::Figure { caption, .. } = &mut fig {
        *caption = text.to_string();
    }
    fig
}

/// Training loss of a round over all peers, weighted by samples.
fn round_loss(rounds: &[&RoundMetrics]) -> Option<f64> {
    let samples: usize = rounds.iter().map(|m| m.samples).sum();
    if rounds.is_empty() {
        return None;
    }
    if samples == 0 {
        return Some(rounds.iter().map(|m| m.train_loss).sum::<f64>() / rounds.len() as f64);
    }
    Some(
        rounds
            .iter()
            .map(|m| m.train_loss * m.samples as f64)
            .sum::<f64>()
            / samples as f64,
    )
}
