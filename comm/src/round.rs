//! One averaging round: send the local gradient as the run's [`Exchange`]
//! says, collect the other ranks' contributions, and aggregate them in rank
//! order (see [`crate::exchange`] for the all-to-all and sharded rounds).
//!
//! Validation of every incoming message, in this order. No message can end a
//! round or a run: each one that fails a check is acknowledged, dropped,
//! counted by reason in [`Rejections`] and logged once per sender and reason.
//! 1. undecodable bytes are rejected (`malformed`, or `bad_checksum` for a
//!    corrupted header or payload);
//! 2. another run's messages are ignored (`foreign_run`);
//! 3. an invalid or own sender rank (`bad_sender`); in an authenticated run a
//!    message that does not verify under its claimed sender's key
//!    (`unauthenticated`);
//! 4. membership messages go to [`crate::membership`]; other kinds are ignored
//!    (`other_kind`);
//! 5. a different world size, model fingerprint, element count or codec
//!    (`mismatched`: peers configured differently are refused when they meet,
//!    so only a forgery or a leftover gets here);
//! 6. a message of an earlier process of its rank (`old_incarnation`); an
//!    older round (`stale_round`); a round beyond the small window of rounds
//!    kept ahead (`far_future`); a later round within it is kept
//!    (`buffered_future`); a rank not taking part (`not_member`); a shard
//!    or result sent under another membership view than this peer's for the
//!    round (`other_view`, sharded exchange); a shard sent to a peer that does
//!    not own it, or a result from a peer that does not own its shard
//!    (`misrouted`);
//! 7. sizes and chunk layout are checked against the expected gradient size
//!    before anything is allocated (`malformed`); a chunk seen twice
//!    (`duplicate`);
//! 8. a complete payload that its codec rejects, NaN and infinity included,
//!    is counted (`malformed`) and its rank stays missing.
//!
//! The event loop only waits on the transport and on the round's deadline:
//! no sleeping, no polling.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use std::collections::HashSet;
use std::sync::Arc;

use crate::aggregate::{Aggregation, Aggregator};
use crate::auth::Keyring;
use crate::average;
use crate::buffer::release_if_big;
use crate::claim::{Claim, ClaimStore};
use crate::codec::{Codec, CodecError};
use crate::exchange::Exchange;
use crate::transport::{Transport, TransportError};
use crate::wire::{self, HEADER_LEN, Header, MessageKind, RunId, WireError};

/// What a round does when some ranks have not delivered by the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnTimeout {
    /// Fail with [`RoundError::Timeout`] naming the missing ranks.
    #[default]
    Fail,
    /// Average the gradients that arrived and list the missing ranks in
    /// [`RoundStats::missing`]. Peers may then end the round with different
    /// averages; the caller decides whether to go on.
    AverageArrived,
}

impl OnTimeout {
    /// The `--on-timeout` value: `fail` or `partial`.
    pub fn name(self) -> &'static str {
        match self {
            OnTimeout::Fail => "fail",
            OnTimeout::AverageArrived => "partial",
        }
    }
}

impl std::str::FromStr for OnTimeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail" => Ok(OnTimeout::Fail),
            "partial" => Ok(OnTimeout::AverageArrived),
            _ => Err(format!("expected `fail` or `partial`, got {s:?}")),
        }
    }
}

/// Identity of this peer and the rules of its rounds; identical on every
/// peer of a run except `rank`.
#[derive(Clone, Debug)]
pub struct RoundConfig {
    /// The run; messages of other runs are ignored.
    pub run_id: RunId,
    /// This peer's rank, `0 .. world_size`.
    pub rank: u32,
    /// Number of peers.
    pub world_size: u32,
    /// [`wire::model_fingerprint`] of the model; peers must agree.
    pub model_fingerprint: u64,
    /// Number of `f32` elements of the gradient; peers must agree.
    pub element_count: usize,
    /// Largest payload per message; bigger encoded gradients are chunked.
    pub max_chunk_bytes: usize,
    /// How long a round waits for the other ranks after encoding (a sharded round waits
    /// for the parts, then for the results until two timeouts after the parts phase
    /// began, since an owner may wait a whole timeout before it sends its result).
    pub timeout: Duration,
    /// What happens when the timeout expires.
    pub on_timeout: OnTimeout,
    /// With [`OnTimeout::AverageArrived`], a rank that missed this many
    /// consecutive rounds is no longer waited for (0: always wait).
    pub evict_after: u32,
    /// This process's incarnation, sent in every header (see [`crate::membership`]).
    pub incarnation: u64,
    /// This peer's key and the run's roster: messages are signed and checked
    /// when it has them ([`crate::auth`]).
    pub keyring: Arc<Keyring>,
    /// Refuse to send a local gradient holding NaN or infinity (on by default;
    /// only attack simulations turn it off).
    pub check_own: bool,
    /// How the contributions are combined (`--aggregation`); peers must agree.
    pub aggregation: Aggregation,
    /// Each contribution is scaled to at most this L2 norm before aggregating
    /// (`--clip-norm`); peers must agree.
    pub clip_norm: Option<f32>,
    /// How gradients travel (`--exchange`); peers must agree.
    pub exchange: Exchange,
}

impl RoundConfig {
    /// A configuration with defaults: 448 KiB chunks, 10 minute timeout, fail on
    /// timeout (evicting after 2 missed rounds once switched to partial), a
    /// random incarnation.
    pub fn new(
        run_id: RunId,
        rank: u32,
        world_size: u32,
        model_fingerprint: u64,
        element_count: usize,
    ) -> Self {
        RoundConfig {
            run_id,
            rank,
            world_size,
            model_fingerprint,
            element_count,
            max_chunk_bytes: wire::DEFAULT_MAX_CHUNK_BYTES,
            timeout: Duration::from_secs(600),
            on_timeout: OnTimeout::Fail,
            evict_after: 2,
            incarnation: rand::random(),
            keyring: Arc::new(Keyring::none()),
            check_own: true,
            aggregation: Aggregation::Mean,
            clip_norm: None,
            exchange: Exchange::AllToAll,
        }
    }
}

/// Counts of incoming messages that were not used, by reason; non-zero
/// values point at misconfigured or misbehaving peers. Serialised as the
/// round metrics' `rejections` object (field names are the keys).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Rejections {
    /// Not a valid message, or a payload its codec rejects.
    pub malformed: u64,
    /// Header or payload checksum mismatch (corruption).
    pub bad_checksum: u64,
    /// Belongs to another run.
    pub foreign_run: u64,
    /// Belongs to an earlier round (e.g. arrived after a partial round ended).
    pub stale_round: u64,
    /// A chunk or gradient already received this round.
    pub duplicate: u64,
    /// Sender rank out of range or equal to ours.
    pub bad_sender: u64,
    /// A message kind the round does not use.
    pub other_kind: u64,
    /// Sent by an earlier process of a rank that has since restarted.
    pub old_incarnation: u64,
    /// Sent by a rank that is not taking part (evicted, not yet rejoined).
    pub not_member: u64,
    /// Not signed by the claimed sender's key (authenticated runs).
    pub unauthenticated: u64,
    /// Another world size, model, gradient length or codec.
    pub mismatched: u64,
    /// A round too far ahead to be a real peer's.
    pub far_future: u64,
    /// A shard sent to a peer that does not own it, or a shard's result from a
    /// peer that does not own it (sharded exchange).
    pub misrouted: u64,
    /// A shard or result sent under another membership view of the round than this
    /// peer's (sharded exchange): the two disagree on who owns what, so the message is
    /// not mixed in.
    pub other_view: u64,
    /// A claimed gradient object that could not be read from the store, or that
    /// differs from its claim (claim-check exchange).
    pub bad_claim: u64,
}

impl Rejections {
    /// Sum of all counts.
    pub fn total(&self) -> u64 {
        self.malformed
            + self.bad_checksum
            + self.foreign_run
            + self.stale_round
            + self.duplicate
            + self.bad_sender
            + self.other_kind
            + self.old_incarnation
            + self.not_member
            + self.unauthenticated
            + self.mismatched
            + self.far_future
            + self.misrouted
            + self.other_view
            + self.bad_claim
    }
}

