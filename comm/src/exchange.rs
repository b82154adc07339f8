//! How a round moves gradients between peers (`--exchange`).
//!
//! - [`Exchange::AllToAll`]: every peer broadcasts its whole gradient and aggregates all
//!   of them. A peer sends `G` and receives `(N-1)·G` bytes a round; the broker
//!   delivers `N·(N-1)·G`.
//! - [`Exchange::Sharded`]: reduce-scatter then all-gather through the broker, as ring
//!   all-reduce moves data. The flat gradient is cut into `N` contiguous shards
//!   ([`shard_range`]); shard `s` is owned by rank `s` (or, while `s` is not taking
//!   part, by the next rank that is: [`owners`]). Every peer sends each owner its part
//!   of the owner's shard ([`crate::wire::MessageKind::Shard`]); the owner aggregates
//!   the parts (with the run's aggregation and codec) and broadcasts the result
//!   ([`crate::wire::MessageKind::Reduced`]). A peer sends about `G` and receives
//!   `2·G·(N-1)/N` bytes a round, whatever `N`; the broker delivers `2·G·(N-1)`.
//! - [`Exchange::S3`]: all-to-all, but each gradient goes to the run's object store once
//!   and only a signed claim of a few dozen bytes goes through the broker
//!   ([`crate::claim`]); every peer reads the `N-1` others' objects. For gradients the
//!   broker should not carry (hundreds of MB; brokers with small message limits).
//!
//! Both end every round with bit-identical averages on every peer that received the
//! same messages. In a sharded round the owner's result is the only copy of its shard's
//! aggregate: when an owner fails to deliver it (a crash), every peer leaves that shard
//! unchanged for the round (a zero update, listed in
//! [`crate::RoundStats::skipped_shards`]) and lists the owner as missing; once the
//! owner is evicted its shard moves to the next rank, so no part of the gradient is
//! lost for longer than that.
//!
//! **Who owns what, agreed.** Owners are a function of the round's *membership view*
//! ([`owners`] of the ranks in it), and every peer must derive the same view for a
//! round, or one peer sends a shard to an owner that is not waiting for it while
//! another applies a result the first never sees. Membership changes therefore enter
//! the view only from a round every peer is known to have heard of them by:
//! - a rank admitted by a `Join` for round `r + 1` (sent after round `r` by the
//!   answering peer, before its round `r + 1` messages) only listens in round `r + 1`
//!   (it applies the owners' results, sends nothing and owns nothing) and enters the
//!   view at round `r + 2`: every peer that finished round `r + 1` had the answering
//!   peer's result of it, sent after the `Join`. (A rank restarted before it was
//!   evicted is still in the view, and stays: its new process owns its shard at once.);
//! - evictions are decided by one peer, the lowest-ranked one of the view not itself
//!   due for eviction, after the `--evict-after`th missed round `r`; it broadcasts an
//!   `Evict` for round `r + 2` before its round `r + 1` messages, so the others apply it
//!   at the same round, whatever they counted themselves. A dead owner's shard is thus
//!   skipped for `evict_after + 1` rounds, then owned by the next rank.
//!
//! Each shard and result carries the digest of its sender's view ([`view_digest`],
//! in the header): a receiver whose view differs refuses it (`other_view`) instead of
//! mixing shards aggregated under different owners, so a disagreement that slips
//! through anyway shows up as a missing rank and a skipped shard, never as a shard
//! dropped or counted twice in silence.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// How gradients travel in a round; every peer of a run must use the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Exchange {
    /// Every peer broadcasts its whole gradient to every other peer.
    #[default]
    AllToAll,
    /// Reduce-scatter to shard owners, then all-gather of the owners' results.
    Sharded,
    /// All-to-all with the gradients parked in the object store and only their
    /// claims (key, length, digest) over the broker ([`crate::claim`]).
    S3,
}

