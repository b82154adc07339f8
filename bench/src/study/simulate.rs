//! Projection to cloud scale: an analytical model of one training round, calibrated from
//! the local runs' metrics, evaluated for more peers, other instance types and other
//! Lambda memory sizes. Every assumption is listed by [`assumptions`] (the report prints
//! them), and [`validate_against`] checks the model on the local set-up itself: its
//! prediction of the measured mean round time must be within [`VALIDATION_TOLERANCE`].
//!
//! The model of one round with N peers, each computing B batches:
//!
//! - local time of k batches on peer i: `k × batch_s / (speed_scale × speed_i)`;
//! - one function call at memory M: `call_overhead + load_weights + load_batch +
//!   compute × vcpus(M₀) / vcpus(M) + upload`, with `vcpus(M) = min(M / 1769, 6, useful)`
//!   (`useful`: `projection.max_useful_vcpus`, default 2);
//! - m offloaded batches take `waves = ceil(m / min(concurrency, limit / N))` waves of
//!   calls, plus the cold-start extra in the first offloading round;
//! - a peer that offloads m > 0 batches takes `weights_upload + max(local(B - m),
//!   functions(m)) + m × fetch_per_gradient` (the peer uploads the weights, computes its
//!   share while the functions run, then reads their gradients);
//! - the round takes the slowest peer's time, plus the exchange `N(N-1) × gradient_bytes /
//!   broker_bytes_per_s` (one broker carries every peer's copy of every other gradient),
//!   plus `encode + (N-1) × decode_per_gradient + update`.
//!
//! `instance` offloads nothing, `serverless` offloads all B batches, `hybrid` plans like
//! the peer's `--offload auto`: no offload in the first round (nothing measured yet), then
//! per peer the smallest m that finishes by the fastest peer's all-local time (none while
//! the peer is within 5% of it), or the m with the least time when none does.

use serde::Serialize;

use super::config::{Deployment, StudyConfig};
use super::cost::{CostBreakdown, Rates, Usage};
use super::error::StudyError;
use super::prices::Prices;
use super::runs::{DeploymentRun, mean};
use peerless_runtime::metrics::InvocationRecord;
use peerless_runtime::offload::{HYBRID_SLACK, choose_offload};

/// How far the model's prediction of the local set-up may be from the measurement.
pub const VALIDATION_TOLERANCE: f64 = 0.20;

/// Lambda memory that buys one full vCPU, MB (AWS: "at 1,769 MB, a function has the
/// equivalent of one vCPU").
pub const VCPU_MEMORY_MB: f64 = 1769.0;

/// Lambda's largest CPU share: 6 vCPUs at 10,240 MB.
pub const LAMBDA_MAX_VCPUS: f64 = 6.0;

/// What the model takes from the function calls of the serverless and hybrid runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunctionCalibration {
    /// Memory the measured functions had, MB (the most common `memory_mb`).
    pub memory_mb: u32,
    /// Mean of `wall_ms - handler_ms` of warm calls, seconds: invocation and network.
    pub call_overhead_s: f64,
    /// Standard deviation of warm calls' `wall_ms` within a round (pooled over rounds),
    /// seconds: the spread that makes a wave wait for its slowest call and a round for its
    /// slowest peer.
    pub call_sd_s: f64,
    /// Mean handler timings of warm calls, seconds (`load_weights` averages in the calls
    /// that found the weights already loaded).
    pub load_weights_s: f64,
    pub load_batch_s: f64,
    pub compute_s: f64,
    pub upload_s: f64,
    /// Mean cold `handler_ms` minus mean warm `handler_ms`, seconds (0 without both kinds).
    pub cold_extra_s: f64,
    /// Mean of `billed_ms - handler_ms`, ms: what the platform bills beyond the handler.
    pub billed_extra_ms: f64,
    /// Share of calls that loaded the weights (one S3 GET each).
    pub weights_load_fraction: f64,
    /// Mean `weights_upload_time_s` of offloading peer-rounds.
    pub weights_upload_s: f64,
    /// `gradient_fetch_time_s` per function gradient read, seconds.
    pub fetch_per_gradient_s: f64,
    /// Step Functions state transitions per offloaded batch.
    pub transitions_per_batch: f64,
    /// Invocations the calibration is based on.
    pub invocations: usize,
}

