//! `peerless study` end to end on a tiny config: three architectures on synthetic data,
//! the report with every section and valid images, checks that fail before training, and
//! resuming an interrupted study.

mod common;

use std::path::Path;

use common::peerless;
use predicates::prelude::*;

/// A study small enough for CI: 2 unequal peers, synthetic data, 4 rounds.
fn tiny_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let prices = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/prices/aws-us-east-1.toml");
    let text = format!(
        r#"
name = "tiny"
model = "tiny_cnn"
dataset = "synthetic"
limit = 1200
batch_size = 64
batches_per_peer = 4
rounds_per_epoch = 2
epochs = 2
lr = 0.05
momentum = 0.5
eval_limit = 200
function_concurrency = 2
prices = "{}"
{extra}
[[peer]]
speed = 1.0
[[peer]]
speed = 0.5

[projection]
peers = [2, 8, 64]
"#,
        prices.display()
    );
    let path = dir.join("study.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `peerless study --config config --out out`.
fn study(config: &Path, out: &Path) -> assert_cmd::Command {
    let mut cmd = peerless();
    cmd.arg("study")
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out);
    cmd
}

#[test]
fn a_tiny_study_writes_every_section_and_valid_images() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let out = dir.path().join("out");
    study(&config, &out)
        .assert()
        .success()
        .stdout(predicate::str::contains("report:"));
    for arch in ["instance", "serverless", "hybrid"] {
        for rank in 0..2 {
            let metrics = out.join(arch).join(format!("peer-{rank}.jsonl"));
            assert_eq!(
                common::round_metrics(&metrics).len(),
                4,
                "{}",
                metrics.display()
            );
        }
    }
    let serverless = common::round_metrics(&out.join("serverless/peer-1.jsonl"));
    assert!(serverless.iter().all(|m| m.offloaded_batches == 2));
    // Evaluated once per epoch (2 rounds each): after rounds 1 and 3 only.
    let evaluated: Vec<u64> = serverless
        .iter()
        .filter(|m| m.test_accuracy.is_some())
        .map(|m| m.round)
        .collect();
    assert_eq!(evaluated, vec![1, 3]);
    assert!(
        serverless
            .iter()
            .all(|m| (m.eval_time_s > 0.0) == m.val_loss.is_some())
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for section in peerless_bench::study::SECTIONS {
        assert!(md.contains(section), "report.md lacks {section}");
        assert!(html.contains(section), "report.html lacks {section}");
    }
    assert!(
        md.contains("gradient computation time"),
        "no headline:\n{md}"
    );
    for time in [
        "wall time s",
        "training time s (without evaluation)",
        "gradient compute s (slowest peer)",
        "instance: of ",
        "(2 of 4 rounds evaluated)",
    ] {
        assert!(md.contains(time), "the summary lacks {time:?}:\n{md}");
    }
    let mut pngs = 0;
    for entry in std::fs::read_dir(out.join("plots")).unwrap() {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                    "{}",
                    path.display()
                );
                pngs += 1;
            }
            Some("svg") => {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.contains("<svg"), "{}", path.display());
            }
            _ => {}
        }
    }
    assert!(pngs >= 4, "expected the four plots as PNG, found {pngs}");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + 3 * 2 * 4,
        "header + one row per arch x peer x round"
    );
}

#[test]
fn bad_study_configs_fail_before_training_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key) in [
        ("colour = \"blue\"", "colour"),
        ("instance_type = \"t3.huge\"", "t3.huge"),
        ("lambda_memory_mb = 64", "lambda_memory_mb"),
        ("eval_every = 0", "eval_every"),
    ] {
        let config = tiny_config(dir.path(), extra);
        let out = dir.path().join("out");
        study(&config, &out)
            .assert()
            .failure()
            .stderr(predicate::str::contains(key));
        assert!(!out.exists(), "{extra}: the study started before failing");
    }
    let config = tiny_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("speed = 0.5", "speed = 0")).unwrap();
    study(&config, &dir.path().join("out"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("peer[1].speed"));
}

#[test]
fn an_interrupted_study_keeps_finished_runs_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "architectures = [\"instance\", \"serverless\"]");
    let out = dir.path().join("out");
    let study = || study(&config, &out);
    // Every function call fails: the serverless run stops the study.
    study()
        .env("PEERLESS_INJECT_FAILURES", "1000")
        .assert()
        .failure()
        .stderr(predicate::str::contains("rerun the same command to resume"));
    let finished = out.join("instance/peer-0.jsonl");
    assert_eq!(common::round_metrics(&finished).len(), 4);
    let before = std::fs::read_to_string(&finished).unwrap();
    study()
        .assert()
        .success()
        .stderr(predicate::str::contains("instance already finished"));
    assert_eq!(
        std::fs::read_to_string(&finished).unwrap(),
        before,
        "instance was rerun"
    );
    assert!(out.join("report.md").exists());
}

