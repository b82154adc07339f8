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
//! - the round takes the slowest peer's time (plus, when k equally slow peers compute
//!   their own batches, `batch_sd × B / speed × E[max of k]`), plus the exchange, plus
//!   `encode + d × decode_per_gradient + update + checkpoint` (`d` gradients' worth
//!   decoded: `N-1` all-to-all, `2(N-1)/N` sharded, whose owners aggregate a shard and
//!   every peer decodes the others' results);
//! - the exchange (the scenario's, the config's `exchange` in the projection; see
//!   [`ExchangeTraffic`]) moves `broker_bytes` through the broker and `peer_bytes` into
//!   each peer: all-to-all `N(N-1)·G` and `(N-1)·G`, sharded `2(N-1)·G` and
//!   `2(N-1)/N·G` (`G` the gradient message); it takes `hops × hop_latency +
//!   max(broker_bytes / broker_bytes_per_s, peer_bytes / peer_bytes_per_s)` (1 hop
//!   all-to-all, 2 sharded), calibrated from the local runs' exchange (see
//!   [`Calibration`] and [`fit_exchange`]).
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
use peerless_comm::Exchange;
use peerless_runtime::metrics::{InvocationRecord, RoundMetrics};
use peerless_runtime::offload::{HYBRID_SLACK, choose_offload};

/// How far the model's prediction of the local set-up may be from the measurement.
pub const VALIDATION_TOLERANCE: f64 = 0.20;

/// Lambda memory that buys one full vCPU, MB (AWS: "at 1,769 MB, a function has the
/// equivalent of one vCPU").
pub const VCPU_MEMORY_MB: f64 = 1769.0;

/// Lambda's largest CPU share: 6 vCPUs at 10,240 MB.
pub const LAMBDA_MAX_VCPUS: f64 = 6.0;

/// What one round of an exchange moves, bytes (`G` = one peer's gradient message).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ExchangeTraffic {
    /// Delivered by the broker to all peers together: all-to-all `N(N-1)·G` (every
    /// gradient to every other peer); sharded `2(N-1)·G` (each peer's `(N-1)/N·G` of
    /// parts to the shard owners, then each owner's `G/N` result to the `N-1` others).
    pub broker_bytes: f64,
    /// Received by one peer: all-to-all `(N-1)·G`, sharded `2(N-1)/N·G`.
    pub peer_received_bytes: f64,
    /// Sent by one peer: `G` for both (sharded: `(N-1)/N·G` of parts plus its `G/N`
    /// result, published once to the fanout).
    pub peer_sent_bytes: f64,
    /// Gradients' worth one peer decodes (or aggregates): all-to-all `N-1`, sharded
    /// `2(N-1)/N` (its shard's `N-1` parts, then the `N-1` other results).
    pub decoded_gradients: f64,
    /// Message hops one after the other: 1 all-to-all, 2 sharded.
    pub hops: u32,
}

/// Bytes of one claim message of the claim-check exchange (header, claim, signature).
const CLAIM_BYTES: f64 = 300.0;

