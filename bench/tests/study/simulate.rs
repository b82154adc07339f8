//! The projection model on hand-computed cases.

use peerless_bench::study::{
    Calibration, Deployment, DeploymentRun, FunctionCalibration, PeerRun, Scenario, calibrate,
    predict_mean_round_s, predict_round, project, validate_against,
};
use peerless_runtime::metrics::{InvocationRecord, RoundMetrics};

use super::common::{config_with_speeds, invocation, test_prices};

/// Round numbers: 0.1 s per batch at speed 1, 1 MB gradients, a 100 MB/s broker fitted on
/// two peers (2 × 1 × 1 MB / 0.02 s), encode 0.01 s, decode 0.005 s per gradient, update
/// 0.02 s; functions measured at 1769 MB (one vCPU): overhead 0.05 + weights 0.1 + batch
/// 0.05 + compute 0.4 + upload 0.05 = 0.65 s per call; cold start +1 s; the peer uploads
/// weights in 0.2 s and reads each gradient in 0.03 s.
fn calibration() -> Calibration {
    Calibration {
        batch_s: Some(0.1),
        batch_source: Some("instance".into()),
        reference_instance_type: "t3.medium".into(),
        local_peers: 2,
        gradient_bytes: 1e6,
        exchange_s: 0.02,
        broker_bytes_per_s: Some(1e8),
        encode_s: 0.01,
        decode_per_gradient_s: 0.005,
        update_s: 0.02,
        functions: Some(FunctionCalibration {
            memory_mb: 1769,
            call_overhead_s: 0.05,
            call_sd_s: 0.0,
            load_weights_s: 0.1,
            load_batch_s: 0.05,
            compute_s: 0.4,
            upload_s: 0.05,
            cold_extra_s: 1.0,
            billed_extra_ms: 0.0,
            weights_load_fraction: 1.0,
            weights_upload_s: 0.2,
            fetch_per_gradient_s: 0.03,
            transitions_per_batch: 0.0,
            invocations: 10,
        }),
    }
}

fn scenario(deployment: Deployment) -> Scenario {
    Scenario {
        deployment,
        speeds: vec![1.0, 0.5],
        speed_scale: 1.0,
        batches_per_round: 4,
        memory_mb: 1769,
        concurrency: 2,
        concurrency_limit: None,
        useful_vcpus: 2.0,
    }
}

fn close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-12, "got {got}, want {want}");
}

#[test]
fn instance_round_is_the_slowest_peer_plus_exchange_and_overhead() {
    let p = predict_round(&calibration(), &scenario(Deployment::Instance), 0).unwrap();
    // Slowest: 4 batches × 0.1 s / 0.5 = 0.8 s. Exchange: 2 × 1 × 1 MB / 100 MB/s = 0.02 s.
    // Overhead: 0.01 + 1 × 0.005 + 0.02 = 0.035 s. Round: 0.855 s.
    close(p.compute_s, 0.8);
    close(p.exchange_s, 0.02);
    close(p.overhead_s, 0.035);
    close(p.round_time_s, 0.855);
    assert_eq!(p.offloaded, vec![0, 0]);
    assert!(!p.cold);
}

#[test]
fn serverless_round_counts_waves_and_the_cold_start() {
    let cal = calibration();
    let s = scenario(Deployment::Serverless);
    // 4 batches at concurrency 2: 2 waves × 0.65 s = 1.3 s; peer: 0.2 + 1.3 + 4 × 0.03
    // = 1.62 s; round 1.62 + 0.02 + 0.035 = 1.675 s.
    let warm = predict_round(&cal, &s, 3).unwrap();
    assert_eq!(warm.waves, 2);
    assert_eq!(warm.offloaded, vec![4, 4]);
    close(warm.round_time_s, 1.675);
    // Round 0 pays the 1 s cold start once: 2.675 s.
    let cold = predict_round(&cal, &s, 0).unwrap();
    assert!(cold.cold);
    close(cold.round_time_s, 2.675);
    // 3538 MB = 2 vCPUs halves the compute: 0.45 s per call, 0.9 s of calls, 1.275 s.
    let big = Scenario {
        memory_mb: 3538,
        ..s.clone()
    };
    close(predict_round(&cal, &big, 3).unwrap().round_time_s, 1.275);
    // Memory beyond two vCPUs buys nothing more (the gradient step uses at most 2 cores).
    let huge = Scenario {
        memory_mb: 10240,
        ..s.clone()
    };
    close(predict_round(&cal, &huge, 3).unwrap().round_time_s, 1.275);
    // An account limit of 1 shared by 2 peers: 0.5 concurrent calls each, 8 waves.
    let limited = Scenario {
        concurrency_limit: Some(1),
        ..s
    };
    let p = predict_round(&cal, &limited, 3).unwrap();
    assert_eq!(p.waves, 8);
    close(p.round_time_s, 0.2 + 8.0 * 0.65 + 0.12 + 0.055);
}