/// What one round did and how long each part took, for logs and benchmarks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundStats {
    /// The round number.
    pub round: u64,
    /// Ranks averaged, this one included.
    pub contributors: u32,
    /// Ranks averaged this round, this one included, ascending.
    pub participants: Vec<u32>,
    /// Ranks waited for that did not deliver in time (only with [`OnTimeout::AverageArrived`]).
    pub missing: Vec<u32>,
    /// Ranks not waited for any more after this round (missed `evict_after` rounds in a
    /// row; in a sharded exchange, the round an announced eviction takes effect).
    pub evicted: Vec<u32>,
    /// Sharded exchange: shards whose owner's result did not arrive, ascending; this
    /// peer left them unchanged this round (a zero update), so they show where the
    /// gradient was lost and for how long.
    pub skipped_shards: Vec<u32>,
    /// Time the transport spent reconnecting during this round (the deadline was
    /// extended by it).
    pub outage: Duration,
    /// This peer's own gradient held NaN or infinity: it was not sent, and the
    /// round averaged the other peers' gradients only.
    pub withheld: bool,
    /// Bytes published (headers included).
    pub bytes_sent: u64,
    /// Messages published.
    pub messages_sent: u64,
    /// Bytes received during this round, whatever became of them.
    pub bytes_received: u64,
    /// Messages received during this round.
    pub messages_received: u64,
    /// Messages of later rounds kept for them.
    pub buffered_future: u64,
    /// Time to encode and frame the local gradient.
    pub encode_time: Duration,
    /// Time to publish (until the transport accepted everything).
    pub send_time: Duration,
    /// Time from the end of encoding until every rank had delivered (or the deadline).
    pub receive_time: Duration,
    /// Time to decode and average all contributions.
    pub decode_time: Duration,
    /// Time spent signing this peer's messages and verifying the others'
    /// signatures (zero in an unauthenticated run); part of the times above.
    pub auth_time: Duration,
    /// The verifying part of `auth_time`.
    pub verify_time: Duration,
    /// Messages not used, by reason.
    pub rejected: Rejections,
    /// Time each rank spent computing its gradient, indexed by rank (length
    /// `world_size`), as carried in the headers (this peer's own value
    /// included), so a slow peer can size its serverless offload. `None` for
    /// a rank that was not averaged or sent no compute time (0).
    pub peer_compute: Vec<Option<Duration>>,
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The local gradient could not be encoded.
    #[error("cannot encode the local gradient: {0}")]
    Encode(#[source] CodecError),
    /// Some ranks did not deliver before the deadline.
    #[error("round {round}: no gradient from rank(s) {} within {timeout:?}", RankList(.missing))]
    Timeout {
        /// The round.
        round: u64,
        /// The configured timeout.
        timeout: Duration,
        /// Ranks that did not deliver, ascending.
        missing: Vec<u32>,
    },
    /// Publishing did not finish before the deadline.
    #[error("round {round}: publishing the local gradient did not finish within {timeout:?}")]
    PublishTimeout {
        /// The round.
        round: u64,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The caller passed buffers of the wrong length.
    #[error("{what} has {got} elements, the round expects {expected}")]
    LocalLength {
        /// Which buffer.
        what: &'static str,
        /// Configured element count.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A peer was started with a different training configuration.
    #[error(
        "rank {rank} was started with a different training configuration: {}",
        .fields.join(", ")
    )]
    IdentityMismatch {
        /// The other peer.
        rank: u32,
        /// Each differing field with both values.
        fields: Vec<String>,
    },
    /// The round configuration is unusable.
    #[error("invalid round configuration: {0}")]
    Config(String),
    /// This peer's gradient could not be put into the claim store.
    #[error("cannot store this peer's gradient at {key}: {cause}")]
    Store {
        /// The object's key.
        key: String,
        /// What went wrong.
        cause: String,
    },
}

struct RankList<'a>(&'a [u32]);

impl fmt::Display for RankList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rank) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{rank}")?;
        }
        Ok(())
    }
}

/// Runs averaging rounds for one peer over a [`Transport`], keeping every
/// large buffer (encoded gradient, reassembly buffers) across rounds.
pub struct Averager<T> {
    config: RoundConfig,
    codec: Box<dyn Codec>,
    transport: T,
    encoded: Vec<u8>,
    outgoing: Vec<Bytes>,
    inbox: Inbox,
    compute_micros: u64,
    aggregator: Aggregator,
    /// Sharded exchange only: per shard, the codec of this peer's part and of the
    /// owner's result (so error feedback stays per shard), and their encoded bytes.
    shards: Vec<ShardCodecs>,
    /// Claim-check exchange only: the store, and this peer's objects not yet deleted
    /// (round, key).
    claim_store: Option<Arc<dyn ClaimStore>>,
    own_claims: VecDeque<(u64, String)>,
    /// Messages and bytes received before the rounds started (while joining), counted in
    /// the next round's stats so every delivered byte is counted once.
    early_received: (u64, u64),
}

/// The codecs and buffers of one shard in a sharded exchange.
struct ShardCodecs {
    part: Box<dyn Codec>,
    result: Box<dyn Codec>,
    part_bytes: Vec<u8>,
    result_bytes: Vec<u8>,
}

impl<T> fmt::Debug for Averager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Averager")
            .field("config", &self.config)
            .field("codec", &self.codec.spec())
            .finish_non_exhaustive()
    }
}

