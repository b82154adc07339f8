//! The binary wire format of every message between peers (version 5).
//!
//! A message is a fixed 128-byte header followed by a payload. All integers are
//! little-endian. Header layout:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `PLSG` |
//! | 4 | 2 | format version (5) |
//! | 6 | 1 | message kind ([`MessageKind`]) |
//! | 7 | 1 | codec id ([`CodecSpec::id`]) |
//! | 8 | 4 | codec parameter ([`CodecSpec::wire_param`]) |
//! | 12 | 4 | sender rank |
//! | 16 | 16 | run id |
//! | 32 | 8 | round |
//! | 40 | 4 | world size |
//! | 44 | 4 | chunk index |
//! | 48 | 8 | model fingerprint |
//! | 56 | 8 | element count of the gradient |
//! | 64 | 8 | total encoded payload length (all chunks) |
//! | 72 | 8 | offset of this chunk in the encoded payload |
//! | 80 | 4 | chunk count |
//! | 84 | 4 | payload length of this message |
//! | 88 | 4 | CRC-32 of this message's payload |
//! | 92 | 8 | sender's compute time for this gradient, in microseconds |
//! | 100 | 8 | sender's incarnation (random per process start) |
//! | 108 | 4 | flags: bit 0 = signed (a 64-byte signature follows the payload) |
//! | 112 | 4 | shard index (sharded exchange; 0 otherwise) |
//! | 116 | 8 | membership view of the round (sharded exchange; 0 otherwise) |
//! | 124 | 4 | CRC-32 of header bytes 0..124 |
//!
//! A signed message ends with an Ed25519 signature of the BLAKE3 digest of
//! everything before it (header and payload; see [`crate::auth`]).
//!
//! Version 2 added the compute time, version 3 the incarnation, the flags (so messages a
//! crashed process left in a queue are told from its successor's) and the
//! membership kinds, version 4 the shard index and the sharded exchange's kinds, version 5
//! the membership view a sharded message was sent under (so peers that disagree on who
//! owns a shard refuse each other's shards instead of mixing them) and the `Evict` kind;
//! older messages are refused as
//! [`WireError::UnsupportedVersion`].
//!
//! A gradient is encoded by its codec into one payload, which is split into
//! chunks of at most `max_chunk_bytes` (RabbitMQ refuses messages above
//! 128 MiB up to 3.13 and 16 MiB from 4.0), one message each.

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::codec::{CodecError, CodecSpec};

/// First four bytes of every message.
pub const MAGIC: [u8; 4] = *b"PLSG";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 5;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 128;
/// Length of the signature trailer of a signed message.
pub const SIGNATURE_LEN: usize = 64;
/// Header flag: the message is signed.
const FLAG_SIGNED: u32 = 1;
/// Offset of the header CRC, which covers every header byte before it.
const HEADER_CRC_AT: usize = HEADER_LEN - 4;
/// Default largest payload per message: 448 KiB, so a message with its header and
/// signature stays under the 512 KiB `max_message_size` of Amazon MQ's current
/// RabbitMQ brokers (upstream RabbitMQ 4 allows 16 MiB).
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 448 << 10;

/// Identifies one training run, so peers of different runs sharing a broker
/// never mix gradients; all peers of a run derive the same id from its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RunId(pub [u8; 16]);

impl RunId {
    /// The id of a named run: the first 16 bytes of SHA-256 of the name.
    pub fn from_name(name: &str) -> Self {
        let digest = Sha256::digest(name.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        RunId(id)
    }

    /// A fresh random id (for tests and throwaway runs).
    pub fn random() -> Self {
        RunId(rand::random())
    }

    /// The id as a number.
    pub fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// The id of a number (big-endian bytes, so hex forms match).
    pub fn from_u128(value: u128) -> Self {
        RunId(value.to_be_bytes())
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.as_u128())
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({self})")
    }
}

impl FromStr for RunId {
    type Err = std::num::ParseIntError;