impl Exchange {
    /// The `--exchange` value.
    pub fn name(self) -> &'static str {
        match self {
            Exchange::AllToAll => "all-to-all",
            Exchange::Sharded => "sharded",
            Exchange::S3 => "s3",
        }
    }
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Exchange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all-to-all" => Ok(Exchange::AllToAll),
            "sharded" => Ok(Exchange::Sharded),
            "s3" => Ok(Exchange::S3),
            _ => Err(format!(
                "expected `all-to-all`, `sharded` or `s3`, got {s:?}"
            )),
        }
    }
}

impl serde::Serialize for Exchange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Exchange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The elements of shard `shard` of a gradient of `len` elements cut into `shards`
/// contiguous shards whose sizes differ by at most one.
///
/// # Panics
/// If `shard >= shards`.
pub fn shard_range(shard: u32, shards: u32, len: usize) -> Range<usize> {
    assert!(shard < shards, "shard {shard} of {shards}");
    let at = |s: u32| (len as u128 * u128::from(s) / u128::from(shards)) as usize;
    at(shard)..at(shard + 1)
}

/// The owner of each of `world_size` shards: rank `s` when `takes_part(s)`, otherwise
/// the next rank (cyclically) that does; `None` for every shard when nobody takes part.
pub fn owners(world_size: u32, takes_part: impl Fn(u32) -> bool) -> Vec<Option<u32>> {
    let active: Vec<bool> = (0..world_size).map(&takes_part).collect();
    (0..world_size)
        .map(|s| {
            (0..world_size)
                .map(|step| (s + step) % world_size)
                .find(|&r| active[r as usize])
        })
        .collect()
}

/// A digest of a sharded round's membership view (the ranks taking part, ascending),
/// carried in every shard and result header so peers with different views refuse each
/// other's messages; never 0, which marks a message outside the sharded exchange.
pub fn view_digest(world_size: u32, in_view: &[u32]) -> u64 {
    let mut bytes = Vec::with_capacity(4 * (in_view.len() + 1));
    bytes.extend_from_slice(&world_size.to_le_bytes());
    for rank in in_view {
        bytes.extend_from_slice(&rank.to_le_bytes());
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_gradient_once_and_differ_by_at_most_one() {
        for len in [0usize, 1, 7, 1000, 1_000_003] {
            for shards in [1u32, 2, 3, 8, 16] {
                let ranges: Vec<_> = (0..shards).map(|s| shard_range(s, shards, len)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges.last().unwrap().end, len);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let sizes: Vec<_> = ranges.iter().map(|r| r.len()).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "{len} in {shards}: {sizes:?}");
            }
        }
    }

    #[test]
    fn a_missing_ranks_shard_moves_to_the_next_rank_taking_part() {
        assert_eq!(
            owners(4, |_| true),
            vec![Some(0), Some(1), Some(2), Some(3)]
        );
        assert_eq!(
            owners(4, |r| r != 1),
            vec![Some(0), Some(2), Some(2), Some(3)]
        );
        assert_eq!(
            owners(4, |r| r != 3),
            vec![Some(0), Some(1), Some(2), Some(0)]
        );
        assert_eq!(owners(3, |r| r == 2), vec![Some(2); 3]);
        assert_eq!(owners(2, |_| false), vec![None, None]);
    }

    #[test]
    fn views_have_distinct_nonzero_digests() {
        let views: [&[u32]; 4] = [&[0, 1, 2, 3], &[0, 1, 2], &[0, 1, 3], &[]];
        let digests: std::collections::BTreeSet<u64> =
            views.iter().map(|v| view_digest(4, v)).collect();
        assert_eq!(digests.len(), views.len());
        assert!(!digests.contains(&0));
        assert_ne!(view_digest(4, &[0, 1]), view_digest(5, &[0, 1]));
        assert_eq!(view_digest(4, &[0, 2]), view_digest(4, &[0, 2]));
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for e in [Exchange::AllToAll, Exchange::Sharded, Exchange::S3] {
            assert_eq!(e.name().parse::<Exchange>(), Ok(e));
        }
        assert!("ring".parse::<Exchange>().unwrap_err().contains("sharded"));
    }
}