impl FunctionCalibration {
    /// The handler's seconds per call at `memory_mb`, when a gradient step can use at
    /// most `useful_vcpus`.
    pub fn handler_s(&self, memory_mb: u32, useful_vcpus: f64) -> f64 {
        self.load_weights_s
            + self.load_batch_s
            + self.compute_s * vcpus(self.memory_mb, useful_vcpus) / vcpus(memory_mb, useful_vcpus)
            + self.upload_s
    }

    /// One call as the peer sees it at `memory_mb`, seconds.
    pub fn call_s(&self, memory_mb: u32, useful_vcpus: f64) -> f64 {
        self.call_overhead_s + self.handler_s(memory_mb, useful_vcpus)
    }

    /// Billed milliseconds per call at `memory_mb` (rounded up to 1 ms, as AWS bills).
    pub fn billed_ms(&self, memory_mb: u32, useful_vcpus: f64) -> f64 {
        (self.handler_s(memory_mb, useful_vcpus) * 1000.0 + self.billed_extra_ms).ceil()
    }
}

/// Everything the model takes from the local runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Calibration {
    /// Seconds per batch of a speed-1.0 peer on the study machine (from the reference
    /// peers' `local_time_s / local batches`); `None` when no run computed batches locally.
    pub batch_s: Option<f64>,
    /// The run the batch time came from.
    pub batch_source: Option<String>,
    /// The EC2 type the study machine stands for (the reference peers' type): projected
    /// types scale the batch time by their `relative_speed` against it.
    pub reference_instance_type: String,
    /// Peers in the local runs.
    pub local_peers: u32,
    /// Mean bytes of one peer's gradient message (`bytes_sent`).
    pub gradient_bytes: f64,
    /// Mean exchange time of the local rounds: per round the smallest `send_time_s +
    /// receive_time_s` of any peer (the last peer to finish waits for nobody).
    pub exchange_s: f64,
    /// Broker throughput the exchange implies: `N₀(N₀-1) × gradient_bytes / exchange_s`;
    /// `None` with fewer than two local peers (no exchange to measure).
    pub broker_bytes_per_s: Option<f64>,
    /// Mean seconds per round of encoding the peer's gradient.
    pub encode_s: f64,
    /// Mean seconds of decoding one received gradient.
    pub decode_per_gradient_s: f64,
    /// Mean seconds per round of the optimizer step.
    pub update_s: f64,
    /// `None` when no function was called.
    pub functions: Option<FunctionCalibration>,
}

/// One set-up to predict a round for.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub deployment: Deployment,
    /// One speed factor per peer (N = its length).
    pub speeds: Vec<f64>,
    /// Speed of the peers' machine relative to the study machine.
    pub speed_scale: f64,
    /// Batches each peer covers per round.
    pub batches_per_round: usize,
    pub memory_mb: u32,
    /// Concurrent function calls per peer.
    pub concurrency: usize,
    /// Account-wide concurrent executions shared by all peers (`None`: unlimited).
    pub concurrency_limit: Option<u32>,
    /// vCPUs one gradient step can use (`projection.max_useful_vcpus`).
    pub useful_vcpus: f64,
}

/// The model's answer for one round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundPrediction {
    pub round_time_s: f64,
    /// The slowest peer's gradient time.
    pub compute_s: f64,
    pub exchange_s: f64,
    /// Encode, decode and update.
    pub overhead_s: f64,
    /// Batches each peer offloads.
    pub offloaded: Vec<usize>,
    /// Waves of function calls of the peer with the most.
    pub waves: usize,
    /// Whether the round pays the functions' cold start.
    pub cold: bool,
}