    /// Parses the 32-hex-digit form written by `Display`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(RunId::from_u128)
    }
}

/// A fingerprint of the model being trained (name and parameter count), so a
/// peer running a different model is refused instead of averaged.
pub fn model_fingerprint(model_name: &str, parameter_count: u64) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(model_name.as_bytes());
    hasher.update([0u8]);
    hasher.update(parameter_count.to_le_bytes());
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// What a message carries: gradients, and the membership messages that let
/// peers start together, resume, and admit a restarted peer ([`crate::membership`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// One chunk of an encoded gradient.
    Gradient = 1,
    /// A peer announcing itself: identity, checkpoints, peers seen.
    Hello = 2,
    /// Reserved: a synchronisation point without data.
    Barrier = 3,
    /// A running peer telling the others that a restarted rank takes part again.
    Join = 4,
    /// A running peer's state, sent to a restarted rank so it can catch up.
    State = 5,
    /// One chunk of a peer's part of one shard of its gradient, sent to the shard's
    /// owner (sharded exchange, [`crate::exchange`]).
    Shard = 6,
    /// One chunk of an aggregated shard, sent by its owner to every peer.
    Reduced = 7,
    /// Where to fetch a gradient parked in the object store ([`crate::claim`]).
    Claim = 8,
    /// A running peer telling the others that ranks leave the sharded exchange's
    /// membership view from a given round ([`crate::membership`]).
    Evict = 9,
}