impl ExchangeTraffic {
    /// The traffic of `exchange` with `peers` peers and gradients of `gradient_bytes`
    /// (nothing moves with fewer than two peers).
    pub fn of(exchange: Exchange, peers: usize, gradient_bytes: f64) -> ExchangeTraffic {
        let (n, g) = (peers as f64, gradient_bytes);
        if peers < 2 {
            return ExchangeTraffic {
                broker_bytes: 0.0,
                peer_received_bytes: 0.0,
                peer_sent_bytes: 0.0,
                decoded_gradients: 0.0,
                hops: 0,
            };
        }
        match exchange {
            Exchange::AllToAll => ExchangeTraffic {
                broker_bytes: n * (n - 1.0) * g,
                peer_received_bytes: (n - 1.0) * g,
                peer_sent_bytes: g,
                decoded_gradients: n - 1.0,
                hops: 1,
            },
            Exchange::Sharded => ExchangeTraffic {
                broker_bytes: 2.0 * (n - 1.0) * g,
                peer_received_bytes: 2.0 * (n - 1.0) / n * g,
                peer_sent_bytes: g,
                decoded_gradients: 2.0 * (n - 1.0) / n,
                hops: 2,
            },
            // The claim check: only claims (about 200 bytes) cross the broker; the
            // gradients cross each peer's link to the store, modelled at the peer link's
            // measured throughput (the store's own is not calibrated).
            Exchange::S3 => ExchangeTraffic {
                broker_bytes: n * (n - 1.0) * CLAIM_BYTES,
                ..Self::of(Exchange::AllToAll, peers, gradient_bytes)
            },
        }
    }
}

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
    /// The runs the batch time came from.
    pub batch_source: Option<String>,
    /// The EC2 type the study machine stands for (the reference peers' type): projected
    /// types scale the batch time by their `relative_speed` against it.
    pub reference_instance_type: String,
    /// Peers in the local runs.
    pub local_peers: u32,
    /// Standard deviation of the peers' seconds per batch (at speed 1.0) within a round,
    /// pooled over rounds: the spread that makes a round wait for the slowest of equally
    /// fast peers.
    pub batch_sd_s: f64,
    /// The exchange of the runs the round model is calibrated from (the config's
    /// `exchange`).
    pub exchange: Exchange,
    /// Mean bytes one peer sends per round (`bytes_sent`): its gradient message `G`.
    pub gradient_bytes: f64,
    /// The measured exchange time of that exchange (see [`MeasuredExchange::exchange_s`]).
    pub exchange_s: f64,
    /// Mean bytes per round the broker delivered in those runs: the sum of every peer's
    /// `bytes_received`.
    pub broker_bytes_measured: f64,
    /// The broker's delivery throughput. With a measurement of each exchange at N₀
    /// (`compare_exchanges`) that resolves it, fitted with [`Calibration::hop_latency_s`]
    /// to both ([`fit_exchange`]); otherwise the local exchange's [`ExchangeTraffic`]
    /// `broker_bytes` (at N₀ and `gradient_bytes`) over `exchange_s`, latency folded in.
    /// `None` with fewer than two local peers (no exchange to measure).
    pub broker_bytes_per_s: Option<f64>,
    /// One peer's link throughput: what the broker delivers to one of the N₀ local peers
    /// in the same time, `broker_bytes_per_s / N₀` (the local exchange's
    /// `peer_received_bytes` over its transfer time). The peers' links bind below N₀
    /// peers, the broker above.
    pub peer_bytes_per_s: Option<f64>,
    /// Seconds per message hop, charged once per round all-to-all and twice sharded;
    /// `None` when not calibrated (then folded into the throughputs).
    pub hop_latency_s: Option<f64>,
    /// The latency and throughput fitted to both exchanges, used only when
    /// [`ExchangeFit::resolved`]; kept either way for the report.
    pub exchange_fit: Option<ExchangeFit>,
    /// Every exchange measured locally, the config's first.
    pub measured_exchanges: Vec<MeasuredExchange>,
    /// Mean seconds per round of encoding the peer's gradient.
    pub encode_s: f64,
    /// Mean seconds of decoding (or aggregating) one gradient's worth: `decode_time_s` over
    /// the local exchange's [`ExchangeTraffic`] `decoded_gradients`.
    pub decode_per_gradient_s: f64,
    /// Mean seconds per round of the optimizer step.
    pub update_s: f64,
    /// Per round the longest checkpoint write of any peer (0 in rounds without one),
    /// averaged over rounds.
    pub checkpoint_s: f64,
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
    /// How the peers exchange gradients.
    pub exchange: Exchange,
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
    // The exchange's quantities come from the runs of the config's exchange; the runs of
    // `compare_exchanges` only add their own measurement for the latency fit.
    let main: Vec<&DeploymentRun> = runs
        .iter()
        .filter(|r| config.exchange_of(&r.name) == config.exchange)
        .collect();
    let main_rounds: Vec<_> = main.iter().flat_map(|r| r.all_rounds()).collect();
    let mut measured_exchanges: Vec<MeasuredExchange> = Vec::new();
    for exchange in std::iter::once(config.exchange).chain(config.compare_exchanges.iter().copied())
    {
        let of: Vec<&DeploymentRun> = runs
            .iter()
            .filter(|r| config.exchange_of(&r.name) == exchange && r.peers.len() >= 2)
            .collect();
        if let Some(m) = MeasuredExchange::of(exchange, &of) {
            measured_exchanges.push(m);
        }
    }
    let (gradient_bytes, exchange_s, broker_bytes_measured) = measured_exchanges
        .iter()
        .find(|m| m.exchange == config.exchange)
        .map_or((0.0, 0.0, 0.0), |m| {
            (m.gradient_bytes, m.exchange_s, m.broker_bytes_per_round)
        });
    let exchange_fit = fit_exchange(&measured_exchanges, local_peers as usize);
    let local = ExchangeTraffic::of(config.exchange, local_peers as usize, gradient_bytes);
    let measured = local_peers >= 2 && exchange_s > 0.0 && gradient_bytes > 0.0;
    // An unresolved fit's throughput is noise: fold the latency into the throughput of the
    // config's exchange instead, the lowest throughput its measurement allows (every
    // measured second charged to bytes), so the projection errs towards slower exchanges
    // at scale rather than towards a throughput the broker does not have.
    let (broker_bytes_per_s, hop_latency_s) = match exchange_fit {
        Some(fit) if fit.resolved() => (Some(fit.bytes_per_s()), Some(fit.hop_latency_s)),
        _ => (measured.then(|| local.broker_bytes / exchange_s), None),
    };
    // From one local set-up a peer's link carries its share of the broker's deliveries
    // in the same time: broker_bytes / N₀ = peer_received_bytes at N₀ for both exchanges.
    let peer_bytes_per_s = broker_bytes_per_s.map(|b| b / f64::from(local_peers.max(1)));
    let decode_per_gradient_s = if local.decoded_gradients > 0.0 {
        mean(main_rounds.iter().map(|m| m.decode_time_s)) / local.decoded_gradients
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
        batch_sd_s: batch_spread(config, runs),
        exchange: config.exchange,
        gradient_bytes,
        exchange_s,
        broker_bytes_measured,
        broker_bytes_per_s,
        peer_bytes_per_s,
        hop_latency_s,
        exchange_fit,
        measured_exchanges,
        encode_s: mean(main_rounds.iter().map(|m| m.encode_time_s)),
        decode_per_gradient_s,
        update_s: mean(rounds.iter().map(|m| m.update_time_s)),
        checkpoint_s: mean(runs.iter().flat_map(|run| {
            (0..run.round_count()).map(move |i| {
                run.peers
                    .iter()
                    .filter_map(|p| p.rounds.get(i))
                    .map(|m| m.checkpoint_time_s.unwrap_or(0.0))
                    .fold(0.0, f64::max)
            })
        })),
        functions: function_calibration(runs),
    })
}

