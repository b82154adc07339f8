//! Who takes part in a run: starting together, resuming from a common
//! checkpoint, refusing peers configured differently, and admitting a
//! restarted peer into a running run.
//!
//! Every process draws a random *incarnation* at start and sends it in every
//! header, so messages a crashed process left in the queues are told from its
//! successor's.
//!
//! **Starting** ([`Averager::start`]): a peer broadcasts a `Hello` (its
//! training identity, the checkpoint rounds it holds, and the incarnations it
//! has seen) every second and whenever it learns of a new peer. It is ready
//! once every other rank's latest `Hello` lists this peer's incarnation, which
//! only a live process can do. All peers then start from the newest checkpoint
//! round every peer holds (0 if none), so a run whose peers were all killed
//! resumes where they can all continue. A `Hello` whose identity differs is
//! refused with an error naming the fields.
//!
//! **Rejoining**: a restarted peer sends the same `Hello`s. The running peers
//! see an unknown incarnation; the lowest-ranked running peer answers at its
//! next round boundary ([`Averager::join_requests`], [`Averager::admit`]): it
//! broadcasts a `Join` (the rank takes part from round `r + 1`) and then sends
//! its state for round `r + 1` to the restarted peer alone. Messages from one
//! sender arrive in order, so every peer learns of the join before it can
//! finish round `r + 1` (which needs the answering peer's gradient sent after
//! the `Join`): all peers average the same contributions.
//!
//! In a sharded exchange the shard owners come from a membership view that every
//! peer must derive alike for a round, so a rank admitted from round `r + 1` only
//! listens in that round and enters the view at `r + 2`, and evictions are announced
//! (`Evict`) by one peer two rounds ahead instead of decided by each peer on its
//! own counts (see [`crate::exchange`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::round::{Averager, Eviction, Members, OnTimeout, RoundError};
use crate::transport::Transport;
use crate::wire::{self, Header, MessageKind};

/// The training configuration peers must agree on, as named fields (field →
/// value), so a mismatch can be reported field by field.
pub type Identity = BTreeMap<String, String>;

/// How a peer enters the run.
#[derive(Debug)]
pub enum Start {
    /// Every peer starts together from `round`: 0, or the newest checkpoint
    /// round all peers hold (each peer then loads its own).
    Together {
        /// The first round to run.
        round: u64,
    },
    /// The run is going on: a running peer sent its state, from which this
    /// peer continues at `round`.
    Rejoin {
        /// The first round to run.
        round: u64,
        /// The running peer's state (opaque to this crate).
        state: Bytes,
        /// The rank that sent it.
        from: u32,
    },
}

/// A restarted peer waiting to be admitted, to be answered with
/// [`Averager::admit`] at a round boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// Its rank.
    pub rank: u32,
    /// Its incarnation.
    pub incarnation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    identity: Identity,
    checkpoints: Vec<u64>,
    /// `(rank, incarnation)` of every peer this one has heard from.
    seen: Vec<(u32, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Join {
    rank: u32,
    incarnation: u64,
    from_round: u64,
}

/// The membership part of a state message; the opaque application state follows it.
#[derive(Debug, Serialize, Deserialize)]
struct StateHead {
    to_incarnation: u64,
    from_round: u64,
    active: Vec<u32>,
    incarnations: Vec<Option<u64>>,
    /// Each rank's first round in the sharded exchange's view, and first round out.
    #[serde(default)]
    view_from: Vec<u64>,
    #[serde(default)]
    view_until: Vec<u64>,
}

/// Applies a `Join` payload to the membership (called for every `Join` received).
pub(crate) fn apply_join(members: &mut Members, payload: &[u8]) {
    match serde_json::from_slice::<Join>(payload) {
        Ok(join) => {
            tracing::info!(
                rank = join.rank,
                from_round = join.from_round,
                "a restarted peer takes part again"
            );
            // Sharded: only listening in its first round, in the view from the next.
            members.admit(
                join.rank,
                join.incarnation,
                join.from_round,
                join.from_round.saturating_add(1),
            );
        }
        Err(error) => tracing::warn!(%error, "ignored an invalid join message"),
    }
}

/// Applies an `Evict` payload from `sender` (sharded exchange): ignored unless the
/// sender takes part itself.
pub(crate) fn apply_evict(members: &mut Members, sender: u32, payload: &[u8]) {
    match serde_json::from_slice::<Eviction>(payload) {
        Ok(evict) if members.active_ranks().contains(&sender) => {
            tracing::warn!(
                ranks = ?evict.ranks,
                from_round = evict.from_round,
                by = sender,
                "ranks leave the sharded exchange's membership view"
            );
            members.schedule_eviction(&evict.ranks, evict.from_round);
        }
        Ok(_) => tracing::warn!(sender, "ignored an eviction from a rank not taking part"),
        Err(error) => tracing::warn!(%error, "ignored an invalid eviction message"),
    }
}

/// The fields whose values differ between two identities, described for an error.
pub fn identity_diff(ours: &Identity, theirs: &Identity) -> Vec<String> {
    let keys: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (a, b) = (ours.get(key), theirs.get(key));
            (a != b).then(|| {
                format!(
                    "{key} ({} here, {} there)",
                    a.map_or("unset", String::as_str),
                    b.map_or("unset", String::as_str)
                )
            })
        })
        .collect()
}