#[test]
fn hybrid_offloads_what_minimises_the_slow_peers_time() {
    let cal = calibration();
    let s = scenario(Deployment::Hybrid);
    // Target: the fast peer's 0.4 s. The slow peer (0.8 s alone) with m offloaded:
    // m=1: 0.2 + max(3 × 0.2, 0.65) + 0.03 = 0.88; m=2: 0.2 + max(0.4, 0.65) + 0.06 = 0.91;
    // m=3: 0.2 + max(0.2, 1.3) + 0.09 = 1.59; m=4: 1.62. None meets 0.4 s: m=1 (0.88 s).
    let warm = predict_round(&cal, &s, 2).unwrap();
    assert_eq!(warm.offloaded, vec![0, 1]);
    close(warm.round_time_s, 0.88 + 0.055);
    // Round 0: nothing measured yet, all local (= instance, 0.855 s); round 1 pays the cold
    // start: 0.2 + 1.65 + 0.03 + 0.055 = 1.935 s.
    close(predict_round(&cal, &s, 0).unwrap().round_time_s, 0.855);
    close(predict_round(&cal, &s, 1).unwrap().round_time_s, 1.935);
    // Mean over 4 rounds: (0.855 + 1.935 + 0.935 + 0.935) / 4 = 1.165 s.
    close(predict_mean_round_s(&cal, &s, 4).unwrap(), 1.165);
    // A peer within 5% of the fastest offloads nothing.
    let even = Scenario {
        speeds: vec![1.0, 0.96],
        ..s
    };
    assert_eq!(predict_round(&cal, &even, 2).unwrap().offloaded, vec![0, 0]);
}

/// Two peers (speeds 1.0 and 0.5), two instance rounds, timed to match the calibration
/// above: 4 batches in 0.4 s and 0.8 s, encode 0.01, send 0.005, decode 0.005, update
/// 0.02, the fast peer waits 0.415 s and the slow one 0.015 s for the other gradient.
fn instance_run() -> DeploymentRun {
    let m = |rank: u32, round: u64, local: f64, receive: f64, total: f64| RoundMetrics {
        rank,
        round,
        local_batches: 4,
        compute_time_s: local,
        local_time_s: local,
        encode_time_s: 0.01,
        send_time_s: 0.005,
        receive_time_s: receive,
        decode_time_s: 0.005,
        update_time_s: 0.02,
        eval_time_s: 0.3,
        round_time_s: total + 0.3,
        bytes_sent: 1_000_000,
        ..RoundMetrics::default()
    };
    let peer = |rank: u32, rounds| PeerRun {
        rank,
        instance_type: "t3.medium".into(),
        rounds,
    };
    DeploymentRun {
        name: "instance".into(),
        wall_time_s: 10.0,
        peers: vec![
            peer(
                0,
                vec![m(0, 0, 0.4, 0.415, 0.855), m(0, 1, 0.4, 0.415, 0.855)],
            ),
            peer(
                1,
                vec![m(1, 0, 0.8, 0.015, 0.855), m(1, 1, 0.8, 0.015, 0.955)],
            ),
        ],
    }
}

#[test]
fn calibration_reads_the_hand_made_run() {
    let config = config_with_speeds(&[1.0, 0.5]);
    let cal = calibrate(&config, &[instance_run()]).unwrap();
    // Reference peer 0: 0.8 s / 8 batches = 0.1 s per batch.
    close(cal.batch_s.unwrap(), 0.1);
    assert_eq!(cal.batch_source.as_deref(), Some("instance"));
    // Exchange: per round the smallest send + receive = 0.005 + 0.015 = 0.02 s;
    // broker: 2 × 1 × 1 MB / 0.02 s = 100 MB/s.
    close(cal.exchange_s, 0.02);
    close(cal.broker_bytes_per_s.unwrap(), 1e8);
    close(cal.encode_s, 0.01);
    close(cal.decode_per_gradient_s, 0.005);
    close(cal.update_s, 0.02);
    assert!(cal.functions.is_none());
}

#[test]
fn validation_against_the_local_run_returns_the_ratio() {
    let config = config_with_speeds(&[1.0, 0.5]);
    let run = instance_run();
    let cal = calibrate(&config, std::slice::from_ref(&run)).unwrap();
    let v = validate_against(&cal, &config, &run).unwrap();
    // Measured: rounds of 0.855 and 0.955 s (evaluation excluded): mean 0.905 s.
    // Predicted: 0.855 s every round. Ratio 0.855 / 0.905 = 0.944751…
    close(v.measured_round_s, 0.905);
    close(v.predicted_round_s, 0.855);
    close(v.ratio, 0.855 / 0.905);
    assert!(v.within_tolerance);
    assert_eq!(v.rounds, 2);
}

