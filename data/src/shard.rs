//! The binary shard/batch object: a fixed 52-byte little-endian header followed by the raw
//! `u8` pixels (NCHW) and the `u8` labels.
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | `[u8; 8]` | magic `PLRSHARD` |
//! | 8 | `u16` | format version ([`FORMAT_VERSION`]) |
//! | 10 | `u8` | dataset kind ([`DatasetKind::code`]) |
//! | 11 | `u8` | flags (0) |
//! | 12 | `u32` x 3 | channels, height, width |
//! | 24 | `u32` | number of classes |
//! | 28 | `u64` | image count |
//! | 36 | `u64` | payload length (`count * (c*h*w + 1)`) |
//! | 44 | `u32` | CRC-32 of the payload |
//! | 48 | `u32` | CRC-32 of bytes 0..48 |

use crate::dataset::{Dataset, DatasetKind, ImageShape, InvalidDataset};

/// First eight bytes of every shard object.
pub const MAGIC: [u8; 8] = *b"PLRSHARD";
/// Version written by this code; newer versions are refused.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 52;

/// The decoded header of a shard object, readable without touching the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Format version of the object.
    pub version: u16,
    /// Dataset the images come from.
    pub kind: DatasetKind,
    /// Shape of each image.
    pub shape: ImageShape,
    /// Number of classes.
    pub num_classes: usize,
    /// Number of images.
    pub count: u64,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// CRC-32 of the payload.
    pub payload_crc32: u32,
}

