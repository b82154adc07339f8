//! [`ObjectStore`] over a local directory: keys are relative paths below the root, writes go
//! to a temporary file in the target directory and are renamed into place (atomic).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectStore, StoreError, validate_key, validate_prefix};

/// Name prefix of in-flight temporary files; they are never listed.
const TEMP_PREFIX: &str = ".peerless-tmp-";

/// A directory used as an object store; the embedded default, and what tests and single-machine
/// runs use.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    url: String,
}

impl LocalStore {
    /// A store rooted at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        if root.as_os_str().is_empty() {
            return Err(StoreError::InvalidUrl {
                url: String::new(),
                reason: "empty directory path".to_owned(),
            });
        }
        let url = format!("file://{}", absolute(&root).display());
        Ok(Self { root, url })
    }

    /// A store from a `file:///absolute/path` URL.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let path = url
            .strip_prefix("file://")
            .ok_or_else(|| invalid("expected file:///absolute/path"))?;
        if !path.starts_with('/') {
            return Err(invalid(
                "file URLs need an absolute path and no host: file:///absolute/path",
            ));
        }
        if path.contains(['%', '?', '#']) {
            return Err(invalid(
                "percent-escapes, queries and fragments are not supported in file URLs",
            ));
        }
        Self::new(path)
    }

    /// The directory objects live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn io_error(&self, op: &'static str, key: &str, source: io::Error) -> StoreError {
        StoreError::Io {
            url: self.url.clone(),
            key: key.to_owned(),
            op,
            source,
        }
    }

    /// Run blocking file-system work off the async threads.
    async fn blocking<T, F>(&self, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| self.io_error(op, key, io::Error::other(e)))?
            .map_err(|e| self.io_error(op, key, e))
    }
}

/// `path` made absolute against the current directory (for display only).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Remove empty directories from `dir` up to (not including) `root`.
fn prune_empty_dirs(root: &Path, mut dir: Option<&Path>) {
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    written_beside(path, data)?
        .persist(path)
        .map_err(|e| e.error)?;
    Ok(())
}

/// `data` in a synced temporary file in `path`'s folder (created if needed), ready to
/// be moved to `path` in one step.
fn written_beside(path: &Path, data: &[u8]) -> io::Result<tempfile::NamedTempFile> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::other("object path has no parent directory"))?;
    std::fs::create_dir_all(parent)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(parent)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_data()?;
    Ok(tmp)
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let Some(key) = rel.to_str() else { continue };
        if entry.file_type()?.is_dir() {
            let as_dir = format!("{key}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(root, &path, prefix, out)?;
            }
        } else if key.starts_with(prefix) && validate_key(key).is_ok() {
            out.push(key.to_owned());
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound {
                url: self.url.clone(),
                key: key.to_owned(),
            }),
            Err(e) => Err(self.io_error("get", key, e)),
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        tracing::debug!(url = %self.url, key, bytes = data.len(), "put");
        self.blocking("put", key, move || write_atomic(&path, &data))
            .await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        tracing::debug!(url = %self.url, key, bytes = data.len(), "put if absent");
        self.blocking("put_if_absent", key, move || {
            // A hard link fails if the name exists: the object appears whole, once.
            match written_beside(&path, &data)?.persist_noclobber(&path) {
                Ok(_) => Ok(true),
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e.error),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let prefix_owned = prefix.to_owned();
        let mut keys = self
            .blocking("list", prefix, move || {
                let mut out = Vec::new();
                walk(&root, &root, &prefix_owned, &mut out)?;
                Ok(out)
            })
            .await?;
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let root = self.root.clone();
        self.blocking("delete", key, move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            prune_empty_dirs(&root, path.parent());
            Ok(())
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io_error("exists", key, e)),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let src = self.path(from)?;
        let dst = self.path(to)?;
        let root = self.root.clone();
        self.blocking("rename", from, move || {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&src, &dst)?;
            prune_empty_dirs(&root, src.parent());
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete_rename() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        assert!(store.url().starts_with("file:///"));
        assert!(store.list("").await.unwrap().is_empty());
        store
            .put("a/b.bin", Bytes::from_static(b"xy"))
            .await
            .unwrap();
        store
            .put("a/c.bin", Bytes::from_static(b"z"))
            .await
            .unwrap();
        store.put("top", Bytes::from_static(b"t")).await.unwrap();
        assert_eq!(store.get("a/b.bin").await.unwrap(), &b"xy"[..]);
        assert_eq!(
            store.list("").await.unwrap(),
            vec!["a/b.bin", "a/c.bin", "top"]
        );
        assert_eq!(store.list("a/").await.unwrap(), vec!["a/b.bin", "a/c.bin"]);
        assert_eq!(store.list("a/c").await.unwrap(), vec!["a/c.bin"]);
        assert!(store.exists("top").await.unwrap());
        assert!(!store.exists("nope").await.unwrap());
        let err = store.get("nope").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        store.put("top", Bytes::from_static(b"new")).await.unwrap();
        assert_eq!(store.get("top").await.unwrap(), &b"new"[..]);
        store.rename("a/b.bin", "d/e/f.bin").await.unwrap();
        assert_eq!(store.get("d/e/f.bin").await.unwrap(), &b"xy"[..]);
        store.delete("a/c.bin").await.unwrap();
        store.delete("a/c.bin").await.unwrap();
        assert!(
            !dir.path().join("a").exists(),
            "empty directory left behind"
        );
        assert_eq!(store.list("").await.unwrap(), vec!["d/e/f.bin", "top"]);
        assert!(store.get("../x").await.is_err());
    }

    #[test]
    fn file_urls() {
        let s = LocalStore::from_url("file:///tmp/x").unwrap();
        assert_eq!(s.root(), Path::new("/tmp/x"));
        assert!(LocalStore::from_url("file://host/x").is_err());
        assert!(LocalStore::from_url("file:///a%20b").is_err());
    }

    #[tokio::test]
    async fn unwritable_root_names_key_and_cause() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let store = LocalStore::new(file.join("sub")).unwrap();
        let err = store
            .put("k.bin", Bytes::from_static(b"1"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("k.bin") && err.contains("plain-file"), "{err}");
    }
}
