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
//! unchanged for the round (a zero update) and lists the owner as missing; once the
//! owner is evicted (`--evict-after`) its shard moves to the next rank, so no part of
//! the gradient is lost for longer than that.

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
    fn names_round_trip_and_unknown_names_are_refused() {
        for e in [Exchange::AllToAll, Exchange::Sharded, Exchange::S3] {
            assert_eq!(e.name().parse::<Exchange>(), Ok(e));
        }
        assert!("ring".parse::<Exchange>().unwrap_err().contains("sharded"));
    }
}
