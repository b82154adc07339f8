//! Peers on this machine: [`run_local`] runs N peers of one run, one thread each, over the
//! in-process transport or a real broker, writing the split into the store first when it
//! has none (`peerless run` and each architecture of `peerless study`).

use anyhow::{Context, Result, anyhow, bail};
use peerless_comm::{AmqpConfig, AmqpTransport, AnyTransport, InProcessHub, mask_password};
use peerless_data::{Split, SplitConfig, SplitReader, load, open_store, split};
use peerless_models::Device;

use crate::config::{LocalRunConfig, NodeConfig};
use crate::memory;
use crate::node::{Node, NodeSummary};

/// Connects a peer to the broker at `url`.
pub async fn connect(url: &str, config: &NodeConfig) -> Result<AnyTransport> {
    let mut amqp = AmqpConfig::new(url, config.run_id, config.rank, config.size);
    amqp.reconnect_timeout = config.exchange.reconnect_timeout;
    let transport = AmqpTransport::connect(&amqp)
        .await
        .with_context(|| format!("peer {}: connecting to {}", config.rank, mask_password(url)))?;
    Ok(AnyTransport::Amqp(Box::new(transport)))
}

/// Runs every peer of `run` to the end and returns their summaries by rank; fails naming
/// every peer that failed (each peer's metrics so far stay in `run.metrics_dir`).
pub fn run_local(run: &LocalRunConfig, device: &Device) -> Result<Vec<NodeSummary>> {
    let mut configs = run.node_configs()?;
    let over_broker = run.exchange.broker.is_some();
    let peers = run.peers as usize;
    let functions = peers * run.exchange.serverless.local_workers();
    memory::check_machine(run.training.model, peers, functions, over_broker).map_err(|e| {
        anyhow!(
            "{e}: run fewer peers (or fewer local functions, --function-concurrency) on this \
             machine, or use one with more memory"
        )
    })?;
    std::fs::create_dir_all(&run.metrics_dir)
        .with_context(|| format!("creating {}", run.metrics_dir.display()))?;
    if run.exchange.keys.is_none() && run.peers > 1 {
        // Local peers sign their messages too: keys of their own, next to their metrics.
        // Fresh ones each run: they only live as long as these threads.
        let dir = run.metrics_dir.join("keys");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the old keys in {}", dir.display()))?;
        }
        peerless_comm::auth::generate(&dir, run.peers)
            .with_context(|| format!("making keys in {}", dir.display()))?;
        for config in &mut configs {
            config.exchange.keys = Some(dir.clone());
        }
    }
    let n = run.peers;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(ensure_split(run))?;
    let broker = run.exchange.broker.as_deref();
    let mut transports: Vec<Option<AnyTransport>> = match broker {
        Some(_) => (0..n).map(|_| None).collect(),
        None => InProcessHub::new(n)
            .into_endpoints()
            .into_iter()
            .map(|t| Some(AnyTransport::from(t)))
            .collect(),
    };
    let results: Vec<Result<NodeSummary>> = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .zip(transports.iter_mut())
            .map(|(config, transport)| {
                let transport = transport.take();
                let device: Device = device.clone();
                scope.spawn(move || -> Result<NodeSummary> {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()?;
                    rt.block_on(async {
                        let node = Node::prepare(config, &device).await?;
                        let transport = match (transport, broker) {
                            (Some(t), _) => t,
                            (None, Some(url)) => connect(url, config).await?,
                            (None, None) => bail!("no transport for peer {}", config.rank),
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
            run.metrics_dir.display(),
            errors.join("\n  ")
        );
    }
    Ok(summaries)
}

/// Writes the split into the store when it has no manifest yet; refuses a store holding
/// the split of another dataset or peer count.
async fn ensure_split(run: &LocalRunConfig) -> Result<()> {
    let x = &run.exchange;
    let s = &run.split;
    if let Ok(reader) = SplitReader::open_url(&x.store, &x.store_options).await {
        let m = reader.manifest();
        if m.peers != run.peers as usize || m.dataset != s.dataset {
            bail!(
                "{} already holds a split of {} for {} peers; use another --store for {} on {} peers",
                x.store,
                m.dataset,
                m.peers,
                s.dataset,
                run.peers
            );
        }
        return Ok(());
    }
    let kind = s.dataset;
    let dir = s.data_dir.as_deref();
    let mut train = load(kind, dir, Split::Train).context("loading the training set")?;
    if let Some(limit) = s.limit.filter(|&l| l < train.len()) {
        train = train.slice(0..limit)?;
    }
    let test = load(kind, dir, Split::Test).context("loading the test set")?;
    let config = SplitConfig {
        peers: run.peers as usize,
        partition: s.partition,
        seed: run.training.seed,
        batches_per_peer: s.batches,
        model: Some(run.training.model.name().to_string()),
        input_size: run.resize.map(|r| r as u32),
    };
    let store = open_store(&x.store, &x.store_options).await?;
    split(&train, &test, &config, store.as_ref())
        .await
        .with_context(|| format!("splitting {kind} into {}", x.store))?;
    tracing::info!("wrote a {}-peer split of {kind} to {}", run.peers, x.store);
    Ok(())
}
