//! The report end to end on synthetic runs: 3 deployments × 2 peers × 4 rounds.

use std::path::Path;

use peerless_bench::study::{
    Day, DeploymentRun, PeerRun, SECTIONS, StudyConfig, TimeSplit, project, write_report,
};

use super::common::{config_with_speeds, invocation, round, test_prices};

/// Instance: both peers compute 4 batches (peer 1 at half speed). Serverless: both offload
/// all 4 (two waves of two calls, the first round cold). Hybrid: peer 1 offloads 1 batch
/// from round 1 on.
fn runs(with_accuracy: bool) -> Vec<DeploymentRun> {
    let accuracy = |r: u64| with_accuracy.then_some(0.5 + 0.1 * r as f64);
    let peer = |rank: u32, rounds| PeerRun {
        rank,
        instance_type: "t3.medium".into(),
        rounds,
    };
    let instance = DeploymentRun {
        name: "instance".into(),
        wall_time_s: 12.0,
        peers: (0..2)
            .map(|rank| {
                peer(
                    rank,
                    (0..4)
                        .map(|r| round(rank, r, 0.4 * f64::from(rank + 1), accuracy(r)))
                        .collect(),
                )
            })
            .collect(),
    };
    let offloading = |name: &str, offload: &dyn Fn(u32, u64) -> usize| DeploymentRun {
        name: name.into(),
        wall_time_s: 15.0,
        peers: (0..2)
            .map(|rank| {
                peer(
                    rank,
                    (0..4)
                        .map(|r| {
                            let mut m = round(rank, r, 0.5, accuracy(r));
                            let k = offload(rank, r);
                            m.serverless = "local".into();
                            m.local_batches = 4 - k;
                            m.offloaded_batches = k;
                            if k > 0 {
                                m.weights_upload_time_s = 0.05;
                                m.gradient_fetch_time_s = 0.01 * k as f64;
                                m.functions_time_s = 0.4;
                                m.invocations = (0..k as u32)
                                    .map(|b| {
                                        invocation(b, 180 + 10 * b as u64, 2048, r == 0 && b < 2)
                                    })
                                    .collect();
                            }
                            m
                        })
                        .collect(),
                )
            })
            .collect(),
    };
    vec![
        instance,
        offloading("serverless", &|_, _| 4),
        offloading("hybrid", &|rank, r| usize::from(rank == 1 && r >= 1)),
    ]
}

fn config() -> StudyConfig {
    let mut c = config_with_speeds(&[1.0, 0.5]);
    c.projection.peers = vec![2, 16, 128];
    c.projection.instance_types = vec!["t3.medium".into(), "c5.large".into()];
    c.projection.lambda_memory_mb = vec![1024, 1769];
    c
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let (w, h) = (reader.info().width, reader.info().height);
    assert!(w >= 400 && h >= 300, "{}: {w}x{h}", path.display());
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut pixels).unwrap();
    assert!(
        pixels.iter().any(|&p| p < 128),
        "{} is blank",
        path.display()
    );
}

fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let doc =
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        doc.root_element().tag_name().name(),
        "svg",
        "{}",
        path.display()
    );
    assert!(text.contains("<text"), "{} has no text", path.display());
}

/// The day the reports are written on: every price of the test prices (2024-06) is more
/// than a year older.
const RUN_DATE: Day = Day {
    year: 2026,
    month: 12,
    day: 7,
};

