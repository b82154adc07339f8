//! A run's identity: the training settings every peer must share. Peers compare it when
//! they start (a mismatch is refused naming the fields), and its digest guards
//! checkpoints, so a changed configuration never resumes from another's state. The run
//! id is not part of it: it names a run and never changes its numbers.

use peerless_comm::Identity;
use peerless_data::Manifest;
use sha2::{Digest, Sha256};

use crate::config::NodeConfig;

/// The named settings that decide a run's numbers.
pub fn run_identity(config: &NodeConfig, manifest: &Manifest) -> Identity {
    let t = &config.training;
    let x = &config.exchange;
    let fields: [(&str, String); 24] = [
        ("model", t.model.name().to_string()),
        ("seed", t.seed.to_string()),
        ("optimizer", t.optimizer.name().to_string()),
        ("loss", format!("{:?}", t.loss)),
        ("lr", t.lr.to_string()),
        ("momentum", format!("{:?}", t.momentum)),
        ("weight_decay", format!("{:?}", t.weight_decay)),
        ("batch_size", t.batch_size.to_string()),
        ("epochs", t.epochs.to_string()),
        ("patience", t.patience.to_string()),
        (
            "plateau",
            format!(
                "{}x{} min {}",
                t.plateau_patience, t.plateau_factor, t.min_lr
            ),
        ),
        ("rounds_per_epoch", x.rounds_per_epoch.to_string()),
        ("codec", x.codec.to_string()),
        ("aggregation", x.aggregation.to_string()),
        ("clip_norm", format!("{:?}", x.clip_norm)),
        ("exchange", x.exchange.to_string()),
        ("world_size", config.size.to_string()),
        ("evaluation", x.evaluation.to_string()),
        ("eval_limit", format!("{:?}", x.eval_limit)),
        ("input_size", format!("{:?}", config.resize)),
        ("dataset", manifest.dataset.to_string()),
        (
            "split",
            format!(
                "{} peers, {:?}, seed {}, {} samples",
                manifest.peers, manifest.partition, manifest.seed, manifest.train_samples
            ),
        ),
        (
            "batches_per_peer",
            format!("{:?}", manifest.batches_per_peer),
        ),
        ("val_fraction", manifest.val_fraction.to_string()),
    ];
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// A digest of the identity, stored in checkpoints.
pub fn fingerprint(identity: &Identity) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in identity {
        hasher.update(k.as_bytes());
        hasher.update([0]);
        hasher.update(v.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}