/// Builds the calibration from whatever runs exist.
pub fn calibrate(config: &StudyConfig, runs: &[DeploymentRun]) -> Result<Calibration, StudyError> {
    if runs.iter().all(|r| r.round_count() == 0) {
        return Err(StudyError::missing(
            "no run recorded any round: nothing to calibrate from",
        ));
    }
    let local_peers = runs.iter().map(|r| r.peers.len()).max().unwrap_or(0) as u32;
    let (batch_s, batch_source, reference_rank) = batch_time(config, runs);
    let rounds: Vec<_> = runs.iter().flat_map(|r| r.all_rounds()).collect();
    let gradient_bytes = mean(
        rounds
            .iter()
            .filter(|m| m.bytes_sent > 0)
            .map(|m| m.bytes_sent as f64),
    );
    let exchange_s = mean(runs.iter().filter(|r| r.peers.len() >= 2).flat_map(|run| {
        (0..run.round_count()).map(move |i| {
            run.peers
                .iter()
                .filter_map(|p| p.rounds.get(i))
                .map(|m| m.send_time_s + m.receive_time_s)
                .fold(f64::INFINITY, f64::min)
        })
    }));
    let pairs = f64::from(local_peers) * f64::from(local_peers.saturating_sub(1));
    let broker_bytes_per_s = (pairs > 0.0 && exchange_s > 0.0 && gradient_bytes > 0.0)
        .then(|| pairs * gradient_bytes / exchange_s);
    let decode_per_gradient_s = if local_peers >= 2 {
        mean(rounds.iter().map(|m| m.decode_time_s)) / f64::from(local_peers - 1)
    } else {
        0.0
    };
    Ok(Calibration {
        batch_s,
        batch_source,
        reference_instance_type: config
            .peer_instance_type(reference_rank.unwrap_or(0))
            .to_string(),
        local_peers,
        gradient_bytes,
        exchange_s,
        broker_bytes_per_s,
        encode_s: mean(rounds.iter().map(|m| m.encode_time_s)),
        decode_per_gradient_s,
        update_s: mean(rounds.iter().map(|m| m.update_time_s)),
        functions: function_calibration(runs),
    })
}

/// Seconds per batch at speed 1.0 from the fastest configured peers' local batches, taken
/// from the first of the instance, hybrid, serverless runs that has any.
fn batch_time(
    config: &StudyConfig,
    runs: &[DeploymentRun],
) -> (Option<f64>, Option<String>, Option<usize>) {
    let top = config.peers.iter().map(|p| p.speed).fold(0.0, f64::max);
    let reference: Vec<usize> = (0..config.peers.len())
        .filter(|&r| config.peer_speed(r) == top)
        .collect();
    let order = [
        Deployment::Instance,
        Deployment::Hybrid,
        Deployment::Serverless,
    ];
    for arch in order {
        for run in runs.iter().filter(|r| r.deployment() == Some(arch)) {
            let (mut time, mut batches) = (0.0, 0usize);
            for peer in run
                .peers
                .iter()
                .filter(|p| reference.contains(&(p.rank as usize)))
            {
                for m in &peer.rounds {
                    time += m.local_time_s;
                    batches += m.local_batches + m.fallback_batches;
                }
            }
            if batches > 0 && time > 0.0 {
                return (
                    Some(time / batches as f64 * top),
                    Some(run.name.clone()),
                    reference.first().copied(),
                );
            }
        }
    }
    (None, None, reference.first().copied())
}