/// What the runs of one exchange measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeasuredExchange {
    pub exchange: Exchange,
    /// The runs measured.
    pub runs: Vec<String>,
    /// Peers of those runs (N₀).
    pub peers: usize,
    /// Mean bytes one peer sent per round (`bytes_sent`): `G`.
    pub gradient_bytes: f64,
    /// Mean per round of the shortest `max(send_time_s, receive_time_s)` of any peer:
    /// sending and receiving run side by side, and the last peer to finish computing waits
    /// for nobody, so its time is the exchange itself.
    pub exchange_s: f64,
    /// Standard error of `exchange_s`: the per-round values' standard deviation over the
    /// square root of their count (0 with one round). What [`fit_exchange`] weighs the
    /// two exchanges' difference against.
    pub exchange_se_s: f64,
    /// Mean per round of the sum of every peer's `bytes_received`: what the broker
    /// delivered.
    pub broker_bytes_per_round: f64,
}

impl MeasuredExchange {
    /// The measurement of `exchange` from `runs` (all of it, two peers or more); `None`
    /// without a timed round.
    fn of(exchange: Exchange, runs: &[&DeploymentRun]) -> Option<MeasuredExchange> {
        let each_round = |f: &dyn Fn(&[&RoundMetrics]) -> f64| -> Vec<f64> {
            runs.iter()
                .flat_map(|run| {
                    (0..run.round_count()).map(|i| {
                        let ms: Vec<&RoundMetrics> =
                            run.peers.iter().filter_map(|p| p.rounds.get(i)).collect();
                        f(&ms)
                    })
                })
                .collect()
        };
        let exchanges = each_round(&|ms| {
            ms.iter()
                .map(|m| m.send_time_s.max(m.receive_time_s))
                .fold(f64::INFINITY, f64::min)
        });
        let exchange_s = mean(exchanges.iter().copied());
        let exchange_se_s = if exchanges.len() > 1 {
            let k = exchanges.len() as f64;
            let var = exchanges
                .iter()
                .map(|x| (x - exchange_s).powi(2))
                .sum::<f64>()
                / (k - 1.0);
            (var / k).sqrt()
        } else {
            0.0
        };
        let gradient_bytes = mean(
            runs.iter()
                .flat_map(|r| r.all_rounds())
                .filter(|m| m.bytes_sent > 0)
                .map(|m| m.bytes_sent as f64),
        );
        let delivered = each_round(&|ms| ms.iter().map(|m| m.bytes_received as f64).sum::<f64>());
        (exchange_s > 0.0 && exchange_s.is_finite()).then(|| MeasuredExchange {
            exchange,
            runs: runs.iter().map(|r| r.name.clone()).collect(),
            peers: runs.iter().map(|r| r.peers.len()).max().unwrap_or(0),
            gradient_bytes,
            exchange_s,
            exchange_se_s,
            broker_bytes_per_round: mean(delivered.into_iter()),
        })
    }
}