/// How long a starting peer waits for the others (they may boot minutes apart).
pub const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a starting peer repeats its `Hello`.
const HELLO_EVERY: Duration = Duration::from_secs(1);

impl<T: Transport> Averager<T> {
    fn control_header(&self, kind: MessageKind, round: u64) -> Header {
        let c = self.config();
        Header {
            kind,
            incarnation: c.incarnation,
            ..Header::gradient(
                c.run_id,
                round,
                c.rank,
                c.world_size,
                c.model_fingerprint,
                self.codec().spec(),
                c.element_count as u64,
            )
        }
    }

    fn control_messages(&self, kind: MessageKind, round: u64, payload: &[u8]) -> Vec<Bytes> {
        let mut out = Vec::new();
        let header = self.control_header(kind, round);
        wire::chunk_messages_signed(
            &header,
            payload,
            self.config().max_chunk_bytes,
            &mut out,
            self.config().keyring.signer(),
        );
        out
    }

    async fn send_hello(
        &self,
        identity: &Identity,
        checkpoints: &[u64],
        seen: &BTreeMap<u32, u64>,
    ) -> Result<(), RoundError> {
        let hello = Hello {
            identity: identity.clone(),
            checkpoints: checkpoints.to_vec(),
            seen: seen.iter().map(|(r, i)| (*r, *i)).collect(),
        };
        let payload = serde_json::to_vec(&hello).map_err(|e| RoundError::Config(e.to_string()))?;
        let messages = self.control_messages(MessageKind::Hello, 0, &payload);
        self.transport().publish(&messages).await?;
        Ok(())
    }

