//! One averaging round: publish the local gradient, collect exactly one
//! gradient per other rank, and average them all in rank order.
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
//!    (`buffered_future`); a rank not taking part (`not_member`);
//! 7. sizes and chunk layout are checked against the expected gradient size
//!    before anything is allocated (`malformed`); a chunk seen twice
//!    (`duplicate`);
//! 8. a complete payload that its codec rejects, NaN and infinity included,
//!    is counted (`malformed`) and its rank stays missing.
//!
//! The event loop only waits on the transport and on the round's deadline:
//! no sleeping, no polling.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use std::collections::HashSet;
use std::sync::Arc;

use crate::aggregate::{Aggregation, Aggregator};
use crate::auth::Keyring;
use crate::average;
use crate::codec::{Codec, CodecError};
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
    /// How long a round waits for the other ranks after encoding.
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
}

impl RoundConfig {
    /// A configuration with defaults: 8 MiB chunks, 10 minute timeout, fail on
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
        }
    }
}

/// Counts of incoming messages that were not used, by reason; non-zero
/// values point at misconfigured or misbehaving peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// Ranks not waited for any more after this round (missed `evict_after` rounds in a row).
    pub evicted: Vec<u32>,
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
}

impl<T> fmt::Debug for Averager<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Averager")
            .field("config", &self.config)
            .field("codec", &self.codec.spec())
            .finish_non_exhaustive()
    }
}

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
        }
        let inbox = Inbox::new(config.world_size as usize, config.element_count);
        Ok(Averager {
            config,
            codec,
            transport,
            encoded: Vec::new(),
            outgoing: Vec::new(),
            inbox,
            compute_micros: 0,
            aggregator: Aggregator::new(),
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

    /// The codec, to restore its state from a checkpoint.
    pub fn codec_mut(&mut self) -> &mut dyn Codec {
        self.codec.as_mut()
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

    /// Runs round `round`: publishes `local` (encoded), waits for one gradient
    /// from every other rank of this round, and writes the average of all of
    /// them (decoded, this peer's own encoded gradient included, summed in
    /// rank order) into `out`. Every peer that received the same set of
    /// gradients gets a bit-identical `out`.
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
        let mut stats = RoundStats {
            round,
            ..RoundStats::default()
        };

        let Averager {
            config,
            codec,
            transport,
            encoded,
            outgoing,
            inbox,
            compute_micros,
            aggregator,
        } = self;
        let config: &RoundConfig = config;

        let started = Instant::now();
        let non_finite = config
            .check_own
            .then(|| crate::codec::first_non_finite(local))
            .flatten();
        let withheld = non_finite.is_some();
        if let Some((index, value)) = non_finite {
            tracing::error!(
                round,
                index,
                %value,
                "this peer's gradient is not finite: not sending it, averaging the others'"
            );
            stats.withheld = true;
            encoded.clear();
        } else {
            codec.encode(local, encoded).map_err(RoundError::Encode)?;
        }
        let header = Header {
            compute_micros: *compute_micros,
            incarnation: config.incarnation,
            ..Header::gradient(
                config.run_id,
                round,
                config.rank,
                config.world_size,
                config.model_fingerprint,
                codec.spec(),
                n as u64,
            )
        };
        outgoing.clear();
        if !withheld {
            wire::chunk_messages_signed(
                &header,
                encoded,
                config.max_chunk_bytes,
                outgoing,
                config.keyring.signer(),
            );
        }
        stats.messages_sent = outgoing.len() as u64;
        stats.bytes_sent = outgoing.iter().map(|m| m.len() as u64).sum();
        stats.encode_time = started.elapsed();

        inbox.start_round(round, &mut stats);
        for bytes in inbox.take_pending(round) {
            inbox.handle(&bytes, round, config, codec.as_ref(), &mut stats)?;
        }

        let receive_start = Instant::now();
        let outage_start = transport.outage();
        // The deadline moves by the time the broker was away during the round.
        let deadline_now = || {
            let away = transport.outage().saturating_sub(outage_start);
            tokio::time::Instant::from_std(receive_start + config.timeout + away)
        };
        let outgoing = &*outgoing;
        let transport = &*transport;
        let publish = async {
            if outgoing.is_empty() {
                return Ok(Duration::ZERO);
            }
            loop {
                let deadline = deadline_now();
                match tokio::time::timeout_at(deadline, transport.publish(outgoing)).await {
                    Ok(Ok(())) => return Ok(receive_start.elapsed()),
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
        };
        let stats_ref = &mut stats;
        let inbox_ref = &mut *inbox;
        let codec_ref = codec.as_ref();
        let receive = async move {
            while !inbox_ref.all_arrived(config.rank, round) {
                let deadline = deadline_now();
                let delivery = match tokio::time::timeout_at(deadline, transport.recv()).await {
                    Err(_) if deadline_now() > deadline => continue,
                    Err(_) => break,
                    Ok(delivery) => delivery?,
                };
                stats_ref.messages_received += 1;
                stats_ref.bytes_received += delivery.data().len() as u64;
                inbox_ref.handle(delivery.data(), round, config, codec_ref, stats_ref)?;
                // Best effort: a lost acknowledgement (the connection dropped) only means a
                // redelivery, which is dropped as a duplicate.
                if let Err(error) = delivery.ack().await {
                    tracing::debug!(%error, "acknowledgement lost");
                }
            }
            Ok::<_, RoundError>(receive_start.elapsed())
        };
        let (send_time, receive_time) = tokio::try_join!(publish, receive)?;
        stats.send_time = send_time;
        stats.receive_time = receive_time;
        stats.outage = transport.outage().saturating_sub(outage_start);

        let missing = inbox.missing(config.rank, round);
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
        stats.evicted = inbox.close_round(round, config);
        if !stats.evicted.is_empty() {
            tracing::warn!(
                round,
                evicted = ?stats.evicted,
                "no longer waiting for rank(s) that missed {} rounds in a row",
                config.evict_after
            );
        }

        let decode_start = Instant::now();
        inbox.collect_contributors(config.rank, !withheld);
        let contributors = &inbox.contributors;
        let slots = &inbox.slots;
        let own_rank = config.rank;
        let own = encoded.as_slice();
        let codec = codec.as_ref();
        if contributors.is_empty() {
            out.fill(0.0);
        }
        let payload = |source: usize| {
            let rank = contributors[source];
            if rank == own_rank {
                own
            } else {
                slots[rank as usize].payload()
            }
        };
        if config.aggregation.is_mean() && config.clip_norm.is_none() {
            // The streaming mean: decoded straight into the accumulator.
            average::mean_into(out, contributors.len(), |source, start, block, mode| {
                codec.accumulate(payload(source), n, start, block, mode);
            });
        } else {
            aggregator.aggregate(
                config.aggregation,
                config.clip_norm,
                contributors.len(),
                out,
                |source, start, block| {
                    let mode = crate::codec::Accumulate::Assign;
                    codec.accumulate(payload(source), n, start, block, mode);
                },
            );
        }
        stats.contributors = contributors.len() as u32;
        stats.participants = contributors.clone();
        stats.peer_compute = vec![None; slots.len()];
        for &rank in contributors {
            let micros = if rank == own_rank {
                *compute_micros
            } else {
                slots[rank as usize].compute_micros
            };
            stats.peer_compute[rank as usize] = (micros > 0).then(|| Duration::from_micros(micros));
        }
        stats.decode_time = decode_start.elapsed();
        Ok(stats)
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
    /// Reassembly buffer for multi-chunk payloads (kept across rounds).
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
    slots: Vec<Slot>,
    pending: BTreeMap<u64, Vec<Bytes>>,
    contributors: Vec<u32>,
    /// Who takes part, and from which round.
    pub(crate) members: Members,
    /// Membership messages (hellos, joins) kept for [`crate::membership`].
    pub(crate) control: Vec<Bytes>,
    /// `(sender, reason)` pairs already logged.
    logged: HashSet<(u32, &'static str)>,
    /// Bytes held in `pending`, and the most it may hold.
    pending_bytes: usize,
    max_pending_bytes: usize,
}

/// Most distinct future rounds kept: a peer is at most a round or two ahead,
/// so more means leftovers (e.g. of a restarted peer's queue).
const MAX_PENDING_ROUNDS: usize = 8;

impl Inbox {
    fn new(world_size: usize, element_count: usize) -> Self {
        Inbox {
            slots: (0..world_size).map(|_| Slot::default()).collect(),
            pending: BTreeMap::new(),
            contributors: Vec::with_capacity(world_size),
            members: Members::new(world_size),
            control: Vec::new(),
            logged: HashSet::new(),
            pending_bytes: 0,
            // Every other peer's gradient for each round of the window, with room
            // for chunk headers.
            max_pending_bytes: (FUTURE_WINDOW as usize + 1)
                * world_size
                * (8 * element_count + 8 + (1 << 20)),
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

    fn start_round(&mut self, round: u64, stats: &mut RoundStats) {
        self.slots.iter_mut().for_each(Slot::reset);
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

    fn all_arrived(&self, own_rank: u32, round: u64) -> bool {
        self.slots.iter().enumerate().all(|(rank, slot)| {
            rank == own_rank as usize || slot.complete || !self.members.expects(rank as u32, round)
        })
    }

    fn missing(&self, own_rank: u32, round: u64) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|rank| {
                *rank != own_rank
                    && !self.slots[*rank as usize].complete
                    && self.members.expects(*rank, round)
            })
            .collect()
    }

    /// Counts which expected ranks missed the round and evicts those that
    /// missed too many in a row; returns the ranks evicted now.
    fn close_round(&mut self, round: u64, config: &RoundConfig) -> Vec<u32> {
        for rank in 0..self.slots.len() as u32 {
            if rank != config.rank && self.members.expects(rank, round) {
                let delivered = self.slots[rank as usize].complete;
                self.members.record(rank, delivered);
            }
        }
        self.members.after_round(config)
    }

    fn collect_contributors(&mut self, own_rank: u32, include_own: bool) {
        self.contributors.clear();
        for rank in 0..self.slots.len() as u32 {
            if (rank == own_rank && include_own) || self.slots[rank as usize].complete {
                self.contributors.push(rank);
            }
        }
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
        if let Err(reason) = config.keyring.verify(&message) {
            stats.rejected.unauthenticated += 1;
            self.note(h.sender, "unauthenticated", reason);
            return Ok(());
        }
        match h.kind {
            MessageKind::Gradient => {}
            MessageKind::Hello | MessageKind::Join => {
                if h.kind == MessageKind::Join {
                    crate::membership::apply_join(&mut self.members, message.payload);
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
        // Sizes before any allocation: no codec produces more than 8 bytes per
        // element (top-k at ratio 1), and chunks are at least MIN_CHUNK bytes but the last.
        let max_payload = 8 * config.element_count as u64 + 8;
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
        if !self.members.expects(h.sender, round) {
            stats.rejected.not_member += 1;
            return Ok(());
        }
        let sender = h.sender as usize;
        match file_chunk(&mut self.slots[sender], h, message.payload, bytes) {
            ChunkOutcome::Incomplete => {}
            ChunkOutcome::Duplicate => stats.rejected.duplicate += 1,
            ChunkOutcome::Inconsistent(reason) => {
                stats.rejected.malformed += 1;
                self.note(h.sender, "inconsistent chunk", reason);
            }
            ChunkOutcome::Complete => {
                let slot = &mut self.slots[sender];
                if let Err(error) = codec.validate(slot.payload(), config.element_count) {
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
/// `evict_after` rounds in a row and come back through a join.
#[derive(Clone, Debug)]
pub(crate) struct Members {
    active: Vec<bool>,
    missed: Vec<u32>,
    from_round: Vec<u64>,
    incarnation: Vec<Option<u64>>,
}

impl Members {
    fn new(world_size: usize) -> Self {
        Members {
            active: vec![true; world_size],
            missed: vec![0; world_size],
            from_round: vec![0; world_size],
            incarnation: vec![None; world_size],
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

    /// Records a rank's process and the round from which it takes part.
    pub(crate) fn admit(&mut self, rank: u32, incarnation: u64, from_round: u64) {
        let r = rank as usize;
        if r < self.active.len() {
            self.active[r] = true;
            self.missed[r] = 0;
            self.from_round[r] = from_round;
            self.incarnation[r] = Some(incarnation);
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
