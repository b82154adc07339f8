//! The projection model on hand-computed cases.

use peerless_bench::study::{
    Calibration, Deployment, DeploymentRun, ExchangePoint, ExchangeTraffic, FunctionCalibration,
    PeerRun, Projection, Scenario, calibrate, predict_mean_round_s, predict_round, project,
    validate_against,
};
use peerless_comm::Exchange;
use peerless_runtime::metrics::{InvocationRecord, RoundMetrics};

use super::common::{config_with_speeds, invocation, test_prices};

/// Round numbers: 0.1 s per batch at speed 1, 1 MB gradients, a 100 MB/s broker and 50 MB/s
/// peer links fitted on two all-to-all peers (2 × 1 × 1 MB and 1 MB in 0.02 s), encode 0.01 s, decode 0.005 s per gradient, update
/// 0.02 s; functions measured at 1769 MB (one vCPU): overhead 0.05 + weights 0.1 + batch
/// 0.05 + compute 0.4 + upload 0.05 = 0.65 s per call; cold start +1 s; the peer uploads
/// weights in 0.2 s and reads each gradient in 0.03 s.
fn calibration() -> Calibration {
    Calibration {
        batch_s: Some(0.1),
        batch_source: Some("instance".into()),
        reference_instance_type: "t3.medium".into(),
        local_peers: 2,
        batch_sd_s: 0.0,
        exchange: Exchange::AllToAll,
        gradient_bytes: 1e6,
        exchange_s: 0.02,
        broker_bytes_measured: 2e6,
        broker_bytes_per_s: Some(1e8),
        peer_bytes_per_s: Some(5e7),
        hop_latency_s: None,
        exchange_fit: None,
        measured_exchanges: Vec::new(),
        encode_s: 0.01,
        decode_per_gradient_s: 0.005,
        update_s: 0.02,
        checkpoint_s: 0.0,
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
        exchange: Exchange::AllToAll,
    }
}