fn check_report(with_accuracy: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let config = config();
    let prices = test_prices();
    let runs = runs(with_accuracy);
    let projection = project(&config, &runs, &prices).unwrap();
    let files = write_report(&out, &config, &runs, &prices, &projection, RUN_DATE).unwrap();

    let md = std::fs::read_to_string(&files.markdown).unwrap();
    let html = std::fs::read_to_string(&files.html).unwrap();
    for section in SECTIONS {
        assert!(
            md.contains(&format!("\n## {section}\n")),
            "report.md lacks {section}"
        );
        assert!(
            html.contains(&format!("<h2>{section}</h2>")),
            "report.html lacks {section}"
        );
    }
    for name in ["time_split", "training", "cost", "projection"] {
        assert!(
            md.contains(&format!("](plots/{name}.png)")),
            "report.md lacks plot {name}"
        );
    }

    // Every image the Markdown references exists and is valid.
    let mut referenced = 0;
    for part in md.split("](").skip(1) {
        let target = &part[..part.find(')').unwrap()];
        let path = out.join(target);
        assert!(path.exists(), "{target} is referenced but missing");
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => assert_png(&path),
            Some("svg") => assert_svg(&path),
            other => panic!("unexpected reference {target} ({other:?})"),
        }
        referenced += 1;
    }
    assert_eq!(referenced, 8, "4 plots × (PNG + SVG)");
    assert_eq!(files.plots.len(), 8);
    for plot in &files.plots {
        assert!(plot.exists(), "{}", plot.display());
    }

    // The HTML is self-contained: every image inline, no scripts, no external files.
    assert_eq!(html.matches("<img ").count(), 4);
    assert_eq!(html.matches("src=\"data:image/svg+xml;base64,").count(), 4);
    assert!(!html.contains("<script"));
    assert!(!html.contains("href="));
    assert!(!html.contains("src=\"http") && !html.contains("src=\"plots/"));

    // CSVs: a header and one row per deployment × peer × round, one per invocation.
    let metrics = std::fs::read_to_string(&files.metrics_csv).unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    assert_eq!(lines.len(), 1 + 3 * 2 * 4);
    let header: Vec<&str> = lines[0].split(',').collect();
    for col in [
        "deployment",
        "peer",
        "instance_type",
        "round",
        "compute_time_s",
        "receive_time_s",
        "test_accuracy",
        "invocation_count",
    ] {
        assert!(header.contains(&col), "metrics.csv lacks {col}");
    }
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.split(',').count() == header.len())
    );
    let invocations = std::fs::read_to_string(&files.invocations_csv).unwrap();
    // Serverless: 2 peers × 4 rounds × 4 calls; hybrid: peer 1 × 3 rounds × 1 call.
    assert_eq!(invocations.lines().count(), 1 + 32 + 3);
    let inv_header = invocations.lines().next().unwrap();
    for col in [
        "deployment",
        "peer",
        "round",
        "billed_ms",
        "memory_mb",
        "cold",
        "handler_ms",
    ] {
        assert!(
            inv_header.split(',').any(|c| c == col),
            "invocations.csv lacks {col}"
        );
    }

    // The headline compares against instance: slowest peer 0.8 s → 0.5 s = 37.50% less.
    assert!(
        md.contains("**Serverless vs instance**: 37.50% less gradient computation time"),
        "{md}"
    );
    assert!(md.contains("**Hybrid vs instance**"));
    assert!(md.contains("within ±20%"));
    md
}

#[test]
fn report_has_every_section_plot_and_csv() {
    let md = check_report(true);
    assert!(md.contains("final test accuracy"));
    assert!(md.contains("80.00%"), "final accuracy of round 3");
    assert!(!md.contains("evaluation was off"));
}

#[test]
fn report_without_evaluation_says_so_and_still_plots_loss() {
    let md = check_report(false);
    assert!(md.contains("Accuracy was not measured (evaluation was off)"));
}

/// [`runs`] evaluated after rounds 1 and 3 only (nulls and no evaluation time in rounds 0
/// and 2), with peer 1 evaluating 0.3 s longer after round 1, so peer 0 starts round 2
/// that much earlier and waits 0.3 s longer for peer 1.
fn scheduled_runs() -> Vec<DeploymentRun> {
    let mut runs = runs(true);
    for run in &mut runs {
        for peer in &mut run.peers {
            let rank = peer.rank;
            for m in &mut peer.rounds {
                if m.round % 2 == 0 {
                    m.val_loss = None;
                    m.val_accuracy = None;
                    m.test_loss = None;
                    m.test_accuracy = None;
                    m.round_time_s -= m.eval_time_s;
                    m.eval_time_s = 0.0;
                }
                if m.round == 1 && rank == 1 {
                    m.eval_time_s += 0.3;
                    m.round_time_s += 0.3;
                }
                if m.round == 2 && rank == 0 {
                    m.receive_time_s += 0.3;
                    m.round_time_s += 0.3;
                }
            }
        }
    }
    runs
}

