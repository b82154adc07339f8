//! Writing a dataset split to an object store (per-peer train/validation shards, optional
//! per-peer batches, the test set, then the manifest) and reading it back with verification.
//!
//! Objects are first written under a staging prefix; only when all of them are stored are
//! they moved to their final keys and the manifest written. A failure before that removes
//! the staged objects and leaves no manifest, so no partial split is ever visible.

use std::sync::Arc;

use bytes::Bytes;

use crate::dataset::{Dataset, IndexOutOfRange};
use crate::manifest::{
    MANIFEST_FORMAT, MANIFEST_KEY, MANIFEST_VERSION, Manifest, ManifestError, ObjectEntry,
    PeerEntry, TEST_KEY, batch_key, train_key, val_key,
};
use crate::partition::{MIN_SHARD, Partition, PartitionError, train_count, train_val_split};
use crate::shard::{self, ShardError};
use crate::store::{ObjectStore, StoreError, StoreOptions, open_store};

/// Arguments of a split besides the data and the store.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitConfig {
    /// Number of peers (`--size`), at least 1.
    pub peers: usize,
    /// How to assign training samples to peers.
    pub partition: Partition,
    /// Seed of the assignment.
    pub seed: u64,
    /// Also store each peer's training shard cut into this many near-equal batches.
    pub batches_per_peer: Option<usize>,
    /// Model name, recorded in the manifest only.
    pub model: Option<String>,
    /// Model input size, recorded in the manifest only.
    pub input_size: Option<u32>,
}

impl SplitConfig {
    /// IID split for `peers` peers with the original seed and no batch objects.
    pub fn new(peers: usize) -> Self {
        Self {
            peers,
            partition: Partition::Iid,
            seed: crate::partition::DEFAULT_SEED,
            batches_per_peer: None,
            model: None,
            input_size: None,
        }
    }
}

/// Why a split could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// `--size 0`.
    #[error("cannot split for 0 peers: the number of peers (--size) must be at least 1")]
    NoPeers,
    /// `--batches 0`.
    #[error("the number of batches per peer must be at least 1")]
    NoBatches,
    /// More batches than training samples in some peer's shard.
    #[error(
        "{batches} batches per peer requested but peer {rank}'s training part holds only {train} samples; use at most {train} batches or fewer peers"
    )]
    TooManyBatches {
        /// Requested batches.
        batches: usize,
        /// Smallest peer.
        rank: usize,
        /// Its training samples.
        train: usize,
    },
    /// The training and test sets differ in kind, shape or classes.
    #[error("train and test sets do not match: {0}")]
    Mismatch(String),
    /// Too few samples, bad alpha, ...
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// The store failed (the error names the URL and key).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest is unreadable.
    #[error("manifest {url}/{MANIFEST_KEY}: {source}")]
    Manifest {
        /// Store URL.
        url: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// There is no manifest: no complete split at that URL.
    #[error("no split at {url}: {MANIFEST_KEY} not found (run the split first, or check the URL)")]
    NoManifest {
        /// Store URL.
        url: String,
    },
    /// A stored object does not match the manifest (wrong size or checksum, or contents).
    #[error("object {key:?} in {url} does not match the manifest: {reason}")]
    Corrupt {
        /// Store URL.
        url: String,
        /// Object key.
        key: String,
        /// What differs.
        reason: String,
    },
    /// A stored object is not a valid shard.
    #[error("object {key:?} in {url}: {source}")]
    Shard {
        /// Store URL.
        url: String,
        /// Object key.
        key: String,
        /// What is wrong.
        source: ShardError,
    },
    /// A rank outside `0..peers`.
    #[error("peer {rank} does not exist: the split has {peers} peers")]
    NoSuchPeer {
        /// Requested rank.
        rank: usize,
        /// Number of peers.
        peers: usize,
    },
    /// A batch number outside the stored batches.
    #[error(
        "batch {batch} of peer {rank} does not exist: the split stores {batches} batches per peer"
    )]
    NoSuchBatch {
        /// Rank.
        rank: usize,
        /// Requested batch.
        batch: usize,
        /// Stored batches per peer.
        batches: usize,
    },
    /// Internal indexing error (should not happen with valid partitions).
    #[error(transparent)]
    Index(#[from] IndexOutOfRange),
}