fn function_calibration(runs: &[DeploymentRun]) -> Option<FunctionCalibration> {
    let all: Vec<&InvocationRecord> = runs
        .iter()
        .flat_map(|r| r.all_rounds())
        .flat_map(|m| m.invocations.iter())
        .collect();
    if all.is_empty() {
        return None;
    }
    let warm: Vec<&InvocationRecord> = all.iter().copied().filter(|i| !i.cold).collect();
    let cold: Vec<&InvocationRecord> = all.iter().copied().filter(|i| i.cold).collect();
    let base = if warm.is_empty() { &all } else { &warm };
    let avg = |f: &dyn Fn(&InvocationRecord) -> f64| mean(base.iter().map(|i| f(i)));
    let cold_extra_s = if warm.is_empty() || cold.is_empty() {
        0.0
    } else {
        let c = mean(cold.iter().map(|i| i.handler_ms));
        let w = mean(warm.iter().map(|i| i.handler_ms));
        ((c - w) / 1000.0).max(0.0)
    };
    let offloading: Vec<_> = runs
        .iter()
        .flat_map(|r| r.all_rounds())
        .filter(|m| !m.invocations.is_empty())
        .collect();
    let calls: usize = offloading.iter().map(|m| m.invocations.len()).sum();
    let per_call = |total: f64| {
        if calls == 0 {
            0.0
        } else {
            total / calls as f64
        }
    };
    Some(FunctionCalibration {
        memory_mb: most_common_memory(&all),
        call_overhead_s: avg(&|i| (i.wall_ms - i.handler_ms).max(0.0)) / 1000.0,
        call_sd_s: within_round_sd(runs),
        load_weights_s: avg(&|i| i.load_weights_ms) / 1000.0,
        load_batch_s: avg(&|i| i.load_batch_ms) / 1000.0,
        compute_s: avg(&|i| i.compute_ms) / 1000.0,
        upload_s: avg(&|i| i.upload_ms) / 1000.0,
        cold_extra_s,
        billed_extra_ms: avg(&|i| (i.billed_ms as f64 - i.handler_ms).max(0.0)),
        weights_load_fraction: avg(&|i| f64::from(u8::from(i.load_weights_ms > 0.0))),
        weights_upload_s: mean(offloading.iter().map(|m| m.weights_upload_time_s)),
        fetch_per_gradient_s: per_call(offloading.iter().map(|m| m.gradient_fetch_time_s).sum()),
        transitions_per_batch: per_call(
            offloading.iter().map(|m| m.state_transitions as f64).sum(),
        ),
        invocations: all.len(),
    })
}

/// The spread of warm calls' wall times within a round, pooled over every run's rounds,
/// seconds: what makes a wave wait for its slowest call and a round for its slowest peer.
/// What moves all the calls of a round alike (a round when the machine was busier) does
/// not make one call wait for another, and is left out.
fn within_round_sd(runs: &[DeploymentRun]) -> f64 {
    let mut rounds = std::collections::BTreeMap::<(usize, u64), Vec<f64>>::new();
    for (r, run) in runs.iter().enumerate() {
        for m in run.all_rounds() {
            let warm = m.invocations.iter().filter(|i| !i.cold);
            rounds
                .entry((r, m.round))
                .or_default()
                .extend(warm.map(|i| i.wall_ms));
        }
    }
    let (squares, freedom) = rounds.values().filter(|calls| calls.len() > 1).fold(
        (0.0, 0usize),
        |(squares, freedom), calls| {
            let m = mean(calls.iter().copied());
            let s: f64 = calls.iter().map(|x| (x - m).powi(2)).sum();
            (squares + s, freedom + calls.len() - 1)
        },
    );
    if freedom == 0 {
        0.0
    } else {
        (squares / freedom as f64).sqrt() / 1000.0
    }
}

fn most_common_memory(all: &[&InvocationRecord]) -> u32 {
    let mut counts = std::collections::BTreeMap::<u32, usize>::new();
    for i in all {
        *counts.entry(i.memory_mb).or_default() += 1;
    }
    // Ties go to the smaller size: `max_by_key` keeps the last maximum, so iterate downwards.
    counts
        .into_iter()
        .rev()
        .max_by_key(|&(_, n)| n)
        .map_or(0, |(m, _)| m)
}

/// vCPUs a function of `memory_mb` can put to use: its CPU share (proportional to memory,
/// at most [`LAMBDA_MAX_VCPUS`]) but no more than a gradient step uses (`useful_vcpus`).
pub fn vcpus(memory_mb: u32, useful_vcpus: f64) -> f64 {
    (f64::from(memory_mb) / VCPU_MEMORY_MB)
        .min(LAMBDA_MAX_VCPUS)
        .min(useful_vcpus)
}

impl Calibration {
    fn batch_s(&self) -> Result<f64, StudyError> {
        self.batch_s.ok_or_else(|| {
            StudyError::missing(
                "no run computed batches on a reference peer: instance and hybrid rounds \
                 cannot be projected",
            )
        })
    }

    fn functions(&self) -> Result<&FunctionCalibration, StudyError> {
        self.functions.as_ref().ok_or_else(|| {
            StudyError::missing(
                "no function call was recorded: serverless and hybrid rounds cannot be \
                 projected",
            )
        })
    }

