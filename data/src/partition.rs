//! Seeded assignment of training samples to peers (IID equal shards or Dirichlet label
//! skew) and the per-peer 90/10 train/validation split.

use std::fmt;
use std::str::FromStr;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

/// Seed of the original scripts' shard shuffle.
pub const DEFAULT_SEED: u64 = 1234;

/// Draws tried before a Dirichlet partition that leaves a peer too small is given up.
pub const DIRICHLET_ATTEMPTS: usize = 1000;

/// How the training set is divided among peers; parsed from `iid` or `dirichlet:ALPHA`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Partition {
    /// Seeded shuffle, then equal contiguous shards; the `len % peers` last shuffled
    /// samples are dropped (as the original's equal split).
    Iid,
    /// Per class, proportions drawn from a symmetric Dirichlet(alpha) over peers: small
    /// alpha gives each peer few classes, large alpha approaches IID. Every sample is
    /// assigned exactly once.
    Dirichlet {
        /// Concentration, finite and > 0.
        alpha: f64,
    },
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Iid => f.write_str("iid"),
            Partition::Dirichlet { alpha } => write!(f, "dirichlet:{alpha}"),
        }
    }
}

impl From<Partition> for String {
    fn from(p: Partition) -> Self {
        p.to_string()
    }
}

impl TryFrom<String> for Partition {
    type Error = PartitionError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for Partition {
    type Err = PartitionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("iid") {
            return Ok(Partition::Iid);
        }
        let bad = || PartitionError::Parse {
            given: s.to_owned(),
        };
        let (name, alpha) = t.split_once(':').ok_or_else(bad)?;
        if !name.eq_ignore_ascii_case("dirichlet") {
            return Err(bad());
        }
        let alpha: f64 = alpha.trim().parse().map_err(|_| bad())?;
        if !alpha.is_finite() || alpha <= 0.0 {
            return Err(PartitionError::Alpha(alpha));
        }
        Ok(Partition::Dirichlet { alpha })
    }
}

/// Why a partition could not be parsed or drawn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartitionError {
    /// The text is not a partition.
    #[error(
        "invalid partition {given:?}: valid forms are `iid` and `dirichlet:ALPHA` with ALPHA > 0 (e.g. dirichlet:0.5)"
    )]
    Parse {
        /// The rejected input.
        given: String,
    },
    /// Dirichlet concentration not finite and positive.
    #[error("Dirichlet alpha must be finite and > 0, got {0}")]
    Alpha(f64),
    /// Zero peers.
    #[error("the number of peers must be at least 1")]
    NoPeers,
    /// Equal shards would be smaller than required.
    #[error(
        "{samples} samples cannot give each of {peers} peers {min_per_peer} samples; use fewer peers"
    )]
    TooFewSamples {
        /// Samples available.
        samples: usize,
        /// Peers requested.
        peers: usize,
        /// Minimum per peer.
        min_per_peer: usize,
    },
    /// No Dirichlet draw gave every peer enough samples.
    #[error(
        "no Dirichlet({alpha}) draw in {attempts} gave each of {peers} peers at least {min_per_peer} samples; raise alpha or use fewer peers"
    )]
    Unbalanced {
        /// Concentration.
        alpha: f64,
        /// Peers requested.
        peers: usize,
        /// Minimum per peer.
        min_per_peer: usize,
        /// Draws tried.
        attempts: usize,
    },
}

