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

/// Read a whole file, decompressing it when it starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DatasetError> {
    use std::io::Read;
    let raw = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4));
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DatasetError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}
