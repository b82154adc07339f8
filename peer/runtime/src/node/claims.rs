//! The run's object store as the claim-check exchange's store (`--exchange s3`): the
//! gradients go where the split and the checkpoints are.

use std::sync::Arc;

use bytes::Bytes;
use peerless_comm::claim::{ClaimStore, StoreFuture};
use peerless_data::ObjectStore;

/// A [`ClaimStore`] over the peer's [`ObjectStore`]; its errors name the store's URL
/// (never a secret: store URLs carry none).
#[derive(Debug)]
pub struct StoreClaims(pub Arc<dyn ObjectStore>);

impl ClaimStore for StoreClaims {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.0.put(key, data).await.map_err(|e| e.to_string()) })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Bytes> {
        Box::pin(async move { self.0.get(key).await.map_err(|e| e.to_string()) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.0.delete(key).await.map_err(|e| e.to_string()) })
    }
}