/// A seed for one shard codec of one peer, the same in every process of that peer.
fn shard_seed(config: &RoundConfig, shard: u32, purpose: u8) -> u64 {
    let mut bytes = config.run_id.0.to_vec();
    bytes.extend_from_slice(&config.rank.to_le_bytes());
    bytes.extend_from_slice(&shard.to_le_bytes());
    bytes.push(purpose);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// First bytes of the codec state of a sharded averager (see [`Averager::codec_state`]).
const SHARDED_STATE_TAG: &[u8; 8] = b"PLSSHRD1";

impl<T: Transport> Averager<T> {
    /// An averager for the peer described by `config`, encoding with `codec`.
    pub fn new(
        config: RoundConfig,
        codec: Box<dyn Codec>,
        transport: T,
    ) -> Result<Self, RoundError> {
        if config.world_size == 0 || config.rank >= config.world_size {
            return Err(RoundError::Config(format!(
                "rank {} is not below world size {}",
                config.rank, config.world_size
            )));
        }
        if config.max_chunk_bytes == 0 || u32::try_from(config.max_chunk_bytes).is_err() {
            return Err(RoundError::Config(format!(
                "max_chunk_bytes {} is not in 1..=u32::MAX",
                config.max_chunk_bytes
            )));
        }
        if let Some(c) = config.clip_norm {
            crate::aggregate::check_clip_norm(c).map_err(|e| RoundError::Config(e.to_string()))?;
            if config.exchange == Exchange::Sharded {
                return Err(RoundError::Config(
                    "--clip-norm needs each peer's whole gradient, which a sharded exchange \
                     never gathers in one place: use --exchange all-to-all"
                        .into(),
                ));
            }
        }
        let shards = match config.exchange {
            Exchange::AllToAll | Exchange::S3 => Vec::new(),
            Exchange::Sharded => (0..config.world_size)
                .map(|s| ShardCodecs {
                    part: codec.spec().build(shard_seed(&config, s, 0)),
                    result: codec.spec().build(shard_seed(&config, s, 1)),
                    part_bytes: Vec::new(),
                    result_bytes: Vec::new(),
                })
                .collect(),
        };
        let inbox = Inbox::new(config.world_size, config.element_count);
        Ok(Averager {
            config,
            codec,
            transport,
            encoded: Vec::new(),
            outgoing: Vec::new(),
            inbox,
            compute_micros: 0,
            aggregator: Aggregator::new(),
            shards,
            claim_store: None,
            own_claims: VecDeque::new(),
            early_received: (0, 0),
        })
    }

    /// Sets the local gradient's compute time, sent in the header of the next
    /// rounds' messages so the other peers learn how fast this one is; the
    /// value set last is sent (microsecond precision, 0 meaning unknown).
    pub fn set_compute_time(&mut self, compute: Duration) {
        self.compute_micros = u64::try_from(compute.as_micros()).unwrap_or(u64::MAX);
    }

    /// The configuration.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    /// The codec encoding the local gradient.
    pub fn codec(&self) -> &dyn Codec {
        self.codec.as_ref()
    }

    /// The state of every codec this peer encodes with (error feedback, random
    /// streams), for checkpoints: resuming from it encodes the next rounds
    /// bit-identically.
    pub fn codec_state(&self) -> Vec<u8> {
        if self.shards.is_empty() {
            return self.codec.state();
        }
        let mut out = SHARDED_STATE_TAG.to_vec();
        for state in self
            .shards
            .iter()
            .flat_map(|s| [s.part.state(), s.result.state()])
        {
            out.extend_from_slice(&(state.len() as u64).to_le_bytes());
            out.extend_from_slice(&state);
        }
        out
    }

    /// Restores what [`Averager::codec_state`] saved; refuses a state of another
    /// codec, exchange or world size without changing anything.
    pub fn restore_codec_state(&mut self, state: &[u8]) -> Result<(), CodecError> {
        if self.shards.is_empty() {
            return self.codec.restore(state);
        }
        let invalid = |reason: &str| CodecError::InvalidState {
            codec: "sharded exchange",
            reason: reason.to_owned(),
        };
        let mut rest = state
            .strip_prefix(SHARDED_STATE_TAG.as_slice())
            .ok_or_else(|| invalid("not the state of a sharded exchange"))?;
        let mut parts = Vec::with_capacity(2 * self.shards.len());
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<8>()
                .ok_or_else(|| invalid("truncated"))?;
            let len = usize::try_from(u64::from_le_bytes(*len))
                .ok()
                .filter(|&l| l <= tail.len())
                .ok_or_else(|| invalid("truncated"))?;
            parts.push(&tail[..len]);
            rest = &tail[len..];
        }
        if parts.len() != 2 * self.shards.len() {
            return Err(invalid("saved with another number of shards"));
        }
        // Check every part on scratch codecs before changing the real ones.
        for (i, part) in parts.iter().enumerate() {
            let shard = &self.shards[i / 2];
            let mut scratch = if i % 2 == 0 {
                shard
                    .part
                    .spec()
                    .build(shard_seed(&self.config, (i / 2) as u32, 0))
            } else {
                shard
                    .result
                    .spec()
                    .build(shard_seed(&self.config, (i / 2) as u32, 1))
            };
            scratch.restore(part)?;
        }
        for (i, part) in parts.iter().enumerate() {
            let shard = &mut self.shards[i / 2];
            let codec = if i % 2 == 0 {
                &mut shard.part
            } else {
                &mut shard.result
            };
            codec.restore(part)?;
        }
        Ok(())
    }

    /// Gives a claim-check exchange ([`Exchange::S3`]) its object store.
    pub fn set_claim_store(&mut self, store: Arc<dyn ClaimStore>) {
        self.claim_store = Some(store);
    }

    /// Deletes this peer's claim-check objects still in the store (call when the run
    /// is over); failures are logged, not returned.
    pub async fn delete_claims(&mut self) {
        self.delete_claims_before(u64::MAX).await;
    }

    async fn delete_claims_before(&mut self, round: u64) {
        let Some(store) = &self.claim_store else {
            return;
        };
        while let Some((_, key)) = self.own_claims.front().filter(|(r, _)| *r < round) {
            if let Err(error) = store.delete(key).await {
                tracing::warn!(key, %error, "could not delete a gradient object");
            }
            self.own_claims.pop_front();
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Who takes part in which round.
    pub(crate) fn members(&self) -> &Members {
        &self.inbox.members
    }

    pub(crate) fn members_mut(&mut self) -> &mut Members {
        &mut self.inbox.members
    }

    /// The membership messages received during rounds, oldest first.
    pub(crate) fn take_control(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.inbox.control)
    }

    /// Keeps a gradient that arrived before the rounds started.
    pub(crate) fn keep_early(&mut self, round: u64, bytes: Bytes) {
        self.early_received.0 += 1;
        self.early_received.1 += bytes.len() as u64;
        self.inbox.keep(round, bytes);
    }

    /// The ranks currently taking part (this one included), ascending.
    pub fn participants(&self) -> Vec<u32> {
        self.inbox.members.active_ranks()
    }

    /// Gives the transport back (e.g. to close it).
    pub fn into_transport(self) -> T {
        self.transport
    }

    /// Runs round `round`: sends `local` (encoded) as the run's
    /// [`Exchange`] says, waits for the other ranks' contributions, and writes
    /// their aggregate (decoded, this peer's own encoded gradient included,
    /// combined in rank order) into `out`. Every peer that received the same
    /// messages gets a bit-identical `out`.
    pub async fn average(
        &mut self,
        round: u64,
        local: &[f32],
        out: &mut [f32],
    ) -> Result<RoundStats, RoundError> {
        let n = self.config.element_count;
        if local.len() != n {
            return Err(RoundError::LocalLength {
                what: "local gradient",
                expected: n,
                got: local.len(),
            });
        }
        if out.len() != n {
            return Err(RoundError::LocalLength {
                what: "output buffer",
                expected: n,
                got: out.len(),
            });
        }
        let (messages_received, bytes_received) = std::mem::take(&mut self.early_received);
        let mut stats = RoundStats {
            round,
            messages_received,
            bytes_received,
            ..RoundStats::default()
        };
        let started = Instant::now();
        let non_finite = self
            .config
            .check_own
            .then(|| crate::codec::first_non_finite(local))
            .flatten();
        if let Some((index, value)) = non_finite {
            tracing::error!(
                round,
                index,
                %value,
                "this peer's gradient is not finite: not sending it, averaging the others'"
            );
            stats.withheld = true;
        }
        let result = match self.config.exchange {
            Exchange::AllToAll | Exchange::S3 => {
                self.all_to_all(round, local, out, stats, started).await
            }
            Exchange::Sharded => self.sharded(round, local, out, stats, started).await,
        };
        self.release_round_buffers();
        // After a partial round a missing peer may still be behind: keep what it may need.
        if result.as_ref().is_ok_and(|stats| stats.missing.is_empty()) {
            self.transport.finished_round(round);
        }
        result
    }

    /// Gives back the round's big encoding and reassembly buffers, so a peer holds them
    /// only while it exchanges and not while it computes (with vgg11, several 515 MB
    /// buffers per peer); small ones are kept to save allocating them every round.
    fn release_round_buffers(&mut self) {
        release_if_big(&mut self.encoded);
        for shard in &mut self.shards {
            release_if_big(&mut shard.part_bytes);
            release_if_big(&mut shard.result_bytes);
        }
        self.inbox.slots.values_mut().for_each(Slot::release);
    }

    /// A header for this peer's messages of `round`.
    fn header(&self, kind: MessageKind, round: u64, shard: u32) -> Header {
        let config = &self.config;
        Header {
            kind,
            shard,
            compute_micros: self.compute_micros,
            incarnation: config.incarnation,
            ..Header::gradient(
                config.run_id,
                round,
                config.rank,
                config.world_size,
                config.model_fingerprint,
                self.codec.spec(),
                config.element_count as u64,
            )
        }
    }

    /// A header for this peer's sharded-exchange messages of `round`, stamped with the
    /// membership view (`digest`) they were sent under, so a peer with another view refuses them.
    fn view_header(&self, kind: MessageKind, round: u64, shard: u32, digest: u64) -> Header {
        Header {
            view: digest,
            ..self.header(kind, round, shard)
        }
    }

    /// Frames (and signs) `payload` into messages appended to `out`; returns the
    /// time spent signing.
    fn frame(&self, header: &Header, payload: &[u8], out: &mut Vec<Bytes>) -> Duration {
        let signing = Instant::now();
        let signer = self.config.keyring.signer();
        wire::chunk_messages_signed(header, payload, self.config.max_chunk_bytes, out, signer);
        if signer.is_some() {
            // Framing is a copy; nearly all of this is hashing and signing.
            signing.elapsed()
        } else {
            Duration::ZERO
        }
    }

    /// Counts and sends `sends` (to one rank, or to every peer for `None`) while
    /// filing incoming messages, until the inbox's phase is complete or the
    /// deadline passes (the round timeout from now, or `at_least` if later);
    /// adds the send and receive times to `stats`.
    async fn phase(
        &mut self,
        round: u64,
        sends: &[(Option<u32>, Vec<Bytes>)],
        stats: &mut RoundStats,
        at_least: Option<Instant>,
    ) -> Result<(), RoundError> {
        for (_, messages) in sends {
            stats.messages_sent += messages.len() as u64;
            stats.bytes_sent += messages.iter().map(|m| m.len() as u64).sum::<u64>();
        }
        let Averager {
            config,
            codec,
            transport,
            inbox,
            claim_store,
            ..
        } = self;
        let config: &RoundConfig = config;
        let transport = &*transport;
        let codec = codec.as_ref();
        let phase_start = Instant::now();
        let outage_start = transport.outage();
        // The deadline moves by the time the broker was away during the phase.
        let deadline_now = || {
            let away = transport.outage().saturating_sub(outage_start);
            let due = (phase_start + config.timeout).max(at_least.unwrap_or(phase_start));
            tokio::time::Instant::from_std(due + away)
        };
        let publish = async {
            for (to, messages) in sends {
                if messages.is_empty() {
                    continue;
                }
                loop {
                    let deadline = deadline_now();
                    let sent = match to {
                        None => {
                            tokio::time::timeout_at(deadline, transport.publish(messages)).await
                        }
                        Some(rank) => {
                            tokio::time::timeout_at(deadline, transport.send_to(*rank, messages))
                                .await
                        }
                    };
                    match sent {
                        Ok(Ok(())) => break,
                        Ok(Err(e)) => return Err(RoundError::from(e)),
                        Err(_) if deadline_now() > deadline => continue,
                        Err(_) => {
                            return Err(RoundError::PublishTimeout {
                                round,
                                timeout: config.timeout,
                            });
                        }
                    }
                }
            }
            Ok(phase_start.elapsed())
        };
        let stats_ref = &mut *stats;
        let claim_store = claim_store.clone();
        let receive = async move {
            // Claimed objects being read from the store.
            let mut fetches = tokio::task::JoinSet::new();
            loop {
                for (key, claim) in inbox.take_fetches() {
                    if let Some(store) = claim_store.clone() {
                        fetches.spawn(async move {
                            let data = store.get(&claim.key).await;
                            (key, claim, data)
                        });
                    }
                }
                if inbox.phase_done() {
                    break;
                }
                let deadline = deadline_now();
                tokio::select! {
                    delivery = tokio::time::timeout_at(deadline, transport.recv()) => {
                        let delivery = match delivery {
                            Err(_) if deadline_now() > deadline => continue,
                            Err(_) => break,
                            Ok(delivery) => delivery?,
                        };
                        stats_ref.messages_received += 1;
                        stats_ref.bytes_received += delivery.data().len() as u64;
                        inbox.handle(delivery.data(), round, config, codec, stats_ref)?;
                        // Best effort: a lost acknowledgement (the connection dropped) only
                        // means a redelivery, which is dropped as a duplicate.
                        if let Err(error) = delivery.ack().await {
                            tracing::debug!(%error, "acknowledgement lost");
                        }
                    }
                    Some(fetched) = fetches.join_next(), if !fetches.is_empty() => {
                        let (key, claim, data) = fetched.expect("a fetch task panicked");
                        inbox.file_fetched(key, &claim, data, config, codec, stats_ref);
                    }
                }
            }
            Ok::<_, RoundError>(phase_start.elapsed())
        };
        let (send_time, receive_time) = tokio::try_join!(publish, receive)?;
        stats.send_time += send_time;
        stats.receive_time += receive_time;
        stats.outage += transport.outage().saturating_sub(outage_start);
        Ok(())
    }

    /// Files the messages kept for `round` and starts it, accepting `accepted`.
    fn open_round(
        &mut self,
        round: u64,
        accepted: Vec<SlotKey>,
        stats: &mut RoundStats,
    ) -> Result<(), RoundError> {
        self.inbox.start_round(round, accepted, stats);
        for bytes in self.inbox.take_pending(round) {
            self.inbox
                .handle(&bytes, round, &self.config, self.codec.as_ref(), stats)?;
        }
        Ok(())
    }

    /// Fails for missing ranks unless partial rounds are allowed, then records
    /// who delivered and evicts as configured; returns the eviction this peer must
    /// announce (sharded exchange).
    fn close_round(
        &mut self,
        round: u64,
        stats: &mut RoundStats,
    ) -> Result<Option<Eviction>, RoundError> {
        let config = &self.config;
        let missing = self.inbox.missing_ranks();
        if !missing.is_empty() {
            match config.on_timeout {
                OnTimeout::Fail => {
                    return Err(RoundError::Timeout {
                        round,
                        timeout: config.timeout,
                        missing,
                    });
                }
                OnTimeout::AverageArrived => {
                    tracing::warn!(round, ?missing, "averaging without the missing ranks");
                    stats.missing = missing;
                }
            }
        }
        let mut announce = None;
        if config.exchange == Exchange::Sharded {
            let (evicted, eviction) =
                self.inbox
                    .members
                    .after_sharded_round(round, config, &stats.missing);
            stats.evicted = evicted;
            announce = eviction;
        } else {
            stats.evicted = self.inbox.close_round(round, config, &stats.missing);
        }
        if !stats.evicted.is_empty() {
            tracing::warn!(
                round,
                evicted = ?stats.evicted,
                "no longer waiting for rank(s) that missed {} rounds in a row",
                config.evict_after
            );
        }
        Ok(announce)
    }

    /// Fills in who took part and how long each rank computed.
    fn record_participants(&self, participants: Vec<u32>, stats: &mut RoundStats) {
        stats.contributors = participants.len() as u32;
        stats.peer_compute = vec![None; self.config.world_size as usize];
        for &rank in &participants {
            let micros = if rank == self.config.rank {
                self.compute_micros
            } else {
                self.inbox.compute_micros(rank)
            };
            stats.peer_compute[rank as usize] = (micros > 0).then(|| Duration::from_micros(micros));
        }
        stats.participants = participants;
    }

    /// The all-to-all round: broadcast the whole gradient, aggregate everyone's.
    async fn all_to_all(
        &mut self,
        round: u64,
        local: &[f32],
        out: &mut [f32],
        mut stats: RoundStats,
        started: Instant,
    ) -> Result<RoundStats, RoundError> {
        let n = self.config.element_count;
        let mut outgoing = std::mem::take(&mut self.outgoing);
        outgoing.clear();
        if stats.withheld {
            self.encoded.clear();
        } else {
            self.codec
                .encode(local, &mut self.encoded)
                .map_err(RoundError::Encode)?;
            if self.config.exchange == Exchange::S3 {
                let claim = self.park(round, &mut stats).await?;
                let header = self.header(MessageKind::Claim, round, 0);
                stats.auth_time += self.frame(&header, &claim.encode(), &mut outgoing);
            } else {
                let header = self.header(MessageKind::Gradient, round, 0);
                stats.auth_time += self.frame(&header, &self.encoded, &mut outgoing);
            }
        }
        // Storing a claimed gradient is sending (`park` counts it there), not encoding.
        stats.encode_time = started.elapsed().saturating_sub(stats.send_time);

        let me = self.config.rank;
        let accepted: Vec<SlotKey> = (0..self.config.world_size)
            .filter(|&r| r != me && self.inbox.members.expects(r, round))
            .map(SlotKey::gradient)
            .collect();
        self.inbox.expected = accepted.clone();
        self.open_round(round, accepted, &mut stats)?;
        let sends = [(None, outgoing)];
        let result = self.phase(round, &sends, &mut stats, None).await;
        let [(_, outgoing)] = sends;
        self.outgoing = outgoing;
        result?;
        self.close_round(round, &mut stats)?;

        let decode_start = Instant::now();
        let mut contributors: Vec<u32> = (0..self.config.world_size)
            .filter(|&r| self.inbox.complete(SlotKey::gradient(r)))
            .collect();
        if !stats.withheld {
            contributors.push(me);
            contributors.sort_unstable();
        }
        let inbox = &self.inbox;
        let own = self.encoded.as_slice();
        let payload = |source: usize| {
            let rank = contributors[source];
            if rank == me {
                own
            } else {
                inbox.payload(SlotKey::gradient(rank))
            }
        };
        aggregate_into(
            &self.config,
            self.codec.as_ref(),
            &mut self.aggregator,
            out,
            n,
            contributors.len(),
            payload,
        );
        self.record_participants(contributors, &mut stats);
        stats.decode_time = decode_start.elapsed();
        Ok(stats)
    }

    /// Puts this peer's encoded gradient into the claim store; returns its claim.
    async fn park(&mut self, round: u64, stats: &mut RoundStats) -> Result<Claim, RoundError> {
        let store = self.claim_store.clone().ok_or_else(|| {
            RoundError::Config("--exchange s3 needs an object store for the gradients".into())
        })?;
        // Peers are at most a round or two apart: older objects are no longer read.
        self.delete_claims_before(round.saturating_sub(FUTURE_WINDOW + 1))
            .await;
        let key = format!(
            "claims/{}/{round}/{}-{:016x}",
            self.config.run_id, self.config.rank, self.config.incarnation
        );
        let data = Bytes::copy_from_slice(&self.encoded);
        let claim = Claim::of(key.clone(), &data);
        let put_start = Instant::now();
        store
            .put(&key, data)
            .await
            .map_err(|cause| RoundError::Store {
                key: key.clone(),
                cause,
            })?;
        stats.send_time += put_start.elapsed();
        stats.bytes_sent += claim.len;
        self.own_claims.push_back((round, key));
        Ok(claim)
    }

    /// The sharded round: send each owner its shard, aggregate the shards this
    /// peer owns and broadcast them, then assemble every owner's result. Owners
    /// come from the round's membership view ([`Members::view`]); a peer outside
    /// it (just admitted) only applies the owners' results.
    async fn sharded(
        &mut self,
        round: u64,
        local: &[f32],
        out: &mut [f32],
        mut stats: RoundStats,
        started: Instant,
    ) -> Result<RoundStats, RoundError> {
        let n = self.config.element_count;
        let world = self.config.world_size;
        let me = self.config.rank;
        let view = self.inbox.members.view(round);
        let in_view = view.contains(&me);
        let digest = crate::exchange::view_digest(world, &view);
        self.inbox.view = digest;
        let owners: Vec<u32> = crate::exchange::owners(world, |r| view.contains(&r))
            .into_iter()
            .map(|o| o.unwrap_or(me))
            .collect();
        let takes_part: Vec<u32> = view.iter().copied().filter(|&r| r != me).collect();
        let owned: Vec<u32> = (0..world).filter(|&s| owners[s as usize] == me).collect();
        // Sends its own parts: in the view, and with a finite gradient.
        let contributes = in_view && !stats.withheld;
        if !in_view {
            tracing::info!(
                round,
                ?view,
                "not in this round's membership view yet: applying the owners' results only"
            );
        }

        // This peer's part of every shard, encoded with that shard's codec.
        let mut to_owners: Vec<(Option<u32>, Vec<Bytes>)> = Vec::new();
        if contributes {
            for s in 0..world {
                let range = crate::exchange::shard_range(s, world, n);
                let shard = &mut self.shards[s as usize];
                shard
                    .part
                    .encode(&local[range], &mut shard.part_bytes)
                    .map_err(RoundError::Encode)?;
                let owner = owners[s as usize];
                if owner == me {
                    continue;
                }
                let header = self.view_header(MessageKind::Shard, round, s, digest);
                let mut messages = Vec::new();
                stats.auth_time +=
                    self.frame(&header, &self.shards[s as usize].part_bytes, &mut messages);
                // Framed: only the parts of the shards this peer owns are read again.
                release_if_big(&mut self.shards[s as usize].part_bytes);
                match to_owners.iter_mut().find(|(to, _)| *to == Some(owner)) {
                    Some((_, batch)) => batch.extend(messages),
                    None => to_owners.push((Some(owner), messages)),
                }
            }
        }
        stats.encode_time = started.elapsed();

        let parts: Vec<SlotKey> = owned
            .iter()
            .flat_map(|&s| takes_part.iter().map(move |&r| SlotKey::shard(s, r)))
            .collect();
        let results: Vec<SlotKey> = (0..world)
            .filter(|&s| owners[s as usize] != me)
            .map(|s| SlotKey::reduced(s, owners[s as usize]))
            .collect();
        let accepted = parts.iter().chain(&results).copied().collect();
        self.inbox.expected = parts;
        self.open_round(round, accepted, &mut stats)?;
        let parts_start = Instant::now();
        self.phase(round, &to_owners, &mut stats, None).await?;
        // An owner may spend the whole timeout waiting for a part before it sends its
        // result: the results are waited for until two timeouts after the parts phase
        // began (at least one from now), or a peer that had its parts early would skip
        // a shard another peer applies.
        let results_due = parts_start + 2 * self.config.timeout + stats.outage;

        // Aggregate the owned shards and send them to everyone.
        let aggregate_start = Instant::now();
        let mut broadcast = Vec::new();
        for &s in &owned {
            let range = crate::exchange::shard_range(s, world, n);
            let len = range.len();
            let mut contributors: Vec<u32> = takes_part
                .iter()
                .copied()
                .filter(|&r| self.inbox.complete(SlotKey::shard(s, r)))
                .collect();
            if contributes {
                contributors.push(me);
                contributors.sort_unstable();
            }
            let inbox = &self.inbox;
            let own = self.shards[s as usize].part_bytes.as_slice();
            let payload = |source: usize| {
                let rank = contributors[source];
                if rank == me {
                    own
                } else {
                    inbox.payload(SlotKey::shard(s, rank))
                }
            };
            let block = &mut out[range.clone()];
            aggregate_into(
                &self.config,
                self.codec.as_ref(),
                &mut self.aggregator,
                block,
                len,
                contributors.len(),
                payload,
            );
            // Everyone applies the decoded result: the owner too.
            let shard = &mut self.shards[s as usize];
            shard
                .result
                .encode(block, &mut shard.result_bytes)
                .map_err(RoundError::Encode)?;
            decode_into(self.codec.as_ref(), &shard.result_bytes, block);
            let header = self.view_header(MessageKind::Reduced, round, s, digest);
            stats.auth_time += self.frame(
                &header,
                &self.shards[s as usize].result_bytes,
                &mut broadcast,
            );
        }
        stats.decode_time += aggregate_start.elapsed();

        self.inbox.expected = results.clone();
        self.phase(round, &[(None, broadcast)], &mut stats, Some(results_due))
            .await?;
        let eviction = self.close_round(round, &mut stats)?;
        if let Some(eviction) = eviction {
            self.announce_eviction(round, &eviction).await?;
        }

        let assemble_start = Instant::now();
        for key in &results {
            let range = crate::exchange::shard_range(key.shard, world, n);
            if self.inbox.complete(*key) {
                decode_into(
                    self.codec.as_ref(),
                    self.inbox.payload(*key),
                    &mut out[range],
                );
            } else {
                // The owner's result is the only copy: no update for this shard.
                out[range].fill(0.0);
                stats.skipped_shards.push(key.shard);
            }
        }
        if !stats.skipped_shards.is_empty() {
            tracing::warn!(
                round,
                skipped = ?stats.skipped_shards,
                "no result for these shards: left unchanged this round"
            );
        }
        let mut participants: Vec<u32> = takes_part
            .iter()
            .copied()
            .filter(|r| !stats.missing.contains(r))
            .collect();
        if contributes {
            participants.push(me);
            participants.sort_unstable();
        }
        self.record_participants(participants, &mut stats);
        stats.decode_time += assemble_start.elapsed();
        Ok(stats)
    }
}

/// Aggregates `sources` encoded payloads of `len` elements (given by
/// `payload(source)`, in rank order) into `out` with the configured rule.
fn aggregate_into<'a>(
    config: &RoundConfig,
    codec: &dyn Codec,
    aggregator: &mut Aggregator,
    out: &mut [f32],
    len: usize,
    sources: usize,
    payload: impl Fn(usize) -> &'a [u8] + Sync,
) {
    if sources == 0 {
        out.fill(0.0);
        return;
    }
    if config.aggregation.is_mean() && config.clip_norm.is_none() {
        // The streaming mean: decoded straight into the accumulator.
        average::mean_into(out, sources, |source, start, block, mode| {
            codec.accumulate(payload(source), len, start, block, mode);
        });
    } else {
        aggregator.aggregate(
            config.aggregation,
            config.clip_norm,
            sources,
            out,
            |source, start, block| {
                let mode = crate::codec::Accumulate::Assign;
                codec.accumulate(payload(source), len, start, block, mode);
            },
        );
    }
}

