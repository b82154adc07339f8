//! The runtime driven as a library, without the `peerless` binary: typed configurations in,
//! typed metrics out.

use std::path::Path;
use std::time::Duration;

use peerless_comm::{InProcessHub, OnTimeout, RunId};
use peerless_data::DatasetKind;
use peerless_models::Device;
use peerless_runtime::metrics::RoundMetrics;
use peerless_runtime::{
    Capability, ExchangeConfig, LocalRunConfig, Node, NodeConfig, OffloadPolicy, ServerlessConfig,
    ServerlessMode, SplitSource, TrainingConfig, run_local,
};

fn training() -> TrainingConfig {
    TrainingConfig {
        lr: 0.05,
        epochs: 2,
        ..TrainingConfig::default()
    }
}

/// Three peers on synthetic data, two rounds per epoch, split into `dir/store` with 4
/// batch objects per peer.
fn local_run(dir: &Path, name: &str) -> LocalRunConfig {
    LocalRunConfig {
        peers: 3,
        run_id: Some(name.to_string()),
        metrics_dir: dir.join(name),
        split: SplitSource {
            dataset: DatasetKind::Synthetic,
            batches: Some(4),
            limit: Some(600),
            ..SplitSource::default()
        },
        resize: None,
        training: training(),
        exchange: ExchangeConfig {
            store: dir.join("store").display().to_string(),
            rounds_per_epoch: 2,
            round_timeout: Duration::from_secs(120),
            ..ExchangeConfig::default()
        },
        capabilities: Vec::new(),
        attacks: Vec::new(),
    }
}

