//! The cost model against a hand-made metrics file, worked out by hand.

use peerless_bench::study::{DeploymentRun, StudyConfig, cost_curve, run_cost};

use super::common::test_prices;

/// Two peers: rank 0 (t3.medium) computes locally; rank 1 (c5.large) offloads.
/// Round 0 of rank 1: invocation A (1500 ms billed, 2048 MB, 1 attempt, loaded the
/// weights), invocation B (1200 ms, 2048 MB, 2 attempts, weights already warm), 7 state
/// transitions. Round 1 of rank 1: invocation C (999 ms, 1024 MB, 1 attempt, loaded the
/// weights), 4 transitions.
const PEER_0: &str = r#"{"rank":0,"round":0,"serverless":"lambda","local_batches":2,"compute_time_s":1.0,"round_time_s":1.5}
{"rank":0,"round":1,"serverless":"lambda","local_batches":2,"compute_time_s":1.0,"round_time_s":1.25}
"#;
const PEER_1: &str = r#"{"rank":1,"round":0,"serverless":"lambda","offloaded_batches":2,"state_transitions":7,"round_time_s":1.75,"invocations":[{"batch":0,"attempts":1,"wall_ms":1600.0,"billed_ms":1500,"memory_mb":2048,"init_ms":null,"billing":"report","cold":true,"load_weights_ms":30.0,"load_batch_ms":5.0,"compute_ms":1400.0,"upload_ms":10.0,"handler_ms":1499.2,"gradient_bytes":1000},{"batch":1,"attempts":2,"wall_ms":1300.0,"billed_ms":1200,"memory_mb":2048,"init_ms":null,"billing":"report","cold":false,"load_weights_ms":0.0,"load_batch_ms":5.0,"compute_ms":1100.0,"upload_ms":10.0,"handler_ms":1199.5,"gradient_bytes":1000}]}

{"rank":1,"round":1,"serverless":"lambda","offloaded_batches":1,"state_transitions":4,"round_time_s":1.0,"invocations":[{"batch":0,"attempts":1,"wall_ms":1100.0,"billed_ms":999,"memory_mb":1024,"init_ms":null,"billing":"estimate","cold":false,"load_weights_ms":12.5,"load_batch_ms":5.0,"compute_ms":900.0,"upload_ms":10.0,"handler_ms":998.1,"gradient_bytes":1000}]}
"#;

fn fixture() -> (tempfile::TempDir, DeploymentRun, StudyConfig) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("peer-0.jsonl"), PEER_0).unwrap();
    std::fs::write(dir.path().join("peer-1.jsonl"), PEER_1).unwrap();
    let config = StudyConfig::from_toml_str(
        "name = \"cost\"\nmodel = \"tiny_cnn\"\ndataset = \"synthetic\"\nbatch_size = 8\n\
         batches_per_peer = 2\nrounds_per_epoch = 2\nepochs = 1\nlr = 0.1\n\
         [[peer]]\nspeed = 1.0\n[[peer]]\nspeed = 0.5\ninstance_type = \"c5.large\"\n",
    )
    .unwrap();
    let run = DeploymentRun::load_dir("hybrid", dir.path(), &config, 100.4).unwrap();
    (dir, run, config)
}

