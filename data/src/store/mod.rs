//! One small async key/value interface ([`ObjectStore`]) over the places shards live:
//! a local directory ([`local::LocalStore`]) or an S3-compatible bucket ([`s3::S3Store`]).

pub mod local;
pub mod s3;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalStore;
pub use s3::S3Store;

/// The URL forms [`open_store`] understands, for error messages.
pub const SUPPORTED_URLS: &str =
    "file:///absolute/path, a plain directory path, s3://bucket[/prefix]";

/// Everything that can go wrong talking to a store; every variant names the store URL
/// and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL has a scheme no store implements.
    #[error(
        "unsupported store URL {url:?} (scheme {scheme:?}): supported forms are {SUPPORTED_URLS}"
    )]
    UnsupportedScheme {
        /// The URL given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The URL is malformed.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A key that is empty, absolute, contains `.`/`..` segments or characters outside
    /// `[A-Za-z0-9._-]` and `/`.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key given.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No object under that key.
    #[error("object {key:?} not found in {url}")]
    NotFound {
        /// Store URL.
        url: String,
        /// Key looked up.
        key: String,
    },
    /// A local file-system operation failed.
    #[error("{op} {key:?} in {url} failed: {source}")]
    Io {
        /// Store URL.
        url: String,
        /// Key involved ("" for whole-store operations).
        key: String,
        /// Operation name.
        op: &'static str,
        /// Underlying error.
        source: io::Error,
    },
    /// An S3 request failed (the message includes the SDK's whole error chain).
    #[error("{op} {key:?} in {url} failed: {message}")]
    Remote {
        /// Store URL.
        url: String,
        /// Key involved ("" for whole-store operations).
        key: String,
        /// Operation name.
        op: &'static str,
        /// The cause.
        message: String,
    },
}

/// A flat namespace of immutable byte objects addressed by `/`-separated keys; both the
/// splitter and the peers see shards only through this, so they work unchanged on a local
/// directory and on any S3-compatible server.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// The URL this store was opened from, for messages.
    fn url(&self) -> &str;

    /// The whole object at `key` ([`StoreError::NotFound`] when absent).
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Store `data` at `key`, replacing any object there; readers see the old or the new
    /// object, never a partial one.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// Stores `data` at `key` only if no object is there, atomically: of writers racing
    /// for one key exactly one succeeds. Returns whether this call created the object.
    /// Used to hand out ranks (`peerless peer --rank auto`).
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError>;

    /// Every key starting with `prefix` (which may be empty), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Remove the object at `key`; removing an absent key succeeds.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Whether an object exists at `key`.
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;

    /// Move the object at `from` to `to` (replacing `to`); used to commit staged objects.
    /// The default copies through memory, stores override it with a native operation.
    async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let data = self.get(from).await?;
        self.put(to, data).await?;
        self.delete(from).await
    }
}

/// Check that `key` is a relative `/`-separated path of safe characters.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if key
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("empty, `.` or `..` path segment (keys are relative, `/`-separated)");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return bad("characters other than A-Z a-z 0-9 . _ - /");
    }
    Ok(())
}

/// Check a listing prefix: empty, or safe characters without `..` segments.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(StoreError::InvalidKey {
            key: prefix.to_owned(),
            reason: "a prefix cannot be only `/`",
        });
    }
    validate_key(trimmed).map_err(|_| StoreError::InvalidKey {
        key: prefix.to_owned(),
        reason: "prefixes follow the key rules: relative, A-Z a-z 0-9 . _ - /",
    })
}

/// Connection settings for S3-compatible stores; the defaults suit AWS, retry store blips
/// with backoff, and fail within about a minute when the endpoint does not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Custom endpoint such as `http://127.0.0.1:5000`; `None` uses `AWS_ENDPOINT_URL`
    /// (read by the SDK) or AWS itself.
    pub endpoint_url: Option<String>,
    /// Region; `None` reads `AWS_REGION`/`AWS_DEFAULT_REGION`, then the profile, then
    /// falls back to `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); `None` means on exactly when a custom
    /// endpoint is configured (option, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3`), as most
    /// S3-compatible servers need.
    pub force_path_style: Option<bool>,
    /// TCP/TLS connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Time limit of one attempt of one request.
    pub attempt_timeout: Duration,
    /// Time limit of one request including retries.
    pub operation_timeout: Duration,
    /// Attempts per request (1 = no retry). Transient failures (HTTP 500/502/503/504,
    /// throttling such as `SlowDown`, timeouts, broken connections) are retried; refusals
    /// (`NoSuchKey`, `AccessDenied`, `NoSuchBucket`) fail at once.
    pub max_attempts: u32,
    /// Upper bound of the first wait between attempts; waits double per attempt (at most
    /// 20 s) and are drawn at random below that bound ("full jitter"), so peers retrying
    /// at once spread out.
    pub initial_backoff: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            force_path_style: None,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(120),
            operation_timeout: Duration::from_secs(300),
            // Four retries ride out a blip of several seconds (waits of up to 0.5, 1, 2
            // and 4 s): a round that fails costs every peer far more than that wait.
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
        }
    }
}

/// Options for [`open_store`]; only S3 has any today.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// Settings used when the URL is `s3://`.
    pub s3: S3Options,
}

/// Open the store a URL names: `file:///abs/path` or a plain path for a local directory,
/// `s3://bucket[/prefix]` for S3 (credentials from the AWS default chain).
pub async fn open_store(
    url: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    match url.split_once("://") {
        None => Ok(Arc::new(LocalStore::new(url)?)),
        Some(("file", _)) => Ok(Arc::new(LocalStore::from_url(url)?)),
        Some(("s3", _)) => {
            let (bucket, prefix) = s3::parse_url(url)?;
            Ok(Arc::new(
                S3Store::connect(&bucket, &prefix, &options.s3).await?,
            ))
        }
        Some((scheme, _)) => Err(StoreError::UnsupportedScheme {
            url: url.to_owned(),
            scheme: scheme.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        for ok in ["a", "peer-0/train.bin", "x/y_z.9/.staging-1/w"] {
            validate_key(ok).unwrap();
        }
        for bad in [
            "", "/abs", "a//b", "a/../b", "..", "a/", "sp ace", "ü", "a\\b",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        validate_prefix("").unwrap();
        validate_prefix("peer-0/").unwrap();
        assert!(validate_prefix("../").is_err());
    }

    #[tokio::test]
    async fn unknown_scheme_lists_supported_ones() {
        let err = open_store("ftp://host/x", &StoreOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp"), "{err}");
        assert!(err.contains("s3://") && err.contains("file://"), "{err}");
    }
}