    /// Joins the run: waits until every other peer is known to be alive and
    /// configured alike (then all start from the same round), or until a running
    /// peer sends its state. Fails naming the differing fields when a peer's
    /// identity differs, or after `timeout`. When some peers are still absent
    /// after the round timeout, a failing run fails naming them and a partial
    /// run starts without them.
    pub async fn start(
        &mut self,
        identity: &Identity,
        checkpoints: &[u64],
        timeout: Duration,
    ) -> Result<Start, RoundError> {
        let world = self.config().world_size;
        let rank = self.config().rank;
        let own = self.config().incarnation;
        let run_id = self.config().run_id;
        if world == 1 {
            return Ok(Start::Together {
                round: checkpoints.iter().max().copied().unwrap_or(0),
            });
        }
        let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
        let mut acked: BTreeMap<u32, (u64, Vec<u64>)> = BTreeMap::new();
        let mut state: Option<StateAssembly> = None;
        let deadline = tokio::time::Instant::now() + timeout;
        let round_deadline = tokio::time::Instant::now() + self.config().timeout;
        self.send_hello(identity, checkpoints, &seen).await?;
        let mut next_hello = tokio::time::Instant::now() + HELLO_EVERY;
        loop {
            let ready = (0..world).filter(|r| *r != rank).all(
                |r| matches!((seen.get(&r), acked.get(&r)), (Some(s), Some((a, _))) if s == a),
            );
            if ready {
                let round = common_round(checkpoints, acked.values().map(|(_, c)| c.as_slice()));
                let members = self.members_mut();
                for (r, inc) in &seen {
                    members.admit(*r, *inc, round, round);
                }
                tracing::info!(rank, round, "all {world} peers are here");
                return Ok(Start::Together { round });
            }
            // After a round's timeout, partial rounds go on with the peers that are here
            // (the absent ones are waited for in the rounds, then evicted); failing
            // rounds fail. A peer nobody answered keeps waiting: the run may be going
            // on and a running peer will send its state.
            if tokio::time::Instant::now() >= round_deadline && !acked.is_empty() {
                let missing: Vec<u32> = (0..world)
                    .filter(|r| *r != rank && !acked.contains_key(r))
                    .collect();
                if self.config().on_timeout == OnTimeout::Fail {
                    return Err(RoundError::Timeout {
                        round: 0,
                        timeout: self.config().timeout,
                        missing,
                    });
                }
                let round = common_round(checkpoints, acked.values().map(|(_, c)| c.as_slice()));
                let members = self.members_mut();
                for (r, (inc, _)) in &acked {
                    members.admit(*r, *inc, round, round);
                }
                tracing::warn!(rank, round, ?missing, "starting without the missing ranks");
                return Ok(Start::Together { round });
            }
            let wake = next_hello
                .min(deadline)
                .min(round_deadline.max(tokio::time::Instant::now() + HELLO_EVERY / 4));
            let delivery = match tokio::time::timeout_at(wake, self.transport().recv()).await {
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    let missing: Vec<u32> = (0..world)
                        .filter(|r| *r != rank && !acked.contains_key(r))
                        .collect();
                    return Err(RoundError::Timeout {
                        round: 0,
                        timeout,
                        missing,
                    });
                }
                Err(_) => {
                    if tokio::time::Instant::now() >= next_hello {
                        self.send_hello(identity, checkpoints, &seen).await?;
                        next_hello = tokio::time::Instant::now() + HELLO_EVERY;
                    }
                    continue;
                }
                Ok(delivery) => delivery?,
            };
            let bytes = delivery.data().clone();
            if let Err(error) = delivery.ack().await {
                tracing::debug!(%error, "acknowledgement lost");
            }
            let Ok(message) = wire::decode(&bytes) else {
                continue;
            };
            let h = &message.header;
            if h.run_id != run_id || h.sender >= world || h.sender == rank {
                continue;
            }
            if let Err(reason) = self.config().keyring.verify(&message) {
                tracing::warn!(sender = h.sender, %reason, "dropped a message while starting");
                continue;
            }
            match h.kind {
                // A faster peer's first round, whatever the exchange.
                MessageKind::Gradient
                | MessageKind::Shard
                | MessageKind::Reduced
                | MessageKind::Claim => {
                    self.keep_early(h.round, bytes.clone());
                }
                MessageKind::Hello => {
                    let Ok(hello) = serde_json::from_slice::<Hello>(message.payload) else {
                        continue;
                    };
                    let diff = identity_diff(identity, &hello.identity);
                    if !diff.is_empty() {
                        return Err(RoundError::IdentityMismatch {
                            rank: h.sender,
                            fields: diff,
                        });
                    }
                    let changed = seen.insert(h.sender, h.incarnation) != Some(h.incarnation);
                    if hello.seen.contains(&(rank, own)) {
                        acked.insert(h.sender, (h.incarnation, hello.checkpoints));
                    }
                    if changed {
                        self.send_hello(identity, checkpoints, &seen).await?;
                    }
                }
                MessageKind::Join => {
                    if let Ok(join) = serde_json::from_slice::<Join>(message.payload)
                        && join.rank != rank
                    {
                        apply_join(self.members_mut(), message.payload);
                    }
                }
                MessageKind::Evict => {
                    apply_evict(self.members_mut(), h.sender, message.payload);
                }
                MessageKind::State => {
                    // Weights, statistics, up to two optimizer vectors and a codec
                    // residual: never more than this for a gradient of this size.
                    let limit = 24 * self.config().element_count as u64 + (16 << 20);
                    if h.total_payload_len > limit {
                        continue;
                    }
                    let assembly = state.get_or_insert_with(|| StateAssembly::new(h.sender, h));
                    if let Some(payload) = assembly.add(h, message.payload)
                        && let Some((head, app)) = split_state(&payload)
                        && head.to_incarnation == own
                    {
                        let members = self.members_mut();
                        let mut active = head.active.clone();
                        active.push(rank);
                        for (r, inc) in head.incarnations.iter().enumerate() {
                            if let Some(inc) = inc
                                && r as u32 != rank
                            {
                                members.admit(r as u32, *inc, head.from_round, head.from_round);
                            }
                        }
                        // After the incarnations: who takes part is the sender's view.
                        members.set_active(&active, head.from_round);
                        // Sharded: the sender's view rounds, in which this peer only
                        // listens in its first round.
                        members.admit(rank, own, head.from_round, head.from_round + 1);
                        members.set_view_rounds(&head.view_from, &head.view_until);
                        tracing::info!(
                            rank,
                            round = head.from_round,
                            from = h.sender,
                            "rejoining the running run with rank {}'s state",
                            h.sender
                        );
                        return Ok(Start::Rejoin {
                            round: head.from_round,
                            state: app,
                            from: h.sender,
                        });
                    }
                }
                _ => {}
            }
        }
    }

    /// Restarted peers this peer must answer now (it is the lowest-ranked peer
    /// taking part), from the `Hello`s received during the last rounds; a peer
    /// still starting with a known incarnation is sent this peer's `Hello`
    /// again. A restarted peer configured differently is logged and ignored: it
    /// cannot hurt the running peers.
    pub async fn join_requests(
        &mut self,
        identity: &Identity,
    ) -> Result<Vec<JoinRequest>, RoundError> {
        let rank = self.config().rank;
        let own = self.config().incarnation;
        let control = self.take_control();
        let mut requests: Vec<JoinRequest> = Vec::new();
        let mut reply = false;
        for bytes in control {
            let Ok(message) = wire::decode(&bytes) else {
                continue;
            };
            let h = &message.header;
            if h.kind != MessageKind::Hello {
                continue;
            }
            let Ok(hello) = serde_json::from_slice::<Hello>(message.payload) else {
                continue;
            };
            let known = self.members().incarnations()[h.sender as usize];
            if known == Some(h.incarnation) {
                reply |= !hello.seen.contains(&(rank, own));
                continue;
            }
            let diff = identity_diff(identity, &hello.identity);
            if !diff.is_empty() {
                tracing::error!(
                    sender = h.sender,
                    "a restarted peer is configured differently; not admitted: {}",
                    diff.join(", ")
                );
                continue;
            }
            let responder = self
                .members()
                .active_ranks()
                .into_iter()
                .find(|r| *r != h.sender);
            let request = JoinRequest {
                rank: h.sender,
                incarnation: h.incarnation,
            };
            if responder == Some(rank) && !requests.contains(&request) {
                requests.retain(|r| r.rank != request.rank);
                requests.push(request);
            }
        }
        if reply {
            let seen = self
                .members()
                .incarnations()
                .iter()
                .enumerate()
                .filter_map(|(r, i)| i.map(|i| (r as u32, i)))
                .collect();
            self.send_hello(identity, &[], &seen).await?;
        }
        Ok(requests)
    }

    /// Admits a restarted peer from round `from_round`: tells every peer
    /// (`Join`), then sends `state` (this peer's state for that round) to it.
    pub async fn admit(
        &mut self,
        request: &JoinRequest,
        from_round: u64,
        state: &[u8],
    ) -> Result<(), RoundError> {
        let join = Join {
            rank: request.rank,
            incarnation: request.incarnation,
            from_round,
        };
        let payload = serde_json::to_vec(&join).map_err(|e| RoundError::Config(e.to_string()))?;
        let messages = self.control_messages(MessageKind::Join, from_round, &payload);
        self.transport().publish(&messages).await?;
        let members = self.members_mut();
        members.admit(
            request.rank,
            request.incarnation,
            from_round,
            from_round.saturating_add(1),
        );
        let (view_from, view_until) = members.view_rounds();
        let head = StateHead {
            to_incarnation: request.incarnation,
            from_round,
            active: members.active_ranks(),
            incarnations: members.incarnations().to_vec(),
            view_from: view_from.to_vec(),
            view_until: view_until.to_vec(),
        };
        let head = serde_json::to_vec(&head).map_err(|e| RoundError::Config(e.to_string()))?;
        let mut payload = Vec::with_capacity(4 + head.len() + state.len());
        payload.extend_from_slice(&(head.len() as u32).to_le_bytes());
        payload.extend_from_slice(&head);
        payload.extend_from_slice(state);
        let messages = self.control_messages(MessageKind::State, from_round, &payload);
        self.transport().send_to(request.rank, &messages).await?;
        tracing::info!(
            rank = request.rank,
            from_round,
            bytes = payload.len(),
            "admitted a restarted peer"
        );
        Ok(())
    }
}