/// How a training part of `n` samples is cut into `k` near-equal contiguous batches (the
/// first `n % k` one sample longer): the layout of the batch objects, which peers computing
/// locally reproduce so both architectures see the same batches.
pub fn batch_ranges(n: usize, k: usize) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    (0..k)
        .map(|b| {
            let len = n / k + usize::from(b < n % k);
            start += len;
            start - len..start
        })
        .collect()
}

/// Smallest shard whose training part holds `batches` samples and whose validation part
/// is non-empty.
fn min_shard_for(batches: usize) -> usize {
    (MIN_SHARD..)
        .find(|&n| train_count(n) >= batches)
        .unwrap_or(usize::MAX)
}

fn check_inputs(train: &Dataset, test: &Dataset, config: &SplitConfig) -> Result<(), SplitError> {
    if config.peers == 0 {
        return Err(SplitError::NoPeers);
    }
    if config.batches_per_peer == Some(0) {
        return Err(SplitError::NoBatches);
    }
    if train.kind() != test.kind() {
        return Err(SplitError::Mismatch(format!(
            "train is {}, test is {}",
            train.kind(),
            test.kind()
        )));
    }
    if train.shape() != test.shape() || train.num_classes() != test.num_classes() {
        return Err(SplitError::Mismatch(format!(
            "train images are {} with {} classes, test images {} with {} classes",
            train.shape(),
            train.num_classes(),
            test.shape(),
            test.num_classes()
        )));
    }
    if let (Partition::Iid, Some(k)) = (config.partition, config.batches_per_peer) {
        let per = train.len() / config.peers;
        if per >= MIN_SHARD && train_count(per) < k {
            return Err(SplitError::TooManyBatches {
                batches: k,
                rank: 0,
                train: train_count(per),
            });
        }
    }
    Ok(())
}

/// A unique staging prefix for one run.
fn staging_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(".staging-{}-{nanos:x}", std::process::id())
}

/// Objects written under the staging prefix so far, and their final keys.
struct Staged<'a> {
    store: &'a dyn ObjectStore,
    prefix: String,
    moves: Vec<(String, String)>,
}

impl Staged<'_> {
    async fn put(&mut self, key: String, dataset: &Dataset) -> Result<ObjectEntry, SplitError> {
        let bytes = shard::encode(dataset);
        let entry = ObjectEntry {
            key: key.clone(),
            count: dataset.len() as u64,
            bytes: bytes.len() as u64,
            crc32: shard::crc32(&bytes),
        };
        let staged = format!("{}/{key}", self.prefix);
        self.store.put(&staged, Bytes::from(bytes)).await?;
        self.moves.push((staged, key));
        Ok(entry)
    }

    /// Best-effort removal of everything still staged.
    async fn discard(&self) {
        for (staged, _) in &self.moves {
            if let Err(e) = self.store.delete(staged).await {
                tracing::warn!(error = %e, "could not remove staged object");
            }
        }
    }
}

/// Write a split of `train` (per peer) and `test` (once) to `store`, then its manifest.
///
/// All arguments are checked before anything is written; on any failure the staged objects
/// are removed and no manifest is written. Re-running with the same arguments writes the
/// same bytes. Objects of a previous split at the same place that the new manifest does not
/// reference are removed.
pub async fn split(
    train: &Dataset,
    test: &Dataset,
    config: &SplitConfig,
    store: &dyn ObjectStore,
) -> Result<Manifest, SplitError> {
    check_inputs(train, test, config)?;
    let min = min_shard_for(config.batches_per_peer.unwrap_or(1));
    let shards = config
        .partition
        .assign(train.labels(), config.peers, config.seed, min)?;

    let mut staged = Staged {
        store,
        prefix: staging_prefix(),
        moves: Vec::new(),
    };
    let result = write_objects(train, test, config, &shards, &mut staged).await;
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            staged.discard().await;
            return Err(e);
        }
    };
    match commit(&manifest, &mut staged).await {
        Ok(()) => Ok(manifest),
        Err(e) => {
            staged.discard().await;
            Err(e)
        }
    }
}

