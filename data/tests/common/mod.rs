//! Helpers shared by the split tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use peerless_data::formats::synthetic::SyntheticConfig;
use peerless_data::{Dataset, ObjectStore};

/// A small synthetic train/test pair (1x6x6, 10 classes).
pub fn small_data(train: usize, test: usize) -> (Dataset, Dataset) {
    let cfg = |count, seed| SyntheticConfig {
        count,
        height: 6,
        width: 6,
        seed,
        ..SyntheticConfig::default()
    };
    (
        cfg(train, 1).generate().unwrap(),
        cfg(test, 2).generate().unwrap(),
    )
}

/// Every object of a store with its bytes.
pub async fn snapshot(store: &dyn ObjectStore) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for key in store.list("").await.unwrap() {
        let data = store.get(&key).await.unwrap();
        out.insert(key, data.to_vec());
    }
    out
}

/// The keys a split for `peers` peers with `batches` batches writes.
pub fn expected_keys(peers: usize, batches: usize) -> Vec<String> {
    let mut keys = vec!["manifest.json".to_owned(), "test.bin".to_owned()];
    for r in 0..peers {
        keys.push(format!("peer-{r}/train.bin"));
        keys.push(format!("peer-{r}/val.bin"));
        for b in 0..batches {
            keys.push(format!("peer-{r}/batch-{b:04}.bin"));
        }
    }
    keys.sort();
    keys
}

/// SDK configuration with test credentials set on the config (not via the process
/// environment: tests run in parallel threads).
pub async fn test_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await
}
