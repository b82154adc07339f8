//! The claim check (`--exchange s3`): a gradient too big for the broker goes to the
//! object store, and only a small claim (its key, length and BLAKE3 digest) travels over
//! AMQP, signed like any message. A receiver fetches the object, checks its length and
//! digest against the claim, and uses it as if the gradient had come in messages, so a
//! forged or swapped object is refused like a forged message.
//!
//! Each peer deletes its own objects a few rounds later (peers are at most a round or two
//! apart) and the rest when the run ends ([`crate::Averager::delete_claims`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};

/// A future a [`ClaimStore`] returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Where a claim-check exchange parks gradients: the run's object store (an S3 bucket or
/// a folder), adapted by the peer runtime. Errors are messages with no secret in them.
pub trait ClaimStore: Send + Sync + fmt::Debug {
    /// Stores `data` at `key`, replacing any object there.
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> StoreFuture<'a, ()>;
    /// The object at `key`.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Bytes>;
    /// Removes the object at `key` (absent is fine).
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
}

/// Length of a claim's fixed part: object length and digest.
const FIXED: usize = 8 + 32;
/// Longest key a claim may name.
const MAX_KEY: usize = 512;
/// Longest claim payload.
pub const MAX_CLAIM_LEN: usize = FIXED + MAX_KEY;

/// What a claim message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The object's key in the run's store.
    pub key: String,
    /// The object's length in bytes.
    pub len: u64,
    /// BLAKE3 digest of the object.
    pub digest: [u8; 32],
}

impl Claim {
    /// The claim of `data` stored at `key`.
    pub fn of(key: String, data: &[u8]) -> Self {
        Claim {
            key,
            len: data.len() as u64,
            digest: *digest(data).as_bytes(),
        }
    }

    /// The claim as a message payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(FIXED + self.key.len());
        out.put_u64_le(self.len);
        out.put_slice(&self.digest);
        out.put_slice(self.key.as_bytes());
        out.freeze()
    }

    /// Parses a claim payload; `None` when it is not one.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        if payload.len() <= FIXED || payload.len() > FIXED + MAX_KEY {
            return None;
        }
        let len = u64::from_le_bytes(payload[..8].try_into().ok()?);
        let digest = payload[8..FIXED].try_into().ok()?;
        let key = std::str::from_utf8(&payload[FIXED..]).ok()?;
        let safe = key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        (safe && !key.contains("..")).then(|| Claim {
            key: key.to_owned(),
            len,
            digest,
        })
    }

    /// Whether `data` is the object this claim names.
    pub fn matches(&self, data: &[u8]) -> bool {
        data.len() as u64 == self.len && digest(data).as_bytes() == &self.digest
    }
}

/// BLAKE3 of a claimed object, on the calling thread (a few GB/s: about 0.1 s for VGG11's
/// 515 MB gradient). Not on the rayon pool: there it would wait behind gradient
/// computation, as message signing did before it moved off the pool (see `auth`).
fn digest(data: &[u8]) -> blake3::Hash {
    blake3::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_and_name_only_their_object() {
        let data = vec![7u8; 3 << 20];
        let claim = Claim::of("claims/run/0/1-00ff".into(), &data);
        let decoded = Claim::decode(&claim.encode()).unwrap();
        assert_eq!(decoded, claim);
        assert!(decoded.matches(&data));
        let mut other = data.clone();
        other[12345] ^= 1;
        assert!(!decoded.matches(&other));
        assert!(!decoded.matches(&data[1..]));
    }

    #[test]
    fn hostile_claims_are_refused() {
        let good = Claim::of("claims/a".into(), b"x").encode();
        assert!(Claim::decode(&good[..FIXED]).is_none(), "no key");
        for key in ["../etc/passwd", "a b", "k\u{e9}y", "claims/../x"] {
            let mut bad = good[..FIXED].to_vec();
            bad.extend_from_slice(key.as_bytes());
            assert!(Claim::decode(&bad).is_none(), "{key:?}");
        }
        let mut long = good[..FIXED].to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_KEY + 1));
        assert!(Claim::decode(&long).is_none());
    }
}
