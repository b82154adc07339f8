//! `peerless peer`: one peer of a run, exchanging over RabbitMQ (or alone, in-process).

use anyhow::{Context, Result, bail};
use peerless_comm::{AnyTransport, InProcessHub, RunId};
use peerless_models::{DeviceChoice, select_device};
use peerless_runtime::rank::{RankChoice, claim_rank, claimant};
use peerless_runtime::{Capability, Node, NodeConfig, connect};

use crate::cli::PeerArgs;

/// The run's id from the flags.
fn run_id(args: &PeerArgs) -> Result<RunId> {
    Ok(match (&args.exchange.run_id, args.size) {
        (Some(name), _) => RunId::from_name(name),
        (None, 1) => RunId::random(),
        (None, _) => bail!(
            "a run of {} peers needs --run-id NAME, the same on every peer and new for each run \
             (for example --run-id \"$(date +%s)\")",
            args.size
        ),
    })
}

/// Claims the lowest free rank of the run in the run's store (`--rank auto`).
async fn claim(config: &NodeConfig) -> Result<u32> {
    let x = &config.exchange;
    let store = peerless_data::open_store(&x.store, &x.store_options)
        .await
        .with_context(|| format!("opening {} to claim a rank", x.store))?;
    Ok(claim_rank(store.as_ref(), config.run_id, config.size, &claimant()).await?)
}

/// The peer's configuration from its flags.
fn node_config(args: &PeerArgs, run_id: RunId, rank: u32) -> Result<NodeConfig> {
    let x = &args.exchange;
    let mut config = NodeConfig::new(
        rank,
        args.size,
        run_id,
        args.training.to_config(),
        x.to_config()?,
    )?
    .with_capability(Capability {
        speed: args.speed,
        threads: args.threads,
    })?;
    config.resize = args.resize.map(|r| r as usize);
    config.metrics_out = args.training.metrics_out.clone();
    config.attack = args.attack;
    Ok(config)
}

pub fn run(args: PeerArgs, device: DeviceChoice) -> Result<()> {
    let run_id = run_id(&args)?;
    // Built and validated before a rank is claimed, so a bad flag claims nothing.
    let fixed = match args.rank {
        RankChoice::Fixed(rank) => rank,
        RankChoice::Auto => 0,
    };
    let mut config = node_config(&args, run_id, fixed)?;
    let device = select_device(device)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if args.rank == RankChoice::Auto {
            // Below `size` by construction, so the validated configuration stays valid.
            config.rank = claim(&config).await?;
        }
        if let Some(expected) = args.dataset {
            check_dataset(&config, expected).await?;
        }
        let node = Node::prepare(&config, &device).await?;
        let transport = match &config.exchange.broker {
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
    let x = &config.exchange;
    let reader = peerless_data::SplitReader::open_url(&x.store, &x.store_options).await?;
    let found = reader.manifest().dataset;
    if found != expected {
        bail!(
            "--dataset {expected} but the split in {} holds {found}",
            x.store
        );
    }
    Ok(())
}
