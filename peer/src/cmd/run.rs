//! `peerless run --peers N`: N peers on this machine, one thread each, over the in-process
//! transport or a real broker, with a per-round summary at the end.

use std::collections::BTreeSet;

use anyhow::{Context, Result, anyhow, bail};
use peerless_comm::{AnyTransport, InProcessHub, RunId};
use peerless_data::{Split, SplitConfig, SplitReader, load, open_store, split};
use peerless_models::{Device, DeviceChoice, select_device};

use crate::cli::RunArgs;
use crate::cmd::peer::{connect, node_config};
use crate::cmd::split::store_options;
use crate::node::{Capability, Node, NodeSummary};

pub fn run(args: RunArgs, device: DeviceChoice) -> Result<()> {
    let device = select_device(device)?;
    let x = &args.exchange;
    let n = args.peers;
    crate::node::check_serverless_flags(&x.serverless, &x.store)?;
    if args.speeds.len() > n as usize {
        bail!(
            "--speeds lists {} peers but --peers is {n}",
            args.speeds.len()
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(ensure_split(&args))?;
    let run_id = match &x.run_id {
        Some(name) => RunId::from_name(name),
        None => RunId::random(),
    };
    std::fs::create_dir_all(&args.metrics_dir)
        .with_context(|| format!("creating {}", args.metrics_dir.display()))?;
    let mut transports: Vec<Option<AnyTransport>> = match &x.broker {
        Some(_) => (0..n).map(|_| None).collect(),
        None => InProcessHub::new(n)
            .into_endpoints()
            .into_iter()
            .map(|t| Some(AnyTransport::from(t)))
            .collect(),
    };
    let mut configs = Vec::new();
    for rank in 0..n {
        let mut training = args.training.clone();
        training.metrics_out = Some(args.metrics_dir.join(format!("peer-{rank}.jsonl")));
        let speed = args.speeds.get(rank as usize).copied().unwrap_or(1.0);
        let threads = args.threads.get(rank as usize).copied().filter(|&t| t > 0);
        configs.push(node_config(
            rank,
            n,
            run_id,
            &training,
            x,
            args.data.resize,
            Capability { speed, threads },
        )?);
    }
    let results: Vec<Result<NodeSummary>> = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .zip(transports.iter_mut())
            .map(|(config, transport)| {
                let transport = transport.take();
                let device: Device = device.clone();
                let broker = x.broker.clone();
                scope.spawn(move || -> Result<NodeSummary> {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        let node = Node::prepare(config, &device).await?;
                        let transport = match (transport, broker) {
                            (Some(t), _) => t,
                            (None, Some(url)) => connect(&url, config).await?,
                            (None, None) => {
                                unreachable!("in-process endpoints exist for every rank")
                            }
                        };
                        node.run(transport).await
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a peer thread panicked")))
            })
            .collect()
    });
    let mut summaries = Vec::new();
    let mut errors = Vec::new();
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(s) => summaries.push(s),
            Err(e) => errors.push(format!("peer {rank}: {e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} of {n} peers failed (metrics so far are in {}):\n  {}",
            errors.len(),
            args.metrics_dir.display(),
            errors.join("\n  ")
        );
    }
    print_summary(&summaries);
    Ok(())
}

/// Writes the split into the store when it has no manifest yet.
async fn ensure_split(args: &RunArgs) -> Result<()> {
    let x = &args.exchange;
    let options = store_options(&x.s3);
    if let Ok(reader) = SplitReader::open_url(&x.store, &options).await {
        let m = reader.manifest();
        if m.peers != args.peers as usize || m.dataset != args.data.dataset {
            bail!(
                "{} already holds a split of {} for {} peers; use another --store for {} on {} peers",
                x.store,
                m.dataset,
                m.peers,
                args.data.dataset,
                args.peers
            );
        }
        return Ok(());
    }
    let kind = args.data.dataset;
    let dir = args.data.data_dir.as_deref();
    let mut train = load(kind, dir, Split::Train).context("loading the training set")?;
    if let Some(limit) = args.limit.map(|l| l as usize).filter(|&l| l < train.len()) {
        train = train.slice(0..limit)?;
    }
    let test = load(kind, dir, Split::Test).context("loading the test set")?;
    let config = SplitConfig {
        peers: args.peers as usize,
        partition: args.partition,
        seed: args.training.seed,
        batches_per_peer: args.batches.map(|k| k as usize),
        model: Some(args.training.model.name().to_string()),
        input_size: args.data.resize,
    };
    let store = open_store(&x.store, &options).await?;
    split(&train, &test, &config, store.as_ref())
        .await
        .with_context(|| format!("splitting {kind} into {}", x.store))?;
    tracing::info!("wrote a {}-peer split of {kind} to {}", args.peers, x.store);
    Ok(())
}

fn print_summary(summaries: &[NodeSummary]) {
    let rounds = summaries.iter().map(|s| s.rounds.len()).min().unwrap_or(0);
    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}  weights",
        "round", "compute", "max comp", "wait", "round", "MB sent", "offloaded", "loss", "test acc"
    );
    for r in 0..rounds {
        let ms: Vec<_> = summaries.iter().map(|s| &s.rounds[r]).collect();
        let mean = |f: fn(&crate::node::metrics::RoundMetrics) -> f64| {
            ms.iter().map(|m| f(m)).sum::<f64>() / ms.len() as f64
        };
        let max_compute = ms.iter().map(|m| m.compute_time_s).fold(0.0, f64::max);
        let hashes: BTreeSet<_> = ms.iter().map(|m| m.weights_hash.as_str()).collect();
        let offloaded: usize = ms.iter().map(|m| m.offloaded_batches).sum();
        let batches: usize = ms
            .iter()
            .map(|m| m.offloaded_batches + m.local_batches)
            .sum();
        println!(
            "{:>5} {:>9.2}s {:>9.2}s {:>9.2}s {:>9.2}s {:>10.2} {:>9} {:>9.4} {:>9} {}",
            r,
            mean(|m| m.compute_time_s),
            max_compute,
            mean(|m| m.receive_time_s),
            mean(|m| m.round_time_s),
            ms.iter().map(|m| m.bytes_sent).sum::<u64>() as f64 / 1e6,
            format!("{offloaded}/{batches}"),
            mean(|m| m.train_loss),
            ms[0]
                .test_accuracy
                .map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a)),
            if hashes.len() == 1 {
                "identical".to_string()
            } else {
                format!("DIFFER ({} distinct)", hashes.len())
            }
        );
    }
}
