//! `peerless peer`: one peer of a run, exchanging over RabbitMQ (or alone, in-process).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use peerless_comm::{
    AmqpConfig, AmqpTransport, AnyTransport, InProcessHub, OnTimeout, RunId, mask_password,
};
use peerless_models::{DeviceChoice, select_device};

use crate::cli::{ExchangeArgs, PeerArgs, TrainingArgs};
use crate::cmd::split::store_options;
use crate::node::{Capability, Node, NodeConfig};

/// The node configuration for `rank` of `size` from the shared flags.
pub fn node_config(
    rank: u32,
    size: u32,
    run_id: RunId,
    training: &TrainingArgs,
    exchange: &ExchangeArgs,
    resize: Option<u32>,
    capability: Capability,
) -> Result<NodeConfig> {
    if capability.threads == Some(0) {
        bail!("peer {rank} has 0 threads; give at least 1");
    }
    let speed = capability.speed;
    if !(speed > 0.0 && speed <= 1.0) {
        bail!("the speed of peer {rank} is {speed}; it must be in (0, 1]");
    }
    if rank >= size {
        bail!("--rank {rank} must be below --size {size}");
    }
    if !(exchange.round_timeout > 0.0 && exchange.round_timeout.is_finite()) {
        bail!("--round-timeout must be a positive number of seconds");
    }
    crate::node::check_serverless_flags(&exchange.serverless, &exchange.store)?;
    Ok(NodeConfig {
        rank,
        size,
        run_id,
        store: exchange.store.clone(),
        store_options: store_options(&exchange.s3),
        training: training.clone(),
        resize: resize.map(|r| r as usize),
        evaluation: exchange.evaluation,
        eval_limit: exchange.eval_limit,
        codec: exchange.compression,
        rounds_per_epoch: exchange.rounds_per_epoch as usize,
        round_timeout: Duration::from_secs_f64(exchange.round_timeout),
        on_timeout: match exchange.on_timeout.as_str() {
            "partial" => OnTimeout::AverageArrived,
            _ => OnTimeout::Fail,
        },
        max_chunk_bytes: exchange.chunk_mib as usize * (1 << 20),
        metrics_out: training.metrics_out.clone(),
        serverless: exchange.serverless.clone(),
        capability,
    })
}

/// Connects this peer to the broker.
pub async fn connect(url: &str, config: &NodeConfig) -> Result<AnyTransport> {
    let amqp = AmqpConfig::new(url, config.run_id, config.rank, config.size);
    let transport = AmqpTransport::connect(&amqp)
        .await
        .with_context(|| format!("peer {}: connecting to {}", config.rank, mask_password(url)))?;
    Ok(AnyTransport::Amqp(Box::new(transport)))
}

pub fn run(args: PeerArgs, device: DeviceChoice) -> Result<()> {
    let device = select_device(device)?;
    let x = &args.exchange;
    let run_id = match (&x.run_id, args.size) {
        (Some(name), _) => RunId::from_name(name),
        (None, 1) => RunId::random(),
        (None, _) => bail!(
            "a run of {} peers needs --run-id NAME, the same on every peer and new for each run \
             (for example --run-id \"$(date +%s)\")",
            args.size
        ),
    };
    let config = node_config(
        args.rank,
        args.size,
        run_id,
        &args.training,
        x,
        args.resize,
        Capability {
            speed: args.speed,
            threads: args.threads,
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if let Some(expected) = args.dataset {
            check_dataset(&config, expected).await?;
        }
        let node = Node::prepare(&config, &device).await?;
        let transport = match &x.broker {
            Some(url) => connect(url, &config).await?,
            None if args.size == 1 => AnyTransport::from(
                InProcessHub::new(1)
                    .take(0)
                    .expect("rank 0 of a hub of one"),
            ),
            None => bail!(
                "a run of {} peers needs --broker amqp://USER:PASSWORD@HOST:5672/%2f \
                 (or use `peerless run --peers {}` for peers in one process)",
                args.size,
                args.size
            ),
        };
        let summary = node.run(transport).await?;
        if let Some(last) = summary.rounds.last() {
            println!(
                "peer {}: {} rounds, final train loss {:.4}, weights {}",
                summary.rank,
                summary.rounds.len(),
                last.train_loss,
                last.weights_hash
            );
        }
        Ok(())
    })
}

async fn check_dataset(config: &NodeConfig, expected: peerless_data::DatasetKind) -> Result<()> {
    let reader = peerless_data::SplitReader::open_url(&config.store, &config.store_options).await?;
    let found = reader.manifest().dataset;
    if found != expected {
        bail!(
            "--dataset {expected} but the split in {} holds {found}",
            config.store
        );
    }
    Ok(())
}
