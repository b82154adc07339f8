//! Checkpoints for bit-exact resume (`--checkpoint-every K`): everything one peer's next
//! rounds depend on, in one self-checking object per round in the run's store.
//!
//! A [`Checkpoint`] holds the weights, batch-norm buffers, optimizer state, learning-rate
//! schedule and early-stopping state, the gradient codec's state, the round to run next
//! and a fingerprint of the configuration. [`Checkpoint::encode`] writes it as
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `PLSCKPT\0` |
//! | 4 | format version, `u32` little-endian |
//! | 8 | header length `h`, `u64` little-endian |
//! | `h` | header: TOML (scalars, schedule state, section table) |
//! | ... | the sections the header lists, in order: raw little-endian `f32` vectors, codec bytes |
//! | 32 | SHA-256 of everything before it |
//!
//! The header is TOML rather than JSON because the schedule state holds `inf` (no best
//! loss yet), which JSON cannot carry; the large vectors are never text. A truncated or
//! altered object fails the checksum and is refused before anything is parsed.
//!
//! [`CheckpointStore`] keeps them under `checkpoints/{run_id}/rank{r}/round-{round:012}.ckpt`,
//! writing each under `staging/` first and renaming it into place, and keeps the two
//! newest: peers killed at the same moment can be one checkpoint apart, and still share a
//! round to resume from.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use peerless_data::{ObjectStore, StoreError};
use peerless_models::optim::{OptimizerKind, OptimizerState};
use peerless_models::schedule::{EarlyStopping, ReduceLrOnPlateau};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The encoding version this build writes and reads; bumped whenever the layout or the
/// header's meaning changes, so an old object is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// First bytes of every checkpoint object: tells a checkpoint from any other object.
const MAGIC: [u8; 8] = *b"PLSCKPT\0";
/// Magic, version and header length.
const PREFIX_LEN: usize = 8 + 4 + 8;
/// SHA-256 digest length.
const DIGEST_LEN: usize = 32;
/// Largest header accepted when decoding: far above any real one, it bounds the
/// allocation a corrupted length could ask for.
const MAX_HEADER: u64 = 16 << 20;

/// Section names of the fixed vectors; optimizer vectors are `optimizer/{name}`.
const WEIGHTS: &str = "weights";
const BUFFERS: &str = "buffers";
const CODEC: &str = "codec";
const OPTIMIZER_PREFIX: &str = "optimizer/";

/// Everything one peer needs to continue a run from the start of round [`Checkpoint::round`]
/// exactly as if it had never stopped.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The run it belongs to; part of its key, checked again on load.
    pub run_id: String,
    /// The peer that wrote it; part of its key, checked again on load.
    pub rank: u32,
    /// Number of peers of the run, for the caller to check against its configuration.
    pub world_size: u32,
    /// The next round to run (rounds before it are done and reflected in the state).
    pub round: u64,
    /// The epoch the next round belongs to (as the training loop counts them).
    pub epoch: u64,
    /// Position of the next round within its epoch (0 = the epoch's first round).
    pub epoch_round: u64,
    /// Caller-computed digest of every option the run's results depend on; a checkpoint
    /// is only loaded by a run with the same fingerprint.
    pub config_fingerprint: String,
    /// The flat trainable weights.
    pub weights: Vec<f32>,
    /// The flat batch-norm running statistics.
    pub buffers: Vec<f32>,
    /// The optimizer's moment vectors and step counter.
    pub optimizer: OptimizerState,
    /// The learning-rate schedule, with its best loss and patience counter.
    pub plateau: ReduceLrOnPlateau,
    /// The early-stopping state.
    pub early_stopping: EarlyStopping,
    /// The gradient codec's encoder state (`Codec::state`).
    pub codec_state: Vec<u8>,
    /// Small runtime fields the format has no slot for (for example the offload rule's
    /// last timing), as text.
    pub extra: BTreeMap<String, String>,
}

