//! Splitting to a local directory: layout, contents, idempotency, failures that leave
//! nothing behind, and verification on read.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use common::{expected_keys, small_data, snapshot};
use peerless_data::manifest::MANIFEST_KEY;
use peerless_data::store::LocalStore;
use peerless_data::{
    ObjectStore, Partition, SplitConfig, SplitError, SplitReader, StoreError, StoreOptions,
    open_store, split,
};

fn config(peers: usize, batches: Option<usize>) -> SplitConfig {
    SplitConfig {
        batches_per_peer: batches,
        model: Some("squeezenet1_1".into()),
        input_size: Some(21),
        ..SplitConfig::new(peers)
    }
}

#[tokio::test]
async fn layout_contents_and_reader() {
    let (train, test) = small_data(230, 40);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("split").display());
    let store = open_store(&url, &StoreOptions::default()).await.unwrap();
    let manifest = split(&train, &test, &config(3, Some(4)), store.as_ref())
        .await
        .unwrap();

    assert_eq!(store.list("").await.unwrap(), expected_keys(3, 4));
    assert_eq!(manifest.peers, 3);
    assert_eq!(manifest.dropped_samples, 2);
    assert_eq!(manifest.input_size, Some(21));
    assert_eq!(manifest.partition, Partition::Iid);
    assert_eq!(manifest.seed, 1234);

    let reader = SplitReader::open_url(&url, &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(reader.manifest(), &manifest);
    assert_eq!(reader.test().await.unwrap(), test);

    // 230 / 3 = 76 per peer (2 dropped) -> 68 train (floor 0.9 * 76) + 8 validation; 4 batches of 17.
    let mut seen = HashSet::new();
    for rank in 0..3 {
        let t = reader.train(rank).await.unwrap();
        let v = reader.val(rank).await.unwrap();
        assert_eq!((t.len(), v.len()), (68, 8));
        assert_eq!(
            manifest.shards[rank].train_class_counts,
            t.class_counts(),
            "rank {rank}"
        );
        let mut joined = Vec::new();
        let mut labels = Vec::new();
        for b in 0..4 {
            let batch = reader.batch(rank, b).await.unwrap();
            assert_eq!(batch.len(), 17);
            joined.extend_from_slice(batch.pixels());
            labels.extend_from_slice(batch.labels());
        }
        assert_eq!(joined, t.pixels());
        assert_eq!(labels, t.labels());
        for d in [&t, &v] {
            for i in 0..d.len() {
                assert!(seen.insert(d.image(i).unwrap().to_vec()), "image repeated");
            }
        }
    }
    assert_eq!(seen.len(), 228);
    // Every stored image is one of the training images.
    let source: HashSet<Vec<u8>> = (0..train.len())
        .map(|i| train.image(i).unwrap().to_vec())
        .collect();
    assert!(seen.is_subset(&source));

    assert!(matches!(
        reader.batch(0, 4).await,
        Err(SplitError::NoSuchBatch { batches: 4, .. })
    ));
    assert!(matches!(
        reader.train(3).await,
        Err(SplitError::NoSuchPeer { peers: 3, .. })
    ));
}

#[tokio::test]
async fn batches_are_near_equal() {
    let (train, test) = small_data(100, 10);
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path()).unwrap();
    // 100 / 2 = 50 per peer -> 45 train, in 7 batches: 3 of 7 and 4 of 6.
    let m = split(&train, &test, &config(2, Some(7)), &store)
        .await
        .unwrap();
    let sizes: Vec<u64> = m.shards[0].batches.iter().map(|b| b.count).collect();
    assert_eq!(sizes, vec![7, 7, 7, 6, 6, 6, 6]);
}

#[tokio::test]
async fn rerun_is_byte_identical_and_replaces_stale_objects() {
    let (train, test) = small_data(200, 20);
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path()).unwrap();
    split(&train, &test, &config(3, Some(2)), &store)
        .await
        .unwrap();
    let first = snapshot(&store).await;
    split(&train, &test, &config(3, Some(2)), &store)
        .await
        .unwrap();
    assert_eq!(snapshot(&store).await, first);

    // Fewer peers, no batches: peer-2 and the batch objects disappear.
    let m = split(&train, &test, &config(2, None), &store)
        .await
        .unwrap();
    assert_eq!(store.list("").await.unwrap(), expected_keys(2, 0));
    assert_eq!(m.objects().count(), 5);
    // A different seed changes the shards.
    let cfg = SplitConfig {
        seed: 7,
        ..config(2, None)
    };
    split(&train, &test, &cfg, &store).await.unwrap();
    let after = snapshot(&store).await;
    assert_ne!(after["peer-0/train.bin"], first["peer-0/train.bin"]);
    assert_eq!(after["test.bin"], first["test.bin"]);
}

#[tokio::test]
async fn dirichlet_split_is_recorded() {
    let (train, test) = small_data(300, 20);
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path()).unwrap();
    let cfg = SplitConfig {
        partition: "dirichlet:0.3".parse().unwrap(),
        ..config(3, Some(2))
    };
    let m = split(&train, &test, &cfg, &store).await.unwrap();
    assert_eq!(m.dropped_samples, 0);
    let total: u64 = m.shards.iter().map(|p| p.train.count + p.val.count).sum();
    assert_eq!(total, 300);
    let json = String::from_utf8(store.get(MANIFEST_KEY).await.unwrap().to_vec()).unwrap();
    assert!(json.contains("\"partition\": \"dirichlet:0.3\""), "{json}");
}

