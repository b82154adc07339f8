//! Readers for the on-disk dataset formats and the [`load`] entry point.

pub mod cifar;
pub mod idx;
pub mod synthetic;

use std::io;
use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, DatasetKind, InvalidDataset, Split};

/// Everything that can go wrong while locating, reading or parsing a dataset;
/// every variant names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// Some of the files a dataset split needs are not in the directory.
    #[error("{kind} {split} split not found in {dir}: expected {expected}; {hint}", dir = dir.display(), expected = missing.join(", "))]
    Missing {
        /// Dataset looked for.
        kind: DatasetKind,
        /// Split looked for.
        split: Split,
        /// Directory searched.
        dir: PathBuf,
        /// Each missing file, spelled as the path(s) that would satisfy it.
        missing: Vec<String>,
        /// How to obtain the files.
        hint: String,
    },
    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// File being read.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The file starts like gzip but does not decompress.
    #[error("{} is not valid gzip data (corrupt or truncated): {source}", path.display())]
    Gzip {
        /// File being read.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The IDX magic number is not the one for `u8` data with the expected number of dimensions.
    #[error("{} is not an IDX {what} file: magic number {found:#010x}, expected {expected:#010x}", path.display())]
    BadMagic {
        /// File being read.
        path: PathBuf,
        /// "images" or "labels".
        what: &'static str,
        /// Magic number wanted.
        expected: u32,
        /// Magic number found.
        found: u32,
    },
    /// The file ends before the data its header announces.
    #[error("{} is truncated: its header announces {expected} bytes but the file holds {found}", path.display())]
    Truncated {
        /// File being read.
        path: PathBuf,
        /// Bytes needed.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The file is longer than its header announces.
    #[error("{} has {extra} bytes after the data its header announces", path.display())]
    TrailingBytes {
        /// File being read.
        path: PathBuf,
        /// Surplus bytes.
        extra: u64,
    },
    /// The IDX header's dimensions describe more data than any dataset file may hold.
    #[error("{} declares dimensions {dims:?}: {bytes} bytes of data, over the limit of {limit} bytes", path.display(), bytes = bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string()))]
    DimensionsOverflow {
        /// File being read.
        path: PathBuf,
        /// The dimensions declared.
        dims: Vec<u32>,
        /// Their product, when it fits in 64 bits.
        bytes: Option<u64>,
        /// [`MAX_FILE_BYTES`].
        limit: u64,
    },
    /// The file (or what it decompresses to) is larger than its header announces or than
    /// any dataset file may be: a gzip bomb is stopped here, before it fills the memory.
    #[error("{} holds more than {limit} bytes{}", path.display(), if *gzip { " once decompressed" } else { "" })]
    TooLarge {
        /// File being read.
        path: PathBuf,
        /// The most bytes that were accepted.
        limit: u64,
        /// Whether the file is gzipped.
        gzip: bool,
    },
    /// An image dimension in an IDX header is zero.
    #[error("{} declares {rows}x{cols} images; both must be positive", path.display())]
    BadDimensions {
        /// File being read.
        path: PathBuf,
        /// Rows declared.
        rows: u32,
        /// Columns declared.
        cols: u32,
    },
    /// The image and label files disagree on the number of samples.
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        /// Image file.
        images_path: PathBuf,
        /// Images in it.
        images: u64,
        /// Label file.
        labels_path: PathBuf,
        /// Labels in it.
        labels: u64,
    },
    /// A CIFAR-10 file is not a whole number of 3073-byte records.
    #[error("{} is {len} bytes, not a multiple of the 3073-byte CIFAR-10 record (1 label + 3072 pixels): truncated or not a CIFAR-10 binary batch", path.display())]
    CifarSize {
        /// File being read.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// A label is not below the number of classes.
    #[error("{}: record {record} has label {label}, but the dataset has {num_classes} classes", path.display())]
    BadLabel {
        /// File being read.
        path: PathBuf,
        /// Record index.
        record: usize,
        /// Offending label.
        label: u8,
        /// Number of classes.
        num_classes: usize,
    },
    /// A synthetic dataset configuration that cannot produce images.
    #[error("invalid synthetic dataset configuration: {0}")]
    SyntheticConfig(String),
    /// The buffers read do not form a valid dataset.
    #[error("invalid dataset read from {}: {source}", path.display())]
    Invalid {
        /// File or directory read.
        path: PathBuf,
        /// What is wrong.
        source: InvalidDataset,
    },
}

/// Where [`load`] looks for `kind` when no directory is given (`None` for synthetic data).
pub fn default_data_dir(kind: DatasetKind) -> Option<PathBuf> {
    match kind {
        DatasetKind::FashionMnist => Some(PathBuf::from("/usr/share/datasets/fashion-mnist")),
        DatasetKind::Mnist => Some(PathBuf::from("./data/mnist")),
        DatasetKind::Cifar10 => Some(PathBuf::from("./data/cifar-10-batches-bin")),
        DatasetKind::Synthetic => None,
    }
}

/// How to obtain the files of `kind`, for "missing dataset" errors.
fn install_hint(kind: DatasetKind) -> String {
    match kind {
        DatasetKind::FashionMnist => "install them with `apt-get install dataset-fashion-mnist` \
             (puts the four .gz files in /usr/share/datasets/fashion-mnist), or download the IDX \
             files from https://github.com/zalandoresearch/fashion-mnist into a directory and pass \
             --data-dir DIR"
            .to_owned(),
        DatasetKind::Mnist => "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
             t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from the MNIST database \
             (http://yann.lecun.com/exdb/mnist/ or a mirror) into ./data/mnist, or into any \
             directory and pass --data-dir DIR (gzipped or not)"
            .to_owned(),
        DatasetKind::Cifar10 => "download the binary version cifar-10-binary.tar.gz from \
             https://www.cs.toronto.edu/~kriz/cifar.html, unpack it with `tar xzf` (it creates \
             cifar-10-batches-bin/) and pass --data-dir .../cifar-10-batches-bin \
             (default ./data/cifar-10-batches-bin)"
            .to_owned(),
        DatasetKind::Synthetic => "synthetic data needs no files".to_owned(),
    }
}

/// Load one split of a dataset into memory.
///
/// `data_dir` overrides [`default_data_dir`]; it is ignored for
/// [`DatasetKind::Synthetic`], which generates [`synthetic::SyntheticConfig::for_split`].
pub fn load(
    kind: DatasetKind,
    data_dir: Option<&Path>,
    split: Split,
) -> Result<Dataset, DatasetError> {
    let dir = match (data_dir, default_data_dir(kind)) {
        (_, None) => return synthetic::SyntheticConfig::for_split(split).generate(),
        (Some(d), _) => d.to_path_buf(),
        (None, Some(d)) => d,
    };
    match kind {
        DatasetKind::Mnist | DatasetKind::FashionMnist => idx::load_dir(kind, &dir, split),
        DatasetKind::Cifar10 => cifar::load_dir(&dir, split),
        DatasetKind::Synthetic => synthetic::SyntheticConfig::for_split(split).generate(),
    }
}

/// Build the error for missing files; `missing` are already spelled as expected paths.
pub(crate) fn missing_error(
    kind: DatasetKind,
    split: Split,
    dir: &Path,
    missing: Vec<String>,
) -> DatasetError {
    DatasetError::Missing {
        kind,
        split,
        dir: dir.to_path_buf(),
        missing,
        hint: install_hint(kind),
    }
}

/// The most bytes one dataset file may hold, decompressed: 20 times the largest file of
/// the supported datasets (MNIST's 47 MB training images), far below what a gzip bomb
/// would unpack to.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Read a whole file of at most `limit` bytes (decompressed, when it starts with the gzip
/// magic bytes); larger files are refused without reading further.
pub(crate) fn read_maybe_gz(path: &Path, limit: u64) -> Result<Vec<u8>, DatasetError> {
    let raw = read_raw(path)?;
    if is_gzip(&raw) {
        gunzip(&raw, path, limit)
    } else if raw.len() as u64 > limit {
        Err(DatasetError::TooLarge {
            path: path.to_path_buf(),
            limit,
            gzip: false,
        })
    } else {
        Ok(raw)
    }
}

/// The file's bytes as stored, refusing files over [`MAX_FILE_BYTES`] before reading them.
pub(crate) fn read_raw(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let io = |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(DatasetError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_BYTES,
            gzip: false,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Whether `raw` starts with the gzip magic bytes.
pub(crate) fn is_gzip(raw: &[u8]) -> bool {
    raw.starts_with(&[0x1f, 0x8b])
}

/// Decompresses at most `limit` bytes of the gzip data `raw` (all its members); more is
/// refused as [`DatasetError::TooLarge`] once the limit is crossed.
pub(crate) fn gunzip(raw: &[u8], path: &Path, limit: u64) -> Result<Vec<u8>, DatasetError> {
    let out = gunzip_prefix(raw, path, limit.saturating_add(1))?;
    if out.len() as u64 > limit {
        return Err(DatasetError::TooLarge {
            path: path.to_path_buf(),
            limit,
            gzip: true,
        });
    }
    Ok(out)
}

/// The first (at most) `n` decompressed bytes of the gzip data `raw`.
pub(crate) fn gunzip_prefix(raw: &[u8], path: &Path, n: u64) -> Result<Vec<u8>, DatasetError> {
    use std::io::Read;
    // Grown as data arrives, never reserved from what a header claims.
    let start = (raw.len() as u64).saturating_mul(4).min(n).min(64 << 20);
    let mut out = Vec::with_capacity(start as usize);
    flate2::read::MultiGzDecoder::new(raw)
        .take(n)
        .read_to_end(&mut out)
        .map_err(|source| DatasetError::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.gz");
        // 16 MiB of zeros compress to about 16 KiB.
        let bomb = gz(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 1 << 20);
        std::fs::write(&path, &bomb).unwrap();
        let err = read_maybe_gz(&path, 1 << 20).unwrap_err();
        assert!(
            matches!(err, DatasetError::TooLarge { limit, gzip: true, .. } if limit == 1 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("once decompressed"), "{err}");
        assert_eq!(read_maybe_gz(&path, 16 << 20).unwrap().len(), 16 << 20);

        let plain = dir.path().join("plain");
        std::fs::write(&plain, [1u8; 10]).unwrap();
        assert!(matches!(
            read_maybe_gz(&plain, 9),
            Err(DatasetError::TooLarge { gzip: false, .. })
        ));
        assert_eq!(read_maybe_gz(&plain, 10).unwrap(), [1u8; 10]);
    }
}
