//! How many of a round's batches a peer sends to functions (`--offload`): a fixed fraction,
//! or `auto`, which sizes the offload from measured speeds so that the peer finishes its
//! gradient together with the fastest peer of the previous round.

use std::str::FromStr;
use std::time::Duration;

/// The `--offload` setting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OffloadPolicy {
    /// Offload this fraction of every round's batches (0 = all local, 1 = all remote).
    Fixed(f64),
    /// Offload just enough to finish with the fastest peer.
    Auto,
}

impl FromStr for OffloadPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        match s.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(Self::Fixed(f)),
            _ => Err(format!(
                "expected `auto` or a fraction between 0 and 1, got {s:?}"
            )),
        }
    }
}

/// Measured speeds the `auto` planner works from, smoothed over rounds.
#[derive(Clone, Debug, Default)]
pub struct SpeedEstimates {
    /// Seconds this peer needs per batch.
    pub local_per_batch: Option<f64>,
    /// Seconds one wave of concurrent function calls takes.
    pub remote_per_wave: Option<f64>,
    /// Fixed seconds per offloading round (weights upload, gradient download).
    pub remote_overhead: Option<f64>,
}

/// Weight of the newest measurement in the moving averages.
const SMOOTHING: f64 = 0.5;

fn smooth(old: Option<f64>, new: f64) -> Option<f64> {
    Some(match old {
        Some(o) => (1.0 - SMOOTHING) * o + SMOOTHING * new,
        None => new,
    })
}

impl SpeedEstimates {
    /// Records a round that computed `local` batches in `local_time`.
    pub fn observe_local(&mut self, batches: usize, time: Duration) {
        if batches > 0 {
            self.local_per_batch =
                smooth(self.local_per_batch, time.as_secs_f64() / batches as f64);
        }
    }

    /// Records a round that offloaded `batches` at `concurrency`, where the calls took
    /// `calls` and the upload and download around them `overhead`.
    pub fn observe_remote(
        &mut self,
        batches: usize,
        concurrency: usize,
        calls: Duration,
        overhead: Duration,
    ) {
        if batches > 0 {
            let waves = batches.div_ceil(concurrency.max(1)) as f64;
            self.remote_per_wave = smooth(self.remote_per_wave, calls.as_secs_f64() / waves);
            self.remote_overhead = smooth(self.remote_overhead, overhead.as_secs_f64());
        }
    }

    /// Predicted seconds for `m` offloaded batches, when the functions have been measured.
    fn remote_time(&self, m: usize, concurrency: usize) -> Option<f64> {
        if m == 0 {
            return Some(0.0);
        }
        let waves = m.div_ceil(concurrency.max(1)) as f64;
        Some(self.remote_overhead.unwrap_or(0.0) + waves * self.remote_per_wave?)
    }
}

/// The number of batches (out of `batches`) to offload this round.
///
/// `auto` aims at `target`, the shortest gradient time any peer reported last round: no
/// offload while this peer is (nearly) the fastest or before anything is measured; the
/// first offload is sized from the speed ratio alone; later ones take the smallest count
/// whose predicted time, local and remote sides running side by side, meets the target,
/// or the count with the least predicted time when none does.
pub fn plan(
    policy: OffloadPolicy,
    batches: usize,
    concurrency: usize,
    estimates: &SpeedEstimates,
    target: Option<Duration>,
) -> usize {
    match policy {
        OffloadPolicy::Fixed(f) => ((f * batches as f64).round() as usize).min(batches),
        OffloadPolicy::Auto => {
            let (Some(per_batch), Some(target)) = (estimates.local_per_batch, target) else {
                return 0;
            };
            choose_offload(
                batches,
                target.as_secs_f64(),
                per_batch * batches as f64,
                |m| {
                    let local = per_batch * (batches - m) as f64;
                    estimates
                        .remote_time(m, concurrency)
                        .map(|remote| local.max(remote))
                },
            )
        }
    }
}

/// A peer within this factor of the target keeps every batch (the hybrid rule's slack).
pub const HYBRID_SLACK: f64 = 1.05;