async fn write_objects(
    train: &Dataset,
    test: &Dataset,
    config: &SplitConfig,
    shards: &[Vec<usize>],
    staged: &mut Staged<'_>,
) -> Result<Manifest, SplitError> {
    let test_entry = staged.put(TEST_KEY.to_owned(), test).await?;
    let mut peers = Vec::with_capacity(shards.len());
    for (rank, shard) in shards.iter().enumerate() {
        let (train_idx, val_idx) = train_val_split(shard);
        let train_part = train.subset(train_idx)?;
        let val_part = train.subset(val_idx)?;
        let train_entry = staged.put(train_key(rank), &train_part).await?;
        let val_entry = staged.put(val_key(rank), &val_part).await?;
        let mut batches = Vec::new();
        if let Some(k) = config.batches_per_peer {
            for (b, range) in batch_ranges(train_part.len(), k).into_iter().enumerate() {
                let batch = train_part.slice(range)?;
                batches.push(staged.put(batch_key(rank, b), &batch).await?);
            }
        }
        peers.push(PeerEntry {
            rank,
            train: train_entry,
            val: val_entry,
            batches,
            train_class_counts: train_part.class_counts(),
        });
    }
    let assigned: usize = shards.iter().map(Vec::len).sum();
    Ok(Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        version: MANIFEST_VERSION,
        dataset: train.kind(),
        shape: train.shape(),
        num_classes: train.num_classes(),
        model: config.model.clone(),
        input_size: config.input_size,
        peers: config.peers,
        partition: config.partition,
        seed: config.seed,
        batches_per_peer: config.batches_per_peer,
        val_fraction: 0.1,
        train_samples: train.len() as u64,
        dropped_samples: (train.len() - assigned) as u64,
        test: test_entry,
        shards: peers,
    })
}