impl MessageKind {
    fn from_u8(value: u8) -> Result<Self, WireError> {
        match value {
            1 => Ok(MessageKind::Gradient),
            2 => Ok(MessageKind::Hello),
            3 => Ok(MessageKind::Barrier),
            4 => Ok(MessageKind::Join),
            5 => Ok(MessageKind::State),
            6 => Ok(MessageKind::Shard),
            7 => Ok(MessageKind::Reduced),
            8 => Ok(MessageKind::Claim),
            9 => Ok(MessageKind::Evict),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// Everything a receiver needs to route, validate and reassemble one message.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// What the message carries.
    pub kind: MessageKind,
    /// The run the sender belongs to.
    pub run_id: RunId,
    /// Training round (optimizer step) the gradient belongs to.
    pub round: u64,
    /// Rank of the sender, `0 .. world_size`.
    pub sender: u32,
    /// Number of peers the sender expects.
    pub world_size: u32,
    /// [`model_fingerprint`] of the sender's model.
    pub model_fingerprint: u64,
    /// Codec that produced the payload.
    pub codec: CodecSpec,
    /// Number of `f32` elements of the decoded gradient.
    pub element_count: u64,
    /// Length of the whole encoded payload, all chunks together.
    pub total_payload_len: u64,
    /// Offset of this chunk's payload within the whole encoded payload.
    pub chunk_offset: u64,
    /// Index of this chunk, `0 .. chunk_count`.
    pub chunk_index: u32,
    /// Number of chunks of the payload (at least 1).
    pub chunk_count: u32,
    /// Length of this message's payload (set by [`encode_message`]).
    pub payload_len: u32,
    /// CRC-32 of this message's payload (set by [`encode_message`]).
    pub payload_crc: u32,
    /// Time the sender spent computing this gradient, in microseconds (0 when
    /// unknown); lets slow peers size their serverless offload. Every chunk of
    /// a message carries the same value.
    pub compute_micros: u64,
    /// Random number the sending process drew at start: a restarted peer has a
    /// new one, so what its predecessor left in the queues is recognised.
    pub incarnation: u64,
    /// Whether a signature follows the payload (set by [`chunk_messages_signed`]).
    pub signed: bool,
    /// Which shard of the gradient a [`MessageKind::Shard`] or
    /// [`MessageKind::Reduced`] message carries (0 for other kinds).
    pub shard: u32,
    /// The digest of the membership view the sender used for this round's shard
    /// owners (sharded exchange, [`crate::exchange::view_digest`]; 0 for other kinds):
    /// a receiver with another view refuses the message rather than mixing shards
    /// aggregated under different owners.
    pub view: u64,
}

impl Header {
    /// A gradient header for a single-chunk payload with an unknown compute
    /// time (0); chunk and length fields are filled in by [`encode_message`]
    /// and [`chunk_messages`].
    pub fn gradient(
        run_id: RunId,
        round: u64,
        sender: u32,
        world_size: u32,
        model_fingerprint: u64,
        codec: CodecSpec,
        element_count: u64,
    ) -> Self {
        Header {
            kind: MessageKind::Gradient,
            run_id,
            round,
            sender,
            world_size,
            model_fingerprint,
            codec,
            element_count,
            total_payload_len: 0,
            chunk_offset: 0,
            chunk_index: 0,
            chunk_count: 1,
            payload_len: 0,
            payload_crc: 0,
            compute_micros: 0,
            incarnation: 0,
            signed: false,
            shard: 0,
            view: 0,
        }
    }

    fn write(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_slice(&MAGIC);
        out.put_u16_le(FORMAT_VERSION);
        out.put_u8(self.kind as u8);
        out.put_u8(self.codec.id());
        out.put_u32_le(self.codec.wire_param());
        out.put_u32_le(self.sender);
        out.put_slice(&self.run_id.0);
        out.put_u64_le(self.round);
        out.put_u32_le(self.world_size);
        out.put_u32_le(self.chunk_index);
        out.put_u64_le(self.model_fingerprint);
        out.put_u64_le(self.element_count);
        out.put_u64_le(self.total_payload_len);
        out.put_u64_le(self.chunk_offset);
        out.put_u32_le(self.chunk_count);
        out.put_u32_le(self.payload_len);
        out.put_u32_le(self.payload_crc);
        out.put_u64_le(self.compute_micros);
        out.put_u64_le(self.incarnation);
        out.put_u32_le(if self.signed { FLAG_SIGNED } else { 0 });
        out.put_u32_le(self.shard);
        out.put_u64_le(self.view);
        let crc = crc32fast::hash(&out[start..]);
        out.put_u32_le(crc);
        debug_assert_eq!(out.len() - start, HEADER_LEN);
    }
}

/// A decoded message borrowing its payload from the received bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Message<'a> {
    /// The validated header.
    pub header: Header,
    /// This message's payload (one chunk of the encoded gradient).
    pub payload: &'a [u8],
    /// The signature trailer of a signed message.
    pub signature: Option<&'a [u8]>,
    /// The bytes a signature covers: header and payload.
    pub signed_bytes: &'a [u8],
}

/// Produces the signature of a message's header and payload.
pub trait Signer: Send + Sync {
    /// The signature of `signed_bytes`.
    fn sign(&self, signed_bytes: &[u8]) -> [u8; SIGNATURE_LEN];
}

/// Why bytes are not a valid message; decoding never panics, whatever the input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    /// Fewer bytes than the fixed header (or the field being read) needs.
    #[error("message truncated: {got} bytes, need at least {needed}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// Not a peerless message.
    #[error("bad magic {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A format version this build cannot read.
    #[error("unsupported wire format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// Version in the message.
        found: u16,
        /// Version understood here.
        supported: u16,
    },
    /// The header was corrupted.
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        /// CRC in the message.
        stored: u32,
        /// CRC of the bytes received.
        computed: u32,
    },
    /// The payload is not as long as the header says.
    #[error("payload length mismatch: header says {declared} bytes, message has {actual}")]
    LengthMismatch {
        /// Length in the header.
        declared: u64,
        /// Length received.
        actual: u64,
    },
    /// The payload was corrupted.
    #[error("payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadChecksum {
        /// CRC in the header.
        stored: u32,
        /// CRC of the payload received.
        computed: u32,
    },
    /// A message kind this build does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The header names an unknown codec or invalid codec parameters.
    #[error("bad codec in header: {0}")]
    Codec(#[from] CodecError),
    /// Chunk fields that contradict each other.
    #[error("inconsistent chunk fields: {0}")]
    Inconsistent(&'static str),
}

/// The round of a message that carries a round's data (a gradient, shard, result, claim
/// or a rejoining peer's state), read through [`decode`]; `None` for other kinds and for
/// anything that is not a valid message.
pub fn data_round(message: &[u8]) -> Option<u64> {
    let header = decode(message).ok()?.header;
    match header.kind {
        MessageKind::Gradient
        | MessageKind::Shard
        | MessageKind::Reduced
        | MessageKind::Claim
        | MessageKind::State => Some(header.round),
        MessageKind::Hello | MessageKind::Barrier | MessageKind::Join | MessageKind::Evict => None,
    }
}

/// Serialises `header` and `payload` into one message, filling in
/// `payload_len` and `payload_crc` from `payload`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes (use [`chunk_messages`]).
pub fn encode_message(header: &Header, payload: &[u8]) -> Bytes {
    encode_with(header, payload, None)
}

/// Like [`encode_message`] (unsigned), but frames `payload` in its own allocation: the
/// header is moved in front of it instead of both being copied into a new buffer, so a
/// gradient of hundreds of MB is not held twice.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes (use [`chunk_messages`]).
pub fn into_message(header: &Header, mut payload: Vec<u8>) -> Bytes {
    let mut header = header.clone();
    header.payload_len =
        u32::try_from(payload.len()).expect("payload longer than u32::MAX: chunk it");
    header.payload_crc = crc32fast::hash(&payload);
    header.signed = false;
    let mut head = BytesMut::with_capacity(HEADER_LEN);
    header.write(&mut head);
    payload.splice(0..0, head.iter().copied());
    Bytes::from(payload)
}

fn encode_with(header: &Header, payload: &[u8], signer: Option<&dyn Signer>) -> Bytes {
    let mut header = header.clone();
    header.payload_len =
        u32::try_from(payload.len()).expect("payload longer than u32::MAX: chunk it");
    header.payload_crc = crc32fast::hash(payload);
    header.signed = signer.is_some();
    let trailer = if header.signed { SIGNATURE_LEN } else { 0 };
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len() + trailer);
    header.write(&mut out);
    out.put_slice(payload);
    if let Some(signer) = signer {
        let signature = signer.sign(&out);
        out.put_slice(&signature);
    }
    out.freeze()
}

