//! Ranks without hand-editing (`peerless peer --rank auto`): each starting peer claims the
//! lowest free rank of its run with a conditional write in the run's store
//! (`ranks/<run id>/<rank>`), so peers started from one launch template get distinct
//! ranks even when they start at the same moment.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use peerless_comm::RunId;
use peerless_data::{ObjectStore, StoreError};

/// A peer's rank as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankChoice {
    /// This rank.
    Fixed(u32),
    /// The lowest rank no other peer of the run has claimed.
    Auto,
}

impl FromStr for RankChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(RankChoice::Auto);
        }
        s.parse()
            .map(RankChoice::Fixed)
            .map_err(|_| format!("expected a rank (0, 1, ...) or `auto`, got {s:?}"))
    }
}

impl fmt::Display for RankChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankChoice::Fixed(r) => write!(f, "{r}"),
            RankChoice::Auto => f.write_str("auto"),
        }
    }
}

/// Why no rank could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    /// Every rank of the run is taken.
    #[error(
        "all {size} ranks of run {run_id} are taken ({store}/{prefix}): start this peer with \
         an explicit --rank, or give the run a new --run-id"
    )]
    AllTaken {
        /// Number of peers of the run.
        size: u32,
        /// The run.
        run_id: RunId,
        /// The store's URL.
        store: String,
        /// Where the claims are.
        prefix: String,
    },
    /// The store failed.
    #[error("claiming a rank: {0}")]
    Store(#[from] StoreError),
}

/// The key of rank `rank`'s claim.
pub fn claim_key(run_id: RunId, rank: u32) -> String {
    format!("ranks/{run_id}/{rank}")
}

/// Claims the lowest free rank of `run_id` (of `size`) in `store`, recording `who` in the
/// claim; exactly one of several peers racing for a rank gets it.
pub async fn claim_rank(
    store: &dyn ObjectStore,
    run_id: RunId,
    size: u32,
    who: &str,
) -> Result<u32, RankError> {
    for rank in 0..size {
        let claim = Bytes::from(who.to_owned());
        if store.put_if_absent(&claim_key(run_id, rank), claim).await? {
            tracing::info!(rank, %run_id, "claimed rank");
            return Ok(rank);
        }
    }
    Err(RankError::AllTaken {
        size,
        run_id,
        store: store.url().to_owned(),
        prefix: format!("ranks/{run_id}/"),
    })
}

/// What a claim records about its peer: host, process and time.
pub fn claimant() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("host={host} pid={} unix_time={at}\n", std::process::id())
}
