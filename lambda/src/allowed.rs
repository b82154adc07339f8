//! Which store a deployed `compute_gradient` function may touch. The function runs with
//! its execution role's credentials: an event naming any bucket would let whoever can
//! invoke it read and write wherever that role reaches, so a deployment names its store
//! in [`ALLOWED_STORE_ENV`] and every event must stay inside it.

use crate::event::StoreLocation;

/// Environment variable naming the store (and everything under it) events may use, e.g.
/// `s3://bucket/prefix`; unset, any store is allowed (logged once at start).
pub const ALLOWED_STORE_ENV: &str = "PEERLESS_ALLOWED_STORE";
/// Environment variable naming the only S3 endpoint events may give with the allowed
/// store; unset, events must not name an endpoint (AWS's own is used).
pub const ALLOWED_ENDPOINT_ENV: &str = "PEERLESS_ALLOWED_ENDPOINT";

/// The store events may name: a URL prefix, whole path segments only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedStore {
    url: String,
    endpoint_url: Option<String>,
}

impl AllowedStore {
    /// Events may name `url` or any location below it, with `endpoint_url` as their
    /// endpoint (`None`: no endpoint override).
    pub fn new(url: impl Into<String>, endpoint_url: Option<String>) -> Self {
        Self {
            url: normalize(&url.into()),
            endpoint_url,
        }
    }

    /// The restriction the function's environment sets, `None` when unset or empty.
    pub fn from_env() -> Option<Self> {
        let url = std::env::var(ALLOWED_STORE_ENV).ok()?;
        if url.trim().is_empty() {
            return None;
        }
        let endpoint = std::env::var(ALLOWED_ENDPOINT_ENV)
            .ok()
            .filter(|e| !e.trim().is_empty());
        Some(Self::new(url.trim(), endpoint))
    }

    /// The allowed store URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Why `location` is outside this store, or `Ok` when it is inside.
    pub fn check(&self, location: &StoreLocation) -> Result<(), String> {
        let url = normalize(&location.url);
        let segments_ok = !url.split('/').any(|s| s == ".." || s == ".");
        let inside = url == self.url
            || url
                .strip_prefix(&self.url)
                .is_some_and(|rest| rest.starts_with('/'));
        if !(segments_ok && inside) {
            return Err(format!(
                "store {:?} is outside the store this function is deployed for ({:?}, {ALLOWED_STORE_ENV})",
                location.url, self.url
            ));
        }
        if location.endpoint_url != self.endpoint_url {
            return Err(format!(
                "endpoint {:?} is not the one this function is deployed for ({:?}, {ALLOWED_ENDPOINT_ENV})",
                location.endpoint_url.as_deref().unwrap_or("none"),
                self.endpoint_url.as_deref().unwrap_or("none")
            ));
        }
        Ok(())
    }
}

/// `file:///dir` and `/dir` alike, without trailing slashes.
fn normalize(url: &str) -> String {
    let url = url.strip_prefix("file://").unwrap_or(url);
    let trimmed = url.trim_end_matches('/');
    if trimmed.is_empty() && url.starts_with('/') {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_store_and_what_is_below_it() {
        let allowed = AllowedStore::new("s3://bucket/runs/", None);
        for ok in [
            "s3://bucket/runs",
            "s3://bucket/runs/",
            "s3://bucket/runs/a/b",
        ] {
            assert_eq!(allowed.check(&StoreLocation::new(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "s3://bucket",
            "s3://bucket/runs2",
            "s3://other/runs",
            "s3://bucket/runs/../secret",
            "/tmp/x",
        ] {
            assert!(allowed.check(&StoreLocation::new(bad)).is_err(), "{bad}");
        }
        let mut elsewhere = StoreLocation::new("s3://bucket/runs");
        elsewhere.endpoint_url = Some("http://evil.example".into());
        assert!(allowed.check(&elsewhere).is_err());
    }

    #[test]
    fn file_urls_and_paths_are_the_same_store() {
        let allowed = AllowedStore::new("file:///data/store", None);
        assert_eq!(allowed.check(&StoreLocation::new("/data/store/x")), Ok(()));
        assert!(allowed.check(&StoreLocation::new("/data")).is_err());
    }
}