/// The hybrid offload rule, shared by the peer's planner and the study's simulator: how
/// many of `batches` to offload so that a peer needing `all_local` seconds for all of them
/// finishes within `target`, where `predicted(m)` is its time with `m` offloaded (`None`
/// while the functions are unmeasured).
///
/// No offload while the peer is within [`HYBRID_SLACK`] of the target; before the
/// functions are measured, the share the speed ratio asks for; after that the smallest
/// count whose predicted time meets the target, or the count with the least predicted
/// time when none does.
pub fn choose_offload(
    batches: usize,
    target: f64,
    all_local: f64,
    mut predicted: impl FnMut(usize) -> Option<f64>,
) -> usize {
    if all_local <= target * HYBRID_SLACK {
        return 0;
    }
    if predicted(1).is_none() {
        let share = 1.0 - target / all_local;
        return ((share * batches as f64).ceil() as usize).clamp(1, batches);
    }
    let times: Vec<(usize, f64)> = (1..=batches)
        .map(|m| (m, predicted(m).unwrap_or(f64::INFINITY)))
        .collect();
    times
        .iter()
        .find(|(_, t)| *t <= target)
        .or_else(|| times.iter().min_by(|a, b| a.1.total_cmp(&b.1)))
        .map_or(0, |(m, _)| *m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(s))
    }

    #[test]
    fn parses_auto_and_fractions_and_rejects_the_rest() {
        assert_eq!("auto".parse(), Ok(OffloadPolicy::Auto));
        assert_eq!("0.25".parse(), Ok(OffloadPolicy::Fixed(0.25)));
        assert!("1.5".parse::<OffloadPolicy>().is_err());
        assert!("-0.1".parse::<OffloadPolicy>().is_err());
        assert!("half".parse::<OffloadPolicy>().is_err());
    }

    #[test]
    fn fixed_fraction_rounds_to_whole_batches() {
        let e = SpeedEstimates::default();
        assert_eq!(plan(OffloadPolicy::Fixed(0.5), 10, 4, &e, None), 5);
        assert_eq!(plan(OffloadPolicy::Fixed(1.0), 7, 4, &e, None), 7);
        assert_eq!(plan(OffloadPolicy::Fixed(0.0), 7, 4, &e, None), 0);
        assert_eq!(plan(OffloadPolicy::Fixed(0.33), 3, 4, &e, None), 1);
    }

    #[test]
    fn auto_keeps_everything_local_on_the_fastest_peer_or_without_measurements() {
        let mut e = SpeedEstimates::default();
        assert_eq!(plan(OffloadPolicy::Auto, 10, 4, &e, secs(1.0)), 0);
        e.observe_local(10, Duration::from_secs(1));
        assert_eq!(plan(OffloadPolicy::Auto, 10, 4, &e, None), 0);
        assert_eq!(plan(OffloadPolicy::Auto, 10, 4, &e, secs(1.0)), 0);
    }

    #[test]
    fn auto_first_guess_follows_the_speed_ratio() {
        let mut e = SpeedEstimates::default();
        // 10 batches at 0.4 s = 4 s against a 1 s target: offload 75%.
        e.observe_local(10, Duration::from_secs(4));
        assert_eq!(plan(OffloadPolicy::Auto, 10, 4, &e, secs(1.0)), 8);
    }

    #[test]
    fn auto_picks_the_smallest_offload_that_meets_the_target() {
        let mut e = SpeedEstimates::default();
        e.observe_local(10, Duration::from_secs(4)); // 0.4 s per batch
        // Functions: 0.5 s per wave of 2, 0.1 s overhead.
        e.observe_remote(2, 2, Duration::from_millis(500), Duration::from_millis(100));
        // m = 6: local 4 x 0.4 = 1.6, remote 0.1 + 3 x 0.5 = 1.6 -> meets 1.65.
        assert_eq!(plan(OffloadPolicy::Auto, 10, 2, &e, secs(1.65)), 6);
        // Unreachable 0.5 s target: the m with the least predicted time (m = 6, 1.6 s).
        assert_eq!(plan(OffloadPolicy::Auto, 10, 2, &e, secs(0.5)), 6);
    }
}
