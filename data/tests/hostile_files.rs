//! Dataset files and shard objects built to hurt (issue 16, item 8): IDX headers whose
//! dimensions overflow or exceed the file, gzip bombs, truncated shards. Each is refused
//! with an error naming the file and the problem, quickly and without allocating what the
//! file claims.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use peerless_data::formats::{DatasetError, MAX_FILE_BYTES, idx};
use peerless_data::shard::{self, HEADER_LEN, ShardError};
use peerless_data::{Dataset, DatasetKind, ImageShape, Split, load};

fn idx_file(magic: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, magic];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Writes a valid 3-image label file and `images` as the training images of `dir`.
fn write_train(dir: &Path, images: &[u8], gzipped: bool) -> std::path::PathBuf {
    let (images_name, labels_name) = idx::file_names(Split::Train);
    std::fs::write(dir.join(labels_name), idx_file(1, &[3], &[1, 2, 3])).unwrap();
    let path = if gzipped {
        dir.join(format!("{images_name}.gz"))
    } else {
        dir.join(images_name)
    };
    std::fs::write(&path, images).unwrap();
    path
}

fn load_train(dir: &Path) -> DatasetError {
    let start = Instant::now();
    let err = load(DatasetKind::Mnist, Some(dir), Split::Train).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "refusing took {:?}",
        start.elapsed()
    );
    err
}

#[test]
fn idx_dimensions_that_overflow_or_exceed_the_file_are_refused() {
    for gzipped in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        // 2^96 bytes: the product overflows 64 bits.
        let header = idx_file(3, &[u32::MAX, u32::MAX, u32::MAX], &[0; 16]);
        let file = if gzipped { gz(&header) } else { header };
        let path = write_train(dir.path(), &file, gzipped);
        let err = load_train(dir.path());
        match &err {
            DatasetError::DimensionsOverflow {
                dims, bytes, limit, ..
            } => {
                assert_eq!(dims, &[u32::MAX; 3]);
                assert_eq!(*bytes, None);
                assert_eq!(*limit, MAX_FILE_BYTES);
            }
            other => panic!("expected DimensionsOverflow, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("more than 2^64"), "{message}");

        // Fits in 64 bits, but far over any dataset file.
        let header = idx_file(3, &[1 << 20, 1 << 10, 1 << 10], &[0; 16]);
        let file = if gzipped { gz(&header) } else { header };
        write_train(dir.path(), &file, gzipped);
        let err = load_train(dir.path());
        assert!(
            matches!(err, DatasetError::DimensionsOverflow { bytes: Some(b), .. } if b == 1 << 40),
            "{err}"
        );

        // Small enough, but the file holds less than its header announces.
        let header = idx_file(3, &[1000, 28, 28], &[0; 16]);
        let file = if gzipped { gz(&header) } else { header };
        write_train(dir.path(), &file, gzipped);
        let err = load_train(dir.path());
        assert!(
            matches!(
                err,
                DatasetError::Truncated {
                    expected: 784_016,
                    found: 32,
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn a_gzip_bomb_is_stopped_at_what_the_header_announces() {
    let dir = tempfile::tempdir().unwrap();
    // Announces three 2x3 images (34 bytes), then unpacks to 32 MiB of zeros.
    let mut bomb = idx_file(3, &[3, 2, 3], &[0; 18]);
    bomb.resize(32 << 20, 0);
    let bomb = gz(&bomb);
    assert!(bomb.len() < 64 << 10, "the bomb is {} bytes", bomb.len());
    let path = write_train(dir.path(), &bomb, true);
    let err = load_train(dir.path());
    match &err {
        DatasetError::TooLarge { limit, gzip, .. } => {
            assert!(*gzip);
            // What the header announces plus a little slack, not the absolute cap.
            assert!(*limit < 2 << 20, "limit {limit}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("once decompressed"), "{message}");
}

fn sample_shard() -> Vec<u8> {
    let shape = ImageShape::new(1, 4, 4);
    let pixels: Vec<u8> = (0..48).collect();
    let dataset = Dataset::new(DatasetKind::Mnist, shape, 10, pixels, vec![1, 2, 3]).unwrap();
    shard::encode(&dataset)
}

#[test]
fn every_truncation_of_a_shard_is_a_clear_error() {
    let bytes = sample_shard();
    assert!(shard::decode(&bytes).is_ok());
    for len in 0..bytes.len() {
        let err = shard::decode(&bytes[..len]).unwrap_err();
        let expected = match len {
            l if l < HEADER_LEN => {
                matches!(err, ShardError::TruncatedHeader { found } if found == l)
            }
            l => matches!(
                err,
                ShardError::Truncated { expected: 51, found } if found == (l - HEADER_LEN) as u64
            ),
        };
        assert!(expected, "length {len}: {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn a_shard_header_claiming_huge_counts_is_refused_without_allocating() {
    let mut bytes = sample_shard();
    // Claim 2^40 images of the same shape with a matching payload length, and re-seal the
    // header checksum so only the sizes are wrong.
    let count: u64 = 1 << 40;
    bytes[28..36].copy_from_slice(&count.to_le_bytes());
    bytes[36..44].copy_from_slice(&(count * 17).to_le_bytes());
    let crc = shard::crc32(&bytes[..48]);
    bytes[48..52].copy_from_slice(&crc.to_le_bytes());
    let err = shard::decode(&bytes).unwrap_err();
    assert!(
        matches!(err, ShardError::Truncated { expected, found: 51 } if expected == count * 17),
        "{err:?}"
    );
    assert!(err.to_string().contains("truncated shard"), "{err}");

    // Dimensions whose product overflows: inconsistent, not a panic.
    let mut bytes = sample_shard();
    for at in [12, 16, 20] {
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    let crc = shard::crc32(&bytes[..48]);
    bytes[48..52].copy_from_slice(&crc.to_le_bytes());
    let err = shard::decode(&bytes).unwrap_err();
    assert!(matches!(err, ShardError::InconsistentHeader(_)), "{err:?}");
}
