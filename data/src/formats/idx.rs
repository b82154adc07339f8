//! IDX reader for MNIST and Fashion-MNIST (`u8` images of rank 3, `u8` labels of rank 1),
//! gzipped or raw.

use std::path::{Path, PathBuf};

use super::{
    DatasetError, MAX_FILE_BYTES, gunzip, gunzip_prefix, is_gzip, missing_error, read_raw,
};
use crate::dataset::{Dataset, DatasetKind, ImageShape, Split};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Number of classes of MNIST and Fashion-MNIST.
const NUM_CLASSES: usize = 10;

/// Base names (without `.gz`) of the image and label files of a split.
pub fn file_names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

/// `dir/name` if it exists, else `dir/name.gz` if that exists.
fn locate(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Load a split from `dir`, accepting `name` and `name.gz` for each file.
pub fn load_dir(kind: DatasetKind, dir: &Path, split: Split) -> Result<Dataset, DatasetError> {
    let (images_name, labels_name) = file_names(split);
    let images = locate(dir, images_name);
    let labels = locate(dir, labels_name);
    match (images, labels) {
        (Some(images), Some(labels)) => read_pair(kind, &images, &labels),
        (images, labels) => {
            let missing = [(images, images_name), (labels, labels_name)]
                .into_iter()
                .filter(|(found, _)| found.is_none())
                .map(|(_, name)| {
                    let p = dir.join(name);
                    format!("{} (or {}.gz)", p.display(), p.display())
                })
                .collect();
            Err(missing_error(kind, split, dir, missing))
        }
    }
}

/// Read an image file and a label file and check that they describe the same samples.
pub fn read_pair(
    kind: DatasetKind,
    images_path: &Path,
    labels_path: &Path,
) -> Result<Dataset, DatasetError> {
    let images = read_idx(images_path, "images", IMAGES_MAGIC, 3)?;
    let (dims, _) = parse(&images, images_path, "images", IMAGES_MAGIC, 3)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(DatasetError::BadDimensions {
            path: images_path.to_path_buf(),
            rows,
            cols,
        });
    }
    let labels = read_idx(labels_path, "labels", LABELS_MAGIC, 1)?;
    let (label_dims, label_offset) = parse(&labels, labels_path, "labels", LABELS_MAGIC, 1)?;
    if label_dims[0] != count {
        return Err(DatasetError::CountMismatch {
            images_path: images_path.to_path_buf(),
            images: u64::from(count),
            labels_path: labels_path.to_path_buf(),
            labels: u64::from(label_dims[0]),
        });
    }
    let mut labels = labels;
    labels.drain(..label_offset);
    if let Some((record, &label)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= NUM_CLASSES)
    {
        return Err(DatasetError::BadLabel {
            path: labels_path.to_path_buf(),
            record,
            label,
            num_classes: NUM_CLASSES,
        });
    }
    let mut pixels = images;
    pixels.drain(..header_len(3));
    let shape = ImageShape::new(1, rows as usize, cols as usize);
    Dataset::new(kind, shape, NUM_CLASSES, pixels, labels).map_err(|source| DatasetError::Invalid {
        path: images_path.to_path_buf(),
        source,
    })
}

/// Extra decompressed bytes read beyond what a gzipped file's header announces, so a few
/// trailing bytes are reported as such rather than as an oversized file.
const TRAILING_SLACK: u64 = 1 << 20;

/// Reads an IDX file, raw or gzipped. A gzipped file is decompressed only as far as its
/// header announces (plus [`TRAILING_SLACK`]), so a gzip bomb costs neither memory nor
/// time; dimensions describing more than [`MAX_FILE_BYTES`] are refused first.
fn read_idx(
    path: &Path,
    what: &'static str,
    magic: u32,
    ndims: usize,
) -> Result<Vec<u8>, DatasetError> {
    let raw = read_raw(path)?;
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    let header = gunzip_prefix(&raw, path, header_len(ndims) as u64)?;
    let (_, expected) = parse_header(&header, path, what, magic, ndims)?;
    gunzip(
        &raw,
        path,
        expected.saturating_add(TRAILING_SLACK).min(MAX_FILE_BYTES),
    )
}

/// Header length of an IDX file with `ndims` dimensions.
const fn header_len(ndims: usize) -> usize {
    4 + 4 * ndims
}

/// Validate the header of an IDX file of `u8` values with `ndims` dimensions and that the
/// body holds exactly the announced number of bytes; returns the dimensions and the data offset.
fn parse(
    bytes: &[u8],
    path: &Path,
    what: &'static str,
    magic: u32,
    ndims: usize,
) -> Result<(Vec<u32>, usize), DatasetError> {
    let (dims, expected) = parse_header(bytes, path, what, magic, ndims)?;
    let found = bytes.len() as u64;
    if found < expected {
        return Err(DatasetError::Truncated {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    if found > expected {
        return Err(DatasetError::TrailingBytes {
            path: path.to_path_buf(),
            extra: found - expected,
        });
    }
    Ok((dims, header_len(ndims)))
}

/// Validate the magic number and dimensions at the start of `bytes`; returns the
/// dimensions and the length of the whole file they announce (header included), which
/// is at most [`MAX_FILE_BYTES`].
fn parse_header(
    bytes: &[u8],
    path: &Path,
    what: &'static str,
    magic: u32,
    ndims: usize,
) -> Result<(Vec<u32>, u64), DatasetError> {
    let header = header_len(ndims);
    let truncated = |expected: u64| DatasetError::Truncated {
        path: path.to_path_buf(),
        expected,
        found: bytes.len() as u64,
    };
    let Some(magic_bytes) = bytes.first_chunk::<4>() else {
        return Err(truncated(header as u64));
    };
    let found = u32::from_be_bytes(*magic_bytes);
    if found != magic {
        return Err(DatasetError::BadMagic {
            path: path.to_path_buf(),
            what,
            expected: magic,
            found,
        });
    }
    let Some(dim_bytes) = bytes.get(4..header) else {
        return Err(truncated(header as u64));
    };
    let dims: Vec<u32> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let body = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)));
    let expected = body.and_then(|b| b.checked_add(header as u64));
    match expected {
        Some(expected) if expected <= MAX_FILE_BYTES => Ok((dims, expected)),
        _ => Err(DatasetError::DimensionsOverflow {
            path: path.to_path_buf(),
            dims,
            bytes: body,
            limit: MAX_FILE_BYTES,
        }),
    }
}
