//! `peerless data split`: shards (and batch objects) per peer in an object store.

use anyhow::{Context, Result};
use peerless_data::{Split, SplitConfig, load, open_store, split};

use crate::cli::SplitArgs;

pub fn run(args: SplitArgs) -> Result<()> {
    let kind = args.data.dataset;
    let dir = args.data.data_dir.as_deref();
    let train = load(kind, dir, Split::Train).context("loading the training set")?;
    let test = load(kind, dir, Split::Test).context("loading the test set")?;
    let input_size = args
        .data
        .resize
        .unwrap_or(args.model.default_input_size() as u32);
    let config = SplitConfig {
        peers: args.size as usize,
        partition: args.partition,
        seed: args.seed,
        batches_per_peer: args.batches.map(|k| k as usize),
        model: Some(args.model.name().to_string()),
        input_size: Some(input_size),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let manifest = runtime.block_on(async {
        let store = open_store(&args.to, &args.s3.store_options())
            .await
            .with_context(|| format!("opening store {}", args.to))?;
        split(&train, &test, &config, store.as_ref())
            .await
            .with_context(|| format!("splitting {kind} into {}", args.to))
    })?;
    println!(
        "wrote {} shards of {} ({} train / {} validation images per peer{}) and the test set to {}",
        manifest.peers,
        manifest.dataset,
        manifest.shards.first().map_or(0, |s| s.train.count),
        manifest.shards.first().map_or(0, |s| s.val.count),
        manifest
            .batches_per_peer
            .map(|k| format!(", {k} batch objects each"))
            .unwrap_or_default(),
        args.to
    );
    Ok(())
}