impl Partition {
    /// Assign sample indices (into `labels`) to `peers` shards, deterministically for a
    /// given `seed`, so that each shard has at least `min_per_peer` samples.
    /// Each shard comes back in random order.
    pub fn assign(
        &self,
        labels: &[u8],
        peers: usize,
        seed: u64,
        min_per_peer: usize,
    ) -> Result<Vec<Vec<usize>>, PartitionError> {
        if peers == 0 {
            return Err(PartitionError::NoPeers);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match *self {
            Partition::Iid => {
                let per = labels.len() / peers;
                if per < min_per_peer.max(1) {
                    return Err(PartitionError::TooFewSamples {
                        samples: labels.len(),
                        peers,
                        min_per_peer: min_per_peer.max(1),
                    });
                }
                let mut order: Vec<usize> = (0..labels.len()).collect();
                order.shuffle(&mut rng);
                Ok(order
                    .chunks_exact(per)
                    .take(peers)
                    .map(<[usize]>::to_vec)
                    .collect())
            }
            Partition::Dirichlet { alpha } => {
                if !alpha.is_finite() || alpha <= 0.0 {
                    return Err(PartitionError::Alpha(alpha));
                }
                if labels.len() < peers * min_per_peer {
                    return Err(PartitionError::TooFewSamples {
                        samples: labels.len(),
                        peers,
                        min_per_peer,
                    });
                }
                dirichlet(labels, peers, alpha, min_per_peer, &mut rng)
            }
        }
    }
}

fn dirichlet(
    labels: &[u8],
    peers: usize,
    alpha: f64,
    min_per_peer: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    let gamma = Gamma::new(alpha, 1.0).map_err(|_| PartitionError::Alpha(alpha))?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (i, &l) in labels.iter().enumerate() {
        by_class[usize::from(l)].push(i);
    }
    by_class.retain(|c| !c.is_empty());
    let mut weights = vec![0f64; peers];
    for _ in 0..DIRICHLET_ATTEMPTS {
        let mut shards: Vec<Vec<usize>> = vec![Vec::new(); peers];
        for class in &mut by_class {
            class.shuffle(rng);
            for w in &mut weights {
                *w = gamma.sample(rng);
            }
            let total: f64 = weights.iter().sum();
            if !(total > 0.0 && total.is_finite()) {
                // All draws underflowed (tiny alpha): the limit is one peer taking the class.
                let pick = rand::Rng::random_range(rng, 0..peers);
                weights.iter_mut().for_each(|w| *w = 0.0);
                weights[pick] = 1.0;
            }
            let total: f64 = weights.iter().sum();
            let n = class.len();
            let mut cumulative = 0.0;
            let mut start = 0;
            for (p, shard) in shards.iter_mut().enumerate() {
                cumulative += weights[p];
                let end = if p + 1 == peers {
                    n
                } else {
                    ((cumulative / total * n as f64) as usize).clamp(start, n)
                };
                shard.extend_from_slice(&class[start..end]);
                start = end;
            }
        }
        if shards.iter().all(|s| s.len() >= min_per_peer) {
            for s in &mut shards {
                s.shuffle(rng);
            }
            return Ok(shards);
        }
    }
    Err(PartitionError::Unbalanced {
        alpha,
        peers,
        min_per_peer,
        attempts: DIRICHLET_ATTEMPTS,
    })
}

/// Number of training samples kept from a shard of `n`: `floor(0.9 n)` as the original's
/// `int(0.9 * len)`; the rest (at least one sample when `n >= 1`) is validation.
pub fn train_count(n: usize) -> usize {
    n * 9 / 10
}

/// Smallest shard for which both the train and the validation part are non-empty.
pub const MIN_SHARD: usize = 2;

/// Split a peer's shard into its train (first 90%) and validation (last 10%) parts.
pub fn train_val_split(shard: &[usize]) -> (&[usize], &[usize]) {
    shard.split_at(train_count(shard.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, classes: usize) -> Vec<u8> {
        (0..n).map(|i| (i % classes) as u8).collect()
    }

    fn assert_disjoint_within(shards: &[Vec<usize>], n: usize) -> usize {
        let mut seen = vec![false; n];
        for s in shards {
            for &i in s {
                assert!(!seen[i], "index {i} assigned twice");
                seen[i] = true;
            }
        }
        seen.iter().filter(|&&s| s).count()
    }

    #[test]
    fn parses_valid_forms_and_rejects_others() {
        assert_eq!("iid".parse(), Ok(Partition::Iid));
        assert_eq!(
            "dirichlet:0.5".parse(),
            Ok(Partition::Dirichlet { alpha: 0.5 })
        );
        assert_eq!(
            Partition::Dirichlet { alpha: 0.5 }.to_string(),
            "dirichlet:0.5"
        );
        for bad in [
            "",
            "uniform",
            "dirichlet",
            "dirichlet:",
            "dirichlet:x",
            "dir:1",
        ] {
            let err = bad.parse::<Partition>().unwrap_err().to_string();
            assert!(
                err.contains("iid") && err.contains("dirichlet:ALPHA"),
                "{err}"
            );
        }
        for bad in [
            "dirichlet:0",
            "dirichlet:-1",
            "dirichlet:inf",
            "dirichlet:NaN",
        ] {
            assert!(
                matches!(bad.parse::<Partition>(), Err(PartitionError::Alpha(_))),
                "{bad}"
            );
        }
        let json = serde_json::to_string(&Partition::Dirichlet { alpha: 0.1 }).unwrap();
        assert_eq!(json, "\"dirichlet:0.1\"");
        assert_eq!(
            serde_json::from_str::<Partition>(&json).unwrap(),
            Partition::Dirichlet { alpha: 0.1 }
        );
    }

    #[test]
    fn iid_shards_equal_disjoint_and_deterministic() {
        let l = labels(103, 10);
        let shards = Partition::Iid.assign(&l, 4, DEFAULT_SEED, 1).unwrap();
        assert_eq!(shards.len(), 4);
        assert!(shards.iter().all(|s| s.len() == 25));
        assert_eq!(assert_disjoint_within(&shards, 103), 100);
        assert_eq!(
            Partition::Iid.assign(&l, 4, DEFAULT_SEED, 1).unwrap(),
            shards
        );
        assert_ne!(Partition::Iid.assign(&l, 4, 1, 1).unwrap(), shards);
        // Divisible: covering.
        let shards = Partition::Iid.assign(&l[..100], 5, 3, 1).unwrap();
        assert_eq!(assert_disjoint_within(&shards, 100), 100);
    }

    #[test]
    fn iid_rejects_zero_peers_and_tiny_shards() {
        let l = labels(10, 2);
        assert_eq!(
            Partition::Iid.assign(&l, 0, 0, 1),
            Err(PartitionError::NoPeers)
        );
        assert!(matches!(
            Partition::Iid.assign(&l, 6, 0, 2),
            Err(PartitionError::TooFewSamples { .. })
        ));
    }

    /// Mean over peers of the share of the peer's most frequent class.
    fn dominance(shards: &[Vec<usize>], l: &[u8], classes: usize) -> f64 {
        shards
            .iter()
            .map(|s| {
                let mut counts = vec![0usize; classes];
                for &i in s {
                    counts[usize::from(l[i])] += 1;
                }
                *counts.iter().max().unwrap() as f64 / s.len() as f64
            })
            .sum::<f64>()
            / shards.len() as f64
    }

    #[test]
    fn dirichlet_covers_everything_and_skew_follows_alpha() {
        let l = labels(5000, 10);
        let skewed = Partition::Dirichlet { alpha: 0.1 }
            .assign(&l, 5, 42, 2)
            .unwrap();
        assert_eq!(assert_disjoint_within(&skewed, 5000), 5000);
        let flat = Partition::Dirichlet { alpha: 1000.0 }
            .assign(&l, 5, 42, 2)
            .unwrap();
        assert_eq!(assert_disjoint_within(&flat, 5000), 5000);
        let d_skewed = dominance(&skewed, &l, 10);
        let d_flat = dominance(&flat, &l, 10);
        // IID would give ~0.1; alpha 0.1 concentrates each peer on one or two classes.
        assert!(d_skewed > 0.4, "alpha 0.1 dominance {d_skewed}");
        assert!(d_flat < 0.13, "alpha 1000 dominance {d_flat}");
        for s in &flat {
            assert!((s.len() as i64 - 1000).abs() < 60, "size {}", s.len());
        }
        assert_eq!(
            Partition::Dirichlet { alpha: 0.1 }
                .assign(&l, 5, 42, 2)
                .unwrap(),
            skewed
        );
    }

    #[test]
    fn dirichlet_respects_minimum_or_fails_clearly() {
        let l = labels(200, 10);
        let shards = Partition::Dirichlet { alpha: 0.05 }
            .assign(&l, 3, 9, 10)
            .unwrap();
        assert!(shards.iter().all(|s| s.len() >= 10));
        let err = Partition::Dirichlet { alpha: 0.001 }
            .assign(&l, 20, 9, 10)
            .unwrap_err();
        assert!(matches!(err, PartitionError::Unbalanced { .. }), "{err}");
    }

    #[test]
    fn train_val_split_is_90_10() {
        let shard: Vec<usize> = (0..25).collect();
        let (t, v) = train_val_split(&shard);
        assert_eq!((t.len(), v.len()), (22, 3));
        assert_eq!(train_count(10), 9);
        assert_eq!(train_count(2), 1);
        assert_eq!(train_count(1), 0);
    }
}
