//! The report's sections, each appended to the document as blocks: summary, setup,
//! deployments, cost, projection and files.

use std::path::Path;

use super::doc::Block;
use super::{ReportFiles, SECTIONS, TimeSplit, machine, round_loss, with_caption};
use crate::study::config::{Deployment, StudyConfig};
use crate::study::cost::{CostBreakdown, rules};
use crate::study::prices::{Prices, StalePrice};
use crate::study::runs::DeploymentRun;
use crate::study::simulate::{ExchangeTraffic, Projection, VALIDATION_TOLERANCE, assumptions};
use peerless_runtime::metrics::RoundMetrics;

/// `x` with `digits` significant digits (plain notation).
fn sig(x: f64, digits: i32) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (digits - 1 - magnitude).max(0) as usize;
    format!("{x:.decimals$}")
}

fn dollars(x: f64) -> String {
    let text = sig(x, 4);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("${text}")
}

fn secs(x: f64) -> String {
    format!("{x:.3}")
}

/// Whole-run durations: tenths of a second.
fn secs1(x: f64) -> String {
    format!("{x:.1}")
}

fn find_run(runs: &[DeploymentRun], arch: Deployment) -> Option<(usize, &DeploymentRun)> {
    runs.iter()
        .enumerate()
        .find(|(_, r)| r.deployment() == Some(arch))
}

/// The headlines, serverless then hybrid: each one's change in gradient-computation time
/// and cost ratio against `instance`, as plain text.
pub(super) fn headlines(runs: &[DeploymentRun], costs: &[CostBreakdown]) -> Vec<Headline> {
    [Deployment::Serverless, Deployment::Hybrid]
        .into_iter()
        .filter_map(|a| headline(runs, costs, a))
        .collect()
}

/// One headline: `label` ("Serverless vs instance") and what it found.
#[derive(Clone, Debug, PartialEq)]
pub struct Headline {
    pub label: String,
    pub text: String,
}

impl std::fmt::Display for Headline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.label, self.text)
    }
}

