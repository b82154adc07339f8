//! [`ObjectStore`] over an S3 bucket or any S3-compatible server (custom endpoint,
//! path-style addressing, checksums only when required), with bounded timeouts and retries.
//!
//! Retries are the SDK's standard mode rather than a wrapper of our own: it already knows
//! which failures are transient (HTTP 500/502/503/504, throttling codes such as S3's
//! `SlowDown`, `RequestTimeout`, timeouts and I/O errors) and which are refusals that must
//! fail at once (`NoSuchKey`, `AccessDenied`, `NoSuchBucket`), replays in-memory bodies,
//! waits with exponential backoff and full jitter, and stops retrying when a whole client
//! keeps failing (its retry quota). A wrapper around it would multiply the attempts. The one
//! gap is a GET whose body breaks off after the headers arrived, which the SDK hands over
//! as a success: [`S3Store`] reads such objects again with the same backoff (`backon`).

use std::time::Duration;

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;

use super::{ObjectStore, S3Options, StoreError, validate_key, validate_prefix};

/// Region used when neither the options, the environment nor the profile name one.
pub const FALLBACK_REGION: &str = "us-east-1";

/// Split `s3://bucket[/prefix]` into bucket and prefix (without surrounding slashes).
pub fn parse_url(url: &str) -> Result<(String, String), StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| invalid("expected s3://bucket[/prefix]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
    if !valid_bucket {
        return Err(invalid(
            "bucket names are 3-63 characters of a-z, 0-9, '.' and '-'",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        validate_key(prefix).map_err(|_| {
            invalid("the prefix must be a relative path of A-Z a-z 0-9 . _ - / characters")
        })?;
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// A bucket (optionally below a key prefix) used as an object store; the way peers on
/// different machines and serverless functions share shards.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    url: String,
    max_attempts: u32,
    initial_backoff: Duration,
}

/// The longest wait between two attempts (the SDK's default too).
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// S3 error codes the SDK's standard retry treats as transient: throttling and timeouts
/// (`aws-runtime`'s `THROTTLING_ERRORS` and `TRANSIENT_ERRORS`), for error messages.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestThrottled",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Whether the SDK retried `err` as transient before handing it over (its standard
/// classification: I/O errors, timeouts, unparsable responses, HTTP 500/502/503/504 and
/// throttling or timeout codes), so messages can say the failure outlasted the retries.
fn is_transient<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            matches!(status, 500 | 502 | 503 | 504)
                || service
                    .err()
                    .code()
                    .is_some_and(|code| TRANSIENT_CODES.contains(&code))
        }
        _ => false,
    }
}

/// The AWS SDK configuration every peerless client starts from: credentials from the
/// default chain (environment, profile, web identity, ECS, instance metadata) and the
/// region from `region`, then `AWS_REGION`, the profile, and finally `us-east-1`.
pub async fn load_sdk_config(region: Option<&str>) -> SdkConfig {
    let region = RegionProviderChain::first_try(region.map(|r| Region::new(r.to_owned())))
        .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
        .or_else(aws_config::profile::ProfileFileRegionProvider::new())
        .or_else(Region::from_static(FALLBACK_REGION));
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .load()
        .await
}