/// Why bytes are not a checkpoint this build can load; never a panic, whatever the input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// Shorter than the fixed parts of any checkpoint: cut off early.
    #[error("{len} bytes, shorter than the smallest checkpoint ({min} bytes): truncated")]
    TooShort {
        /// Bytes given.
        len: usize,
        /// Fixed size of magic, version, header length and checksum.
        min: usize,
    },
    /// Does not start with the checkpoint magic: some other object.
    #[error("not a peerless checkpoint (starts with {found:02x?})")]
    BadMagic {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// Written by a build with another layout.
    #[error("checkpoint format version {found}; this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The version in the object.
        found: u32,
    },
    /// The SHA-256 over the body does not match: truncated or corrupted in storage.
    #[error("SHA-256 checksum mismatch: the object is truncated or corrupted")]
    ChecksumMismatch,
    /// The header cannot be parsed (only possible with a matching checksum if the writer
    /// was broken).
    #[error("malformed header: {0}")]
    Header(String),
    /// The section table does not match the bytes that follow the header.
    #[error("malformed sections: {0}")]
    Sections(String),
}

/// Why a checkpoint cannot be encoded: a header value the format cannot carry exactly.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct EncodeError(String);

/// Everything that can go wrong saving, listing or loading checkpoints; each names the
/// object key involved.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The run id or rank does not make valid object keys.
    #[error("run id {run_id:?} cannot name checkpoint keys: {source}")]
    InvalidRunId {
        /// The run id given.
        run_id: String,
        /// Why the key is invalid.
        #[source]
        source: StoreError,
    },
    /// The store failed (the error names the store and key).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An object that is not a loadable checkpoint.
    #[error("checkpoint {key}: {source}")]
    Decode {
        /// The object's key.
        key: String,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
    /// The checkpoint cannot be encoded (a value the header cannot represent exactly).
    #[error("cannot encode checkpoint {key}: {source}")]
    Encode {
        /// The key it was to be written to.
        key: String,
        /// What could not be encoded.
        #[source]
        source: EncodeError,
    },
    /// Written by a run with another configuration: resuming would silently change it.
    #[error(
        "checkpoint {key} was written with configuration fingerprint {found:?}, this run's is \
         {expected:?}: resume with the same configuration, or start a new run id"
    )]
    FingerprintMismatch {
        /// The object's key.
        key: String,
        /// This run's fingerprint.
        expected: String,
        /// The checkpoint's.
        found: String,
    },
    /// A checkpoint of another run, rank or round than its key says.
    #[error(
        "checkpoint {key} holds run {found_run:?} rank {found_rank} round {found_round}; expected run {run_id:?} rank {rank} round {round}"
    )]
    WrongPeer {
        /// The object's key.
        key: String,
        /// Run id expected.
        run_id: String,
        /// Rank expected.
        rank: u32,
        /// Round expected.
        round: u64,
        /// Run id found.
        found_run: String,
        /// Rank found.
        found_rank: u32,
        /// Round found.
        found_round: u64,
    },
}

/// The TOML header: every field of [`Checkpoint`] except the large vectors, plus the
/// table of the sections that follow. Scalars first, tables after (TOML's order).
#[derive(Serialize, Deserialize)]
struct Header {
    run_id: String,
    rank: u32,
    world_size: u32,
    round: u64,
    epoch: u64,
    epoch_round: u64,
    config_fingerprint: String,
    optimizer: OptimizerHeader,
    plateau: ReduceLrOnPlateau,
    early_stopping: EarlyStopping,
    extra: BTreeMap<String, String>,
    sections: Vec<Section>,
}

/// [`OptimizerState`] without its vectors (they are sections).
#[derive(Serialize, Deserialize)]
struct OptimizerHeader {
    kind: OptimizerKind,
    step: u64,
    started: bool,
}

/// One raw section after the header.
#[derive(Serialize, Deserialize)]
struct Section {
    name: String,
    bytes: u64,
}