/// The per-hop latency and broker throughput that explain a measurement of each exchange
/// at the same peer count, with how well the measurements determine the throughput.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ExchangeFit {
    /// Seconds per message hop `L`.
    pub hop_latency_s: f64,
    /// Seconds per byte delivered by the broker `1/W`.
    pub per_byte_s: f64,
    /// Standard error of `per_byte_s`, from the two measurements' standard errors.
    pub per_byte_se_s: f64,
}

impl ExchangeFit {
    /// The broker's throughput `W`, bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        1.0 / self.per_byte_s
    }

    /// Whether the measurements determine the throughput: the per-byte time lies more
    /// than two standard errors above zero. When it does not, the difference between
    /// the exchanges is within the rounds' noise and any throughput from it, however
    /// high, is as likely as a far lower one.
    pub fn resolved(&self) -> bool {
        self.per_byte_s > 2.0 * self.per_byte_se_s
    }
}

/// The per-hop latency `L` and broker throughput `W` that explain a measurement of each
/// exchange at the same peer count: `hops × L + broker_bytes / W = exchange_s` for both
/// (all-to-all 1 hop, sharded 2). `None` without both, or when the two do not give a
/// latency ≥ 0 and a throughput > 0.
///
/// Both unknowns come from one difference: at N₀ = 8 all-to-all moves 4x sharded's bytes
/// in half its hops, so `1/W = (2·a2a − sharded) / (2·B_a2a − B_sharded)`. With small
/// gradients (the exchange study's 153 KB) both exchanges take a few hops' latency and
/// that difference is of the order of its standard error: two runs of that study on
/// 2026-12-07 fitted 1.4 and 1.9 GB/s, where the exchange benchmark measures 0.56 GB/s
/// on the same broker (bench/README.md, "The exchange in the projection").
/// [`ExchangeFit::resolved`] tells a throughput the data determine from one they do not;
/// [`calibrate`] uses the latency only in the first case.
pub fn fit_exchange(measured: &[MeasuredExchange], peers: usize) -> Option<ExchangeFit> {
    let find = |x: Exchange| {
        measured
            .iter()
            .find(|m| m.exchange == x && m.peers == peers && m.gradient_bytes > 0.0)
    };
    let (a, s) = (find(Exchange::AllToAll)?, find(Exchange::Sharded)?);
    let ta = ExchangeTraffic::of(a.exchange, peers, a.gradient_bytes);
    let ts = ExchangeTraffic::of(s.exchange, peers, s.gradient_bytes);
    // [ha xa; hs xs] · [L; 1/W] = [a; s]
    let (ha, hs) = (f64::from(ta.hops), f64::from(ts.hops));
    let det = ha * ts.broker_bytes - hs * ta.broker_bytes;
    if det == 0.0 {
        return None;
    }
    let latency = (a.exchange_s * ts.broker_bytes - s.exchange_s * ta.broker_bytes) / det;
    let per_byte = (ha * s.exchange_s - hs * a.exchange_s) / det;
    let per_byte_se =
        ((ha * s.exchange_se_s).powi(2) + (hs * a.exchange_se_s).powi(2)).sqrt() / det.abs();
    (latency >= 0.0 && per_byte > 0.0).then_some(ExchangeFit {
        hop_latency_s: latency,
        per_byte_s: per_byte,
        per_byte_se_s: per_byte_se,
    })
}