/// The projection's exchange row for `peers` peers and `exchange`.
fn exchange_point(projection: &Projection, peers: u32, exchange: Exchange) -> &ExchangePoint {
    projection
        .exchanges
        .iter()
        .find(|p| p.peers == peers && p.exchange == exchange)
        .unwrap_or_else(|| panic!("no {exchange:?} row at {peers} peers"))
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
/// 0.02, the fast peer waits 0.42 s and the slow one 0.02 s for the other gradient.
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
        bytes_received: 1_000_000,
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
                vec![m(0, 0, 0.4, 0.42, 0.855), m(0, 1, 0.4, 0.42, 0.855)],
            ),
            peer(
                1,
                vec![m(1, 0, 0.8, 0.02, 0.855), m(1, 1, 0.8, 0.02, 0.955)],
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
    // Exchange: per round the smallest max(send, receive) = max(0.005, 0.02) = 0.02 s (the
    // two overlap); broker: 2 × 1 × 1 MB / 0.02 s = 100 MB/s; a peer's link: 1 MB / 0.02 s.
    close(cal.exchange_s, 0.02);
    close(cal.broker_bytes_per_s.unwrap(), 1e8);
    close(cal.peer_bytes_per_s.unwrap(), 5e7);
    assert_eq!(cal.exchange, Exchange::AllToAll);
    close(cal.broker_bytes_measured, 2e6);
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

#[test]
fn exchange_traffic_is_the_formulas_at_4_and_64_peers() {
    let g = 153_128.0;
    for n in [4usize, 64] {
        let x = n as f64;
        let a = ExchangeTraffic::of(Exchange::AllToAll, n, g);
        close(a.broker_bytes, x * (x - 1.0) * g);
        close(a.peer_received_bytes, (x - 1.0) * g);
        close(a.peer_sent_bytes, g);
        close(a.decoded_gradients, x - 1.0);
        assert_eq!(a.hops, 1);
        let s = ExchangeTraffic::of(Exchange::Sharded, n, g);
        close(s.broker_bytes, 2.0 * (x - 1.0) * g);
        close(s.peer_received_bytes, 2.0 * (x - 1.0) / x * g);
        close(s.peer_sent_bytes, g);
        close(s.decoded_gradients, 2.0 * (x - 1.0) / x);
        assert_eq!(s.hops, 2);
    }
    // The numbers themselves: 4 peers all-to-all 12 G through the broker, sharded 6 G; 64
    // peers 4,032 G against 126 G.
    for (exchange, peers, gradients) in [
        (Exchange::AllToAll, 4, 12.0),
        (Exchange::Sharded, 4, 6.0),
        (Exchange::AllToAll, 64, 4032.0),
        (Exchange::Sharded, 64, 126.0),
    ] {
        close(
            ExchangeTraffic::of(exchange, peers, g).broker_bytes,
            gradients * g,
        );
    }
    // One peer moves nothing.
    assert_eq!(
        ExchangeTraffic::of(Exchange::Sharded, 1, g).broker_bytes,
        0.0
    );
}

#[test]
fn exchange_time_is_the_slower_of_the_broker_and_a_peer_link() {
    let cal = calibration();
    // All-to-all: broker 100 MB/s, links 50 MB/s. 2 peers: 2 MB / 100 MB/s = 1 MB / 50
    // MB/s = 0.02 s. 8 peers: broker 56 MB → 0.56 s against 7 MB → 0.14 s on the link.
    close(cal.exchange_time_s(Exchange::AllToAll, 2), 0.02);
    close(cal.exchange_time_s(Exchange::AllToAll, 8), 0.56);
    assert!(cal.broker_bound(Exchange::AllToAll, 8));
    // Sharded at 8: broker 14 MB → 0.14 s, link 1.75 MB → 0.035 s.
    close(cal.exchange_time_s(Exchange::Sharded, 8), 0.14);
    // Links slower than the broker can carry: the link binds. At 5 MB/s per peer, 8
    // sharded peers take 1.75 MB / 5 MB/s = 0.35 s (the broker 0.14 s).
    let slow_links = Calibration {
        peer_bytes_per_s: Some(5e6),
        ..cal.clone()
    };
    close(slow_links.exchange_time_s(Exchange::Sharded, 8), 0.35);
    assert!(!slow_links.broker_bound(Exchange::Sharded, 8));
    // The decode part follows the gradients' worth each peer decodes: 7 all-to-all, 1.75
    // sharded, at 0.005 s each.
    close(
        cal.overhead_time_s(Exchange::AllToAll, 8),
        0.01 + 7.0 * 0.005 + 0.02,
    );
    close(
        cal.overhead_time_s(Exchange::Sharded, 8),
        0.01 + 1.75 * 0.005 + 0.02,
    );
    // A scenario predicts with its own exchange.
    let s = Scenario {
        speeds: vec![1.0; 8],
        exchange: Exchange::Sharded,
        ..scenario(Deployment::Instance)
    };
    let p = predict_round(&cal, &s, 2).unwrap();
    close(p.exchange_s, 0.14);
    close(p.round_time_s, 0.4 + 0.14 + 0.01 + 1.75 * 0.005 + 0.02);
}

#[test]
fn projected_exchange_grows_with_the_peers_and_sharded_wins_beyond_two() {
    let cal = calibration();
    let counts = [2usize, 3, 4, 8, 16, 32, 64, 128, 256, 512];
    for exchange in [Exchange::AllToAll, Exchange::Sharded] {
        for pair in counts.windows(2) {
            let (a, b) = (
                cal.exchange_time_s(exchange, pair[0]),
                cal.exchange_time_s(exchange, pair[1]),
            );
            assert!(
                b > a,
                "{exchange}: {} peers {a} s, {} peers {b} s",
                pair[0],
                pair[1]
            );
        }
    }
    // Two peers: both move the gradient once each way, 0.02 s. From three on sharded is
    // faster, by N/2 (broker-bound both: N(N-1) G against 2(N-1) G).
    close(cal.exchange_time_s(Exchange::Sharded, 2), 0.02);
    for &n in &counts[1..] {
        let (a, s) = (
            cal.exchange_time_s(Exchange::AllToAll, n),
            cal.exchange_time_s(Exchange::Sharded, n),
        );
        assert!(s < a, "{n} peers: sharded {s} s, all-to-all {a} s");
        assert!((a / s - n as f64 / 2.0).abs() < 1e-9, "{n}: {}", a / s);
    }
    // 512 peers: all-to-all 512 × 511 MB / 100 MB/s = 2,616.32 s; sharded 10.22 s.
    close(cal.exchange_time_s(Exchange::AllToAll, 512), 2616.32);
    close(cal.exchange_time_s(Exchange::Sharded, 512), 10.22);
}

/// [`instance_run`] as a sharded exchange: each peer sends 1 MB and receives 1 MB (2 × 1/2
/// of a gradient) a round.
#[test]
fn calibration_from_a_sharded_run_fits_the_sharded_traffic() {
    let mut config = config_with_speeds(&[1.0, 0.5]);
    config.exchange = Exchange::Sharded;
    let cal = calibrate(&config, &[instance_run()]).unwrap();
    assert_eq!(cal.exchange, Exchange::Sharded);
    // Broker: 2 × (2 - 1) × 1 MB in 0.02 s; a peer: 2 × 1/2 × 1 MB in 0.02 s.
    close(cal.broker_bytes_per_s.unwrap(), 1e8);
    close(cal.peer_bytes_per_s.unwrap(), 5e7);
    // Decode: 0.005 s for 2 × 1/2 = 1 gradient's worth.
    close(cal.decode_per_gradient_s, 0.005);
    // The same calibration projects all-to-all at 64 peers: 64 × 63 MB / 100 MB/s.
    close(cal.exchange_time_s(Exchange::AllToAll, 64), 40.32);
    close(cal.exchange_s(64), 126.0 * 1e6 / 1e8);
}

#[test]
fn projection_lists_both_exchanges_at_every_peer_count() {
    let mut config = config_with_speeds(&[1.0, 0.5]);
    config.deployments = vec![Deployment::Instance];
    config.projection.peers = vec![4, 64, 512];
    config.projection.instance_types = vec!["t3.medium".into()];
    let projection = project(&config, &[instance_run()], &test_prices()).unwrap();
    assert_eq!(projection.exchanges.len(), 6);
    let setup = projection.exchange_setup.as_ref().unwrap();
    assert_eq!(setup.deployment, Deployment::Instance);
    assert_eq!(setup.instance_type, "t3.medium");
    let at = |n: u32, e: Exchange| exchange_point(&projection, n, e);
    for n in [4u32, 64, 512] {
        let (a, s) = (at(n, Exchange::AllToAll), at(n, Exchange::Sharded));
        let x = f64::from(n);
        close(a.traffic.broker_bytes, x * (x - 1.0) * 1e6);
        close(s.traffic.broker_bytes, 2.0 * (x - 1.0) * 1e6);
        close(a.exchange_s, x * (x - 1.0) * 1e6 / 1e8);
        close(s.exchange_s, 2.0 * (x - 1.0) * 1e6 / 1e8);
        assert!(a.broker_bound && s.broker_bound);
        // Same compute either way; the round differs by exchange and decoding.
        let (ra, rs) = (a.round.as_ref().unwrap(), s.round.as_ref().unwrap());
        close(ra.compute_s, 0.8);
        close(rs.compute_s, 0.8);
        close(
            ra.round_time_s,
            0.8 + a.exchange_s + 0.03 + (x - 1.0) * 0.005,
        );
        close(
            rs.round_time_s,
            0.8 + s.exchange_s + 0.03 + 2.0 * (x - 1.0) / x * 0.005,
        );
    }
    // Exchange-bound (exchange longer than the 0.8 s of compute): at 4 peers neither (0.12 s
    // and 0.06 s); at 64 all-to-all by far (40.32 s) and sharded just (1.26 s).
    let bound = |n: u32, e: Exchange| {
        let r = at(n, e).round.clone().unwrap();
        r.exchange_s > r.compute_s
    };
    assert!(!bound(4, Exchange::AllToAll) && !bound(4, Exchange::Sharded));
    assert!(bound(64, Exchange::AllToAll) && bound(64, Exchange::Sharded));
    // The configured exchange (all-to-all) is what the grid uses.
    let grid = projection.points.iter().find(|p| p.peers == 64).unwrap();
    close(grid.round.exchange_s, 40.32);
}

#[test]
fn latency_and_throughput_fitted_to_both_exchanges() {
    use peerless_bench::study::simulate::{MeasuredExchange, fit_exchange};
    let measured = |exchange, exchange_s, exchange_se_s| MeasuredExchange {
        exchange,
        runs: vec![],
        peers: 4,
        gradient_bytes: 1e6,
        exchange_s,
        exchange_se_s,
        broker_bytes_per_round: 0.0,
    };
    // 4 peers, 1 MB gradients, 10 ms a hop, 100 MB/s: all-to-all 0.01 + 12 MB / 100 MB/s =
    // 0.13 s; sharded 2 × 0.01 + 6 MB / 100 MB/s = 0.08 s.
    let fit = |se_a2a: f64, se_sharded: f64| {
        fit_exchange(
            &[
                measured(Exchange::AllToAll, 0.13, se_a2a),
                measured(Exchange::Sharded, 0.08, se_sharded),
            ],
            4,
        )
        .unwrap()
    };
    let exact = fit(0.0, 0.0);
    assert!((exact.hop_latency_s - 0.01).abs() < 1e-12, "{exact:?}");
    assert!((exact.bytes_per_s() / 1e8 - 1.0).abs() < 1e-9, "{exact:?}");
    assert!(exact.resolved());
    // 1/W = (2 × 0.13 - 0.08) / (2 × 12 MB - 6 MB) = 0.18 s / 18 MB; its standard error
    // √((2 × 0.003)² + 0.008²) / 18 MB = 0.01 s / 18 MB: resolved. Ten times the spread:
    // 0.1 s / 18 MB, more than half of 0.18 s / 18 MB: not resolved.
    let noisy = fit(0.003, 0.008);
    assert!(
        (noisy.per_byte_se_s * 18e6 - 0.01).abs() < 1e-12,
        "{noisy:?}"
    );
    assert!(noisy.resolved());
    let noise = fit(0.03, 0.08);
    assert!(
        (noise.per_byte_se_s * 18e6 - 0.1).abs() < 1e-12,
        "{noise:?}"
    );
    assert!(!noise.resolved());
    // Sharded at least twice all-to-all: no throughput explains it; less than its bytes
    // allow: no latency does. One exchange alone: nothing to fit.
    for s in [0.26, 0.04] {
        assert_eq!(
            fit_exchange(
                &[
                    measured(Exchange::AllToAll, 0.13, 0.0),
                    measured(Exchange::Sharded, s, 0.0)
                ],
                4
            ),
            None,
            "sharded {s} s"
        );
    }
    assert_eq!(
        fit_exchange(&[measured(Exchange::AllToAll, 0.13, 0.0)], 4),
        None
    );
}

#[test]
fn a_run_of_each_exchange_calibrates_the_hop_latency() {
    let mut config = config_with_speeds(&[1.0, 0.5]);
    config.compare_exchanges = vec![Exchange::Sharded];
    // The sharded run: the slow (last) peer waits 0.03 s, the fast one 0.43 s.
    let mut sharded = instance_run();
    sharded.name = "instance-sharded".into();
    for peer in &mut sharded.peers {
        for m in &mut peer.rounds {
            m.receive_time_s += 0.01;
        }
    }
    let cal = calibrate(&config, &[instance_run(), sharded.clone()]).unwrap();
    // Two peers move 2 × 1 × 1 MB either way, in one hop all-to-all (0.02 s) and two
    // sharded (0.03 s): a hop takes 0.01 s, and 2 MB take the other 0.01 s (200 MB/s).
    close(cal.hop_latency_s.unwrap(), 0.01);
    close(cal.broker_bytes_per_s.unwrap() / 2e8, 1.0);
    close(cal.peer_bytes_per_s.unwrap() / 1e8, 1.0);
    assert_eq!(cal.measured_exchanges.len(), 2);
    close(cal.measured_exchanges[1].exchange_s, 0.03);
    assert_eq!(cal.measured_exchanges[1].runs, vec!["instance-sharded"]);
    close(cal.exchange_time_s(Exchange::AllToAll, 2), 0.02);
    close(cal.exchange_time_s(Exchange::Sharded, 2), 0.03);
    // 64 peers: all-to-all 0.01 + 4,032 MB / 200 MB/s = 20.17 s; sharded 0.02 + 126 MB /
    // 200 MB/s = 0.65 s.
    close(cal.exchange_time_s(Exchange::AllToAll, 64), 20.17);
    close(cal.exchange_time_s(Exchange::Sharded, 64), 0.65);
    // The sharded run is checked with its own exchange: 0.8 s of compute, 0.03 s of
    // exchange, 0.035 s of encode, decode and update.
    let v = validate_against(&cal, &config, &sharded).unwrap();
    assert_eq!(v.exchange, Exchange::Sharded);
    close(v.predicted_round_s, 0.8 + 0.03 + 0.035);
}

/// The exchange study (`bench/study/exchange.toml`: 8 equal peers, tiny CNN, 153 KB
/// gradients, over the local RabbitMQ) as measured on 2026-12-07: the peers' round metrics
/// of its `instance` (all-to-all) and `instance-sharded` runs, reduced to the fields the
/// simulator reads (`tests/study/fixtures/exchange-8`). README.md's projection table comes
/// from this run.
#[test]
fn the_measured_8_peer_exchange_study_is_checked_within_20_percent() {
    use peerless_bench::study::Prices;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        peerless_bench::study::StudyConfig::load(&root.join("study/exchange.toml")).unwrap();
    let prices = Prices::load(&config.prices_path()).unwrap();
    let fixtures = root.join("tests/study/fixtures/exchange-8");
    let runs: Vec<DeploymentRun> = ["instance", "instance-sharded"]
        .iter()
        .map(|name| DeploymentRun::load_dir(name, &fixtures.join(name), &config, 7.0).unwrap())
        .collect();
    let projection = project(&config, &runs, &prices).unwrap();
    let near = |got: f64, want: f64, what: &str| {
        assert!(
            (got / want - 1.0).abs() < 1e-3,
            "{what}: got {got}, want {want}"
        );
    };

    // Measured: all-to-all 13.1 ± 2.3 ms a round, sharded 15.5 ± 1.0 ms.
    let cal = &projection.calibration;
    let [a2a, sharded] = &cal.measured_exchanges[..] else {
        panic!("{:?}", cal.measured_exchanges)
    };
    near(a2a.exchange_s, 0.013147, "all-to-all exchange");
    near(a2a.exchange_se_s, 0.0022606, "its standard error");
    near(sharded.exchange_s, 0.015501, "sharded exchange");
    near(sharded.exchange_se_s, 0.00098288, "its standard error");
    near(a2a.gradient_bytes, 153_312.0, "gradient");
    // The fit: 7.0 ms a hop and 0.72 ± 0.31 ns a byte (1.39 GB/s), resolved (2.3
    // standard errors above zero) and so used.
    let fit = cal.exchange_fit.unwrap();
    near(fit.hop_latency_s, 0.0069721, "hop latency");
    near(fit.per_byte_s, 7.1922e-10, "per byte");
    near(fit.per_byte_se_s, 3.0832e-10, "per byte standard error");
    assert!(fit.resolved());
    assert_eq!(cal.hop_latency_s, Some(fit.hop_latency_s));
    near(
        cal.broker_bytes_per_s.unwrap(),
        1.3904e9,
        "broker throughput",
    );
    // At 8 peers the fit reproduces both measurements.
    near(
        cal.exchange_time_s(Exchange::AllToAll, 8),
        0.013147,
        "all-to-all at 8",
    );
    near(
        cal.exchange_time_s(Exchange::Sharded, 8),
        0.015501,
        "sharded at 8",
    );

    // The check: predicted / measured mean round 1.083 all-to-all, 1.009 sharded.
    let ratios: Vec<(&str, Exchange, f64)> = projection
        .validations
        .iter()
        .map(|v| (v.deployment.as_str(), v.exchange, v.ratio))
        .collect();
    assert_eq!(ratios.len(), 2, "{ratios:?}");
    assert_eq!((ratios[0].0, ratios[0].1), ("instance", Exchange::AllToAll));
    assert_eq!(
        (ratios[1].0, ratios[1].1),
        ("instance-sharded", Exchange::Sharded)
    );
    near(ratios[0].2, 1.0826, "all-to-all ratio");
    near(ratios[1].2, 1.0094, "sharded ratio");
    assert!(projection.validations.iter().all(|v| v.within_tolerance));

    // README.md's table: exchange and instance round seconds at 64-512 peers.
    let point = |n: u32, e: Exchange| exchange_point(&projection, n, e);
    for (n, a2a_s, sharded_s) in [
        (64, 0.45156, 0.027838),
        (128, 1.7994, 0.041951),
        (256, 7.2051, 0.070179),
        (512, 28.856, 0.12663),
    ] {
        near(point(n, Exchange::AllToAll).exchange_s, a2a_s, "all-to-all");
        near(point(n, Exchange::Sharded).exchange_s, sharded_s, "sharded");
    }
}