/// Files under a directory, recursively (including hidden staging files).
fn all_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn invalid_arguments_write_nothing() {
    let (train, test) = small_data(100, 10);
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path()).unwrap();

    let err = split(&train, &test, &config(0, None), &store)
        .await
        .unwrap_err();
    assert!(matches!(err, SplitError::NoPeers), "{err}");
    assert!(err.to_string().contains("--size"), "{err}");

    // 50 per peer -> 45 train samples: 46 batches cannot be made.
    let err = split(&train, &test, &config(2, Some(46)), &store)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SplitError::TooManyBatches {
                batches: 46,
                train: 45,
                ..
            }
        ),
        "{err}"
    );
    split(
        &train,
        &test,
        &config(2, Some(45)),
        &LocalStore::new(dir.path().join("ok")).unwrap(),
    )
    .await
    .unwrap();

    let err = split(&train, &test, &config(2, Some(0)), &store)
        .await
        .unwrap_err();
    assert!(matches!(err, SplitError::NoBatches), "{err}");

    let err = split(&train, &test, &config(60, None), &store)
        .await
        .unwrap_err();
    assert!(matches!(err, SplitError::Partition(_)), "{err}");

    let other = peerless_data::formats::synthetic::SyntheticConfig {
        count: 10,
        channels: 3,
        ..Default::default()
    }
    .generate()
    .unwrap();
    let err = split(&train, &other, &config(2, None), &store)
        .await
        .unwrap_err();
    assert!(matches!(err, SplitError::Mismatch(_)), "{err}");

    assert!(
        all_files(dir.path())
            .iter()
            .all(|p| p.starts_with(dir.path().join("ok"))),
        "files written by failed splits: {:?}",
        all_files(dir.path())
    );
}

#[tokio::test]
async fn unwritable_target_fails_with_url_and_cause() {
    let (train, test) = small_data(100, 10);
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let store = LocalStore::new(blocker.join("split")).unwrap();
    let err = split(&train, &test, &config(2, None), &store)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SplitError::Store(_)), "{msg}");
    assert!(msg.contains("a-file/split"), "{msg}");
    assert_eq!(all_files(dir.path()), vec![blocker]);
}

/// A store that fails the `fail_at`-th put.
#[derive(Debug)]
struct FailingStore {
    inner: LocalStore,
    puts: AtomicUsize,
    fail_at: usize,
}

#[async_trait]
impl ObjectStore for FailingStore {
    fn url(&self) -> &str {
        self.inner.url()
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        if self.puts.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(StoreError::Remote {
                url: self.url().to_owned(),
                key: key.to_owned(),
                op: "put",
                message: "injected failure".to_owned(),
            });
        }
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.inner.put_if_absent(key, data).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.exists(key).await
    }
}

#[tokio::test]
async fn failure_midway_cleans_staged_objects_and_keeps_old_split() {
    let (train, test) = small_data(100, 10);
    let dir = tempfile::tempdir().unwrap();

    // Fresh target: nothing at all remains.
    let store = FailingStore {
        inner: LocalStore::new(dir.path().join("fresh")).unwrap(),
        puts: AtomicUsize::new(0),
        fail_at: 4,
    };
    let err = split(&train, &test, &config(2, Some(2)), &store)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(all_files(&dir.path().join("fresh")).is_empty());

    // Existing split: a failed re-run with other arguments leaves it intact and readable.
    let inner = LocalStore::new(dir.path().join("old")).unwrap();
    split(&train, &test, &config(2, None), &inner)
        .await
        .unwrap();
    let before = snapshot(&inner).await;
    let store = FailingStore {
        inner,
        puts: AtomicUsize::new(0),
        fail_at: 3,
    };
    split(&train, &test, &config(3, None), &store)
        .await
        .unwrap_err();
    assert_eq!(snapshot(&store.inner).await, before);
    assert_eq!(all_files(&dir.path().join("old")).len(), before.len());
    let reader = SplitReader::open(Arc::new(store.inner.clone()))
        .await
        .unwrap();
    reader.train(1).await.unwrap();
}

#[tokio::test]
async fn reader_detects_corruption_and_missing_split() {
    let (train, test) = small_data(100, 10);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::new(dir.path()).unwrap());
    split(&train, &test, &config(2, None), store.as_ref())
        .await
        .unwrap();

    let path = dir.path().join("peer-1/train.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let reader = SplitReader::open(store.clone()).await.unwrap();
    let err = reader.train(1).await.unwrap_err();
    assert!(matches!(err, SplitError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("peer-1/train.bin"), "{err}");
    reader.train(0).await.unwrap();

    std::fs::write(&path, &bytes[..100]).unwrap();
    let err = reader.train(1).await.unwrap_err();
    assert!(
        err.to_string().contains("bytes, the manifest says"),
        "{err}"
    );

    std::fs::remove_file(dir.path().join("peer-0/val.bin")).unwrap();
    let err = reader.val(0).await.unwrap_err();
    assert!(
        matches!(err, SplitError::Store(StoreError::NotFound { .. })),
        "{err}"
    );

    std::fs::write(dir.path().join(MANIFEST_KEY), b"{\"format\":\"other\"}").unwrap();
    let err = SplitReader::open(store.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains("not a peerless split manifest"),
        "{err}"
    );

    std::fs::write(
        dir.path().join(MANIFEST_KEY),
        b"{\"format\":\"peerless-split\",\"version\":99}",
    )
    .unwrap();
    let err = SplitReader::open(store.clone()).await.unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");

    std::fs::remove_file(dir.path().join(MANIFEST_KEY)).unwrap();
    let err = SplitReader::open(store).await.unwrap_err();
    assert!(matches!(err, SplitError::NoManifest { .. }), "{err}");
    assert!(err.to_string().contains(MANIFEST_KEY), "{err}");
}