/// Decodes a whole payload of `out.len()` elements into `out`, in parallel.
fn decode_into(codec: &dyn Codec, payload: &[u8], out: &mut [f32]) {
    let len = out.len();
    average::for_each_block(out, |start, block| {
        codec.accumulate(payload, len, start, block, crate::codec::Accumulate::Assign);
    });
}

/// Which message a reassembly slot collects: its kind, shard and sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SlotKey {
    kind: MessageKind,
    shard: u32,
    sender: u32,
}

impl SlotKey {
    /// A whole gradient from `sender` (all-to-all).
    fn gradient(sender: u32) -> Self {
        SlotKey {
            kind: MessageKind::Gradient,
            shard: 0,
            sender,
        }
    }

    /// `sender`'s part of shard `shard`, sent to its owner.
    fn shard(shard: u32, sender: u32) -> Self {
        SlotKey {
            kind: MessageKind::Shard,
            shard,
            sender,
        }
    }

    /// The aggregate of shard `shard` from its owner.
    fn reduced(shard: u32, owner: u32) -> Self {
        SlotKey {
            kind: MessageKind::Reduced,
            shard,
            sender: owner,
        }
    }

    /// Elements of the gradient this slot's payload decodes to.
    fn element_count(&self, world_size: u32, gradient_len: usize) -> usize {
        match self.kind {
            MessageKind::Shard | MessageKind::Reduced => {
                crate::exchange::shard_range(self.shard, world_size, gradient_len).len()
            }
            _ => gradient_len,
        }
    }
}