#[test]
fn cost_of_a_hand_made_metrics_file_matches_the_hand_computation() {
    let (_dir, run, config) = fixture();
    assert_eq!(run.peers[1].instance_type, "c5.large");
    assert_eq!(run.peers[1].rounds.len(), 2, "blank lines are skipped");
    let c = run_cost(&run, &config, &test_prices()).unwrap();
    let close = |got: f64, want: f64, what: &str| {
        assert!((got - want).abs() < 1e-12, "{what}: got {got}, want {want}");
    };

    // EC2: 100.4 s of wall time bills as 101 s per peer (per second, rounded up; above the
    // 60 s minimum): (0.0416 + 0.085) $/h × 101 s / 3600 = 12.7866 / 3600 = $0.0035518333…
    close(c.ec2, 0.003_551_833_333_333_333, "ec2");
    close(
        c.quantities.instance_hours,
        2.0 * 101.0 / 3600.0,
        "instance-hours",
    );

    // Lambda GB-seconds: A 1.5 s × 2 GB = 3.0, B 1.2 s × 2 GB = 2.4, C 0.999 s × 1 GB = 0.999:
    // 6.399 GB-s × $0.0000166667 = $0.00010665021330…
    close(c.quantities.gb_seconds, 6.399, "GB-seconds");
    close(c.lambda_compute, 0.000_106_650_213_3, "lambda compute");

    // Requests: one per attempt, 1 + 2 + 1 = 4 × $0.0000002 = $0.0000008.
    assert_eq!(c.quantities.lambda_requests, 4);
    close(c.lambda_requests, 0.000_000_8, "lambda requests");

    // Step Functions: 7 + 4 = 11 transitions × $0.000025 = $0.000275.
    assert_eq!(c.quantities.state_transitions, 11);
    close(c.step_functions, 0.000_275, "step functions");

    // S3: rank 1 offloaded in both rounds: 2 weight PUTs; 3 gradient PUTs: 5 PUTs.
    // GETs: A 3 (weights, batch, gradient), B 2 (weights warm), C 3: 8 GETs.
    // 5 × $0.000005 + 8 × $0.0000004 = $0.000025 + $0.0000032 = $0.0000282.
    assert_eq!(c.quantities.s3_put_requests, 5);
    assert_eq!(c.quantities.s3_get_requests, 8);
    close(c.s3_requests, 0.000_028_2, "s3");

    // Broker: 100.4 s / 3600 × $0.288 = $0.008032.
    close(c.quantities.broker_hours, 100.4 / 3600.0, "broker-hours");
    close(c.broker, 0.008_032, "broker");

    // Total: 0.0035518333333 + 0.0001066502133 + 0.0000008 + 0.000275 + 0.0000282
    // + 0.008032 = $0.0119944835466…
    close(c.total, 0.011_994_483_546_633_333, "total");
    close(
        c.total,
        c.ec2 + c.lambda_compute + c.lambda_requests + c.step_functions + c.s3_requests + c.broker,
        "sum of parts",
    );
}

#[test]
fn short_runs_bill_the_ec2_minute() {
    let (_dir, mut run, config) = fixture();
    run.wall_time_s = 12.0;
    let c = run_cost(&run, &config, &test_prices()).unwrap();
    // 60 s minimum: (0.0416 + 0.085) × 60 / 3600 = 7.596 / 3600.
    assert!((c.ec2 - 7.596 / 3600.0).abs() < 1e-15, "{}", c.ec2);
    run.wall_time_s = f64::NAN;
    assert!(run_cost(&run, &config, &test_prices()).is_err());
}

#[test]
fn cost_curve_prorates_time_and_accumulates_usage() {
    let (_dir, run, config) = fixture();
    let curve = cost_curve(&run, &config, &test_prices()).unwrap();
    assert_eq!(curve.len(), 2);
    // Round times: max(1.5, 1.75) = 1.75, then max(1.25, 1.0) = 1.25.
    assert!((curve[0].time_s - 1.75).abs() < 1e-15);
    assert!((curve[1].time_s - 3.0).abs() < 1e-15);
    // After round 0: EC2 0.1266 $/h and broker 0.288 $/h over 1.75 s, plus A and B:
    // 5.4 GB-s, 3 requests, 7 transitions, 3 PUTs, 5 GETs.
    let round0 = (0.1266 + 0.288) * 1.75 / 3600.0
        + 5.4 * 0.0000166667
        + 3.0 * 0.0000002
        + 7.0 * 0.000025
        + 3.0 * 0.000005
        + 5.0 * 0.0000004;
    assert!(
        (curve[0].dollars - round0).abs() < 1e-12,
        "{} vs {round0}",
        curve[0].dollars
    );
    let full = (0.1266 + 0.288) * 3.0 / 3600.0 + 0.0001066502133 + 0.0000008 + 0.000275 + 0.0000282;
    assert!(
        (curve[1].dollars - full).abs() < 1e-12,
        "{} vs {full}",
        curve[1].dollars
    );
}

#[test]
fn a_malformed_metrics_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peer-0.jsonl");
    std::fs::write(&path, format!("{}{{\"rank\": \"zero\"}}\n", PEER_0)).unwrap();
    let e = peerless_bench::study::read_metrics_jsonl(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("peer-0.jsonl:3"), "{e}");
}