impl Checkpoint {
    /// The object bytes: magic, version, header, raw sections, SHA-256. Fails only when
    /// the header cannot carry a value exactly (integers beyond `i64::MAX`).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut vectors: Vec<(String, &[f32])> = vec![
            (WEIGHTS.into(), &self.weights),
            (BUFFERS.into(), &self.buffers),
        ];
        vectors.extend(
            self.optimizer
                .vectors
                .iter()
                .map(|(name, v)| (format!("{OPTIMIZER_PREFIX}{name}"), &v[..])),
        );
        let mut sections: Vec<Section> = vectors
            .iter()
            .map(|(name, v)| Section {
                name: name.clone(),
                bytes: 4 * v.len() as u64,
            })
            .collect();
        sections.push(Section {
            name: CODEC.into(),
            bytes: self.codec_state.len() as u64,
        });
        let header = Header {
            run_id: self.run_id.clone(),
            rank: self.rank,
            world_size: self.world_size,
            round: self.round,
            epoch: self.epoch,
            epoch_round: self.epoch_round,
            config_fingerprint: self.config_fingerprint.clone(),
            optimizer: OptimizerHeader {
                kind: self.optimizer.kind,
                step: self.optimizer.step,
                started: self.optimizer.started,
            },
            plateau: self.plateau.clone(),
            early_stopping: self.early_stopping.clone(),
            extra: self.extra.clone(),
            sections,
        };
        let text = toml::to_string(&header).map_err(|e| EncodeError(format!("header: {e}")))?;
        check_schedule_round_trip(&header, &text)?;

        let body: usize = header.sections.iter().map(|s| s.bytes as usize).sum();
        let mut out = Vec::with_capacity(PREFIX_LEN + text.len() + body + DIGEST_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        for (_, v) in &vectors {
            extend_f32(&mut out, v);
        }
        out.extend_from_slice(&self.codec_state);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        Ok(out)
    }

    /// Parses bytes written by [`Checkpoint::encode`], refusing (never panicking on)
    /// anything truncated, altered, foreign or of another format version.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
        let min = PREFIX_LEN + DIGEST_LEN;
        if bytes.len() < min {
            return Err(DecodeError::TooShort {
                len: bytes.len(),
                min,
            });
        }
        let found: [u8; 8] = bytes[..8].try_into().expect("length checked");
        if found != MAGIC {
            return Err(DecodeError::BadMagic { found });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("length checked"));
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion { found: version });
        }
        let (body, digest) = bytes.split_at(bytes.len() - DIGEST_LEN);
        if Sha256::digest(body).as_slice() != digest {
            return Err(DecodeError::ChecksumMismatch);
        }
        let header_len = u64::from_le_bytes(bytes[12..20].try_into().expect("length checked"));
        let rest = &body[PREFIX_LEN..];
        if header_len > MAX_HEADER || header_len > rest.len() as u64 {
            return Err(DecodeError::Header(format!(
                "length {header_len} exceeds the {} bytes that follow",
                rest.len()
            )));
        }
        let (text, mut data) = rest.split_at(header_len as usize);
        let text = std::str::from_utf8(text)
            .map_err(|e| DecodeError::Header(format!("not UTF-8: {e}")))?;
        let header: Header =
            toml::from_str(text).map_err(|e| DecodeError::Header(e.to_string()))?;

        let total = header
            .sections
            .iter()
            .try_fold(0u64, |sum, s| sum.checked_add(s.bytes));
        if total != Some(data.len() as u64) {
            return Err(DecodeError::Sections(format!(
                "the table lists {} bytes, {} follow the header",
                total.map_or_else(|| "more than 2^64".to_string(), |t| t.to_string()),
                data.len()
            )));
        }
        let (mut weights, mut buffers, mut codec_state) = (None, None, None);
        let mut vectors = BTreeMap::new();
        for section in &header.sections {
            let (raw, tail) = data.split_at(section.bytes as usize);
            data = tail;
            let name = section.name.as_str();
            let duplicate = || DecodeError::Sections(format!("section `{name}` appears twice"));
            if name == CODEC {
                if codec_state.replace(raw.to_vec()).is_some() {
                    return Err(duplicate());
                }
                continue;
            }
            let values = read_f32(raw).ok_or_else(|| {
                DecodeError::Sections(format!(
                    "section `{name}` has {} bytes, not a whole number of f32",
                    raw.len()
                ))
            })?;
            let slot = match name {
                WEIGHTS => &mut weights,
                BUFFERS => &mut buffers,
                _ => match name.strip_prefix(OPTIMIZER_PREFIX) {
                    Some(vector) if !vector.is_empty() => {
                        if vectors.insert(vector.to_string(), values).is_some() {
                            return Err(duplicate());
                        }
                        continue;
                    }
                    _ => {
                        return Err(DecodeError::Sections(format!("unknown section `{name}`")));
                    }
                },
            };
            if slot.replace(values).is_some() {
                return Err(duplicate());
            }
        }
        let missing = |name: &str| DecodeError::Sections(format!("section `{name}` is missing"));
        Ok(Checkpoint {
            run_id: header.run_id,
            rank: header.rank,
            world_size: header.world_size,
            round: header.round,
            epoch: header.epoch,
            epoch_round: header.epoch_round,
            config_fingerprint: header.config_fingerprint,
            weights: weights.ok_or_else(|| missing(WEIGHTS))?,
            buffers: buffers.ok_or_else(|| missing(BUFFERS))?,
            optimizer: OptimizerState {
                kind: header.optimizer.kind,
                step: header.optimizer.step,
                started: header.optimizer.started,
                vectors,
            },
            plateau: header.plateau,
            early_stopping: header.early_stopping,
            codec_state: codec_state.ok_or_else(|| missing(CODEC))?,
            extra: header.extra,
        })
    }
}