/// Reassembly state of one sender's gradient in the current round.
#[derive(Default)]
struct Slot {
    /// Set once the whole payload is here and valid.
    complete: bool,
    /// Set once the first chunk of this round arrived.
    started: bool,
    /// The payload when it came as one message (no copy).
    single: Option<Bytes>,
    /// Reassembly buffer for multi-chunk payloads (kept across rounds unless big:
    /// [`crate::buffer::KEEP_BYTES`]).
    buffer: Vec<u8>,
    /// Which chunks arrived.
    received: Vec<bool>,
    remaining: u32,
    chunk_count: u32,
    total_len: u64,
    /// The sender's compute time, from the first accepted chunk of the round.
    compute_micros: u64,
}

impl Slot {
    fn reset(&mut self) {
        self.complete = false;
        self.started = false;
        self.single = None;
        self.compute_micros = 0;
    }

    /// Lets go of the payload once the round is over (the next round resets the slot).
    fn release(&mut self) {
        release_if_big(&mut self.buffer);
        self.single = None;
    }

    fn payload(&self) -> &[u8] {
        match &self.single {
            Some(bytes) => bytes,
            None => &self.buffer,
        }
    }
}

enum ChunkOutcome {
    Incomplete,
    Complete,
    Duplicate,
    Inconsistent(&'static str),
}

/// Everything received for the current round, plus messages kept for later
/// rounds and the membership messages seen during rounds.
pub(crate) struct Inbox {
    /// Reassembly slots, kept (with their small buffers) across rounds.
    slots: HashMap<SlotKey, Slot>,
    /// The messages the current round uses.
    accepted: HashSet<SlotKey>,
    /// The ones the current phase of the round waits for.
    expected: Vec<SlotKey>,
    /// Claims accepted and not yet being fetched (claim-check exchange).
    fetches: Vec<(SlotKey, Claim)>,
    world_size: u32,
    pending: BTreeMap<u64, Vec<Bytes>>,
    /// Who takes part, and from which round.
    pub(crate) members: Members,
    /// Membership messages (hellos, joins) kept for [`crate::membership`].
    pub(crate) control: Vec<Bytes>,
    /// `(sender, reason)` pairs already logged.
    logged: HashSet<(u32, &'static str)>,
    /// Sharded exchange: the digest of this round's membership view.
    view: u64,
    /// Bytes held in `pending`, and the most it may hold.
    pending_bytes: usize,
    max_pending_bytes: usize,
}

/// Most distinct future rounds kept: a peer is at most a round or two ahead,
/// so more means leftovers (e.g. of a restarted peer's queue).
const MAX_PENDING_ROUNDS: usize = 8;

impl Inbox {
    fn new(world_size: u32, element_count: usize) -> Self {
        let peers = world_size as usize;
        Inbox {
            slots: HashMap::new(),
            accepted: HashSet::new(),
            expected: Vec::new(),
            fetches: Vec::new(),
            world_size,
            pending: BTreeMap::new(),
            members: Members::new(peers),
            control: Vec::new(),
            logged: HashSet::new(),
            view: 0,
            pending_bytes: 0,
            // Every other peer's gradient (or shards and results: twice a gradient) for
            // each round of the window, with room for the headers of chunks as small as
            // 64 KiB.
            max_pending_bytes: (FUTURE_WINDOW as usize + 1)
                * peers
                * 2
                * (8 * element_count + 8 + element_count / 32 + (1 << 20)),
        }
    }