impl<T: Transport> Averager<T> {
    /// Tells every peer that `eviction.ranks` leave the sharded exchange's view from
    /// `eviction.from_round` (sent after round `round`, before this peer's next
    /// round's messages, so every peer has it before it can finish that round).
    pub(crate) async fn announce_eviction(
        &self,
        round: u64,
        eviction: &Eviction,
    ) -> Result<(), RoundError> {
        let payload =
            serde_json::to_vec(eviction).map_err(|e| RoundError::Config(e.to_string()))?;
        let messages = self.control_messages(MessageKind::Evict, round, &payload);
        self.transport().publish(&messages).await?;
        tracing::warn!(
            ranks = ?eviction.ranks,
            from_round = eviction.from_round,
            "announced that ranks leave the sharded exchange's membership view"
        );
        Ok(())
    }
}

/// The newest round every peer holds a checkpoint of (0 when there is none).
fn common_round<'a>(own: &[u64], others: impl Iterator<Item = &'a [u64]>) -> u64 {
    let mut common: BTreeSet<u64> = own.iter().copied().collect();
    for theirs in others {
        let theirs: BTreeSet<u64> = theirs.iter().copied().collect();
        common = common.intersection(&theirs).copied().collect();
    }
    common.last().copied().unwrap_or(0)
}