    /// Exchange seconds for `peers` peers.
    pub fn exchange_s(&self, peers: usize) -> f64 {
        let n = peers as f64;
        match self.broker_bytes_per_s {
            Some(w) if peers >= 2 => n * (n - 1.0) * self.gradient_bytes / w,
            _ => 0.0,
        }
    }

    /// Encode, decode and update seconds for `peers` peers.
    pub fn overhead_s(&self, peers: usize) -> f64 {
        self.encode_s + peers.saturating_sub(1) as f64 * self.decode_per_gradient_s + self.update_s
    }
}

impl Scenario {
    fn effective_concurrency(&self) -> f64 {
        let c = self.concurrency.max(1) as f64;
        match self.concurrency_limit {
            Some(limit) => c.min(f64::from(limit) / self.speeds.len().max(1) as f64),
            None => c,
        }
    }

    /// Waves of calls for `m` offloaded batches.
    pub fn waves(&self, m: usize) -> usize {
        if m == 0 {
            0
        } else {
            (m as f64 / self.effective_concurrency()).ceil() as usize
        }
    }
}

/// Expected maximum of `k` independent standard normal values (Blom's approximation
/// `Phi^-1((k - 0.375) / (k + 0.25))`): how far the slowest of `k` similar calls or peers
/// lies above their mean, in standard deviations. 0 for one.
pub fn expected_max_z(k: usize) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    if k <= 1 {
        return 0.0;
    }
    let k = k as f64;
    Normal::standard().inverse_cdf((k - 0.375) / (k + 0.25))
}

/// One peer's gradient time for `m` offloaded batches (see the module's model).
fn peer_time(
    cal: &Calibration,
    s: &Scenario,
    speed: f64,
    m: usize,
    cold: bool,
) -> Result<f64, StudyError> {
    let b = s.batches_per_round;
    let local = |k: usize| -> Result<f64, StudyError> {
        Ok(if k == 0 {
            0.0
        } else {
            k as f64 * cal.batch_s()? / (s.speed_scale * speed)
        })
    };
    if m == 0 {
        return local(b);
    }
    let f = cal.functions()?;
    // Each wave lasts as long as its slowest call: the expected maximum of the wave's
    // calls, from the measured spread.
    let per_wave = m.min(s.effective_concurrency().max(1.0) as usize);
    let wave_s = f.call_s(s.memory_mb, s.useful_vcpus) + f.call_sd_s * expected_max_z(per_wave);
    let functions = s.waves(m) as f64 * wave_s + if cold { f.cold_extra_s } else { 0.0 };
    Ok(f.weights_upload_s + local(b - m)?.max(functions) + m as f64 * f.fetch_per_gradient_s)
}

/// Batches each peer offloads in a warm round of `s`.
fn plan(cal: &Calibration, s: &Scenario, round: u64) -> Result<Vec<usize>, StudyError> {
    let b = s.batches_per_round;
    match s.deployment {
        Deployment::Instance => Ok(vec![0; s.speeds.len()]),
        Deployment::Serverless => Ok(vec![b; s.speeds.len()]),
        Deployment::Hybrid if round == 0 => Ok(vec![0; s.speeds.len()]),
        Deployment::Hybrid => {
            let all_local = s
                .speeds
                .iter()
                .map(|&v| peer_time(cal, s, v, 0, false))
                .collect::<Result<Vec<_>, _>>()?;
            let target = all_local.iter().copied().fold(f64::INFINITY, f64::min);
            let mut out = Vec::with_capacity(s.speeds.len());
            for (&speed, &alone) in s.speeds.iter().zip(&all_local) {
                // The peer's own rule; the times are computed only as far as it asks.
                let mut failed = None;
                let pick = choose_offload(b, target, alone, |m| {
                    match peer_time(cal, s, speed, m, false) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            failed.get_or_insert(e);
                            Some(f64::INFINITY)
                        }
                    }
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                out.push(pick);
            }
            Ok(out)
        }
    }
}