fn headline(runs: &[DeploymentRun], costs: &[CostBreakdown], arch: Deployment) -> Option<Headline> {
    let (i, base) = find_run(runs, Deployment::Instance)?;
    let (j, other) = find_run(runs, arch)?;
    let (t0, t1) = (
        base.slowest_mean_compute_s(),
        other.slowest_mean_compute_s(),
    );
    let (c0, c1) = (costs[i].total, costs[j].total);
    if t0 <= 0.0 {
        return None;
    }
    let change = (t1 - t0) / t0 * 100.0;
    let direction = if change <= 0.0 {
        format!("{:.2}% less", -change)
    } else {
        format!("{change:.2}% more")
    };
    let ratio = if c0 > 0.0 {
        format!("{:.2}x the cost", c1 / c0)
    } else {
        "the cost cannot be compared (instance run cost $0)".to_string()
    };
    Some(Headline {
        label: format!("{} vs instance", capitalise(arch.name())),
        text: format!(
            "{direction} gradient computation time (slowest peer's mean compute_time_s per \
             round: {} s → {} s), at {ratio} ({} vs {}); wall time {} s → {} s, training \
             time without evaluation {} s → {} s.",
            secs(t0),
            secs(t1),
            dollars(c1),
            dollars(c0),
            secs1(base.wall_time_s),
            secs1(other.wall_time_s),
            secs1(base.training_time_s()),
            secs1(other.training_time_s()),
        ),
    })
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The last round's training loss, and the test accuracy of the last evaluated round
/// (the last round itself, unless the run was cut short between evaluations).
fn final_round_values(run: &DeploymentRun) -> (Option<f64>, Option<f64>) {
    let last = run.round_count().checked_sub(1);
    let Some(last) = last else {
        return (None, None);
    };
    let at = |r: usize| -> Vec<&RoundMetrics> {
        run.peers.iter().filter_map(|p| p.rounds.get(r)).collect()
    };
    let accuracy = (0..=last)
        .rev()
        .find_map(|r| at(r).iter().find_map(|m| m.test_accuracy));
    (round_loss(&at(last)), accuracy)
}

pub(super) fn summary_section(
    blocks: &mut Vec<Block>,
    config: &StudyConfig,
    runs: &[DeploymentRun],
    costs: &[CostBreakdown],
    headlines: &[Headline],
    has_accuracy: bool,
) {
    blocks.push(Block::Heading(2, SECTIONS[0].into()));
    let lines: Vec<String> = headlines
        .iter()
        .map(|h| format!("**{}**: {}", h.label, h.text))
        .collect();
    if lines.is_empty() {
        blocks.push(Block::Paragraph(
            "No comparison against `instance`: the study needs an instance run and a \
             serverless or hybrid run for the headline."
                .into(),
        ));
    } else {
        blocks.push(Block::List(lines));
    }
    let measured = runs
        .iter()
        .map(|r| r.peers.iter().map(|p| p.rounds.len()).min().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let stopped = if (measured as u64) < config.rounds() {
        format!(", of which {measured} ran before early stopping")
    } else {
        String::new()
    };
    let per_round = config.batches_per_round();
    let schedule = if config.evaluation {
        let k = config.eval_interval();
        let every = if k == 1 {
            "after every round".to_string()
        } else if config.eval_every.is_none() {
            format!("once per epoch (every {k} rounds)")
        } else {
            format!("every {k} rounds")
        };
        format!(" Validation and test accuracy are evaluated {every} and after the last round.")
    } else {
        " Evaluation was off.".to_string()
    };
    blocks.push(Block::Paragraph(format!(
        "{} on {}, {} peers, {} rounds planned ({} epochs × {} rounds){stopped}; each peer's \
         shard is {} batch objects, so a round covers about {per_round} batches per peer.\
         {schedule} The original study's headline for comparison: up to 97.34% less gradient \
         computation time with serverless, at up to 5.4x the cost.",
        config.model_names(),
        config.dataset.name(),
        config.peers.len(),
        config.rounds(),
        config.epochs,
        config.rounds_per_epoch,
        config.batches_per_peer,
    )));
    let mut table = vec![
        [
            "deployment",
            "wall time s",
            "evaluation s",
            "training time s (without evaluation)",
            "gradient compute s (slowest peer)",
            "compute s/round (slowest peer)",
            "total cost",
            "final train loss",
            "final test accuracy",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for (run, cost) in runs.iter().zip(costs) {
        let (loss, accuracy) = final_round_values(run);
        table.push(vec![
            run.name.clone(),
            secs1(run.wall_time_s),
            secs1(run.evaluation_time_s()),
            secs1(run.training_time_s()),
            secs1(run.slowest_compute_s()),
            secs(run.slowest_mean_compute_s()),
            dollars(cost.total),
            loss.map_or("–".into(), |l| format!("{l:.4}")),
            accuracy.map_or("–".into(), |a| format!("{:.2}%", a * 100.0)),
        ]);
    }
    blocks.push(Block::Table(table));
    blocks.push(Block::Paragraph(
        "**Wall time**: the whole run, from starting the peers (loading their shards, \
         building their models, joining the exchange) to the last peer's end, as EC2 and the \
         broker bill it. **Evaluation**: per round the longest eval_time_s of any peer, \
         summed over the rounds. **Training time** (without evaluation): per round the \
         longest own work of any peer (round_time_s − eval_time_s − receive_time_s) plus the \
         shortest receive_time_s (the last peer's wait for the exchange itself), summed over \
         the rounds; the training curves' time axis. **Gradient compute**: the slowest \
         peer's compute_time_s summed over its rounds (the headline's per-round mean × \
         rounds). They differ because wall time adds start-up and evaluation to training, \
         and training adds the exchange, the optimizer step and waiting for the slowest \
         peer to gradient computation: the headline compares gradient computation only."
            .into(),
    ));
    blocks.push(Block::List(runs.iter().map(time_story).collect()));
    if !has_accuracy {
        blocks.push(Block::Paragraph(
            "Accuracy was not measured (evaluation was off): the tables and plots show the \
             training loss only."
                .into(),
        ));
    }
}

/// One sentence on where a run's wall time went.
fn time_story(run: &DeploymentRun) -> String {
    let (wall, eval, train) = (
        run.wall_time_s,
        run.evaluation_time_s(),
        run.training_time_s(),
    );
    let compute = run.slowest_compute_s();
    let rest = wall - eval - train;
    let rest = if rest >= 0.0 {
        format!("{} s start-up and the rest", secs1(rest))
    } else {
        // Each round's slowest work and longest evaluation need not be one peer's, so
        // their sums can exceed the wall clock by a little.
        format!(
            "the per-round maxima exceed the wall time by {} s (a round's slowest work and \
             longest evaluation may be different peers')",
            secs1(-rest)
        )
    };
    format!(
        "{}: of {} s wall time, {} s evaluating ({} of {} rounds evaluated), {} s training \
         and {rest}; of the training, {} s ({:.0}%) computing gradients on the slowest peer, \
         the rest exchanging, updating and waiting.",
        run.name,
        secs1(wall),
        secs1(eval),
        run.evaluated_rounds(),
        run.round_count(),
        secs1(train),
        secs1(compute),
        if train > 0.0 {
            100.0 * compute / train
        } else {
            0.0
        },
    )
}

pub(super) fn setup_section(blocks: &mut Vec<Block>, config: &StudyConfig, prices: &Prices) {
    blocks.push(Block::Heading(2, SECTIONS[1].into()));
    blocks.push(Block::Paragraph(format!(
        "Functions: `{}` backend, {} concurrent calls per peer, {} MB ({}). Broker billed as \
         `{}`. Prices: `{}` ({}, {}).",
        config.serverless.name(),
        config.function_concurrency,
        config.lambda_memory_mb,
        config.lambda_architecture.name(),
        config.broker_type,
        prices.source_file,
        prices.region,
        prices.currency
    )));
    let mut peers = vec![
        ["peer", "speed", "threads", "billed as"]
            .map(String::from)
            .to_vec(),
    ];
    for (rank, p) in config.peers.iter().enumerate() {
        peers.push(vec![
            rank.to_string(),
            format!("{}", p.speed),
            p.threads.map_or("default".into(), |t| t.to_string()),
            config.peer_instance_type(rank).to_string(),
        ]);
    }
    blocks.push(Block::Heading(3, "Peers".into()));
    blocks.push(Block::Table(peers));
    blocks.push(Block::Heading(3, "Machine".into()));
    let mut machine = vec![vec!["what".to_string(), "value".to_string()]];
    machine.extend(
        machine::machine_facts()
            .into_iter()
            .map(|(k, v)| vec![k, v]),
    );
    blocks.push(Block::Table(machine));
    blocks.push(Block::Heading(3, "Configuration".into()));
    blocks.push(Block::Code(config.to_toml_string()));
}

pub(super) fn deployments_section(
    blocks: &mut Vec<Block>,
    config: &StudyConfig,
    runs: &[DeploymentRun],
    time_fig: Block,
    training_fig: Block,
    has_accuracy: bool,
) {
    blocks.push(Block::Heading(2, SECTIONS[2].into()));
    blocks.push(Block::Paragraph(
        "Per peer, mean per round: **compute** = compute_time_s without the weights upload \
         and gradient fetch it contains; **communication** = encode + send + decode + weights \
         upload + gradient fetch; **update** = update_time_s; **waiting** = receive_time_s \
         (waiting for the other peers' gradients) without the part evaluation caused: after \
         an evaluated round, a peer that finished evaluating sooner than the last peer to \
         deliver the next round (the one with the shortest receive_time_s) starts that round \
         earlier by the difference of their eval_time_s and waits that much longer, so the \
         difference is taken off; **evaluation** = eval_time_s (0 in rounds without \
         evaluation), shown apart and in none of the other parts."
            .into(),
    ));
    for run in runs {
        blocks.push(Block::Heading(3, run.name.clone()));
        blocks.push(Block::Paragraph(format!(
            "{} rounds ({} evaluated), wall time {} s, evaluation {} s, training time \
             without evaluation {} s, mean round {} s (slowest peer, without evaluation).",
            run.round_count(),
            run.evaluated_rounds(),
            secs(run.wall_time_s),
            secs(run.evaluation_time_s()),
            secs(run.training_time_s()),
            secs(run.mean_round_time_s())
        )));
        let mut table = vec![
            [
                "peer",
                "speed",
                "rounds",
                "local batches",
                "offloaded",
                "fallback",
                "compute s",
                "communication s",
                "update s",
                "waiting s",
                "evaluation s",
                "round s",
                "invocations",
                "MB sent/round",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for (i, peer) in run.peers.iter().enumerate() {
            let split = TimeSplit::of_peer(run, i);
            let sum = |f: fn(&RoundMetrics) -> usize| -> usize { peer.rounds.iter().map(f).sum() };
            table.push(vec![
                peer.rank.to_string(),
                format!("{}", config.peer_speed(peer.rank as usize)),
                peer.rounds.len().to_string(),
                sum(|m| m.local_batches).to_string(),
                sum(|m| m.offloaded_batches).to_string(),
                sum(|m| m.fallback_batches).to_string(),
                secs(split.compute),
                secs(split.communication),
                secs(split.update),
                secs(split.waiting),
                secs(peer.mean(|m| m.eval_time_s)),
                secs(peer.mean(|m| m.round_time_s)),
                sum(|m| m.invocations.len()).to_string(),
                format!("{:.3}", peer.mean(|m| m.bytes_sent as f64) / 1e6),
            ]);
        }
        blocks.push(Block::Table(table));
    }
    blocks.push(with_caption(
        time_fig,
        "(a) Time per round, mean per peer, split into compute, communication, update and \
         waiting, by deployment; evaluation is left out, and so is the waiting it causes.",
    ));
    blocks.push(with_caption(
        training_fig,
        if has_accuracy {
            "(b) Training loss and test accuracy (at the evaluated rounds) against training \
             time without evaluation and against dollars spent, by deployment."
        } else {
            "(b) Training loss against training time without evaluation and against dollars \
             spent, by deployment (no accuracy: evaluation was off)."
        },
    ));
}

pub(super) fn cost_section(
    blocks: &mut Vec<Block>,
    runs: &[DeploymentRun],
    costs: &[CostBreakdown],
    prices: &Prices,
    stale: &[StalePrice],
    cost_fig: Block,
) {
    blocks.push(Block::Heading(2, SECTIONS[3].into()));
    blocks.push(Block::Paragraph(format!(
        "Dollars at the prices of `{}` ({}); the billing rules:",
        prices.source_file, prices.region
    )));
    blocks.push(Block::List(rules()));
    let header = ["deployment"]
        .into_iter()
        .chain(CostBreakdown::PARTS)
        .chain(["total"]);
    let mut table = vec![header.map(String::from).collect::<Vec<_>>()];
    let mut quantities = vec![
        [
            "deployment",
            "instance-hours",
            "GB-seconds",
            "Lambda requests",
            "state transitions",
            "S3 PUTs",
            "S3 GETs",
            "broker-hours",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for (run, c) in runs.iter().zip(costs) {
        let parts = c.parts().into_iter().chain([c.total]).map(dollars);
        table.push(std::iter::once(run.name.clone()).chain(parts).collect());
        let q = &c.quantities;
        quantities.push(vec![
            run.name.clone(),
            sig(q.instance_hours, 4),
            sig(q.gb_seconds, 4),
            q.lambda_requests.to_string(),
            q.state_transitions.to_string(),
            q.s3_put_requests.to_string(),
            q.s3_get_requests.to_string(),
            sig(q.broker_hours, 4),
        ]);
    }
    blocks.push(Block::Table(table));
    blocks.push(Block::Table(quantities));
    let mut price_rows = vec![
        [
            "price",
            "value",
            "unit",
            "date",
            "more than a year old",
            "source",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let old = |key: &str| {
        if stale.iter().any(|p| p.key == key) {
            "yes".to_string()
        } else {
            String::new()
        }
    };
    for (key, p) in prices.entries() {
        price_rows.push(vec![
            key.clone(),
            format!("{}", p.value),
            p.unit.clone(),
            p.date.clone(),
            old(&key),
            p.source.clone(),
        ]);
    }
    for (name, p) in &prices.ec2 {
        let key = format!("ec2.\"{name}\"");
        price_rows.push(vec![
            key.clone(),
            format!("{}", p.value),
            p.unit.clone(),
            p.date.clone(),
            old(&key),
            p.source.clone(),
        ]);
    }
    blocks.push(Block::Heading(3, "Prices used".into()));
    blocks.push(Block::Table(price_rows));
    blocks.push(with_caption(
        cost_fig,
        "(c) Cost of each deployment's run, by resource.",
    ));
}

pub(super) fn projection_section(
    blocks: &mut Vec<Block>,
    config: &StudyConfig,
    projection: &Projection,
    fig: Option<Block>,
) {
    blocks.push(Block::Heading(2, SECTIONS[4].into()));
    blocks.push(Block::Paragraph(
        "An analytical model of one round, calibrated from the local runs, evaluated for \
         more peers, other instance types and other Lambda memory sizes."
            .into(),
    ));
    blocks.push(Block::Heading(3, "Validation".into()));
    if projection.validations.is_empty() {
        blocks.push(Block::Paragraph("No run could be validated.".into()));
    } else {
        let mut table = vec![
            [
                "deployment",
                "exchange",
                "rounds",
                "predicted mean round s",
                "measured mean round s",
                "ratio",
                "within ±20%",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for v in &projection.validations {
            table.push(vec![
                v.deployment.clone(),
                v.exchange.to_string(),
                v.rounds.to_string(),
                secs(v.predicted_round_s),
                secs(v.measured_round_s),
                format!("{:.3}", v.ratio),
                if v.within_tolerance { "yes" } else { "**no**" }.into(),
            ]);
        }
        blocks.push(Block::Paragraph(format!(
            "The model's prediction of each local run (same peers, same speeds, same exchange, \
             the study machine) against its measured mean round time; the model is trusted \
             within ±{:.0}%.",
            VALIDATION_TOLERANCE * 100.0
        )));
        blocks.push(Block::Table(table));
    }
    blocks.push(Block::Heading(3, "Calibration".into()));
    let c = &projection.calibration;
    let opt = |x: Option<f64>| x.map_or("not measured".to_string(), |v| sig(v, 4));
    let mut cal = vec![
        vec!["quantity".to_string(), "value".to_string()],
        vec![
            "seconds per batch at speed 1.0".into(),
            format!(
                "{} (from {})",
                opt(c.batch_s),
                c.batch_source.as_deref().unwrap_or("no run")
            ),
        ],
        vec![
            "reference instance type".into(),
            c.reference_instance_type.clone(),
        ],
        vec![
            "spread (sd) of seconds per batch between peers".into(),
            sig(c.batch_sd_s, 4),
        ],
        vec!["exchange of the round model".into(), c.exchange.to_string()],
        vec!["gradient bytes".into(), format!("{:.0}", c.gradient_bytes)],
    ];
    for m in &c.measured_exchanges {
        let formula = ExchangeTraffic::of(m.exchange, m.peers, m.gradient_bytes).broker_bytes;
        cal.push(vec![
            format!(
                "{} exchange s (local, {} peers, {})",
                m.exchange,
                m.peers,
                m.runs.join(", ")
            ),
            format!("{} ± {}", sig(m.exchange_s, 4), sig(m.exchange_se_s, 2)),
        ]);
        cal.push(vec![
            format!("{} broker bytes per round (measured / formula)", m.exchange),
            format!("{:.0} / {:.0}", m.broker_bytes_per_round, formula),
        ]);
    }
    cal.extend([
        vec![
            "broker throughput MB/s".into(),
            opt(c.broker_bytes_per_s.map(|w| w / 1e6)),
        ],
        vec![
            "peer link throughput MB/s".into(),
            opt(c.peer_bytes_per_s.map(|w| w / 1e6)),
        ],
        vec!["latency per message hop s".into(), latency_row(c)],
        vec!["encode s".into(), sig(c.encode_s, 4)],
        vec![
            "decode s per gradient".into(),
            sig(c.decode_per_gradient_s, 4),
        ],
        vec!["update s".into(), sig(c.update_s, 4)],
        vec!["checkpoint s per round".into(), sig(c.checkpoint_s, 4)],
    ]);
    if let Some(f) = &c.functions {
        cal.push(vec![
            "function memory MB (measured)".into(),
            f.memory_mb.to_string(),
        ]);
        for (k, v) in [
            ("function call overhead s", f.call_overhead_s),
            ("function call spread (sd) s", f.call_sd_s),
            ("function load weights s", f.load_weights_s),
            ("function load batch s", f.load_batch_s),
            ("function compute s", f.compute_s),
            ("function upload s", f.upload_s),
            ("cold-start extra s", f.cold_extra_s),
            ("billed ms beyond handler", f.billed_extra_ms),
            ("weights upload s (peer)", f.weights_upload_s),
            (
                "gradient fetch s per gradient (peer)",
                f.fetch_per_gradient_s,
            ),
            ("state transitions per batch", f.transitions_per_batch),
        ] {
            cal.push(vec![k.to_string(), sig(v, 4)]);
        }
        cal.push(vec![
            "invocations measured".into(),
            f.invocations.to_string(),
        ]);
    } else {
        cal.push(vec!["functions".into(), "no function call recorded".into()]);
    }
    blocks.push(Block::Table(cal));
    blocks.push(Block::Heading(3, "Assumptions".into()));
    blocks.push(Block::List(assumptions()));
    if !projection.notes.is_empty() {
        blocks.push(Block::Heading(3, "Not projected".into()));
        blocks.push(Block::List(projection.notes.clone()));
    }
    exchanges_table(blocks, projection);
    blocks.push(Block::Heading(3, "Projected rounds".into()));
    blocks.push(Block::Paragraph(format!(
        "Every configured deployment, peer count, instance type and memory size, with the \
         config's exchange ({}).",
        config.exchange
    )));
    let mut table = vec![
        [
            "deployment",
            "peers",
            "instance",
            "memory MB",
            "round s",
            "compute s",
            "exchange s",
            "cold start +s",
            "offloaded/round",
            "cost/round",
            "cost/1000 rounds",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in &projection.points {
        table.push(vec![
            p.deployment.name().to_string(),
            p.peers.to_string(),
            p.instance_type.clone(),
            p.lambda_memory_mb.map_or("–".into(), |m| m.to_string()),
            sig(p.round.round_time_s, 4),
            sig(p.round.compute_s, 4),
            sig(p.round.exchange_s, 4),
            sig(p.cold_start_extra_s, 3),
            p.round.offloaded.iter().sum::<usize>().to_string(),
            dollars(p.cost_per_round.total),
            dollars(p.cost_per_round.total * 1000.0),
        ]);
    }
    if projection.points.is_empty() {
        blocks.push(Block::Paragraph("Nothing could be projected.".into()));
    } else {
        blocks.push(Block::Table(table));
    }
    if let Some(fig) = fig {
        let types = config.projection_instance_types();
        blocks.push(with_caption(
            fig,
            &format!(
                "(d) Projected warm round time and cost per round against the number of peers \
                 (log scales): instance for every projected type; serverless and hybrid for \
                 every memory size on {}.",
                types.first().map_or("the default type", String::as_str)
            ),
        ));
    }
}

/// The calibration's per-hop latency, or why there is none.
fn latency_row(c: &crate::study::simulate::Calibration) -> String {
    if let Some(l) = c.hop_latency_s {
        return format!("{} (fitted to both exchanges)", sig(l, 4));
    }
    if let Some(fit) = c.exchange_fit.filter(|f| !f.resolved()) {
        return format!(
            "not calibrated: both exchanges fit a latency of {} s and {} MB/s, but the \
             per-byte time {} ± {} s/MB (standard error) is within two standard errors of \
             zero, so the rounds' spread hides the throughput; the latency is folded into \
             the throughput of {} (the lowest its measurement allows)",
            sig(fit.hop_latency_s, 3),
            sig(fit.bytes_per_s() / 1e6, 4),
            sig(fit.per_byte_s * 1e6, 3),
            sig(fit.per_byte_se_s * 1e6, 3),
            c.exchange
        );
    }
    if c.measured_exchanges.len() > 1 {
        let times: Vec<String> = c
            .measured_exchanges
            .iter()
            .map(|m| format!("{} {} s", m.exchange, sig(m.exchange_s, 3)))
            .collect();
        format!(
            "not calibrated: no latency ≥ 0 and throughput > 0 explain both ({}); folded \
             into the throughput",
            times.join(", ")
        )
    } else {
        "not calibrated (needs a run of each exchange: compare_exchanges); folded into the \
         throughput"
            .to_string()
    }
}

/// Both exchanges side by side at every projected peer count: their traffic, exchange
/// time, what bounds it and the round of one set-up.
fn exchanges_table(blocks: &mut Vec<Block>, projection: &Projection) {
    if projection.exchanges.is_empty() {
        return;
    }
    blocks.push(Block::Heading(3, "Exchanges".into()));
    let setup = projection.exchange_setup.as_ref().map_or(
        "no deployment could be projected, so no round is shown".to_string(),
        |s| {
            let memory = s
                .lambda_memory_mb
                .map_or(String::new(), |m| format!(" at {m} MB"));
            format!(
                "rounds are {} on {}{memory}; exchange-bound marks a round whose exchange \
                 takes longer than its compute",
                s.deployment.name(),
                s.instance_type
            )
        },
    );
    blocks.push(Block::Paragraph(format!(
        "All-to-all and sharded at every projected peer count, from the same calibration: \
         MB the broker delivers and MB one peer receives per round, the exchange's seconds \
         and what bounds it (the broker or a peer's link); {setup}."
    )));
    let mut table = vec![
        [
            "peers",
            "exchange",
            "broker MB/round",
            "peer MB/round",
            "exchange s",
            "bound by",
            "round s",
            "exchange-bound",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in &projection.exchanges {
        let (round, bound) = match &e.round {
            Some(r) => (
                sig(r.round_time_s, 4),
                if r.exchange_s > r.compute_s {
                    "**yes**"
                } else {
                    "no"
                },
            ),
            None => ("–".to_string(), "–"),
        };
        table.push(vec![
            e.peers.to_string(),
            e.exchange.to_string(),
            sig(e.traffic.broker_bytes / 1e6, 4),
            sig(e.traffic.peer_received_bytes / 1e6, 4),
            sig(e.exchange_s, 4),
            if e.broker_bound {
                "broker"
            } else {
                "peer link"
            }
            .into(),
            round,
            bound.into(),
        ]);
    }
    blocks.push(Block::Table(table));
}

pub(super) fn files_section(blocks: &mut Vec<Block>, out_dir: &Path, files: &ReportFiles) {
    blocks.push(Block::Heading(2, SECTIONS[5].into()));
    let rel = |p: &Path| p.strip_prefix(out_dir).unwrap_or(p).display().to_string();
    let mut items = vec![
        format!("`{}`: this report (Markdown)", rel(&files.markdown)),
        format!(
            "`{}`: this report as one self-contained page",
            rel(&files.html)
        ),
        format!(
            "`{}`: one row per deployment × peer × round, every scalar metric",
            rel(&files.metrics_csv)
        ),
        format!(
            "`{}`: one row per function call (billed duration, memory, handler timings)",
            rel(&files.invocations_csv)
        ),
        format!(
            "`{}`: the projection (calibration, every projected round, both exchanges, the \
             check against the local runs) as JSON",
            rel(&files.projection_json)
        ),
    ];
    items.extend(files.plots.iter().map(|p| format!("`{}`", rel(p))));
    blocks.push(Block::List(items));
}

/// The runs under attack (only when a `[[peer]]` attacks): each run's aggregation and
/// whether the attacks applied, its final test accuracy and how far that is from the
/// clean baseline's.
pub(super) fn attack_section(
    blocks: &mut Vec<Block>,
    config: &StudyConfig,
    runs: &[DeploymentRun],
    fig: Block,
) {
    blocks.push(Block::Heading(2, "Attacks".into()));
    let clip = config.clip_norm.map_or("no clipping".to_string(), |c| {
        format!("gradients clipped to norm {c}")
    });
    blocks.push(Block::Paragraph(format!(
        "Attacking peers: {}; {clip}. Every run trains the same job; the clean run has no \
         attacker and averages with the mean.",
        config.attack_summary()
    )));
    let plan = config.runs();
    let clean = plan
        .iter()
        .find(|r| !r.attacked)
        .and_then(|c| runs.iter().find(|r| r.name == c.name))
        .and_then(|r| final_round_values(r).1);
    let mut table = vec![
        [
            "run",
            "aggregation",
            "attacked",
            "final test accuracy %",
            "vs clean (points)",
            "final train loss",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for run in runs {
        let Some(planned) = plan.iter().find(|p| p.name == run.name) else {
            continue;
        };
        let (loss, acc) = final_round_values(run);
        let pct = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{:.2}", 100.0 * a));
        let delta = match (acc, clean) {
            (Some(a), Some(c)) => format!("{:+.2}", 100.0 * (a - c)),
            _ => "-".into(),
        };
        table.push(vec![
            run.name.clone(),
            planned.aggregation.to_string(),
            if planned.attacked { "yes" } else { "no" }.into(),
            pct(acc),
            delta,
            loss.map_or("-".to_string(), |l| sig(l, 3)),
        ]);
    }
    blocks.push(Block::Table(table));
    blocks.push(with_caption(
        fig,
        "Test accuracy against round for every run, named by deployment and aggregation.",
    ));
}