    /// Keeps a gradient message of a later round (or any round, before the
    /// first round is known), dropping the oldest kept rounds beyond the cap.
    pub(crate) fn keep(&mut self, round: u64, bytes: Bytes) -> u64 {
        if self.pending_bytes + bytes.len() > self.max_pending_bytes {
            return 1;
        }
        self.pending_bytes += bytes.len();
        self.pending.entry(round).or_default().push(bytes);
        let mut dropped = 0;
        while self.pending.len() > MAX_PENDING_ROUNDS {
            if let Some((_, old)) = self.pending.pop_first() {
                dropped += old.len() as u64;
                self.pending_bytes -= old.iter().map(Bytes::len).sum::<usize>();
            }
        }
        dropped
    }

    /// Starts `round`, in which the messages of `accepted` are used.
    fn start_round(&mut self, round: u64, accepted: Vec<SlotKey>, stats: &mut RoundStats) {
        self.slots.values_mut().for_each(Slot::reset);
        self.accepted = accepted.into_iter().collect();
        let later = self.pending.split_off(&round);
        let stale: usize = self.pending.values().map(Vec::len).sum();
        stats.rejected.stale_round += stale as u64;
        self.pending = later;
        self.pending_bytes = self.pending.values().flatten().map(Bytes::len).sum();
    }

    fn take_pending(&mut self, round: u64) -> Vec<Bytes> {
        let taken = self.pending.remove(&round).unwrap_or_default();
        self.pending_bytes -= taken.iter().map(Bytes::len).sum::<usize>();
        taken
    }

    /// The claims to fetch, once each.
    fn take_fetches(&mut self) -> Vec<(SlotKey, Claim)> {
        std::mem::take(&mut self.fetches)
    }

    /// Files a claimed object read from the store: it must be what the claim says
    /// and decode like a gradient.
    fn file_fetched(
        &mut self,
        key: SlotKey,
        claim: &Claim,
        data: Result<Bytes, String>,
        config: &RoundConfig,
        codec: &dyn Codec,
        stats: &mut RoundStats,
    ) {
        let len = key.element_count(config.world_size, config.element_count);
        let problem = match data {
            Err(error) => Some(("unreadable claim", error)),
            Ok(data) => {
                stats.bytes_received += data.len() as u64;
                if !claim.matches(&data) {
                    Some((
                        "claim mismatch",
                        format!("{} differs from its claim", claim.key),
                    ))
                } else if let Err(error) = codec.validate(&data, len) {
                    stats.rejected.malformed += 1;
                    self.note(key.sender, "undecodable gradient", &error);
                    self.slots.entry(key).or_default().reset();
                    return;
                } else {
                    let slot = self.slots.entry(key).or_default();
                    slot.single = Some(data);
                    slot.complete = true;
                    None
                }
            }
        };
        if let Some((reason, detail)) = problem {
            stats.rejected.bad_claim += 1;
            self.note(key.sender, reason, detail);
            self.slots.entry(key).or_default().reset();
        }
    }

    fn complete(&self, key: SlotKey) -> bool {
        self.slots.get(&key).is_some_and(|slot| slot.complete)
    }

    /// The payload of a complete slot.
    fn payload(&self, key: SlotKey) -> &[u8] {
        self.slots.get(&key).map_or(&[], Slot::payload)
    }

    /// The compute time `rank` reported this round (0: unknown).
    fn compute_micros(&self, rank: u32) -> u64 {
        self.slots
            .iter()
            .filter(|(key, slot)| key.sender == rank && slot.complete)
            .map(|(_, slot)| slot.compute_micros)
            .max()
            .unwrap_or(0)
    }

    /// All-to-all: accepts and waits for the gradient of every rank taking part
    /// in `round` (membership can change during a round, when a join arrives).
    fn expect_members(&mut self, round: u64, own_rank: u32) {
        for rank in 0..self.world_size {
            let key = SlotKey::gradient(rank);
            if rank != own_rank && self.members.expects(rank, round) && self.accepted.insert(key) {
                self.expected.push(key);
            }
        }
    }

    /// Whether everything the current phase waits for has arrived.
    fn phase_done(&self) -> bool {
        self.expected.iter().all(|key| self.complete(*key))
    }