/// Predicts round `round` (0-based) of `s`: serverless pays the cold start in round 0,
/// hybrid computes round 0 locally and pays the cold start in round 1.
pub fn predict_round(
    cal: &Calibration,
    s: &Scenario,
    round: u64,
) -> Result<RoundPrediction, StudyError> {
    if s.speeds.is_empty() {
        return Err(StudyError::missing("a scenario needs at least one peer"));
    }
    let offloaded = plan(cal, s, round)?;
    let cold = match s.deployment {
        Deployment::Instance => false,
        Deployment::Serverless => round == 0,
        Deployment::Hybrid => round == 1 && offloaded.iter().any(|&m| m > 0),
    };
    let mut compute_s: f64 = 0.0;
    let mut slowest_waves = 0;
    for (&speed, &m) in s.speeds.iter().zip(&offloaded) {
        let t = peer_time(cal, s, speed, m, cold)?;
        if t > compute_s {
            compute_s = t;
            slowest_waves = s.waves(m);
        }
    }
    // When the slowest peer waits on functions, the round waits for the slowest of the
    // offloading peers, whose function times vary independently: add the expected
    // maximum's excess over the mean (spread of a sum of waves grows with their root).
    let offloading = offloaded.iter().filter(|&&m| m > 0).count();
    if slowest_waves > 0 && offloading > 1 {
        let f = cal.functions()?;
        compute_s += f.call_sd_s * (slowest_waves as f64).sqrt() * expected_max_z(offloading);
    }
    let n = s.speeds.len();
    let exchange_s = cal.exchange_s(n);
    let overhead_s = cal.overhead_s(n);
    Ok(RoundPrediction {
        round_time_s: compute_s + exchange_s + overhead_s,
        compute_s,
        exchange_s,
        overhead_s,
        waves: offloaded.iter().map(|&m| s.waves(m)).max().unwrap_or(0),
        offloaded,
        cold,
    })
}

/// Mean predicted round time over rounds `0..rounds`.
pub fn predict_mean_round_s(
    cal: &Calibration,
    s: &Scenario,
    rounds: usize,
) -> Result<f64, StudyError> {
    let mut total = 0.0;
    for r in 0..rounds.max(1) {
        total += predict_round(cal, s, r as u64)?.round_time_s;
    }
    Ok(total / rounds.max(1) as f64)
}

/// The model against one local run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Validation {
    pub deployment: String,
    pub rounds: usize,
    pub predicted_round_s: f64,
    pub measured_round_s: f64,
    /// predicted / measured.
    pub ratio: f64,
    /// Whether the ratio is within 1 ± [`VALIDATION_TOLERANCE`].
    pub within_tolerance: bool,
}

/// Predicts `run`'s own set-up (its peers, their speeds, the study machine, the measured
/// memory size, no account limit) and compares with its measured mean round time.
pub fn validate_against(
    cal: &Calibration,
    config: &StudyConfig,
    run: &DeploymentRun,
) -> Result<Validation, StudyError> {
    let deployment = run.deployment().ok_or_else(|| {
        StudyError::missing(format!(
            "run {:?} is not one of the study's deployments",
            run.name
        ))
    })?;
    let rounds = run.round_count();
    let measured = run.mean_round_time_s();
    if rounds == 0 || measured <= 0.0 {
        return Err(StudyError::missing(format!(
            "run {} has no timed round",
            run.name
        )));
    }
    let scenario = Scenario {
        deployment,
        speeds: run
            .peers
            .iter()
            .map(|p| config.peer_speed(p.rank as usize))
            .collect(),
        speed_scale: 1.0,
        batches_per_round: config.batches_per_round(),
        memory_mb: cal
            .functions
            .as_ref()
            .map_or(config.lambda_memory_mb, |f| f.memory_mb),
        concurrency: config.function_concurrency,
        concurrency_limit: None,
        useful_vcpus: config.projection.max_useful_vcpus,
    };
    let predicted = predict_mean_round_s(cal, &scenario, rounds)?;
    let ratio = predicted / measured;
    Ok(Validation {
        deployment: run.name.clone(),
        rounds,
        predicted_round_s: predicted,
        measured_round_s: measured,
        ratio,
        within_tolerance: (ratio - 1.0).abs() <= VALIDATION_TOLERANCE,
    })
}