#[test]
fn summary_states_wall_training_and_compute_time_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let prices = test_prices();
    let mut runs = scheduled_runs();
    // A wall clock shorter than the per-round maxima add up to is said so.
    runs[2].wall_time_s = 2.5;
    let projection = project(&config, &runs, &prices).unwrap();
    let files = write_report(dir.path(), &config, &runs, &prices, &projection, RUN_DATE).unwrap();
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    let summary = &md[..md.find("\n## Setup\n").unwrap()];

    // Instance: training = 4 rounds × (peer 1's own work 0.81 s + the shortest wait
    // 0.05 s) = 3.44 s; evaluation = 0.5 s (round 1, peer 1) + 0.2 s (round 3) = 0.7 s;
    // gradient compute = peer 1's 4 × 0.8 s = 3.2 s. Serverless: 4 × 0.56 s = 2.24 s of
    // training, 4 × 0.5 s of compute.
    let instance = &runs[0];
    assert!((instance.training_time_s() - 3.44).abs() < 1e-9);
    assert!((instance.evaluation_time_s() - 0.7).abs() < 1e-9);
    assert!((instance.slowest_compute_s() - 3.2).abs() < 1e-9);
    assert_eq!(instance.evaluated_rounds(), 2);
    let header = "| deployment | wall time s | evaluation s | training time s (without \
                  evaluation) | gradient compute s (slowest peer) |";
    assert!(summary.contains(header), "{summary}");
    assert!(
        summary.contains("| instance | 12.0 | 0.7 | 3.4 | 3.2 | 0.800 |"),
        "{summary}"
    );
    assert!(
        summary.contains("| serverless | 15.0 | 0.7 | 2.2 | 2.0 | 0.500 |"),
        "{summary}"
    );
    // How each is measured, and why they differ.
    for definition in [
        "**Wall time**",
        "**Training time** (without evaluation)",
        "**Gradient compute**",
    ] {
        assert!(summary.contains(definition), "{definition}: {summary}");
    }
    assert!(summary.contains("They differ because wall time adds start-up and evaluation"));
    assert!(
        summary.contains(
            "instance: of 12.0 s wall time, 0.7 s evaluating (2 of 4 rounds evaluated), 3.4 s \
             training and 7.9 s start-up and the rest; of the training, 3.2 s (93%) computing \
             gradients on the slowest peer"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("2.2 s training and the per-round maxima exceed the wall time by 0.4 s"),
        "{summary}"
    );
    // The headline keeps the gradient computation and puts the wall and training time
    // beside it.
    assert!(
        summary.contains(
            "**Serverless vs instance**: 37.50% less gradient computation time (slowest \
             peer's mean compute_time_s per round: 0.800 s → 0.500 s)"
        ),
        "{summary}"
    );
    assert!(
        summary
            .contains("wall time 12.0 s → 15.0 s, training time without evaluation 3.4 s → 2.2 s"),
        "{summary}"
    );
    assert!(
        summary.contains("evaluated once per epoch (every 2 rounds)"),
        "{summary}"
    );
    // The final accuracy is the last (evaluated) round's.
    assert!(summary.contains("80.00%"), "{summary}");

    // Waiting leaves out evaluation: peer 0's extra 0.3 s in round 2 is peer 1's longer
    // evaluation after round 1, not waiting for a slower peer.
    assert!((instance.waiting_s(0, 2) - 0.05).abs() < 1e-9);
    assert!((instance.waiting_s(1, 2) - 0.05).abs() < 1e-9);
    assert!((TimeSplit::of_peer(instance, 0).waiting - 0.05).abs() < 1e-9);

    // The CSV keeps the rounds without evaluation, their accuracy empty.
    let csv = std::fs::read_to_string(&files.metrics_csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|c| *c == name).unwrap();
    let (acc, round) = (col("test_accuracy"), col("round"));
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split(',').collect();
        let evaluated = cells[round] == "1" || cells[round] == "3";
        assert_eq!(!cells[acc].is_empty(), evaluated, "{line}");
    }
}

#[test]
fn report_flags_prices_dated_more_than_a_year_before_the_run() {
    let config = config();
    let prices = test_prices();
    let runs = runs(false);
    let projection = project(&config, &runs, &prices).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let files = write_report(dir.path(), &config, &runs, &prices, &projection, RUN_DATE).unwrap();
    // Every test price is dated 2024-06: all eleven are over a year old on 2026-12-07.
    assert_eq!(files.run_date, RUN_DATE);
    let keys: Vec<&str> = files.stale_prices.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "ec2.\"c5.large\"",
            "ec2.\"t3.medium\"",
            "lambda.x86_gb_second",
            "lambda.x86_request",
            "lambda.arm64_gb_second",
            "lambda.arm64_request",
            "step_functions.standard_transition",
            "s3.put_request",
            "s3.get_request",
            "s3.storage_gb_month",
            "mq.\"mq.m5.large\"",
        ]
    );
    assert!(files.stale_prices.iter().all(|p| p.date == "2024-06"));
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    let summary = &md[..md.find("\n## Setup\n").unwrap()];
    assert!(
        summary.contains(
            "**Stale prices**: 11 of 11 prices are dated more than a year before this run \
             (2026-12-07)"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("ec2.\"c5.large\" (2024-06), ec2.\"t3.medium\" (2024-06), "),
        "{summary}"
    );
    assert!(
        md.contains("| s3.get_request | 0.0000004 | USD per GET | 2024-06 | yes | https://"),
        "{md}"
    );

    // On 2025-06-01 the 2024-06 prices are exactly a year old: none is flagged.
    let dir = tempfile::tempdir().unwrap();
    let fresh = Day::new(2025, 6, 1).unwrap();
    let files = write_report(dir.path(), &config, &runs, &prices, &projection, fresh).unwrap();
    assert!(files.stale_prices.is_empty());
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(!md.contains("Stale prices"), "{md}");
    assert!(
        md.contains("| s3.get_request | 0.0000004 | USD per GET | 2024-06 |  | https://"),
        "{md}"
    );
}