/// Runs one node per configuration, each on a thread and runtime of its own, over an
/// in-process hub; returns what `outcome` makes of each node's result, by rank.
fn run_nodes_with<R: Send>(
    configs: Vec<NodeConfig>,
    outcome: impl Fn(anyhow::Result<peerless_runtime::NodeSummary>) -> R + Sync,
) -> Vec<R> {
    let hub = InProcessHub::new(configs.len() as u32);
    let outcome = &outcome;
    std::thread::scope(|scope| {
        let handles: Vec<_> = hub
            .into_endpoints()
            .into_iter()
            .zip(configs)
            .map(|(transport, config)| {
                scope.spawn(move || {
                    own_runtime(async {
                        let node = Node::prepare(&config, &Device::flex()).await.unwrap();
                        outcome(node.run(transport).await)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// [`run_nodes_with`] for runs that must succeed.
fn run_nodes(configs: Vec<NodeConfig>) -> Vec<peerless_runtime::NodeSummary> {
    run_nodes_with(configs, |outcome| outcome.unwrap())
}

/// Runs `f` to completion on a runtime of its own (one per peer thread).
fn own_runtime<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn hashes(rounds: &[RoundMetrics]) -> Vec<&str> {
    rounds.iter().map(|m| m.weights_hash.as_str()).collect()
}

#[test]
fn local_peers_hold_identical_weights_every_round_and_write_typed_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let run = local_run(dir.path(), "instance");
    let summaries = run_local(&run, &Device::flex()).unwrap();
    assert_eq!(summaries.len(), 3);
    for (rank, s) in summaries.iter().enumerate() {
        assert_eq!(s.rank as usize, rank);
        assert_eq!(s.rounds.len(), 4, "2 epochs x 2 rounds");
        assert_eq!(hashes(&s.rounds), hashes(&summaries[0].rounds));
        // The file holds what the summary holds, field for field.
        let text =
            std::fs::read_to_string(run.metrics_dir.join(format!("peer-{rank}.jsonl"))).unwrap();
        let read: Vec<RoundMetrics> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(read, s.rounds);
        for m in &s.rounds {
            assert_eq!(m.contributors, 3);
            assert_eq!(m.local_batches, 2);
            assert_eq!(m.offloaded_batches, 0);
            assert_eq!(m.serverless, "none");
            assert_eq!(m.peer_compute_s.len(), 3);
        }
    }
    let first = summaries[0].rounds.first().unwrap().train_loss;
    let last = summaries[0].rounds.last().unwrap().train_loss;
    assert!(last < first, "loss {first} -> {last}");

    // Offloading every batch to the in-process function pool changes where batches run,
    // not the weights.
    let mut serverless = local_run(dir.path(), "serverless");
    serverless.exchange.serverless = ServerlessConfig {
        mode: ServerlessMode::Local,
        offload: Some(OffloadPolicy::Fixed(1.0)),
        concurrency: Some(2),
        ..ServerlessConfig::default()
    };
    serverless.capabilities = vec![Capability {
        speed: 1.0,
        threads: Some(1),
    }];
    let offloaded = run_local(&serverless, &Device::flex()).unwrap();
    for s in &offloaded {
        assert_eq!(hashes(&s.rounds), hashes(&summaries[0].rounds));
        assert!(
            s.rounds.iter().all(|m| m.offloaded_batches == 2
                && m.local_batches == 0
                && m.invocations.len() == 2)
        );
    }
}

#[test]
fn nodes_over_an_in_process_hub_average_without_the_local_runner() {
    let dir = tempfile::tempdir().unwrap();
    // The split comes from a one-epoch local run of the same shape.
    let mut seed_run = local_run(dir.path(), "seed");
    seed_run.training.epochs = 1;
    let reference = run_local(&seed_run, &Device::flex()).unwrap();

    let exchange = ExchangeConfig {
        store: dir.path().join("store").display().to_string(),
        rounds_per_epoch: 2,
        on_timeout: OnTimeout::Fail,
        ..ExchangeConfig::default()
    };
    let mut one_epoch = training();
    one_epoch.epochs = 1;
    let id = RunId::from_name("direct");
    let configs = (0..3)
        .map(|rank| NodeConfig::new(rank, 3, id, one_epoch.clone(), exchange.clone()).unwrap())
        .collect();
    let results = run_nodes(configs);
    // Another run id, the same job: the same weights as the local runner's, round by round.
    for s in &results {
        assert_eq!(hashes(&s.rounds), hashes(&reference[0].rounds));
    }
}

#[test]
fn bad_configurations_fail_before_anything_is_loaded() {
    let missing = ExchangeConfig {
        store: "/nonexistent/peerless-store".into(),
        ..ExchangeConfig::default()
    };
    let id = RunId::from_name("bad");
    let e = NodeConfig::new(3, 3, id, training(), missing.clone()).unwrap_err();
    assert!(
        e.to_string().contains("--rank 3 must be below --size 3"),
        "{e}"
    );

    // A configuration edited after construction is checked again by `prepare`.
    let mut config = NodeConfig::new(0, 1, id, training(), missing).unwrap();
    config.capability.speed = 0.0;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(Node::prepare(&config, &Device::flex()))
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("(0, 1]"), "{e:#}");
}

use peerless_runtime::metrics::evaluated_rounds as evaluated;

#[test]
fn evaluation_runs_once_per_epoch_by_default_or_every_k_rounds_on_every_peer() {
    let dir = tempfile::tempdir().unwrap();
    // 2 epochs of 3 rounds (early stopping's default patience of 10 evaluations cannot
    // end it sooner).
    let run = |name: &str, eval_every: Option<u32>| {
        let mut run = local_run(dir.path(), name);
        run.exchange.rounds_per_epoch = 3;
        run.exchange.evaluation = true;
        run.exchange.eval_every = eval_every;
        run.exchange.eval_limit = Some(50);
        run_local(&run, &Device::flex()).unwrap()
    };
    let default = run("default", None);
    let every = run("every", Some(1));
    for (summaries, expected) in [(&default, vec![2, 5]), (&every, (0..6).collect())] {
        for s in summaries.iter() {
            assert_eq!(s.rounds.len(), 6, "rank {}", s.rank);
            assert_eq!(hashes(&s.rounds), hashes(&summaries[0].rounds));
            assert_eq!(evaluated(&s.rounds), expected, "rank {}", s.rank);
            for m in &s.rounds {
                let on = expected.contains(&m.round);
                assert_eq!(m.val_loss.is_some(), on, "round {}", m.round);
                assert_eq!(m.val_accuracy.is_some(), on, "round {}", m.round);
                assert_eq!(m.test_loss.is_some(), on, "round {}", m.round);
                assert_eq!(m.eval_time_s > 0.0, on, "round {}", m.round);
            }
        }
    }
    // A round without evaluation writes nulls, which read back as `None`.
    let line = std::fs::read_to_string(dir.path().join("default/peer-1.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(first["test_accuracy"].is_null() && first["val_loss"].is_null());
    assert_eq!(first["eval_time_s"], 0.0);
}

#[test]
fn peers_with_another_evaluation_schedule_are_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed_run = local_run(dir.path(), "seed");
    seed_run.training.epochs = 1;
    run_local(&seed_run, &Device::flex()).unwrap();

    let exchange = |eval_every| ExchangeConfig {
        store: dir.path().join("store").display().to_string(),
        rounds_per_epoch: 2,
        evaluation: true,
        eval_every,
        ..ExchangeConfig::default()
    };
    let id = RunId::from_name("schedules");
    // Rank 2 says explicitly what the default is (once per epoch = 2 rounds): no
    // difference. Rank 1 evaluates every round.
    let schedules = [None, Some(1), Some(2)];
    let configs = (0..3)
        .map(|rank| {
            NodeConfig::new(rank, 3, id, training(), exchange(schedules[rank as usize])).unwrap()
        })
        .collect();
    let errors: Vec<String> = run_nodes_with(configs, |outcome| match outcome {
        Ok(_) => String::new(),
        Err(e) => format!("{e:#}"),
    });
    for (rank, e) in errors.iter().enumerate() {
        assert!(e.contains("eval_every"), "rank {rank}: {e}");
    }
    assert!(
        errors[0].contains("eval_every (2 here, 1 there)"),
        "{}",
        errors[0]
    );
    assert!(!errors[0].contains("eval_every (2 here, 2 there)"));
}
