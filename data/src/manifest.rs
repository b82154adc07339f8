//! `manifest.json`: the record of one split (arguments, counts, every object key and its
//! checksum). It is written last, so its presence marks a complete split.

use serde::{Deserialize, Serialize};

use crate::dataset::{DatasetKind, ImageShape};
use crate::partition::Partition;

/// Key of the manifest inside a split's store.
pub const MANIFEST_KEY: &str = "manifest.json";
/// Value of [`Manifest::format`].
pub const MANIFEST_FORMAT: &str = "peerless-split";
/// Manifest version written by this code; newer ones are refused.
pub const MANIFEST_VERSION: u32 = 1;
/// Key of the test-set object.
pub const TEST_KEY: &str = "test.bin";

/// Key of peer `rank`'s training shard.
pub fn train_key(rank: usize) -> String {
    format!("peer-{rank}/train.bin")
}

/// Key of peer `rank`'s validation shard.
pub fn val_key(rank: usize) -> String {
    format!("peer-{rank}/val.bin")
}

/// Key of batch `batch` of peer `rank`.
pub fn batch_key(rank: usize, batch: usize) -> String {
    format!("peer-{rank}/batch-{batch:04}.bin")
}

/// One stored object as the manifest records it, so readers can verify what they fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// Key in the store.
    pub key: String,
    /// Number of images in the object.
    pub count: u64,
    /// Object length in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole object.
    pub crc32: u32,
}

/// Everything stored for one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// Peer rank, `0..peers`.
    pub rank: usize,
    /// The peer's training shard (90% of its samples).
    pub train: ObjectEntry,
    /// The peer's validation shard (the other 10%).
    pub val: ObjectEntry,
    /// The training shard cut into near-equal batches (empty without `--batches`).
    pub batches: Vec<ObjectEntry>,
    /// Number of training images per class, to inspect label skew.
    pub train_class_counts: Vec<u64>,
}

/// The description of a complete split, written as `manifest.json` after every object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`MANIFEST_VERSION`] at writing time.
    pub version: u32,
    /// Dataset split.
    pub dataset: DatasetKind,
    /// Shape of the stored images (original resolution).
    pub shape: ImageShape,
    /// Number of classes.
    pub num_classes: usize,
    /// Model the split was made for, if given.
    pub model: Option<String>,
    /// Model input size (images are stored unresized; peers resize on the fly).
    pub input_size: Option<u32>,
    /// Number of peers.
    pub peers: usize,
    /// How samples were assigned.
    pub partition: Partition,
    /// Seed of the assignment.
    pub seed: u64,
    /// Batches per peer, if batch objects were written.
    pub batches_per_peer: Option<usize>,
    /// Fraction of each peer's shard kept for validation.
    pub val_fraction: f64,
    /// Images in the source training set.
    pub train_samples: u64,
    /// Training images assigned to no peer (IID remainder).
    pub dropped_samples: u64,
    /// The test set, stored once.
    pub test: ObjectEntry,
    /// One entry per peer, in rank order.
    pub shards: Vec<PeerEntry>,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not a manifest's fields.
    #[error("invalid manifest: {0}")]
    Json(#[from] serde_json::Error),
    /// Some other format.
    #[error("not a peerless split manifest (format {found:?}, expected {MANIFEST_FORMAT:?})")]
    Format {
        /// Format string found.
        found: String,
    },
    /// Written by newer code.
    #[error(
        "manifest version {found} is newer than the supported {MANIFEST_VERSION}; upgrade peerless or re-run the split"
    )]
    Version {
        /// Version found.
        found: u64,
    },
}

impl Manifest {
    /// Every object the manifest references, test set first.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectEntry> {
        std::iter::once(&self.test).chain(
            self.shards
                .iter()
                .flat_map(|p| [&p.train, &p.val].into_iter().chain(&p.batches)),
        )
    }

    /// Pretty JSON with a trailing newline; identical manifests give identical bytes.
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parse and check format and version.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct Probe {
            format: Option<String>,
            version: Option<u64>,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        let format = probe.format.unwrap_or_default();
        if format != MANIFEST_FORMAT {
            return Err(ManifestError::Format { found: format });
        }
        let version = probe.version.unwrap_or(0);
        if version > u64::from(MANIFEST_VERSION) {
            return Err(ManifestError::Version { found: version });
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}