    /// Ranks that did not deliver everything this round uses from them, ascending.
    fn missing_ranks(&self) -> Vec<u32> {
        let mut missing: Vec<u32> = self
            .accepted
            .iter()
            .filter(|key| !self.complete(**key))
            .map(|key| key.sender)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Counts which expected ranks missed the round and evicts those that
    /// missed too many in a row; returns the ranks evicted now.
    fn close_round(&mut self, round: u64, config: &RoundConfig, missing: &[u32]) -> Vec<u32> {
        for rank in 0..self.world_size {
            if rank != config.rank && self.members.expects(rank, round) {
                self.members.record(rank, !missing.contains(&rank));
            }
        }
        self.members.after_round(config)
    }

    /// Queues an accepted claim for fetching: it must name an object of its
    /// sender's in this run and round, no bigger than a gradient can be.
    fn accept_claim(
        &mut self,
        key: SlotKey,
        h: &Header,
        payload: &[u8],
        config: &RoundConfig,
        len: usize,
        stats: &mut RoundStats,
    ) -> Result<(), RoundError> {
        let slot = self.slots.entry(key).or_default();
        if slot.complete || slot.started {
            stats.rejected.duplicate += 1;
            return Ok(());
        }
        let prefix = format!("claims/{}/{}/{}-", config.run_id, h.round, h.sender);
        match Claim::decode(payload) {
            Some(claim) if claim.key.starts_with(&prefix) && claim.len <= 8 * len as u64 + 8 => {
                slot.started = true;
                slot.compute_micros = h.compute_micros;
                self.fetches.push((key, claim));
            }
            _ => {
                stats.rejected.malformed += 1;
                self.note(h.sender, "bad claim", "not a claim of this sender's object");
            }
        }
        Ok(())
    }

    /// Logs a dropped message once per sender and reason.
    fn note(&mut self, sender: u32, reason: &'static str, detail: impl fmt::Display) {
        if self.logged.insert((sender, reason)) {
            tracing::warn!(
                sender,
                reason,
                "dropped a message ({detail}); further ones like it are only counted"
            );
        }
    }

    /// Validates one message and files it. Never fails for what a message
    /// holds: a bad message is counted and dropped.
    fn handle(
        &mut self,
        bytes: &Bytes,
        round: u64,
        config: &RoundConfig,
        codec: &dyn Codec,
        stats: &mut RoundStats,
    ) -> Result<(), RoundError> {
        const UNKNOWN: u32 = u32::MAX;
        let message = match wire::decode(bytes) {
            Ok(message) => message,
            Err(error @ (WireError::PayloadChecksum { .. } | WireError::HeaderChecksum { .. })) => {
                self.note(UNKNOWN, "checksum", &error);
                stats.rejected.bad_checksum += 1;
                return Ok(());
            }
            Err(error) => {
                self.note(UNKNOWN, "malformed", &error);
                stats.rejected.malformed += 1;
                return Ok(());
            }
        };
        let h = &message.header;
        if h.run_id != config.run_id {
            stats.rejected.foreign_run += 1;
            self.note(UNKNOWN, "foreign run", format_args!("run {}", h.run_id));
            return Ok(());
        }
        if h.sender >= config.world_size || h.sender == config.rank {
            stats.rejected.bad_sender += 1;
            self.note(
                UNKNOWN,
                "bad sender",
                format_args!("sender rank {}", h.sender),
            );
            return Ok(());
        }
        let verifying = Instant::now();
        let verified = config.keyring.verify(&message);
        stats.auth_time += verifying.elapsed();
        stats.verify_time += verifying.elapsed();
        if let Err(reason) = verified {
            stats.rejected.unauthenticated += 1;
            self.note(h.sender, "unauthenticated", reason);
            return Ok(());
        }
        let sharded = config.exchange == Exchange::Sharded;
        let carries = matches!(
            (h.kind, config.exchange),
            (MessageKind::Gradient, Exchange::AllToAll)
                | (MessageKind::Shard | MessageKind::Reduced, Exchange::Sharded)
                | (MessageKind::Claim, Exchange::S3)
        );
        match h.kind {
            _ if carries => {}
            MessageKind::Evict => {
                crate::membership::apply_evict(&mut self.members, h.sender, message.payload);
                return Ok(());
            }
            MessageKind::Hello | MessageKind::Join => {
                if h.kind == MessageKind::Join {
                    crate::membership::apply_join(&mut self.members, message.payload);
                    if !sharded {
                        // A rank admitted from this round on is waited for now.
                        self.expect_members(round, config.rank);
                    }
                }
                self.control.push(bytes.clone());
                return Ok(());
            }
            _ => {
                stats.rejected.other_kind += 1;
                return Ok(());
            }
        }
        let mismatch = if h.world_size != config.world_size {
            Some(format!(
                "world size {}, ours {}",
                h.world_size, config.world_size
            ))
        } else if h.model_fingerprint != config.model_fingerprint {
            Some(format!(
                "model fingerprint {:#018x}, ours {:#018x}",
                h.model_fingerprint, config.model_fingerprint
            ))
        } else if h.element_count != config.element_count as u64 {
            Some(format!(
                "{} gradient elements, ours {}",
                h.element_count, config.element_count
            ))
        } else if h.codec.id() != codec.spec().id() {
            Some(format!("codec {}, ours {}", h.codec, codec.spec()))
        } else {
            None
        };
        if let Some(detail) = mismatch {
            stats.rejected.mismatched += 1;
            self.note(h.sender, "mismatched", detail);
            return Ok(());
        }
        if !self.members.current_incarnation(h.sender, h.incarnation) {
            stats.rejected.old_incarnation += 1;
            return Ok(());
        }
        if h.round < round {
            stats.rejected.stale_round += 1;
            return Ok(());
        }
        if h.round > round.saturating_add(FUTURE_WINDOW) {
            stats.rejected.far_future += 1;
            self.note(
                h.sender,
                "far future",
                format_args!("round {}, now {round}", h.round),
            );
            return Ok(());
        }
        let key = SlotKey {
            // A claim stands for the gradient it names.
            kind: if h.kind == MessageKind::Claim {
                MessageKind::Gradient
            } else {
                h.kind
            },
            shard: h.shard,
            sender: h.sender,
        };
        if h.shard >= config.world_size || (!sharded && h.shard != 0) {
            stats.rejected.malformed += 1;
            self.note(h.sender, "bad shard", format_args!("shard {}", h.shard));
            return Ok(());
        }
        let len = key.element_count(config.world_size, config.element_count);
        // Sizes before any allocation: no codec produces more than 8 bytes per
        // element (top-k at ratio 1), and chunks are at least MIN_CHUNK bytes but the last.
        let max_payload = if h.kind == MessageKind::Claim {
            crate::claim::MAX_CLAIM_LEN as u64
        } else {
            8 * len as u64 + 8
        };
        if h.total_payload_len > max_payload
            || u64::from(h.chunk_count) > h.total_payload_len.div_ceil(MIN_CHUNK).max(1)
        {
            stats.rejected.malformed += 1;
            self.note(
                h.sender,
                "oversized",
                format_args!("{} bytes in {} chunks", h.total_payload_len, h.chunk_count),
            );
            return Ok(());
        }
        if h.round > round {
            stats.rejected.stale_round += self.keep(h.round, bytes.clone());
            stats.buffered_future += 1;
            return Ok(());
        }
        let member = if sharded {
            self.members.in_view(h.sender, round)
        } else {
            self.members.expects(h.sender, round)
        };
        if !member {
            stats.rejected.not_member += 1;
            return Ok(());
        }
        if sharded && h.view != self.view {
            let ours = self.view;
            stats.rejected.other_view += 1;
            self.note(
                h.sender,
                "other view",
                format_args!(
                    "round {round}: sent under membership view {:#018x}, ours {:#018x}",
                    h.view, ours
                ),
            );
            return Ok(());
        }
        if !self.accepted.contains(&key) {
            stats.rejected.misrouted += 1;
            self.note(
                h.sender,
                "misrouted",
                format_args!("{:?} of shard {} not for this peer", h.kind, h.shard),
            );
            return Ok(());
        }
        if h.kind == MessageKind::Claim {
            return self.accept_claim(key, h, message.payload, config, len, stats);
        }
        let slot = self.slots.entry(key).or_default();
        match file_chunk(slot, h, message.payload, bytes) {
            ChunkOutcome::Incomplete => {}
            ChunkOutcome::Duplicate => stats.rejected.duplicate += 1,
            ChunkOutcome::Inconsistent(reason) => {
                stats.rejected.malformed += 1;
                self.note(h.sender, "inconsistent chunk", reason);
            }
            ChunkOutcome::Complete => {
                if let Err(error) = codec.validate(slot.payload(), len) {
                    slot.reset();
                    stats.rejected.malformed += 1;
                    self.note(h.sender, "undecodable gradient", &error);
                } else {
                    slot.complete = true;
                }
            }
        }
        Ok(())
    }
}

/// Rounds ahead of the current one whose messages are kept: peers are at most a
/// round apart, so anything further is a leftover or a forgery.
const FUTURE_WINDOW: u64 = 2;
/// Smallest payload of a chunk that is not a payload's last.
const MIN_CHUNK: u64 = 1024;

/// Who takes part in which round: ranks are evicted after missing
/// `evict_after` rounds in a row and come back through a join. The sharded
/// exchange also keeps each rank's rounds in the membership view, which every
/// peer must derive alike ([`crate::exchange`]).
#[derive(Clone, Debug)]
pub(crate) struct Members {
    active: Vec<bool>,
    missed: Vec<u32>,
    from_round: Vec<u64>,
    incarnation: Vec<Option<u64>>,
    /// Sharded exchange: the first round each rank is in the view.
    view_from: Vec<u64>,
    /// Sharded exchange: the round from which each rank is out of the view (an
    /// announced eviction; `u64::MAX` when none is).
    view_until: Vec<u64>,
}

/// An eviction to announce to the other peers (sharded exchange); also the `Evict`
/// message's JSON payload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Eviction {
    /// The ranks leaving the view.
    pub(crate) ranks: Vec<u32>,
    /// The first round without them.
    pub(crate) from_round: u64,
}

impl Members {
    fn new(world_size: usize) -> Self {
        Members {
            active: vec![true; world_size],
            missed: vec![0; world_size],
            from_round: vec![0; world_size],
            incarnation: vec![None; world_size],
            view_from: vec![0; world_size],
            view_until: vec![u64::MAX; world_size],
        }
    }

