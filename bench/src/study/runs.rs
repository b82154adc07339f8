//! What one deployment's run measured: every peer's per-round metrics, read from the
//! `peer-<rank>.jsonl` files the peers write, plus the run's wall time. The cost model,
//! the simulator and the report all work from these values only.

use std::io::BufRead;
use std::path::Path;

use super::config::{Deployment, StudyConfig};
use super::error::StudyError;
use peerless_runtime::metrics::RoundMetrics;

/// One peer's share of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerRun {
    pub rank: u32,
    /// The EC2 type this peer is billed as.
    pub instance_type: String,
    /// Its rounds, in the order it ran them.
    pub rounds: Vec<RoundMetrics>,
}

/// One deployment's whole run: every peer, and the wall time from the first peer's
/// start to the last peer's end (what EC2 and the broker bill).
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentRun {
    /// `instance`, `serverless` or `hybrid` (other names are reported but not projected).
    pub name: String,
    pub peers: Vec<PeerRun>,
    pub wall_time_s: f64,
}

/// Reads a metrics file: one [`RoundMetrics`] JSON object per line, blank lines skipped.
pub fn read_metrics_jsonl(path: &Path) -> Result<Vec<RoundMetrics>, StudyError> {
    let file = std::fs::File::open(path).map_err(|e| StudyError::io(path, e))?;
    let mut rounds = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| StudyError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let m = serde_json::from_str(&line).map_err(|e| StudyError::Metrics {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        rounds.push(m);
    }
    Ok(rounds)
}

impl PeerRun {
    /// The peer `rank` whose metrics are in `path`.
    pub fn load(path: &Path, rank: u32, instance_type: &str) -> Result<PeerRun, StudyError> {
        Ok(PeerRun {
            rank,
            instance_type: instance_type.to_string(),
            rounds: read_metrics_jsonl(path)?,
        })
    }

    /// Mean of `f` over this peer's rounds (0 without rounds).
    pub fn mean(&self, f: impl Fn(&RoundMetrics) -> f64) -> f64 {
        mean(self.rounds.iter().map(f))
    }
}

impl DeploymentRun {
    /// Reads `dir/peer-<rank>.jsonl` for every `[[peer]]` of `config`, billing each peer
    /// as its configured instance type.
    pub fn load_dir(
        name: &str,
        dir: &Path,
        config: &StudyConfig,
        wall_time_s: f64,
    ) -> Result<DeploymentRun, StudyError> {
        let peers = (0..config.peers.len())
            .map(|rank| {
                PeerRun::load(
                    &dir.join(format!("peer-{rank}.jsonl")),
                    rank as u32,
                    config.peer_instance_type(rank),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DeploymentRun {
            name: name.to_string(),
            peers,
            wall_time_s,
        })
    }

    /// The deployment this run's name denotes.
    pub fn deployment(&self) -> Option<Deployment> {
        Deployment::from_name(&self.name)
    }

    /// Rounds of the longest peer.
    pub fn round_count(&self) -> usize {
        self.peers.iter().map(|p| p.rounds.len()).max().unwrap_or(0)
    }

    /// Each round's duration for the whole group, evaluation excluded (it is the report's
    /// cost, not the deployment's): the longest own work of any peer (its round time
    /// without evaluation and without waiting) plus the shortest wait, which is the last
    /// peer's wait for the exchange itself. Taking the slowest peer's whole round instead
    /// would count the skew of the previous round's evaluation as waiting.
    pub fn round_times(&self) -> Vec<f64> {
        (0..self.round_count())
            .map(|r| {
                let rounds: Vec<&RoundMetrics> =
                    self.peers.iter().filter_map(|p| p.rounds.get(r)).collect();
                let work = rounds
                    .iter()
                    .map(|m| (m.round_time_s - m.eval_time_s - m.receive_time_s).max(0.0))
                    .fold(0.0, f64::max);
                let exchange = rounds
                    .iter()
                    .map(|m| m.receive_time_s)
                    .fold(f64::INFINITY, f64::min);
                work + if exchange.is_finite() { exchange } else { 0.0 }
            })
            .collect()
    }

    /// Mean of [`DeploymentRun::round_times`].
    pub fn mean_round_time_s(&self) -> f64 {
        mean(self.round_times().into_iter())
    }

    /// The slowest peer's mean gradient-computation time per round (the paper's
    /// "gradient computation time").
    pub fn slowest_mean_compute_s(&self) -> f64 {
        self.peers
            .iter()
            .map(|p| p.mean(|m| m.compute_time_s))
            .fold(0.0, f64::max)
    }

    /// The slowest peer's gradient-computation time over the whole run: its
    /// `compute_time_s` summed over its rounds (the headline's per-round mean × rounds).
    pub fn slowest_compute_s(&self) -> f64 {
        self.peers
            .iter()
            .map(|p| p.rounds.iter().map(|m| m.compute_time_s).sum::<f64>())
            .fold(0.0, f64::max)
    }

    /// Training time without evaluation: the sum of [`DeploymentRun::round_times`] (each
    /// round's group duration without evaluation; the x axis of the report's training
    /// curves).
    pub fn training_time_s(&self) -> f64 {
        self.round_times().iter().sum()
    }

    /// Time spent evaluating: per round the longest `eval_time_s` of any peer (the group
    /// goes on at the pace of the last peer to finish evaluating), summed over rounds.
    pub fn evaluation_time_s(&self) -> f64 {
        (0..self.round_count())
            .map(|r| {
                self.peers
                    .iter()
                    .filter_map(|p| p.rounds.get(r))
                    .map(|m| m.eval_time_s)
                    .fold(0.0, f64::max)
            })
            .sum()
    }

    /// Rounds after which any peer evaluated (recorded a validation or test value).
    pub fn evaluated_rounds(&self) -> usize {
        (0..self.round_count())
            .filter(|&r| {
                self.peers.iter().any(|p| {
                    p.rounds
                        .get(r)
                        .is_some_and(|m| m.val_loss.is_some() || m.test_accuracy.is_some())
                })
            })
            .count()
    }

    /// Peer `peer`'s wait for the others in round `round`, without the part evaluation
    /// caused: `receive_time_s` less the previous round's evaluation skew. After an
    /// evaluated round, a peer that finished evaluating sooner than the last peer to
    /// deliver this round (the one with the shortest `receive_time_s`) started this round
    /// earlier by the difference of their `eval_time_s`, and waited that much longer.
    /// Never below 0 or above `receive_time_s`; 0 for a round the peer did not run.
    pub fn waiting_s(&self, peer: usize, round: usize) -> f64 {
        let Some(m) = self.peers.get(peer).and_then(|p| p.rounds.get(round)) else {
            return 0.0;
        };
        let skew = round
            .checked_sub(1)
            .and_then(|prev| {
                let own = self.peers[peer].rounds.get(prev)?.eval_time_s;
                let last = self
                    .peers
                    .iter()
                    .filter_map(|p| Some((p.rounds.get(round)?, p.rounds.get(prev)?)))
                    .min_by(|a, b| a.0.receive_time_s.total_cmp(&b.0.receive_time_s))?;
                Some(last.1.eval_time_s - own)
            })
            .unwrap_or(0.0);
        (m.receive_time_s - skew.max(0.0)).max(0.0)
    }

    /// Every round of every peer.
    pub fn all_rounds(&self) -> impl Iterator<Item = &RoundMetrics> {
        self.peers.iter().flat_map(|p| p.rounds.iter())
    }
}

/// Arithmetic mean (0 for no values).
pub(crate) fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}