/// Move staged objects to their keys, drop objects only the previous manifest referenced,
/// then write the manifest.
async fn commit(manifest: &Manifest, staged: &mut Staged<'_>) -> Result<(), SplitError> {
    let store = staged.store;
    let bytes = manifest.to_json().map_err(|source| SplitError::Manifest {
        url: store.url().to_owned(),
        source,
    })?;
    let previous = match store.get(MANIFEST_KEY).await {
        Ok(old) => Some(old),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let unchanged = previous.as_deref() == Some(bytes.as_slice());
    if previous.is_some() && !unchanged {
        // The old manifest must not describe objects that are about to change.
        store.delete(MANIFEST_KEY).await?;
    }
    while let Some((from, to)) = staged.moves.last().cloned() {
        store.rename(&from, &to).await?;
        staged.moves.pop();
    }
    if let Some(old) = previous.filter(|_| !unchanged)
        && let Ok(old) = Manifest::from_json(&old)
    {
        let keep: std::collections::HashSet<&str> =
            manifest.objects().map(|o| o.key.as_str()).collect();
        for o in old.objects().filter(|o| !keep.contains(o.key.as_str())) {
            store.delete(&o.key).await?;
        }
    }
    store.put(MANIFEST_KEY, Bytes::from(bytes)).await?;
    tracing::info!(url = store.url(), peers = manifest.peers, "split written");
    Ok(())
}

/// Reads a split back: the manifest once, then any peer's shards, batches or the test
/// set, each verified against the manifest's size and checksum.
#[derive(Debug, Clone)]
pub struct SplitReader {
    store: Arc<dyn ObjectStore>,
    manifest: Manifest,
}

impl SplitReader {
    /// Load the manifest from `store`.
    pub async fn open(store: Arc<dyn ObjectStore>) -> Result<Self, SplitError> {
        let bytes = match store.get(MANIFEST_KEY).await {
            Ok(b) => b,
            Err(StoreError::NotFound { url, .. }) => return Err(SplitError::NoManifest { url }),
            Err(e) => return Err(e.into()),
        };
        let manifest = Manifest::from_json(&bytes).map_err(|source| SplitError::Manifest {
            url: store.url().to_owned(),
            source,
        })?;
        Ok(Self { store, manifest })
    }

    /// Open the store at `url` and load its manifest.
    pub async fn open_url(url: &str, options: &StoreOptions) -> Result<Self, SplitError> {
        Self::open(open_store(url, options).await?).await
    }

    /// The split's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The store objects are read from.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn peer(&self, rank: usize) -> Result<&PeerEntry, SplitError> {
        self.manifest
            .shards
            .get(rank)
            .ok_or(SplitError::NoSuchPeer {
                rank,
                peers: self.manifest.peers,
            })
    }

    /// Peer `rank`'s training shard.
    pub async fn train(&self, rank: usize) -> Result<Dataset, SplitError> {
        let entry = self.peer(rank)?.train.clone();
        self.fetch(&entry).await
    }

    /// Peer `rank`'s validation shard.
    pub async fn val(&self, rank: usize) -> Result<Dataset, SplitError> {
        let entry = self.peer(rank)?.val.clone();
        self.fetch(&entry).await
    }

    /// Batch `batch` of peer `rank`.
    pub async fn batch(&self, rank: usize, batch: usize) -> Result<Dataset, SplitError> {
        let peer = self.peer(rank)?;
        let entry = peer
            .batches
            .get(batch)
            .ok_or(SplitError::NoSuchBatch {
                rank,
                batch,
                batches: peer.batches.len(),
            })?
            .clone();
        self.fetch(&entry).await
    }

    /// The test set.
    pub async fn test(&self) -> Result<Dataset, SplitError> {
        let entry = self.manifest.test.clone();
        self.fetch(&entry).await
    }

    /// Fetch one object and verify it against its manifest entry.
    pub async fn fetch(&self, entry: &ObjectEntry) -> Result<Dataset, SplitError> {
        let url = self.store.url().to_owned();
        let corrupt = |reason: String| SplitError::Corrupt {
            url: url.clone(),
            key: entry.key.clone(),
            reason,
        };
        let bytes = self.store.get(&entry.key).await?;
        if bytes.len() as u64 != entry.bytes {
            return Err(corrupt(format!(
                "{} bytes, the manifest says {}",
                bytes.len(),
                entry.bytes
            )));
        }
        let crc = shard::crc32(&bytes);
        if crc != entry.crc32 {
            return Err(corrupt(format!(
                "CRC-32 {crc:#010x}, the manifest says {:#010x}",
                entry.crc32
            )));
        }
        let data = shard::decode(&bytes).map_err(|source| SplitError::Shard {
            url: url.clone(),
            key: entry.key.clone(),
            source,
        })?;
        let m = &self.manifest;
        if data.len() as u64 != entry.count
            || data.kind() != m.dataset
            || data.shape() != m.shape
            || data.num_classes() != m.num_classes
        {
            return Err(corrupt(format!(
                "holds {} {} images of {} with {} classes; the manifest says {} {} images of {} with {} classes",
                data.len(),
                data.kind(),
                data.shape(),
                data.num_classes(),
                entry.count,
                m.dataset,
                m.shape,
                m.num_classes
            )));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_shard_covers_batches_and_validation() {
        assert_eq!(min_shard_for(1), 2);
        assert_eq!(min_shard_for(9), 10);
        assert_eq!(min_shard_for(10), 12);
        for k in 1..200 {
            let n = min_shard_for(k);
            assert!(train_count(n) >= k && n - train_count(n) >= 1);
            assert!(train_count(n - 1) < k || n - 1 < MIN_SHARD);
        }
    }
}