/// Number of chunks [`chunk_messages`] produces for a payload of `len` bytes.
pub fn chunk_count(len: usize, max_chunk_bytes: usize) -> usize {
    len.div_ceil(max_chunk_bytes.max(1)).max(1)
}

/// Splits an encoded gradient into messages of at most `max_chunk_bytes` of
/// payload each (at least one message, even for an empty payload), appending
/// them to `out`. `header`'s chunk and length fields are overwritten.
///
/// # Panics
/// If `max_chunk_bytes` is 0 or above `u32::MAX`, or there would be more than
/// `u32::MAX` chunks.
pub fn chunk_messages(
    header: &Header,
    payload: &[u8],
    max_chunk_bytes: usize,
    out: &mut Vec<Bytes>,
) {
    chunk_messages_signed(header, payload, max_chunk_bytes, out, None);
}

/// [`chunk_messages`], each message signed by `signer` when there is one.
///
/// # Panics
/// As [`chunk_messages`].
pub fn chunk_messages_signed(
    header: &Header,
    payload: &[u8],
    max_chunk_bytes: usize,
    out: &mut Vec<Bytes>,
    signer: Option<&dyn Signer>,
) {
    assert!(
        max_chunk_bytes > 0 && u32::try_from(max_chunk_bytes).is_ok(),
        "max_chunk_bytes must be in 1..=u32::MAX"
    );
    let count = chunk_count(payload.len(), max_chunk_bytes);
    let mut header = header.clone();
    header.total_payload_len = payload.len() as u64;
    header.chunk_count = u32::try_from(count).expect("too many chunks");
    let chunk = |index: usize| {
        let start = index * max_chunk_bytes;
        let end = (start + max_chunk_bytes).min(payload.len());
        let mut header = header.clone();
        header.chunk_index = index as u32;
        header.chunk_offset = start as u64;
        encode_with(&header, &payload[start.min(end)..end], signer)
    };
    if signer.is_some() && count > 1 {
        // Hashing and signing dominate: one message per task, in order.
        use rayon::prelude::*;
        let signed: Vec<Bytes> = (0..count).into_par_iter().map(chunk).collect();
        out.extend(signed);
    } else {
        out.extend((0..count).map(chunk));
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses and fully validates one message: magic, version, header checksum,
/// field consistency, payload length and payload checksum.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, WireError> {
    let truncated = |needed| WireError::Truncated {
        needed,
        got: bytes.len(),
    };
    if bytes.len() < 4 {
        return Err(truncated(4));
    }
    let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    if bytes.len() < 6 {
        return Err(truncated(6));
    }
    let version = u16_at(bytes, 4);
    if version != FORMAT_VERSION {
        return Err(WireError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(truncated(HEADER_LEN));
    }
    let stored = u32_at(bytes, HEADER_CRC_AT);
    let computed = crc32fast::hash(&bytes[..HEADER_CRC_AT]);
    if stored != computed {
        return Err(WireError::HeaderChecksum { stored, computed });
    }
    let header = Header {
        kind: MessageKind::from_u8(bytes[6])?,
        codec: CodecSpec::from_wire(bytes[7], u32_at(bytes, 8))?,
        sender: u32_at(bytes, 12),
        run_id: RunId(bytes[16..32].try_into().expect("16 bytes")),
        round: u64_at(bytes, 32),
        world_size: u32_at(bytes, 40),
        chunk_index: u32_at(bytes, 44),
        model_fingerprint: u64_at(bytes, 48),
        element_count: u64_at(bytes, 56),
        total_payload_len: u64_at(bytes, 64),
        chunk_offset: u64_at(bytes, 72),
        chunk_count: u32_at(bytes, 80),
        payload_len: u32_at(bytes, 84),
        payload_crc: u32_at(bytes, 88),
        compute_micros: u64_at(bytes, 92),
        incarnation: u64_at(bytes, 100),
        signed: u32_at(bytes, 108) & FLAG_SIGNED != 0,
        shard: u32_at(bytes, 112),
        view: u64_at(bytes, 116),
    };
    if u32_at(bytes, 108) & !FLAG_SIGNED != 0 {
        return Err(WireError::Inconsistent("unknown header flags"));
    }
    let trailer = if header.signed { SIGNATURE_LEN } else { 0 };
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != u64::from(header.payload_len) + trailer as u64 {
        return Err(WireError::LengthMismatch {
            declared: u64::from(header.payload_len) + trailer as u64,
            actual: body.len() as u64,
        });
    }
    let split = bytes.len() - trailer;
    let payload = &bytes[HEADER_LEN..split];
    let signed_bytes = &bytes[..split];
    let signature = header.signed.then(|| &bytes[split..]);
    if header.chunk_count == 0 {
        return Err(WireError::Inconsistent("chunk count is 0"));
    }
    if header.chunk_index >= header.chunk_count {
        return Err(WireError::Inconsistent(
            "chunk index is not below chunk count",
        ));
    }
    let end = header
        .chunk_offset
        .checked_add(u64::from(header.payload_len));
    if end.is_none_or(|end| end > header.total_payload_len) {
        return Err(WireError::Inconsistent(
            "chunk extends past the total payload length",
        ));
    }
    let computed = crc32fast::hash(payload);
    if computed != header.payload_crc {
        return Err(WireError::PayloadChecksum {
            stored: header.payload_crc,
            computed,
        });
    }
    Ok(Message {
        header,
        payload,
        signature,
        signed_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn header() -> Header {
        Header::gradient(
            RunId::from_name("test-run"),
            42,
            3,
            5,
            model_fingerprint("squeezenet1_1", 727_626),
            CodecSpec::TopK { ratio: 0.01 },
            727_626,
        )
    }

    #[test]
    fn a_payload_framed_in_place_is_the_same_message() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut h = header();
        h.total_payload_len = 1000;
        let framed = into_message(&h, payload.clone());
        assert_eq!(framed, encode_message(&h, &payload));
        assert_eq!(data_round(&framed), Some(42));
    }

    #[test]
    fn round_trip_single_message() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut h = header();
        h.total_payload_len = 1000;
        h.compute_micros = 1_234_567_890_123;
        h.incarnation = 0xdead_beef_0123_4567;
        h.view = 0x0123_4567_89ab_cdef;
        let bytes = encode_message(&h, &payload);
        assert_eq!(bytes.len(), HEADER_LEN + 1000);
        assert_eq!(&bytes[..4], b"PLSG");
        let message = decode(&bytes).unwrap();
        assert_eq!(message.payload, &payload[..]);
        assert_eq!(message.header.payload_len, 1000);
        assert_eq!(message.header.payload_crc, crc32fast::hash(&payload));
        assert_eq!(message.header.compute_micros, 1_234_567_890_123);
        assert_eq!(message.header.incarnation, 0xdead_beef_0123_4567);
        assert_eq!(message.header.view, 0x0123_4567_89ab_cdef);
        let mut expected = h.clone();
        expected.payload_len = 1000;
        expected.payload_crc = crc32fast::hash(&payload);
        assert_eq!(message.header, expected);
    }

    #[test]
    fn chunks_reassemble_to_the_payload() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let timed = Header {
            compute_micros: 25_000,
            ..header()
        };
        let mut messages = Vec::new();
        chunk_messages(&timed, &payload, 3000, &mut messages);
        assert_eq!(messages.len(), 4);
        let mut rebuilt = vec![0u8; payload.len()];
        for (i, bytes) in messages.iter().enumerate() {
            let m = decode(bytes).unwrap();
            assert_eq!(m.header.chunk_index as usize, i);
            assert_eq!(m.header.chunk_count, 4);
            assert_eq!(m.header.total_payload_len, 10_000);
            assert_eq!(m.header.compute_micros, 25_000);
            assert!(m.payload.len() <= 3000);
            let at = m.header.chunk_offset as usize;
            rebuilt[at..at + m.payload.len()].copy_from_slice(m.payload);
        }
        assert_eq!(rebuilt, payload);
        messages.clear();
        chunk_messages(&header(), &[], 3000, &mut messages);
        assert_eq!(messages.len(), 1);
        assert_eq!(decode(&messages[0]).unwrap().payload, b"");
    }

    #[test]
    fn typed_errors() {
        let bytes = encode_message(
            &Header {
                total_payload_len: 8,
                ..header()
            },
            &[1, 2, 3, 4, 5, 6, 7, 8],
        )
        .to_vec();
        assert!(matches!(
            decode(&bytes[..2]),
            Err(WireError::Truncated { needed: 4, got: 2 })
        ));
        assert!(matches!(
            decode(&bytes[..50]),
            Err(WireError::Truncated {
                needed: HEADER_LEN,
                got: 50
            })
        ));

        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad), Err(WireError::BadMagic { .. })));

        let mut bad = bytes.clone();
        bad[4] = 6;
        assert_eq!(
            decode(&bad),
            Err(WireError::UnsupportedVersion {
                found: 6,
                supported: FORMAT_VERSION
            })
        );

        let mut bad = bytes.clone();
        bad[HEADER_CRC_AT - 1] ^= 1; // view
        assert!(matches!(
            decode(&bad),
            Err(WireError::HeaderChecksum { .. })
        ));

        let mut bad = bytes.clone();
        bad[33] ^= 1; // round
        assert!(matches!(
            decode(&bad),
            Err(WireError::HeaderChecksum { .. })
        ));

        let mut bad = bytes.clone();
        bad[HEADER_LEN + 3] ^= 0x40;
        assert!(matches!(
            decode(&bad),
            Err(WireError::PayloadChecksum { .. })
        ));

        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(WireError::LengthMismatch {
                declared: 8,
                actual: 7
            })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(WireError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn older_versions_are_refused() {
        let payload = [5u8; 8];
        let v5 = encode_message(
            &Header {
                total_payload_len: 8,
                ..header()
            },
            &payload,
        );
        // Version 1 ended the header after 92 bytes, version 2 after 100, version 3
        // after 112, version 4 after 116; each then had the CRC of the bytes before it.
        for (version, fields) in [(1u16, 92usize), (2, 100), (3, 112), (4, 116)] {
            let mut old = v5[..fields].to_vec();
            old[4..6].copy_from_slice(&version.to_le_bytes());
            let crc = crc32fast::hash(&old);
            old.extend_from_slice(&crc.to_le_bytes());
            old.extend_from_slice(&payload);
            let expected = Err(WireError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
            assert_eq!(decode(&old), expected);
            assert_eq!(decode(&old[..fields + 4]), expected);
            assert_eq!(decode(&old[..6]), expected);
        }
    }

    #[test]
    fn gradient_header_has_unknown_compute_time() {
        assert_eq!(header().compute_micros, 0);
        let bytes = encode_message(&header(), &[]);
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(decode(&bytes).unwrap().header.compute_micros, 0);
    }

    #[test]
    fn inconsistent_chunk_fields_are_rejected() {
        let payload = [0u8; 16];
        let cases = [
            Header {
                total_payload_len: 16,
                chunk_count: 0,
                ..header()
            },
            Header {
                total_payload_len: 16,
                chunk_index: 2,
                chunk_count: 2,
                ..header()
            },
            Header {
                total_payload_len: 20,
                chunk_offset: 8,
                ..header()
            },
            Header {
                total_payload_len: 16,
                chunk_offset: u64::MAX,
                ..header()
            },
        ];
        for h in cases {
            assert!(
                matches!(
                    decode(&encode_message(&h, &payload)),
                    Err(WireError::Inconsistent(_))
                ),
                "{h:?}"
            );
        }
    }

    #[test]
    fn never_panics_on_random_or_mutated_bytes() {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let valid = encode_message(
            &Header {
                total_payload_len: 64,
                ..header()
            },
            &[7u8; 64],
        )
        .to_vec();
        assert!(decode(&valid).is_ok());
        for len in 0..valid.len() {
            assert!(decode(&valid[..len]).is_err());
        }
        for _ in 0..20_000 {
            let len = rng.random_range(0..300);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && len >= 6 {
                bytes[..4].copy_from_slice(&MAGIC);
                bytes[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            }
            let _ = decode(&bytes);
            let mut mutated = valid.clone();
            let flips = rng.random_range(1..4);
            for bit in rand::seq::index::sample(&mut rng, mutated.len() * 8, flips) {
                mutated[bit / 8] ^= 1 << (bit % 8);
            }
            assert!(decode(&mutated).is_err(), "a flipped bit must be detected");
        }
    }

    #[test]
    fn run_ids_and_fingerprints() {
        assert_eq!(RunId::from_name("a"), RunId::from_name("a"));
        assert_ne!(RunId::from_name("a"), RunId::from_name("b"));
        let id = RunId::random();
        assert_eq!(id.to_string().parse::<RunId>().unwrap(), id);
        assert_eq!(id.to_string().len(), 32);
        assert_eq!(RunId::from_u128(id.as_u128()), id);
        assert_ne!(model_fingerprint("vgg11", 1), model_fingerprint("vgg11", 2));
        assert_ne!(model_fingerprint("vgg11", 1), model_fingerprint("vgg1", 11));
        assert_eq!(model_fingerprint("vgg11", 1), model_fingerprint("vgg11", 1));
    }
}