/// One point of the projection grid.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectionPoint {
    pub deployment: Deployment,
    pub peers: u32,
    pub instance_type: String,
    /// `None` for `instance`, which calls no function.
    pub lambda_memory_mb: Option<u32>,
    /// A warm round.
    pub round: RoundPrediction,
    /// What the first round adds over a warm one (cold starts).
    pub cold_start_extra_s: f64,
    /// Dollars of one warm round.
    pub cost_per_round: CostBreakdown,
}

/// The projection: calibration, grid, validation against the local runs and notes on
/// what could not be projected.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Projection {
    pub calibration: Calibration,
    pub points: Vec<ProjectionPoint>,
    pub validations: Vec<Validation>,
    /// What was skipped and why.
    pub notes: Vec<String>,
}

/// Calibrates from `runs`, projects every configured deployment over the config's
/// grid, and validates against every run.
pub fn project(
    config: &StudyConfig,
    runs: &[DeploymentRun],
    prices: &Prices,
) -> Result<Projection, StudyError> {
    let calibration = calibrate(config, runs)?;
    let reference_speed = prices
        .instance(&calibration.reference_instance_type)?
        .relative_speed;
    let speeds_at = |n: u32| -> Vec<f64> {
        (0..n as usize)
            .map(|j| config.peer_speed(j % config.peers.len().max(1)))
            .collect()
    };
    let mut points = Vec::new();
    let mut notes = Vec::new();
    for &deployment in &config.deployments {
        let needs_batches = deployment != Deployment::Serverless;
        let needs_functions = deployment != Deployment::Instance;
        if needs_batches && calibration.batch_s.is_none() {
            notes.push(format!(
                "{}: not projected, no run computed batches on a reference peer",
                deployment.name()
            ));
            continue;
        }
        if needs_functions && calibration.functions.is_none() {
            notes.push(format!(
                "{}: not projected, no function call was recorded",
                deployment.name()
            ));
            continue;
        }
        let memories: Vec<Option<u32>> = if needs_functions {
            config
                .projection_memory_mb()
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        for &n in &config.projection.peers {
            for instance_type in config.projection_instance_types() {
                let instance = prices.instance(&instance_type)?;
                for &memory in &memories {
                    let scenario = Scenario {
                        deployment,
                        speeds: speeds_at(n),
                        speed_scale: instance.relative_speed / reference_speed,
                        batches_per_round: config.batches_per_round(),
                        memory_mb: memory.unwrap_or(config.lambda_memory_mb),
                        concurrency: config.function_concurrency,
                        concurrency_limit: Some(config.projection.lambda_concurrency_limit),
                        useful_vcpus: config.projection.max_useful_vcpus,
                    };
                    let warm = predict_round(&calibration, &scenario, 2)?;
                    let first_offloading = u64::from(deployment == Deployment::Hybrid);
                    let first = predict_round(&calibration, &scenario, first_offloading)?;
                    let cost_per_round = round_cost(
                        &calibration,
                        &scenario,
                        &warm,
                        instance.value,
                        config,
                        prices,
                    )?;
                    points.push(ProjectionPoint {
                        deployment,
                        peers: n,
                        instance_type: instance_type.clone(),
                        lambda_memory_mb: memory,
                        cold_start_extra_s: (first.round_time_s - warm.round_time_s).max(0.0),
                        round: warm,
                        cost_per_round,
                    });
                }
            }
        }
    }
    let mut validations = Vec::new();
    for run in runs.iter().filter(|r| r.deployment().is_some()) {
        match validate_against(&calibration, config, run) {
            Ok(v) => validations.push(v),
            Err(e) => notes.push(format!("{}: not validated: {e}", run.name)),
        }
    }
    Ok(Projection {
        calibration,
        points,
        validations,
        notes,
    })
}

/// Dollars of one predicted round: every peer's instance and the broker for the round's
/// duration, plus the functions, transitions and S3 requests of its offloaded batches.
fn round_cost(
    cal: &Calibration,
    s: &Scenario,
    round: &RoundPrediction,
    instance_hour: f64,
    config: &StudyConfig,
    prices: &Prices,
) -> Result<CostBreakdown, StudyError> {
    let n = s.speeds.len() as f64;
    let hours = round.round_time_s / 3600.0;
    let offloaded: usize = round.offloaded.iter().sum();
    let offloading_peers = round.offloaded.iter().filter(|&&m| m > 0).count();
    let (gb_seconds, transitions, gets) = match (offloaded, cal.functions.as_ref()) {
        (0, _) | (_, None) => (0.0, 0.0, 0.0),
        (calls, Some(f)) => (
            calls as f64 * f.billed_ms(s.memory_mb, s.useful_vcpus) / 1000.0
                * f64::from(s.memory_mb)
                / 1024.0,
            calls as f64 * f.transitions_per_batch,
            calls as f64 * (2.0 + f.weights_load_fraction),
        ),
    };
    let usage = Usage {
        gb_seconds,
        requests: offloaded as f64,
        transitions,
        puts: (offloading_peers + offloaded) as f64,
        gets,
    };
    let rates = Rates::new(config, prices)?;
    Ok(rates.breakdown(n * hours * instance_hour, n * hours, hours, &usage))
}

/// Every assumption of the model, one sentence each, for the report.
pub fn assumptions() -> Vec<String> {
    vec![
        "Compute: a peer's batches take the reference peers' measured seconds per batch \
         (local_time_s / local batches, normalised to speed 1.0), divided by its speed factor \
         and by its instance type's relative_speed over the reference type's (prices file)."
            .into(),
        "The study machine stands for the reference peers' instance type; in the local \
         validation every peer runs on it at speed_scale 1."
            .into(),
        "Functions: a call takes the warm calls' mean call overhead (wall_ms - handler_ms) \
         plus their mean handler times; only the compute part scales with memory, by vCPUs = \
         min(memory_mb / 1769, 6, projection.max_useful_vcpus) (AWS: 1,769 MB buys one vCPU, \
         10,240 MB six; a gradient step splits into at most two parts and kept 1.7-1.9 \
         cores busy, hence the default cap of 2)."
            .into(),
        "The measured function timings stand for the memory size the invocations recorded, \
         also when the functions ran in the local pool on the study machine."
            .into(),
        "Waves: m offloaded batches run in ceil(m / min(function_concurrency, \
         lambda_concurrency_limit / N)) waves; every peer's functions share the account \
         limit evenly."
            .into(),
        "Stragglers: call times spread with the measured standard deviation sd of warm \
         calls within a round, independently and roughly normally; a wave of k calls lasts \
         the mean call plus sd x E[max of k standard normals] (Blom's approximation), and \
         when the round waits on functions, the slowest of the P offloading peers adds sd x \
         sqrt(waves) x E[max of P]."
            .into(),
        "Cold start: the first offloading round pays the mean cold handler time minus the \
         mean warm one once (the first wave); later rounds are warm."
            .into(),
        "A peer that offloads uploads the weights first (measured mean), computes its share \
         while the functions run, then reads the gradients (measured seconds per gradient)."
            .into(),
        format!(
            "Hybrid plans like --offload auto: all local in round 0; afterwards each peer \
             offloads the fewest batches that finish by the fastest peer's all-local time \
             (nothing within {HYBRID_SLACK}x of it), or the count with the least time when \
             none does."
        ),
        "Exchange: one broker carries N(N-1) gradient copies per round at the throughput \
         fitted from the local runs (N₀(N₀-1) × gradient bytes / the smallest send+receive \
         time per round); latency is folded into that throughput; no overlap with compute."
            .into(),
        "Encode and update are constant per peer; decode grows with the N-1 gradients \
         received."
            .into(),
        "At N peers, peer j has the speed of configured peer j mod (number of [[peer]] \
         tables)."
            .into(),
        "Costs per warm round: every peer's instance and the broker for the round's duration \
         (no billing minimum), billed function milliseconds (handler time plus the measured \
         billing extra, rounded up to 1 ms) at the projected memory, one request per call, \
         measured transitions per batch, and the S3 requests of the cost model."
            .into(),
        "Evaluation, data loading at start-up and retries are not modelled.".into(),
    ]
}