impl S3Store {
    /// Connect with credentials from the AWS default chain (environment, profile, web
    /// identity, ECS, instance metadata), applying `options`.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        options: &S3Options,
    ) -> Result<Self, StoreError> {
        let config = load_sdk_config(options.region.as_deref()).await;
        Self::from_sdk_config(&config, bucket, prefix, options)
    }

    /// Build a store from an already loaded SDK configuration (e.g. one carrying explicit
    /// test credentials), applying `options` on top of it.
    pub fn from_sdk_config(
        config: &SdkConfig,
        bucket: &str,
        prefix: &str,
        options: &S3Options,
    ) -> Result<Self, StoreError> {
        let custom_endpoint = options.endpoint_url.is_some()
            || config.endpoint_url().is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let mut builder = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(options.force_path_style.unwrap_or(custom_endpoint))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .operation_attempt_timeout(options.attempt_timeout)
                    .operation_timeout(options.operation_timeout)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(options.max_attempts.max(1))
                    .with_initial_backoff(options.initial_backoff)
                    .with_max_backoff(MAX_BACKOFF),
            );
        if let Some(endpoint) = &options.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        if let Some(region) = &options.region {
            builder = builder.region(Region::new(region.clone()));
        }
        let mut store = Self::from_client(Client::from_conf(builder.build()), bucket, prefix)?;
        store.max_attempts = options.max_attempts.max(1);
        store.initial_backoff = options.initial_backoff;
        Ok(store)
    }

    /// Wrap a configured client; the caller is responsible for endpoint, path style,
    /// checksum and retry settings (messages assume [`S3Options`]' default attempts).
    pub fn from_client(client: Client, bucket: &str, prefix: &str) -> Result<Self, StoreError> {
        let prefix = prefix.trim_matches('/');
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let (bucket, prefix) = parse_url(&url)?;
        let defaults = S3Options::default();
        Ok(Self {
            client,
            bucket,
            prefix,
            url,
            max_attempts: defaults.max_attempts,
            initial_backoff: defaults.initial_backoff,
        })
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket objects live in.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        validate_key(key)?;
        Ok(self.join(key))
    }

    fn join(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// A failed request as a [`StoreError::Remote`] naming the key, the cause and, for a
    /// transient cause, that it outlasted the retries.
    fn remote<E>(&self, op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let transient = is_transient(&err);
        let mut message = match &err {
            // The service's own words; the raw response adds nothing but noise.
            SdkError::ServiceError(service) => {
                let e = service.err();
                format!(
                    "{}: {} (HTTP {})",
                    e.code().unwrap_or("unknown error"),
                    e.message().unwrap_or("no message"),
                    service.raw().status().as_u16()
                )
            }
            _ => DisplayErrorContext(err).to_string(),
        };
        if transient {
            message.push_str(&format!(
                " (a transient error, still failing after up to {} attempts with backoff)",
                self.max_attempts
            ));
        }
        StoreError::Remote {
            url: self.url.clone(),
            key: key.to_owned(),
            op,
            message,
        }
    }

    /// The waits between reads of an object whose body broke off: the same schedule as
    /// the SDK's retries.
    fn body_backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
    }

    /// One GET of `full` (the SDK retries the request itself); [`GetFailure::Body`] when the
    /// body broke off after a successful answer.
    async fn get_once(&self, key: &str, full: &str) -> Result<Bytes, GetFailure> {
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(GetFailure::Request(StoreError::NotFound {
                    url: self.url.clone(),
                    key: key.to_owned(),
                }));
            }
            Err(e) => return Err(GetFailure::Request(self.remote("get", key, e))),
        };
        match resp.body.collect().await {
            Ok(data) => Ok(data.into_bytes()),
            Err(e) => Err(GetFailure::Body(DisplayErrorContext(e).to_string())),
        }
    }
}

/// Why one GET failed: the request (already retried by the SDK) or reading the body.
#[derive(Debug)]
enum GetFailure {
    Request(StoreError),
    Body(String),
}

#[async_trait]
impl ObjectStore for S3Store {
    fn url(&self) -> &str {
        &self.url
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let full = self.full_key(key)?;
        let read = || self.get_once(key, &full);
        let result = read
            .retry(self.body_backoff())
            .when(|e| matches!(e, GetFailure::Body(_)))
            .notify(|e, delay| {
                tracing::warn!(url = %self.url, key, ?delay, "reading the object broke off ({e:?}); reading it again");
            })
            .await;
        result.map_err(|e| match e {
            GetFailure::Request(e) => e,
            GetFailure::Body(cause) => StoreError::Remote {
                url: self.url.clone(),
                key: key.to_owned(),
                op: "get",
                message: format!(
                    "reading the object broke off: {cause} (still failing after {} reads with \
                     backoff)",
                    self.max_attempts
                ),
            },
        })
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        tracing::debug!(url = %self.url, key, bytes = data.len(), "put");
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.remote("put", key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        let full = self.full_key(key)?;
        tracing::debug!(url = %self.url, key, bytes = data.len(), "put if absent");
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_none_match("*")
            .body(ByteStream::from(data))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            // 412: the object exists; 409: a concurrent conditional write won.
            Err(SdkError::ServiceError(e)) if matches!(e.raw().status().as_u16(), 409 | 412) => {
                Ok(false)
            }
            Err(e) => Err(self.remote("put_if_absent", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        validate_prefix(prefix)?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full_prefix = format!("{strip}{prefix}");
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.remote("list", prefix, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter_map(|k| k.strip_prefix(&strip))
                    .map(str::to_owned),
            );
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.remote("delete", key, e))?;
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(self.remote("exists", key, e)),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let src = self.full_key(from)?;
        let dst = self.full_key(to)?;
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(format!("{}/{src}", self.bucket))
            .key(&dst)
            .send()
            .await
            .map_err(|e| self.remote("rename", from, e))?;
        self.delete(from).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_urls() {
        assert_eq!(
            parse_url("s3://my-bucket").unwrap(),
            ("my-bucket".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://my-bucket/a/b/").unwrap(),
            ("my-bucket".into(), "a/b".into())
        );
        for bad in ["s3://", "s3://UPPER", "s3://ok-bucket/a/../b", "s3://b"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