/// Why bytes are not a valid shard object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// Does not start with [`MAGIC`]: not a shard object at all.
    #[error("not a peerless shard: bad magic bytes {found:02x?} (expected \"PLRSHARD\")")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// Shorter than the header.
    #[error("truncated shard header: {found} bytes, the header alone is {HEADER_LEN}")]
    TruncatedHeader {
        /// Bytes present.
        found: usize,
    },
    /// Written by a newer (or unknown) format version.
    #[error(
        "shard format version {found} is not supported (this build reads version {FORMAT_VERSION}); upgrade peerless or re-run the split"
    )]
    UnsupportedVersion {
        /// Version found.
        found: u16,
    },
    /// The header checksum does not match: the header is corrupt.
    #[error("corrupt shard header: CRC-32 {found:#010x}, expected {expected:#010x}")]
    HeaderChecksum {
        /// Stored checksum.
        expected: u32,
        /// Computed checksum.
        found: u32,
    },
    /// The header fields contradict each other.
    #[error("inconsistent shard header: {0}")]
    InconsistentHeader(String),
    /// Fewer payload bytes than the header announces.
    #[error("truncated shard: payload should be {expected} bytes, {found} present")]
    Truncated {
        /// Bytes announced.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// More bytes than the header announces.
    #[error("shard has {extra} unexpected bytes after its payload")]
    TrailingBytes {
        /// Surplus bytes.
        extra: u64,
    },
    /// The payload checksum does not match: the data is corrupt.
    #[error("corrupt shard payload: CRC-32 {found:#010x}, expected {expected:#010x}")]
    PayloadChecksum {
        /// Stored checksum.
        expected: u32,
        /// Computed checksum.
        found: u32,
    },
    /// The payload does not form a valid dataset (e.g. a label out of range).
    #[error("invalid shard contents: {0}")]
    Invalid(#[from] InvalidDataset),
}

/// CRC-32 (IEEE) of `data`, the checksum used in shard headers and manifests.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Serialise a dataset as one shard object.
pub fn encode(dataset: &Dataset) -> Vec<u8> {
    let shape = dataset.shape();
    let payload_len = dataset.pixels().len() + dataset.labels().len();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(dataset.pixels());
    hasher.update(dataset.labels());
    let payload_crc = hasher.finalize();

    let mut out = Vec::with_capacity(HEADER_LEN + payload_len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(dataset.kind().code());
    out.push(0);
    for dim in [
        shape.channels,
        shape.height,
        shape.width,
        dataset.num_classes(),
    ] {
        out.extend_from_slice(&(dim as u32).to_le_bytes());
    }
    out.extend_from_slice(&(dataset.len() as u64).to_le_bytes());
    out.extend_from_slice(&(payload_len as u64).to_le_bytes());
    out.extend_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(dataset.pixels());
    out.extend_from_slice(dataset.labels());
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Validate and decode the header of a shard object.
pub fn read_header(bytes: &[u8]) -> Result<ShardHeader, ShardError> {
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err(ShardError::BadMagic {
            found: bytes[..n].to_vec(),
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(ShardError::TruncatedHeader { found: bytes.len() });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(ShardError::UnsupportedVersion { found: version });
    }
    let expected = u32_at(bytes, 48);
    let found = crc32(&bytes[..48]);
    if expected != found {
        return Err(ShardError::HeaderChecksum { expected, found });
    }
    let kind = DatasetKind::from_code(bytes[10]).ok_or_else(|| {
        ShardError::InconsistentHeader(format!("unknown dataset code {}", bytes[10]))
    })?;
    if bytes[11] != 0 {
        return Err(ShardError::InconsistentHeader(format!(
            "unknown flags {:#04x}",
            bytes[11]
        )));
    }
    let shape = ImageShape::new(
        u32_at(bytes, 12) as usize,
        u32_at(bytes, 16) as usize,
        u32_at(bytes, 20) as usize,
    );
    let num_classes = u32_at(bytes, 24) as usize;
    let count = u64_at(bytes, 28);
    let payload_len = u64_at(bytes, 36);
    let per_image = (shape.channels as u64)
        .checked_mul(shape.height as u64)
        .and_then(|v| v.checked_mul(shape.width as u64))
        .and_then(|v| v.checked_add(1));
    let expected_len = per_image.and_then(|p| p.checked_mul(count));
    if expected_len != Some(payload_len) {
        return Err(ShardError::InconsistentHeader(format!(
            "payload length {payload_len} does not match {count} images of {shape} plus labels"
        )));
    }
    Ok(ShardHeader {
        version,
        kind,
        shape,
        num_classes,
        count,
        payload_len,
        payload_crc32: u32_at(bytes, 44),
    })
}

/// Decode a shard object, rejecting foreign, newer, truncated or corrupt bytes.
pub fn decode(bytes: &[u8]) -> Result<Dataset, ShardError> {
    let header = read_header(bytes)?;
    let payload = &bytes[HEADER_LEN..];
    let found = payload.len() as u64;
    if found < header.payload_len {
        return Err(ShardError::Truncated {
            expected: header.payload_len,
            found,
        });
    }
    if found > header.payload_len {
        return Err(ShardError::TrailingBytes {
            extra: found - header.payload_len,
        });
    }
    let crc = crc32(payload);
    if crc != header.payload_crc32 {
        return Err(ShardError::PayloadChecksum {
            expected: header.payload_crc32,
            found: crc,
        });
    }
    let pixel_len = payload.len() - header.count as usize;
    let (pixels, labels) = payload.split_at(pixel_len);
    Ok(Dataset::new(
        header.kind,
        header.shape,
        header.num_classes,
        pixels.to_vec(),
        labels.to_vec(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dataset {
        let shape = ImageShape::new(3, 2, 2);
        let pixels: Vec<u8> = (0..36).collect();
        Dataset::new(DatasetKind::Cifar10, shape, 10, pixels, vec![1, 9, 0]).unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let d = sample();
        let bytes = encode(&d);
        assert_eq!(bytes.len(), HEADER_LEN + 36 + 3);
        assert_eq!(&bytes[..8], b"PLRSHARD");
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 36], d.pixels());
        assert_eq!(&bytes[HEADER_LEN + 36..], &[1, 9, 0]);
        let h = read_header(&bytes).unwrap();
        assert_eq!(h.count, 3);
        assert_eq!(h.shape, ImageShape::new(3, 2, 2));
        assert_eq!(h.kind, DatasetKind::Cifar10);
        assert_eq!(decode(&bytes).unwrap(), d);
        let empty = d.subset(&[]).unwrap();
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn detects_truncation_and_trailing_bytes() {
        let bytes = encode(&sample());
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(ShardError::Truncated {
                expected: 39,
                found: 38
            })
        );
        assert_eq!(
            decode(&bytes[..20]),
            Err(ShardError::TruncatedHeader { found: 20 })
        );
        assert_eq!(
            decode(&bytes[..4]),
            Err(ShardError::TruncatedHeader { found: 4 })
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(ShardError::TrailingBytes { extra: 1 }));
    }

    #[test]
    fn detects_foreign_newer_and_corrupt_objects() {
        let bytes = encode(&sample());
        let err =
            decode(b"\x89PNG\r\n\x1a\nrest of a png file..........................").unwrap_err();
        assert!(matches!(err, ShardError::BadMagic { .. }));
        assert!(err.to_string().contains("not a peerless shard"), "{err}");

        let mut newer = bytes.clone();
        newer[8..10].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(
            decode(&newer),
            Err(ShardError::UnsupportedVersion { found: 2 })
        );

        let mut bad_header = bytes.clone();
        bad_header[13] ^= 1;
        assert!(matches!(
            decode(&bad_header),
            Err(ShardError::HeaderChecksum { .. })
        ));

        for at in [HEADER_LEN, HEADER_LEN + 20, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(
                matches!(decode(&bad), Err(ShardError::PayloadChecksum { .. })),
                "flip at {at}"
            );
        }
    }
}