/// The simulator's check against an 8-peer run of each exchange over the real RabbitMQ:
/// a study of the small CNN, all-to-all with the sharded exchange compared, predicts both
/// runs' mean round time within the model's ±20%; the broker carried what the traffic
/// formulas say; and a calibration from the all-to-all run alone predicts the sharded run.
#[test]
fn the_projection_predicts_eight_peer_runs_of_both_exchanges() {
    use peerless_bench::study::simulate::VALIDATION_TOLERANCE;
    use peerless_bench::study::{
        DeploymentRun, ExchangeTraffic, StudyConfig, calibrate, validate_against,
    };
    use peerless_comm::Exchange;

    let dir = tempfile::tempdir().unwrap();
    let broker = std::env::var("PEERLESS_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let peers = "[[peer]]\nspeed = 1.0\n".repeat(8);
    let config = tiny_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    // Eight equal peers instead of two, 16 rounds of 2 batches, no evaluation.
    let text = text
        .replace("[[peer]]\nspeed = 1.0\n[[peer]]\nspeed = 0.5\n", &peers)
        .replace("batches_per_peer = 4", "batches_per_peer = 16")
        .replace("rounds_per_epoch = 2", "rounds_per_epoch = 8")
        .replace("limit = 1200", "limit = 4096")
        .replace("batch_size = 64", "batch_size = 32")
        .replace("peers = [2, 8, 64]", "peers = [8, 64, 512]");
    let text = format!(
        "deployments = [\"instance\"]\nevaluation = false\nbroker = \"{broker}\"\n\
         exchange = \"all-to-all\"\ncompare_exchanges = [\"sharded\"]\n{text}"
    );
    std::fs::write(&config, &text).unwrap();
    let out = dir.path().join("out");
    study(&config, &out).assert().success();

    let projection: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("projection.json")).unwrap())
            .unwrap();
    let validations = projection["validations"].as_array().unwrap();
    let mut seen = Vec::new();
    for v in validations {
        let (run, exchange) = (
            v["deployment"].as_str().unwrap(),
            v["exchange"].as_str().unwrap(),
        );
        let (predicted, measured) = (
            v["predicted_round_s"].as_f64().unwrap(),
            v["measured_round_s"].as_f64().unwrap(),
        );
        let ratio = predicted / measured;
        eprintln!(
            "{run} ({exchange}): predicted {predicted:.4} s, measured {measured:.4} s, ratio {ratio:.3}"
        );
        assert!(
            (ratio - 1.0).abs() <= VALIDATION_TOLERANCE,
            "{run}: predicted {predicted} s against {measured} s measured"
        );
        assert_eq!(v["within_tolerance"], true);
        seen.push((run.to_string(), exchange.to_string()));
    }
    assert_eq!(
        seen,
        [("instance", "all-to-all"), ("instance-sharded", "sharded")]
            .map(|(r, e)| (r.to_string(), e.to_string()))
    );

    // What the broker delivered per round, summed over the peers' received bytes: the
    // formulas' N(N-1)·G and 2(N-1)·G at N = 8 (within 1%: headers).
    let calibration = &projection["calibration"];
    for m in calibration["measured_exchanges"].as_array().unwrap() {
        let exchange: Exchange = m["exchange"].as_str().unwrap().parse().unwrap();
        let g = m["gradient_bytes"].as_f64().unwrap();
        let formula = ExchangeTraffic::of(exchange, 8, g).broker_bytes;
        let delivered = m["broker_bytes_per_round"].as_f64().unwrap();
        eprintln!(
            "{exchange}: broker delivered {delivered:.0} B/round, formula {formula:.0}; exchange {:.4} s",
            m["exchange_s"].as_f64().unwrap()
        );
        assert!(
            (delivered / formula - 1.0).abs() < 0.01,
            "{exchange}: {delivered} vs {formula}"
        );
    }
    eprintln!(
        "broker {:.1} MB/s, hop latency {:?} s",
        calibration["broker_bytes_per_s"].as_f64().unwrap() / 1e6,
        calibration["hop_latency_s"].as_f64()
    );
    // Both exchanges projected at every peer count; from 64 on sharded's exchange is
    // shorter, by more than 10x at 512.
    let exchange_s = |n: u64, x: &str| {
        projection["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peers"].as_u64() == Some(n) && p["exchange"] == x)
            .unwrap()["exchange_s"]
            .as_f64()
            .unwrap()
    };
    for n in [64, 512] {
        assert!(
            exchange_s(n, "sharded") < exchange_s(n, "all-to-all"),
            "{n} peers"
        );
    }
    assert!(10.0 * exchange_s(512, "sharded") < exchange_s(512, "all-to-all"));

    // From the all-to-all run alone (latency folded into the throughput), the sharded run.
    let both = StudyConfig::load(&config).unwrap();
    let mut alone = both.clone();
    alone.compare_exchanges.clear();
    let run = |name: &str| DeploymentRun::load_dir(name, &out.join(name), &both, 1.0).unwrap();
    let calibration = calibrate(&alone, &[run("instance")]).unwrap();
    assert_eq!(calibration.hop_latency_s, None);
    let v = validate_against(&calibration, &both, &run("instance-sharded")).unwrap();
    eprintln!(
        "sharded from all-to-all alone: predicted {:.4} s, measured {:.4} s, ratio {:.3}",
        v.predicted_round_s, v.measured_round_s, v.ratio
    );
    assert_eq!(v.exchange, Exchange::Sharded);
    assert!(v.within_tolerance, "{v:?}");
}
