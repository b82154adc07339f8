//! CIFAR-10 binary-version reader: records of 1 label byte followed by 3072 pixel bytes
//! (1024 red, 1024 green, 1024 blue, each 32x32 row-major), i.e. already CHW.

use std::path::{Path, PathBuf};

use super::{DatasetError, MAX_FILE_BYTES, missing_error, read_maybe_gz};
use crate::dataset::{Dataset, DatasetKind, ImageShape, Split};

/// Shape of a CIFAR-10 image.
pub const SHAPE: ImageShape = ImageShape::new(3, 32, 32);
/// Bytes per record: one label plus the pixels.
pub const RECORD_LEN: usize = 1 + SHAPE.len();
/// Number of classes of CIFAR-10.
pub const NUM_CLASSES: usize = 10;

/// File names of a split, in the order they are concatenated.
pub fn file_names(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_owned()],
    }
}

/// Load a split from `dir` (the unpacked `cifar-10-batches-bin` directory).
pub fn load_dir(dir: &Path, split: Split) -> Result<Dataset, DatasetError> {
    let paths: Vec<PathBuf> = file_names(split).iter().map(|n| dir.join(n)).collect();
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(missing_error(DatasetKind::Cifar10, split, dir, missing));
    }
    read_files(&paths)
}

/// Read and concatenate CIFAR-10 batch files (raw or gzipped).
pub fn read_files(paths: &[PathBuf]) -> Result<Dataset, DatasetError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = read_maybe_gz(path, MAX_FILE_BYTES)?;
        if bytes.len() % RECORD_LEN != 0 {
            return Err(DatasetError::CifarSize {
                path: path.clone(),
                len: bytes.len() as u64,
            });
        }
        let records = bytes.len() / RECORD_LEN;
        pixels.reserve(records * SHAPE.len());
        labels.reserve(records);
        for (record, chunk) in bytes.chunks_exact(RECORD_LEN).enumerate() {
            let label = chunk[0];
            if usize::from(label) >= NUM_CLASSES {
                return Err(DatasetError::BadLabel {
                    path: path.clone(),
                    record,
                    label,
                    num_classes: NUM_CLASSES,
                });
            }
            labels.push(label);
            pixels.extend_from_slice(&chunk[1..]);
        }
    }
    let first = paths.first().cloned().unwrap_or_default();
    Dataset::new(DatasetKind::Cifar10, SHAPE, NUM_CLASSES, pixels, labels).map_err(|source| {
        DatasetError::Invalid {
            path: first,
            source,
        }
    })
}