    /// Sharded exchange: whether `rank` is in the membership view of `round` (owns
    /// shards and sends parts).
    pub(crate) fn in_view(&self, rank: u32, round: u64) -> bool {
        let r = rank as usize;
        self.active.get(r).copied().unwrap_or(false)
            && self.view_from[r] <= round
            && round < self.view_until[r]
    }

    /// Sharded exchange: the ranks in the view of `round`, ascending.
    pub(crate) fn view(&self, round: u64) -> Vec<u32> {
        (0..self.active.len() as u32)
            .filter(|&r| self.in_view(r, round))
            .collect()
    }

    /// Sharded exchange: each rank's first round in the view and first round out of it.
    pub(crate) fn view_rounds(&self) -> (&[u64], &[u64]) {
        (&self.view_from, &self.view_until)
    }

    /// Sharded exchange: takes another peer's view rounds (a rejoining peer takes the
    /// answering peer's); ignored unless they cover every rank.
    pub(crate) fn set_view_rounds(&mut self, from: &[u64], until: &[u64]) {
        if from.len() == self.view_from.len() && until.len() == self.view_until.len() {
            self.view_from.copy_from_slice(from);
            self.view_until.copy_from_slice(until);
        }
    }

    /// Sharded exchange: `ranks` leave the view from `from_round` (an announced
    /// eviction). A rank admitted again since (in the view from `from_round` on) stays.
    pub(crate) fn schedule_eviction(&mut self, ranks: &[u32], from_round: u64) {
        for &rank in ranks {
            let r = rank as usize;
            if r < self.view_until.len() && self.view_from[r] < from_round {
                self.view_until[r] = self.view_until[r].min(from_round);
            }
        }
    }

    /// Whether a gradient of `rank` is awaited (and used) in `round`.
    pub(crate) fn expects(&self, rank: u32, round: u64) -> bool {
        let r = rank as usize;
        self.active.get(r).copied().unwrap_or(false) && round >= self.from_round[r]
    }

    /// Whether `incarnation` is the known current process of `rank` (any is
    /// accepted while none is known).
    fn current_incarnation(&self, rank: u32, incarnation: u64) -> bool {
        match self.incarnation.get(rank as usize) {
            Some(Some(known)) => *known == incarnation,
            _ => true,
        }
    }

    /// Records a rank's process, the round from which it takes part, and the
    /// round from which it is in the sharded exchange's view. A rank still in the
    /// view at `from_round` (restarted before it was evicted) stays in it: the
    /// owners do not change, whoever has heard of the admission yet.
    pub(crate) fn admit(&mut self, rank: u32, incarnation: u64, from_round: u64, view_from: u64) {
        let r = rank as usize;
        if r < self.active.len() {
            if !self.in_view(rank, from_round) {
                self.view_from[r] = view_from;
            }
            self.active[r] = true;
            self.missed[r] = 0;
            self.from_round[r] = from_round;
            self.incarnation[r] = Some(incarnation);
            self.view_until[r] = u64::MAX;
        }
    }

    /// The current incarnation of every rank (`None`: unknown).
    pub(crate) fn incarnations(&self) -> &[Option<u64>] {
        &self.incarnation
    }

    /// Ranks taking part, ascending.
    pub(crate) fn active_ranks(&self) -> Vec<u32> {
        (0..self.active.len() as u32)
            .filter(|r| self.active[*r as usize])
            .collect()
    }

    /// Sets who takes part (from a peer's state).
    pub(crate) fn set_active(&mut self, active: &[u32], from_round: u64) {
        for r in 0..self.active.len() {
            self.active[r] = active.contains(&(r as u32));
            self.missed[r] = 0;
            self.from_round[r] = from_round;
        }
    }

    /// Evicts the ranks that missed `evict_after` rounds in a row (partial
    /// rounds only) and returns them.
    fn after_round(&mut self, config: &RoundConfig) -> Vec<u32> {
        let mut evicted = Vec::new();
        if config.on_timeout != OnTimeout::AverageArrived || config.evict_after == 0 {
            return evicted;
        }
        for rank in 0..self.active.len() {
            if self.missed[rank] >= config.evict_after && self.active[rank] {
                self.active[rank] = false;
                evicted.push(rank as u32);
            }
        }
        evicted
    }

    /// Sharded exchange: records who delivered in `round`, takes the evictions
    /// announced for the next round out, and, when this peer is the one deciding
    /// (the lowest-ranked of the view not itself due), schedules the ranks that
    /// missed `evict_after` rounds in a row to leave the view in two rounds.
    /// Returns the ranks out from the next round and the eviction to announce.
    fn after_sharded_round(
        &mut self,
        round: u64,
        config: &RoundConfig,
        missing: &[u32],
    ) -> (Vec<u32>, Option<Eviction>) {
        let view = self.view(round);
        for &rank in &view {
            if rank != config.rank {
                self.record(rank, !missing.contains(&rank));
            }
        }
        let next = round.saturating_add(1);
        let mut evicted = Vec::new();
        for rank in 0..self.active.len() {
            if self.active[rank] && self.view_until[rank] == next {
                self.active[rank] = false;
                evicted.push(rank as u32);
            }
        }
        if config.on_timeout != OnTimeout::AverageArrived || config.evict_after == 0 {
            return (evicted, None);
        }
        let due: Vec<u32> = view
            .iter()
            .copied()
            .filter(|&r| {
                r != config.rank
                    && self.missed[r as usize] >= config.evict_after
                    && self.view_until[r as usize] == u64::MAX
            })
            .collect();
        let decider = view.iter().copied().find(|r| !due.contains(r));
        if due.is_empty() || decider != Some(config.rank) {
            return (evicted, None);
        }
        let eviction = Eviction {
            ranks: due,
            from_round: round.saturating_add(2),
        };
        self.schedule_eviction(&eviction.ranks, eviction.from_round);
        (evicted, Some(eviction))
    }

    /// Notes which expected ranks delivered this round.
    fn record(&mut self, rank: u32, delivered: bool) {
        let r = rank as usize;
        if delivered {
            self.missed[r] = 0;
        } else {
            self.missed[r] = self.missed[r].saturating_add(1);
        }
    }
}

fn file_chunk(slot: &mut Slot, h: &Header, payload: &[u8], bytes: &Bytes) -> ChunkOutcome {
    if slot.complete {
        return ChunkOutcome::Duplicate;
    }
    if !slot.started {
        slot.started = true;
        slot.total_len = h.total_payload_len;
        slot.chunk_count = h.chunk_count;
        if h.chunk_count == 1 {
            if u64::from(h.payload_len) != h.total_payload_len {
                slot.started = false;
                return ChunkOutcome::Inconsistent("single chunk shorter than the payload");
            }
            slot.single = Some(bytes.slice(HEADER_LEN..HEADER_LEN + payload.len()));
            slot.compute_micros = h.compute_micros;
            return ChunkOutcome::Complete;
        }
        let total = h.total_payload_len as usize;
        if slot.buffer.len() != total {
            // Only when the size changes: contents are overwritten chunk by chunk.
            slot.buffer.clear();
            slot.buffer.resize(total, 0);
        }
        slot.received.clear();
        slot.received.resize(h.chunk_count as usize, false);
        slot.remaining = h.chunk_count;
        slot.compute_micros = h.compute_micros;
    } else if slot.total_len != h.total_payload_len || slot.chunk_count != h.chunk_count {
        return ChunkOutcome::Inconsistent(
            "chunk disagrees with earlier chunks on the payload size",
        );
    }
    let index = h.chunk_index as usize;
    if slot.received[index] {
        return ChunkOutcome::Duplicate;
    }
    let at = h.chunk_offset as usize;
    slot.buffer[at..at + payload.len()].copy_from_slice(payload);
    slot.received[index] = true;
    slot.remaining -= 1;
    if slot.remaining == 0 {
        ChunkOutcome::Complete
    } else {
        ChunkOutcome::Incomplete
    }
}
