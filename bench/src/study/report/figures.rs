//! The data behind the report's four plots: time split, training progress, cost and the
//! scale projection.

use super::plots::{Bar, BarGroup, Line, Panels, StackedBars, XyPanel, series_color};
use super::{TimeSplit, round_loss};
use crate::study::config::{Deployment, StudyConfig};
use crate::study::cost::{CostBreakdown, cost_curve};
use crate::study::error::StudyError;
use crate::study::prices::Prices;
use crate::study::runs::DeploymentRun;
use crate::study::simulate::Projection;
use peerless_runtime::metrics::RoundMetrics;

pub(super) fn time_split_plot(runs: &[DeploymentRun]) -> StackedBars {
    StackedBars {
        name: "time_split".into(),
        title: "Time per round by peer".into(),
        y_label: "seconds per round (mean)".into(),
        parts: ["compute", "communication", "update", "waiting"]
            .map(String::from)
            .to_vec(),
        groups: runs
            .iter()
            .map(|run| BarGroup {
                name: run.name.clone(),
                bars: run
                    .peers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Bar {
                        label: format!("p{}", p.rank),
                        values: TimeSplit::of_peer(run, i).parts(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub(super) fn cost_plot(runs: &[DeploymentRun], costs: &[CostBreakdown]) -> StackedBars {
    StackedBars {
        name: "cost".into(),
        title: "Cost per deployment".into(),
        y_label: "dollars".into(),
        parts: CostBreakdown::PARTS.map(String::from).to_vec(),
        groups: runs
            .iter()
            .zip(costs)
            .map(|(run, c)| BarGroup {
                name: String::new(),
                bars: vec![Bar {
                    label: run.name.clone(),
                    values: c.parts().to_vec(),
                }],
            })
            .collect(),
    }
}

pub(super) fn training_plot(
    runs: &[DeploymentRun],
    config: &StudyConfig,
    prices: &Prices,
    has_accuracy: bool,
) -> Result<Panels, StudyError> {
    let mut loss_t = Vec::new();
    let mut loss_d = Vec::new();
    let mut acc_t = Vec::new();
    let mut acc_d = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let color = series_color(&run.name, i);
        let curve = cost_curve(run, config, prices)?;
        let (mut lt, mut ld, mut at, mut ad) = (vec![], vec![], vec![], vec![]);
        for point in &curve {
            let rounds: Vec<&RoundMetrics> = run
                .peers
                .iter()
                .filter_map(|p| p.rounds.get(point.round))
                .collect();
            if let Some(loss) = round_loss(&rounds) {
                lt.push((point.time_s, loss));
                ld.push((point.dollars, loss));
            }
            if let Some(acc) = rounds.iter().find_map(|m| m.test_accuracy) {
                at.push((point.time_s, acc * 100.0));
                ad.push((point.dollars, acc * 100.0));
            }
        }
        let line = |points| Line {
            label: run.name.clone(),
            color,
            points,
        };
        loss_t.push(line(lt));
        loss_d.push(line(ld));
        acc_t.push(line(at));
        acc_d.push(line(ad));
    }
    let panel = |title: &str, x: &str, y: &str, lines| XyPanel {
        title: title.into(),
        x_label: x.into(),
        y_label: y.into(),
        log_x: false,
        log_y: false,
        legend_left: false,
        lines,
    };
    let mut panels = vec![
        panel("Loss against time", "training time s", "train loss", loss_t),
        panel(
            "Loss against dollars",
            "dollars spent",
            "train loss",
            loss_d,
        ),
    ];
    if has_accuracy {
        panels.push(panel(
            "Accuracy against time",
            "training time s",
            "test accuracy %",
            acc_t,
        ));
        panels.push(panel(
            "Accuracy against dollars",
            "dollars spent",
            "test accuracy %",
            acc_d,
        ));
    }
    Ok(Panels {
        name: "training".into(),
        title: "Training progress".into(),
        columns: 2,
        panels,
    })
}

/// Peers, round seconds and dollars per round of one projected point.
type ScalePoint = (f64, f64, f64);

pub(super) fn projection_plot(config: &StudyConfig, projection: &Projection) -> Panels {
    let first_type = config.projection_instance_types().into_iter().next();
    // (label, [(peers, round seconds, dollars per round)]).
    let mut series: Vec<(String, Vec<ScalePoint>)> = Vec::new();
    for p in &projection.points {
        let shown =
            p.deployment == Deployment::Instance || Some(&p.instance_type) == first_type.as_ref();
        if !shown {
            continue;
        }
        let label = match p.lambda_memory_mb {
            None => format!("{} {}", p.deployment.name(), p.instance_type),
            Some(m) => format!("{} {m} MB", p.deployment.name()),
        };
        let point = (
            f64::from(p.peers),
            p.round.round_time_s,
            p.cost_per_round.total,
        );
        match series.iter_mut().find(|s| s.0 == label) {
            Some(s) => s.1.push(point),
            None => series.push((label, vec![point])),
        }
    }
    let lines = |pick: fn(&ScalePoint) -> (f64, f64)| -> Vec<Line> {
        series
            .iter()
            .enumerate()
            .map(|(i, (label, pts))| Line {
                label: label.clone(),
                color: series_color("", i),
                points: pts.iter().map(pick).collect(),
            })
            .collect()
    };
    Panels {
        name: "projection".into(),
        title: "Projection to more peers".into(),
        columns: 2,
        panels: vec![
            XyPanel {
                title: "Round time".into(),
                x_label: "peers".into(),
                y_label: "seconds per round".into(),
                log_x: true,
                log_y: true,
                legend_left: true,
                lines: lines(|p| (p.0, p.1)),
            },
            XyPanel {
                title: "Cost per round".into(),
                x_label: "peers".into(),
                y_label: "dollars per round".into(),
                log_x: true,
                log_y: true,
                legend_left: true,
                lines: lines(|p| (p.0, p.2)),
            },
        ],
    }
}

/// Test accuracy against round of every run (the attack section's plot).
pub(super) fn attack_plot(runs: &[DeploymentRun], config: &StudyConfig) -> Panels {
    let plan = config.runs();
    let lines = runs
        .iter()
        .enumerate()
        .map(|(i, run)| {
            let label = match plan.iter().find(|p| p.name == run.name) {
                Some(p) if !p.attacked => format!("{} (no attack)", run.name),
                Some(p) => format!("{} ({})", run.name, p.aggregation),
                None => run.name.clone(),
            };
            let points = (0..run.round_count())
                .filter_map(|r| {
                    run.peers
                        .iter()
                        .find_map(|p| p.rounds.get(r).and_then(|m| m.test_accuracy))
                        .map(|a| (r as f64, a * 100.0))
                })
                .collect();
            Line {
                label,
                color: series_color("", i),
                points,
            }
        })
        .collect();
    Panels {
        name: "attacks".into(),
        title: format!("Under attack ({})", config.attack_summary()),
        columns: 1,
        panels: vec![XyPanel {
            title: "Test accuracy against round".into(),
            x_label: "round".into(),
            y_label: "test accuracy %".into(),
            log_x: false,
            log_y: false,
            legend_left: false,
            lines,
        }],
    }
}