fn split_state(payload: &[u8]) -> Option<(StateHead, Bytes)> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let head = payload.get(4..4 + len)?;
    let head: StateHead = serde_json::from_slice(head).ok()?;
    Some((head, Bytes::copy_from_slice(&payload[4 + len..])))
}

/// Reassembles the chunks of one state message.
struct StateAssembly {
    sender: u32,
    incarnation: u64,
    buffer: Vec<u8>,
    received: Vec<bool>,
    remaining: usize,
}

impl StateAssembly {
    fn new(sender: u32, h: &Header) -> Self {
        StateAssembly {
            sender,
            incarnation: h.incarnation,
            // A state bigger than 4 GiB is not assembled (it would not fit a model).
            buffer: vec![0; h.total_payload_len.min(1 << 32) as usize],
            received: vec![false; h.chunk_count as usize],
            remaining: h.chunk_count as usize,
        }
    }

    fn done(&self) -> bool {
        self.remaining == 0
    }

    /// Files one chunk; returns the whole payload once complete.
    fn add(&mut self, h: &Header, payload: &[u8]) -> Option<Vec<u8>> {
        if h.sender != self.sender
            || h.incarnation != self.incarnation
            || h.chunk_count as usize != self.received.len()
            || h.total_payload_len as usize != self.buffer.len()
            || self.done()
        {
            // A different state message: start over with it.
            *self = StateAssembly::new(h.sender, h);
        }
        let index = h.chunk_index as usize;
        if self.received.get(index).copied().unwrap_or(true) {
            return None;
        }
        let at = h.chunk_offset as usize;
        self.buffer
            .get_mut(at..at + payload.len())?
            .copy_from_slice(payload);
        self.received[index] = true;
        self.remaining -= 1;
        (self.remaining == 0).then(|| std::mem::take(&mut self.buffer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_round_is_the_newest_held_by_all() {
        assert_eq!(
            common_round(&[4, 6], [&[4, 6][..], &[2, 4][..]].into_iter()),
            4
        );
        assert_eq!(common_round(&[], [&[4, 6][..]].into_iter()), 0);
        assert_eq!(common_round(&[6, 8], [&[2, 4][..]].into_iter()), 0);
    }

    #[test]
    fn identity_diff_names_each_field() {
        let a: Identity = [("seed", "1"), ("model", "tiny_cnn")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut b = a.clone();
        b.insert("seed".into(), "2".into());
        b.insert("codec".into(), "qsgd8".into());
        assert_eq!(
            identity_diff(&a, &b),
            vec!["codec (unset here, qsgd8 there)", "seed (1 here, 2 there)"]
        );
        assert!(identity_diff(&a, &a).is_empty());
    }
}