/// The spread of the peers' seconds per batch (at speed 1.0) within a round, pooled over
/// every run's rounds: what makes a round wait for the slowest of equally fast peers.
fn batch_spread(config: &StudyConfig, runs: &[DeploymentRun]) -> f64 {
    let mut squares = 0.0;
    let mut freedom = 0usize;
    for run in runs {
        for i in 0..run.round_count() {
            let per_batch: Vec<f64> = run
                .peers
                .iter()
                .filter_map(|p| p.rounds.get(i).map(|m| (p.rank, m)))
                .filter(|(_, m)| m.local_batches + m.fallback_batches > 0 && m.local_time_s > 0.0)
                .map(|(rank, m)| {
                    m.local_time_s * config.peer_speed(rank as usize)
                        / (m.local_batches + m.fallback_batches) as f64
                })
                .collect();
            if per_batch.len() > 1 {
                let m = mean(per_batch.iter().copied());
                squares += per_batch.iter().map(|x| (x - m).powi(2)).sum::<f64>();
                freedom += per_batch.len() - 1;
            }
        }
    }
    if freedom == 0 {
        0.0
    } else {
        (squares / freedom as f64).sqrt()
    }
}

/// Seconds per batch at speed 1.0 from the fastest configured peers' local batches, taken
/// from the first of the instance, hybrid, serverless deployments whose runs have any:
/// its own run and its runs with the other exchanges (`compare_exchanges`) together,
/// since computing does not depend on the exchange.
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
    let plan = config.runs();
    let of_deployment = |run: &DeploymentRun, arch: Deployment| {
        run.deployment() == Some(arch)
            || plan.iter().any(|p| {
                p.name == run.name && p.deployment == arch && p.exchange != config.exchange
            })
    };
    for arch in order {
        let (mut time, mut batches, mut names) = (0.0, 0usize, Vec::new());
        for run in runs.iter().filter(|r| of_deployment(r, arch)) {
            let before = batches;
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
            if batches > before {
                names.push(run.name.clone());
            }
        }
        if batches > 0 && time > 0.0 {
            return (
                Some(time / batches as f64 * top),
                Some(names.join(", ")),
                reference.first().copied(),
            );
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

    /// Exchange seconds of the local runs' exchange for `peers` peers.
    pub fn exchange_s(&self, peers: usize) -> f64 {
        self.exchange_time_s(self.exchange, peers)
    }

    /// Exchange seconds of `exchange` for `peers` peers: its broker bytes at the broker's
    /// throughput or its bytes into one peer at a peer's, whichever takes longer.
    pub fn exchange_time_s(&self, exchange: Exchange, peers: usize) -> f64 {
        let t = ExchangeTraffic::of(exchange, peers, self.gradient_bytes);
        let at = |bytes: f64, rate: Option<f64>| match rate {
            Some(w) if w > 0.0 => bytes / w,
            _ => 0.0,
        };
        f64::from(t.hops) * self.hop_latency_s.unwrap_or(0.0)
            + at(t.broker_bytes, self.broker_bytes_per_s)
                .max(at(t.peer_received_bytes, self.peer_bytes_per_s))
    }

    /// Whether the broker (rather than a peer's link) bounds `exchange` at `peers` peers.
    pub fn broker_bound(&self, exchange: Exchange, peers: usize) -> bool {
        let t = ExchangeTraffic::of(exchange, peers, self.gradient_bytes);
        match (self.broker_bytes_per_s, self.peer_bytes_per_s) {
            (Some(b), Some(p)) => t.broker_bytes / b >= t.peer_received_bytes / p,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Encode, decode, update and checkpoint seconds of the local runs' exchange for
    /// `peers` peers.
    pub fn overhead_s(&self, peers: usize) -> f64 {
        self.overhead_time_s(self.exchange, peers)
    }

    /// Encode, decode, update and checkpoint seconds of `exchange` for `peers` peers.
    pub fn overhead_time_s(&self, exchange: Exchange, peers: usize) -> f64 {
        let decoded = ExchangeTraffic::of(exchange, peers, self.gradient_bytes).decoded_gradients;
        self.encode_s + decoded * self.decode_per_gradient_s + self.update_s + self.checkpoint_s
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
    let mut slowest_speed = 1.0;
    let mut times = Vec::with_capacity(s.speeds.len());
    for (&speed, &m) in s.speeds.iter().zip(&offloaded) {
        let t = peer_time(cal, s, speed, m, cold)?;
        times.push(t);
        if t > compute_s {
            compute_s = t;
            slowest_waves = s.waves(m);
            slowest_speed = speed;
        }
    }
    // When the slowest peers compute all their batches themselves, the round waits for
    // the slowest of those that are equally slow: add the expected maximum's excess of
    // their measured spread (per batch, so B batches spread B times as much).
    let tied = times
        .iter()
        .zip(&offloaded)
        .filter(|&(&t, &m)| m == 0 && t >= compute_s * (1.0 - 1e-9))
        .count();
    if slowest_waves == 0 && tied > 1 {
        compute_s += cal.batch_sd_s * s.batches_per_round as f64 / (s.speed_scale * slowest_speed)
            * expected_max_z(tied);
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
    let exchange_s = cal.exchange_time_s(s.exchange, n);
    let overhead_s = cal.overhead_time_s(s.exchange, n);
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
    /// The run's name.
    pub deployment: String,
    /// The run's exchange.
    pub exchange: Exchange,
    pub rounds: usize,
    pub predicted_round_s: f64,
    pub measured_round_s: f64,
    /// predicted / measured.
    pub ratio: f64,
    /// Whether the ratio is within 1 ± [`VALIDATION_TOLERANCE`].
    pub within_tolerance: bool,
}

/// Predicts `run`'s own set-up (its peers, their speeds, its exchange, the study machine
/// at the run's own seconds per batch when it computed any, the measured memory size, no
/// account limit) and compares with its measured mean round time. The run's deployment and exchange are its entry in [`StudyConfig::runs`] (or, for
/// another name, its name's deployment and the config's exchange).
pub fn validate_against(
    cal: &Calibration,
    config: &StudyConfig,
    run: &DeploymentRun,
) -> Result<Validation, StudyError> {
    let planned = config.runs().into_iter().find(|r| r.name == run.name);
    let deployment = planned
        .as_ref()
        .map(|p| p.deployment)
        .or_else(|| run.deployment())
        .ok_or_else(|| {
            StudyError::missing(format!(
                "run {:?} is not one of the study's deployments",
                run.name
            ))
        })?;
    let exchange = planned.map_or(config.exchange, |p| p.exchange);
    // The study machine's speed drifts between runs (other work on its cores; 10-20%
    // between two runs a few seconds apart): predict the run at its own seconds per batch
    // and spread where its reference peers computed any, so the check is of the round
    // model rather than of the drift.
    let own = std::slice::from_ref(run);
    let cal = &match batch_time(config, own) {
        (Some(batch_s), source, _) => Calibration {
            batch_s: Some(batch_s),
            batch_source: source,
            batch_sd_s: batch_spread(config, own),
            ..cal.clone()
        },
        _ => cal.clone(),
    };
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
        exchange,
    };
    let predicted = predict_mean_round_s(cal, &scenario, rounds)?;
    let ratio = predicted / measured;
    Ok(Validation {
        deployment: run.name.clone(),
        exchange,
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

/// One exchange at one peer count, for the side-by-side comparison of the exchanges.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExchangePoint {
    pub exchange: Exchange,
    pub peers: u32,
    pub traffic: ExchangeTraffic,
    /// The exchange's seconds per round.
    pub exchange_s: f64,
    /// Whether the broker's throughput bounds it (otherwise a peer's link does).
    pub broker_bound: bool,
    /// A warm round with this exchange of the comparison's set-up
    /// ([`Projection::exchange_setup`]); `None` when nothing could be projected.
    pub round: Option<RoundPrediction>,
}

/// The set-up whose rounds the exchange comparison shows: the first projected
/// deployment (`instance` when it is projected) on the first instance type and memory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExchangeSetup {
    pub deployment: Deployment,
    pub instance_type: String,
    pub lambda_memory_mb: Option<u32>,
}

/// The projection: calibration, grid, validation against the local runs and notes on
/// what could not be projected.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Projection {
    pub calibration: Calibration,
    /// The grid, with the config's exchange.
    pub points: Vec<ProjectionPoint>,
    /// Both exchanges at every projected peer count.
    pub exchanges: Vec<ExchangePoint>,
    pub exchange_setup: Option<ExchangeSetup>,
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
                        concurrency: config.projected_function_concurrency(),
                        concurrency_limit: Some(config.projection.lambda_concurrency_limit),
                        useful_vcpus: config.projection.max_useful_vcpus,
                        exchange: config.exchange,
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
    let exchange_setup = points
        .iter()
        .find(|p| p.deployment == Deployment::Instance)
        .or(points.first())
        .map(|p| ExchangeSetup {
            deployment: p.deployment,
            instance_type: p.instance_type.clone(),
            lambda_memory_mb: p.lambda_memory_mb,
        });
    let mut exchanges = Vec::new();
    for &n in &config.projection.peers {
        for exchange in [Exchange::AllToAll, Exchange::Sharded] {
            let round = match &exchange_setup {
                Some(setup) => {
                    let instance = prices.instance(&setup.instance_type)?;
                    let scenario = Scenario {
                        deployment: setup.deployment,
                        speeds: speeds_at(n),
                        speed_scale: instance.relative_speed / reference_speed,
                        batches_per_round: config.batches_per_round(),
                        memory_mb: setup.lambda_memory_mb.unwrap_or(config.lambda_memory_mb),
                        concurrency: config.projected_function_concurrency(),
                        concurrency_limit: Some(config.projection.lambda_concurrency_limit),
                        useful_vcpus: config.projection.max_useful_vcpus,
                        exchange,
                    };
                    Some(predict_round(&calibration, &scenario, 2)?)
                }
                None => None,
            };
            exchanges.push(ExchangePoint {
                exchange,
                peers: n,
                traffic: ExchangeTraffic::of(exchange, n as usize, calibration.gradient_bytes),
                exchange_s: calibration.exchange_time_s(exchange, n as usize),
                broker_bound: calibration.broker_bound(exchange, n as usize),
                round,
            });
        }
    }
    let mut validations = Vec::new();
    // The deployments' own runs and those of `compare_exchanges`.
    let validated = |r: &DeploymentRun| {
        r.deployment().is_some() || config.exchange_of(&r.name) != config.exchange
    };
    for run in runs.iter().filter(|r| validated(r)) {
        match validate_against(&calibration, config, run) {
            Ok(v) => validations.push(v),
            Err(e) => notes.push(format!("{}: not validated: {e}", run.name)),
        }
    }
    Ok(Projection {
        calibration,
        points,
        exchanges,
        exchange_setup,
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
        "Waves: m offloaded batches run in ceil(m / min(c, \
         lambda_concurrency_limit / N)) waves, c the calls a peer runs at once \
         (projection.function_concurrency, else function_concurrency); every peer's \
         functions share the account limit evenly."
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
        "Exchange: per round the broker delivers N(N-1) x G all-to-all (every gradient to \
         every other peer) or 2(N-1) x G sharded (reduce-scatter of each peer's (N-1)/N x G \
         to the shard owners, then all-gather of each owner's G/N to the others), and each \
         peer receives (N-1) x G or 2(N-1)/N x G; the exchange takes the broker's bytes at \
         the broker's throughput or one peer's bytes at a peer's link throughput, whichever \
         is longer, plus a latency per message hop (1 all-to-all, 2 sharded). No overlap \
         with compute."
            .into(),
        "The exchange is measured per round as the shortest max(send, receive) time of any \
         peer (the last peer to finish computing waits for nobody). With runs of both \
         exchanges at the same peer count (compare_exchanges), the broker throughput and \
         the per-hop latency are the ones that explain both measurements, if the \
         measurements determine the throughput (its per-byte time more than two standard \
         errors above zero); otherwise, and with one exchange, the latency is folded into \
         the throughput of the config's exchange, the lowest throughput its measurement \
         allows (then sharded rounds are optimistic at small N, where its second hop \
         matters, and all-to-all's projection errs towards slower exchanges). A peer's link throughput is the broker's \
         divided by the local peer count (both come from the same measured time), so the \
         peers' links bind below that count and the broker above it. Per-message costs \
         (sharded sends N times as many, N times smaller messages) are not modelled."
            .into(),
        "Equally slow peers that compute their own batches: the round waits for the \
         slowest of the k tied peers, adding the measured spread of seconds per batch \
         within a round x batches x E[max of k standard normals]. The spread is measured \
         with the local peers sharing the study machine's cores and is taken to hold at \
         every projected peer count (pessimistic for peers on their own instances)."
            .into(),
        "Checkpoints: the rounds' mean longest checkpoint write (one every epoch) is part \
         of every round."
            .into(),
        "Encode and update are constant per peer; decoding grows with the gradients' worth \
         received: N-1 all-to-all, 2(N-1)/N sharded."
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