/// Checks that the schedule state reads back from `text` with the same bits: their
/// fields are private, so compare the exact `f64` widening of every finite value through
/// `serde_json` (non-finite values become `null` on both sides). A guard against a text
/// float format losing a bit, which would break bit-exact resume silently.
fn check_schedule_round_trip(header: &Header, text: &str) -> Result<(), EncodeError> {
    fn json<T: Serialize>(value: &T) -> Option<serde_json::Value> {
        serde_json::to_value(value).ok()
    }
    let back: Header =
        toml::from_str(text).map_err(|e| EncodeError(format!("the header reads back: {e}")))?;
    if json(&header.plateau) != json(&back.plateau)
        || json(&header.early_stopping) != json(&back.early_stopping)
    {
        return Err(EncodeError(
            "the schedule state does not survive the header's text format".into(),
        ));
    }
    Ok(())
}

/// Appends `values` as little-endian bytes.
fn extend_f32(out: &mut Vec<u8>, values: &[f32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
}

/// Little-endian `f32` values of `raw`, or `None` when its length is not a multiple of 4.
fn read_f32(raw: &[u8]) -> Option<Vec<f32>> {
    if !raw.len().is_multiple_of(4) {
        return None;
    }
    Some(
        raw.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// One peer's checkpoints in the run's object store: saves atomically, lists complete
/// ones, loads and checks them against this run and configuration.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    run_id: String,
    rank: u32,
    fingerprint: String,
    /// `checkpoints/{run_id}/rank{rank}/`.
    prefix: String,
}

/// How many complete checkpoints [`CheckpointStore::save`] keeps.
pub const KEEP: usize = 2;

impl CheckpointStore {
    /// The checkpoints of peer `rank` of run `run_id` in `store`, for a run whose
    /// configuration has fingerprint `config_fingerprint`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        run_id: &str,
        rank: u32,
        config_fingerprint: impl Into<String>,
    ) -> Result<Self, CheckpointError> {
        let prefix = format!("checkpoints/{run_id}/rank{rank}/");
        peerless_data::store::validate_key(&format!("{prefix}staging/round-0.ckpt")).map_err(
            |source| CheckpointError::InvalidRunId {
                run_id: run_id.to_string(),
                source,
            },
        )?;
        Ok(CheckpointStore {
            store,
            run_id: run_id.to_string(),
            rank,
            fingerprint: config_fingerprint.into(),
            prefix,
        })
    }

    /// Key of the complete checkpoint of `round`.
    pub fn key(&self, round: u64) -> String {
        format!("{}round-{round:012}.ckpt", self.prefix)
    }

    /// Key `round`'s checkpoint is written to before it is complete.
    pub fn staging_key(&self, round: u64) -> String {
        format!("{}staging/round-{round:012}.ckpt", self.prefix)
    }

    /// Writes `checkpoint` atomically (staging object, then renamed to its final key) and
    /// returns its key; then keeps it and the newest older one, deleting the rest
    /// (including checkpoints of later rounds left by an earlier attempt that got further,
    /// which this attempt will write again) and leftover staging objects. Pruning is best
    /// effort: a failure is logged, the new checkpoint stays valid.
    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<String, CheckpointError> {
        let key = self.key(checkpoint.round);
        self.check_identity(&key, checkpoint)?;
        let bytes = checkpoint
            .encode()
            .map_err(|source| CheckpointError::Encode {
                key: key.clone(),
                source,
            })?;
        let staging = self.staging_key(checkpoint.round);
        self.store.put(&staging, Bytes::from(bytes)).await?;
        self.store.rename(&staging, &key).await?;
        if let Err(e) = self.prune(checkpoint.round).await {
            tracing::warn!(rank = self.rank, "removing old checkpoints: {e}");
        }
        Ok(key)
    }

    /// Deletes every complete checkpoint but `kept` and the newest one before it, and
    /// every staging object.
    async fn prune(&self, kept: u64) -> Result<(), CheckpointError> {
        let rounds = self.list_rounds().await?;
        let previous = rounds.iter().copied().filter(|&r| r < kept).max();
        for round in rounds {
            if round != kept && Some(round) != previous {
                self.store.delete(&self.key(round)).await?;
            }
        }
        for key in self.store.list(&format!("{}staging/", self.prefix)).await? {
            self.store.delete(&key).await?;
        }
        Ok(())
    }

    /// Rounds of the complete checkpoints, ascending; staging objects and keys that are
    /// not checkpoints are ignored.
    pub async fn list_rounds(&self) -> Result<Vec<u64>, CheckpointError> {
        let mut rounds: Vec<u64> = self
            .store
            .list(&self.prefix)
            .await?
            .iter()
            .filter_map(|key| self.round_of(key))
            .collect();
        rounds.sort_unstable();
        rounds.dedup();
        Ok(rounds)
    }

    /// The round a complete checkpoint key names, if `key` is one.
    fn round_of(&self, key: &str) -> Option<u64> {
        let digits = key
            .strip_prefix(&self.prefix)?
            .strip_prefix("round-")?
            .strip_suffix(".ckpt")?;
        if digits.len() < 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The checkpoint of `round`, checked: intact, of this run and rank and round, and
    /// written with this run's configuration fingerprint.
    pub async fn load(&self, round: u64) -> Result<Checkpoint, CheckpointError> {
        let key = self.key(round);
        let bytes = self.store.get(&key).await?;
        let checkpoint = Checkpoint::decode(&bytes).map_err(|source| CheckpointError::Decode {
            key: key.clone(),
            source,
        })?;
        if checkpoint.round != round {
            return Err(self.wrong_peer(&key, round, &checkpoint));
        }
        self.check_identity(&key, &checkpoint)?;
        Ok(checkpoint)
    }

    /// The newest complete checkpoint, loaded and checked as [`CheckpointStore::load`]
    /// does, or `None` when there is none (a fresh start).
    pub async fn latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        match self.list_rounds().await?.last() {
            Some(&round) => self.load(round).await.map(Some),
            None => Ok(None),
        }
    }

    /// Deletes every checkpoint of this peer, complete or staged (a finished run's
    /// cleanup, or a deliberate fresh start).
    pub async fn delete_all(&self) -> Result<(), CheckpointError> {
        for key in self.store.list(&self.prefix).await? {
            self.store.delete(&key).await?;
        }
        Ok(())
    }

    /// Refuses a checkpoint of another run, rank or configuration.
    fn check_identity(&self, key: &str, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        if checkpoint.run_id != self.run_id || checkpoint.rank != self.rank {
            return Err(self.wrong_peer(key, checkpoint.round, checkpoint));
        }
        if checkpoint.config_fingerprint != self.fingerprint {
            return Err(CheckpointError::FingerprintMismatch {
                key: key.to_string(),
                expected: self.fingerprint.clone(),
                found: checkpoint.config_fingerprint.clone(),
            });
        }
        Ok(())
    }

    fn wrong_peer(&self, key: &str, round: u64, found: &Checkpoint) -> CheckpointError {
        CheckpointError::WrongPeer {
            key: key.to_string(),
            run_id: self.run_id.clone(),
            rank: self.rank,
            round,
            found_run: found.run_id.clone(),
            found_rank: found.rank,
            found_round: found.round,
        }
    }
}

#[cfg(test)]
mod tests {
    use peerless_data::store::LocalStore;
    use peerless_models::optim::OptimizerConfig;

    use super::*;

    const RUN: &str = "0123456789abcdef0123456789abcdef";
    const FINGERPRINT: &str = "cfg-v1-abc";

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn json<T: Serialize>(value: &T) -> serde_json::Value {
        serde_json::to_value(value).unwrap()
    }

    /// A checkpoint with real optimizer and schedule state and awkward float values.
    fn sample(round: u64) -> Checkpoint {
        let n = 50;
        let mut weights: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        weights[0] = -0.0;
        weights[1] = f32::from_bits(1); // the smallest subnormal
        weights[2] = f32::from_bits(0x7fc0_1234); // a NaN with a payload
        let mut optimizer = OptimizerConfig::default()
            .build(OptimizerKind::Adam, n)
            .unwrap();
        for s in 0..3 {
            let grad: Vec<f32> = (0..n).map(|i| ((i + s) % 7) as f32 - 3.0).collect();
            optimizer.step(&mut weights, &grad, 0.01).unwrap();
        }
        let mut plateau = ReduceLrOnPlateau::new(0.1, 0.5, 0, 1e-6).unwrap();
        plateau.step(2.5);
        plateau.step(2.7); // a cut: lr 0.05
        Checkpoint {
            run_id: RUN.into(),
            rank: 1,
            world_size: 3,
            round,
            epoch: 2,
            epoch_round: 4,
            config_fingerprint: FINGERPRINT.into(),
            weights,
            buffers: vec![1.0, 0.5, -1e-30],
            optimizer: optimizer.state(),
            plateau,
            // A fresh one: its best loss is +inf, which JSON could not carry.
            early_stopping: EarlyStopping::new(10, 0.0),
            codec_state: vec![0, 1, 2, 255, 7],
            extra: BTreeMap::from([("fastest_s".to_string(), "0.25".to_string())]),
        }
    }

    fn assert_same(a: &Checkpoint, b: &Checkpoint) {
        assert_eq!(
            (
                &a.run_id,
                a.rank,
                a.world_size,
                a.round,
                a.epoch,
                a.epoch_round
            ),
            (
                &b.run_id,
                b.rank,
                b.world_size,
                b.round,
                b.epoch,
                b.epoch_round
            )
        );
        assert_eq!(a.config_fingerprint, b.config_fingerprint);
        assert_eq!(bits(&a.weights), bits(&b.weights));
        assert_eq!(bits(&a.buffers), bits(&b.buffers));
        assert_eq!(a.optimizer.kind, b.optimizer.kind);
        assert_eq!(a.optimizer.step, b.optimizer.step);
        assert_eq!(a.optimizer.started, b.optimizer.started);
        assert_eq!(
            a.optimizer.vectors.keys().collect::<Vec<_>>(),
            b.optimizer.vectors.keys().collect::<Vec<_>>()
        );
        for (name, v) in &a.optimizer.vectors {
            assert_eq!(bits(v), bits(&b.optimizer.vectors[name]), "{name}");
        }
        assert_eq!(json(&a.plateau), json(&b.plateau));
        assert_eq!(a.plateau.lr().to_bits(), b.plateau.lr().to_bits());
        assert_eq!(json(&a.early_stopping), json(&b.early_stopping));
        assert_eq!(
            a.early_stopping.best().to_bits(),
            b.early_stopping.best().to_bits()
        );
        assert_eq!(a.codec_state, b.codec_state);
        assert_eq!(a.extra, b.extra);
    }

    #[test]
    fn encoding_round_trips_bit_exactly() {
        let original = sample(12);
        let bytes = original.encode().unwrap();
        assert_eq!(&bytes[..8], b"PLSCKPT\0");
        let decoded = Checkpoint::decode(&bytes).unwrap();
        assert_same(&original, &decoded);
        assert_eq!(decoded.early_stopping.best(), f32::INFINITY);
        assert_eq!(decoded.plateau.lr(), 0.05);
        assert_eq!(decoded.optimizer.step, 3);
        // The decoded optimizer state restores and continues like the original.
        let n = original.weights.len();
        let config = OptimizerConfig::default();
        let mut a = config.build(OptimizerKind::Adam, n).unwrap();
        let mut b = config.build(OptimizerKind::Adam, n).unwrap();
        a.restore(original.optimizer.clone()).unwrap();
        b.restore(decoded.optimizer.clone()).unwrap();
        let (mut wa, mut wb) = (vec![0.5; n], vec![0.5; n]);
        a.step(&mut wa, &vec![0.25; n], 0.01).unwrap();
        b.step(&mut wb, &vec![0.25; n], 0.01).unwrap();
        assert_eq!(bits(&wa), bits(&wb));
        // Encoding is deterministic.
        assert_eq!(bytes, decoded.encode().unwrap());
    }

    #[test]
    fn truncated_flipped_and_foreign_bytes_are_refused_without_panicking() {
        let bytes = sample(3).encode().unwrap();
        for len in [0, 1, 19, 20, 51, 52, 100, bytes.len() - 33, bytes.len() - 1] {
            let err = Checkpoint::decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::TooShort { .. } | DecodeError::ChecksumMismatch
                ),
                "{len} bytes: {err}"
            );
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            let err = Checkpoint::decode(&flipped).unwrap_err();
            let want = match at {
                0..8 => matches!(err, DecodeError::BadMagic { .. }),
                8..12 => matches!(err, DecodeError::UnsupportedVersion { .. }),
                _ => err == DecodeError::ChecksumMismatch,
            };
            assert!(want, "bit flipped in byte {at}: {err}");
        }
        let mut garbage = 0x1234_5678_9abc_def0u64;
        for len in [7, 52, 53, 400, 4096] {
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    garbage = garbage
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    (garbage >> 56) as u8
                })
                .collect();
            assert!(Checkpoint::decode(&noise).is_err(), "{len} random bytes");
            let mut with_magic = noise.clone();
            if len >= 12 {
                with_magic[..8].copy_from_slice(&MAGIC);
                with_magic[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
                assert!(Checkpoint::decode(&with_magic).is_err());
            }
        }
    }

    /// Bytes with a valid prefix and checksum around `header` and `data`: what only a
    /// broken writer could produce, checked past the checksum.
    fn sealed(header: &str, header_len: u64, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&header_len.to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    #[test]
    fn sealed_but_malformed_contents_are_refused() {
        let err = Checkpoint::decode(&sealed("not = [toml", 11, &[])).unwrap_err();
        assert!(matches!(err, DecodeError::Header(_)), "{err}");
        let err = Checkpoint::decode(&sealed("", u64::MAX, &[])).unwrap_err();
        assert!(matches!(err, DecodeError::Header(_)), "{err}");

        // A real header whose section table does not match the bytes after it.
        let bytes = sample(3).encode().unwrap();
        let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
        let header = std::str::from_utf8(&bytes[20..20 + len as usize]).unwrap();
        let data = &bytes[20 + len as usize..bytes.len() - DIGEST_LEN];
        let good = sealed(header, len, data);
        assert!(Checkpoint::decode(&good).is_ok());
        let err = Checkpoint::decode(&sealed(header, len, &data[1..])).unwrap_err();
        assert!(matches!(err, DecodeError::Sections(_)), "{err}");
        let renamed = header.replacen("name = \"weights\"", "name = \"bogus\"", 1);
        let err = Checkpoint::decode(&sealed(&renamed, renamed.len() as u64, data)).unwrap_err();
        assert_eq!(err, DecodeError::Sections("unknown section `bogus`".into()));
        let odd = header.replacen(
            "name = \"codec\"\nbytes = 5",
            "name = \"codec\"\nbytes = 4",
            1,
        );
        let odd = odd.replacen(
            "name = \"buffers\"\nbytes = 12",
            "name = \"buffers\"\nbytes = 13",
            1,
        );
        assert_ne!(odd, header, "the test edits the section table");
        let err = Checkpoint::decode(&sealed(&odd, odd.len() as u64, data)).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Sections(m) if m.contains("buffers")),
            "{err}"
        );
    }

    fn store_in(dir: &tempfile::TempDir) -> (Arc<dyn ObjectStore>, CheckpointStore) {
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let checkpoints = CheckpointStore::new(store.clone(), RUN, 1, FINGERPRINT).unwrap();
        (store, checkpoints)
    }

    #[tokio::test]
    async fn saves_keep_the_two_newest_and_load_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (store, checkpoints) = store_in(&dir);
        assert!(checkpoints.latest().await.unwrap().is_none());
        for round in [3, 6, 9] {
            let key = checkpoints.save(&sample(round)).await.unwrap();
            assert_eq!(
                key,
                format!("checkpoints/{RUN}/rank1/round-{round:012}.ckpt")
            );
        }
        assert_eq!(checkpoints.list_rounds().await.unwrap(), [6, 9]);
        let keys = store.list("checkpoints/").await.unwrap();
        assert_eq!(keys.len(), 2, "no staging object is left: {keys:?}");
        let latest = checkpoints.latest().await.unwrap().unwrap();
        assert_same(&sample(9), &latest);
        assert_same(&sample(6), &checkpoints.load(6).await.unwrap());
        let err = checkpoints.load(3).await.unwrap_err();
        assert!(
            matches!(err, CheckpointError::Store(StoreError::NotFound { .. })),
            "{err}"
        );

        // Resuming from round 6 and saving it again drops the later round of the attempt
        // that got further.
        checkpoints.save(&sample(6)).await.unwrap();
        assert_eq!(checkpoints.list_rounds().await.unwrap(), [6]);
        checkpoints.delete_all().await.unwrap();
        assert!(store.list("checkpoints/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn leftover_staging_and_foreign_keys_are_ignored_then_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let (store, checkpoints) = store_in(&dir);
        checkpoints.save(&sample(4)).await.unwrap();
        // A peer killed while writing round 10, and objects that are not checkpoints.
        let staged = checkpoints.staging_key(10);
        store
            .put(&staged, Bytes::from_static(b"half a checkpoint"))
            .await
            .unwrap();
        let prefix = format!("checkpoints/{RUN}/rank1/");
        for junk in ["round-12.ckpt", "round-000000000016.ckpt.bak", "notes.txt"] {
            store
                .put(&format!("{prefix}{junk}"), Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        assert_eq!(checkpoints.list_rounds().await.unwrap(), [4]);
        assert_eq!(checkpoints.latest().await.unwrap().unwrap().round, 4);
        checkpoints.save(&sample(8)).await.unwrap();
        assert_eq!(checkpoints.list_rounds().await.unwrap(), [4, 8]);
        assert!(
            !store.exists(&staged).await.unwrap(),
            "stale staging removed"
        );
        assert_same(&sample(8), &checkpoints.load(8).await.unwrap());
    }

    #[tokio::test]
    async fn corrupted_foreign_or_misconfigured_checkpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, checkpoints) = store_in(&dir);
        let key = checkpoints.save(&sample(5)).await.unwrap();

        // Another configuration: refused, naming both fingerprints and the key.
        let other = CheckpointStore::new(store.clone(), RUN, 1, "cfg-v2").unwrap();
        let err = other.latest().await.unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, CheckpointError::FingerprintMismatch { .. })
                && message.contains(FINGERPRINT)
                && message.contains("cfg-v2")
                && message.contains(&key),
            "{message}"
        );
        assert!(matches!(
            other.save(&sample(10)).await,
            Err(CheckpointError::FingerprintMismatch { .. })
        ));

        // Another rank's checkpoint copied under this rank's key.
        let mut foreign = sample(7);
        foreign.rank = 2;
        store
            .put(&checkpoints.key(7), Bytes::from(foreign.encode().unwrap()))
            .await
            .unwrap();
        let err = checkpoints.load(7).await.unwrap_err();
        assert!(
            matches!(err, CheckpointError::WrongPeer { found_rank: 2, .. }),
            "{err}"
        );
        assert!(matches!(
            checkpoints.save(&foreign).await,
            Err(CheckpointError::WrongPeer { .. })
        ));

        // One flipped bit in storage.
        let mut bytes = store.get(&key).await.unwrap().to_vec();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        store.put(&key, Bytes::from(bytes)).await.unwrap();
        let err = checkpoints.load(5).await.unwrap_err();
        assert!(
            matches!(
                &err,
                CheckpointError::Decode { key: k, source: DecodeError::ChecksumMismatch } if *k == key
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&key), "{err}");
    }

    #[test]
    fn run_ids_that_cannot_name_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        for bad in ["", "a b", "../x", "x/../y"] {
            assert!(
                matches!(
                    CheckpointStore::new(store.clone(), bad, 0, "f"),
                    Err(CheckpointError::InvalidRunId { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }
}