/// [`instance_run`] with every batch offloaded: each peer's round `r` makes the calls
/// `calls(r)`, uploads the weights in 0.2 s and fetches the gradients in 0.06 s.
fn serverless_run(calls: impl Fn(usize) -> Vec<InvocationRecord>) -> DeploymentRun {
    let mut run = instance_run();
    run.name = "serverless".into();
    for peer in &mut run.peers {
        for (r, m) in peer.rounds.iter_mut().enumerate() {
            m.local_batches = 0;
            m.offloaded_batches = 2;
            m.weights_upload_time_s = 0.2;
            m.gradient_fetch_time_s = 0.06;
            m.invocations = calls(r);
        }
    }
    run
}

#[test]
fn function_calibration_separates_warm_and_cold_calls() {
    let config = config_with_speeds(&[1.0, 0.5]);
    let run = serverless_run(|r| {
        vec![
            invocation(0, 500, 2048, r == 0),
            invocation(1, 300, 2048, false),
        ]
    });
    let cal = calibrate(&config, &[instance_run(), run]).unwrap();
    let f = cal.functions.unwrap();
    assert_eq!(f.memory_mb, 2048);
    assert_eq!(f.invocations, 8);
    // Per peer: round 0 has a cold 500 ms call and a warm 300 ms one, round 1 warm calls of
    // 500 and 300 ms. Warm mean (300 + 500 + 300) / 3 = 366.67 ms; cold extra 133.33 ms.
    close(
        f.cold_extra_s,
        (500.0 - (300.0 + 500.0 + 300.0) / 3.0) / 1000.0,
    );
    close(f.call_overhead_s, 0.05);
    close(f.weights_upload_s, 0.2);
    close(f.fetch_per_gradient_s, 0.03);
    close(f.load_weights_s, 0.02);
}

/// The straggler spread is the calls' spread within a round: a round in which every call
/// was slower (a busier machine) makes no call wait for another.
#[test]
fn call_spread_is_taken_within_rounds() {
    let config = config_with_speeds(&[1.0, 0.5]);
    let run = serverless_run(|r| {
        let slower = 400 * r as u64;
        vec![
            invocation(0, 300 + slower, 2048, false),
            invocation(1, 340 + slower, 2048, false),
        ]
    });
    let f = calibrate(&config, &[instance_run(), run])
        .unwrap()
        .functions
        .unwrap();
    // Each round: wall times 350, 390, 350, 390 ms (mean 370, squares 1,600, 3 degrees of
    // freedom); the 400 ms between the rounds does not count.
    close(f.call_sd_s, (1600.0f64 / 3.0).sqrt() / 1000.0);
}

#[test]
fn projection_covers_the_grid_and_prices_each_point() {
    let mut config = config_with_speeds(&[1.0, 0.5]);
    config.deployments = vec![Deployment::Instance, Deployment::Serverless];
    config.projection.peers = vec![2, 64];
    config.projection.instance_types = vec!["t3.medium".into(), "c5.large".into()];
    config.projection.lambda_memory_mb = vec![1769];
    let projection = project(&config, &[instance_run()], &test_prices()).unwrap();
    // Instance: 2 peer counts × 2 types; serverless: no function measured, so skipped.
    assert_eq!(projection.points.len(), 4);
    assert!(
        projection.notes.iter().any(|n| n.starts_with("serverless")),
        "{:?}",
        projection.notes
    );
    assert_eq!(projection.validations.len(), 1);
    let point = |n: u32, t: &str| {
        projection
            .points
            .iter()
            .find(|p| p.peers == n && p.instance_type == t)
            .unwrap()
    };
    // c5.large has relative_speed 2 in the test prices: compute halves, 0.8 → 0.4 s.
    close(point(2, "t3.medium").round.compute_s, 0.8);
    close(point(2, "c5.large").round.compute_s, 0.4);
    // 64 peers: exchange 64 × 63 × 1 MB / 100 MB/s = 40.32 s; overhead 0.01 + 63 × 0.005
    // + 0.02 = 0.345 s.
    let p = point(64, "t3.medium");
    close(p.round.exchange_s, 40.32);
    close(p.round.round_time_s, 0.8 + 40.32 + 0.345);
    // Its cost: 64 instances and the broker for one round.
    let hours = p.round.round_time_s / 3600.0;
    close(p.cost_per_round.ec2, 64.0 * 0.0416 * hours);
    close(p.cost_per_round.broker, 0.288 * hours);
    close(
        p.cost_per_round.total,
        p.cost_per_round.ec2 + p.cost_per_round.broker,
    );
}

#[test]
fn expected_maximum_of_normals_matches_the_exact_values() {
    use peerless_bench::study::simulate::expected_max_z;
    assert_eq!(expected_max_z(0), 0.0);
    assert_eq!(expected_max_z(1), 0.0);
    // Exact E[max of k standard normals]: 1/sqrt(pi), 1.0294, 1.5388 (Blom within 5%).
    for (k, exact) in [(2, 0.564_19), (4, 1.029_38), (10, 1.538_75)] {
        let z = expected_max_z(k);
        assert!((z - exact).abs() / exact < 0.05, "k = {k}: {z} vs {exact}");
    }
}
