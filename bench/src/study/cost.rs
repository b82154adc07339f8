//! Dollars from measured metrics: what one deployment's run would have cost on AWS at
//! the prices file's rates. The rules, each also printed in the report ([`rules`]):
//!
//! - **EC2**: every peer is billed for the run's wall time at its instance type's hourly
//!   price, per second (rounded up to whole seconds) with a 60-second minimum.
//! - **Lambda compute**: Σ over successful invocations of `billed_ms / 1000 × memory_mb /
//!   1024` GB-seconds × the GB-second price of `lambda_architecture`.
//! - **Lambda requests**: one request per attempt (`attempts` of each successful
//!   invocation) × the request price. Attempts of calls that failed for good are not in the
//!   metrics and are not billed.
//! - **Step Functions**: Σ `state_transitions` × the Standard per-transition price.
//! - **S3 requests**: for each round of a peer that offloaded, 1 PUT (the weights), and per
//!   invocation 1 GET of the weights (only when `load_weights_ms > 0`: warm functions keep
//!   them), 1 GET of the batch, 1 PUT of the gradient and 1 GET of the gradient by the
//!   peer. DELETEs are free; storage (GB-month) of objects that live for seconds is
//!   negligible and not counted.
//! - **Broker**: the run's wall time × the broker type's hourly price (prorated).

use serde::Serialize;

use super::config::StudyConfig;
use super::error::StudyError;
use super::prices::Prices;
use super::runs::DeploymentRun;
use peerless_runtime::metrics::RoundMetrics;

/// EC2's minimum billed duration per instance, seconds.
pub const EC2_MINIMUM_S: f64 = 60.0;

/// The billed quantities behind a [`CostBreakdown`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CostQuantities {
    /// Σ over peers of billed instance-hours.
    pub instance_hours: f64,
    pub gb_seconds: f64,
    pub lambda_requests: u64,
    pub state_transitions: u64,
    pub s3_put_requests: u64,
    pub s3_get_requests: u64,
    pub broker_hours: f64,
}

/// Dollars per resource, their total and the quantities behind them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CostBreakdown {
    pub ec2: f64,
    pub lambda_compute: f64,
    pub lambda_requests: f64,
    pub step_functions: f64,
    pub s3_requests: f64,
    pub broker: f64,
    pub total: f64,
    pub quantities: CostQuantities,
}

impl CostBreakdown {
    /// The names of the priced parts, in the order of [`CostBreakdown::parts`]: one list for
    /// the cost figure and the cost table.
    pub const PARTS: [&'static str; 6] = [
        "EC2",
        "Lambda compute",
        "Lambda requests",
        "Step Functions",
        "S3 requests",
        "broker",
    ];

    /// The dollars of each part named in [`CostBreakdown::PARTS`].
    pub fn parts(&self) -> [f64; 6] {
        [
            self.ec2,
            self.lambda_compute,
            self.lambda_requests,
            self.step_functions,
            self.s3_requests,
            self.broker,
        ]
    }
}

/// The usage-priced quantities of some rounds (everything but time-billed resources).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    pub gb_seconds: f64,
    /// Counts; fractional only in the simulator's expected values.
    pub requests: f64,
    pub transitions: f64,
    pub puts: f64,
    pub gets: f64,
}

impl Usage {
    /// Adds one peer-round's function, Step Functions and S3 usage.
    pub fn add_round(&mut self, m: &RoundMetrics) {
        self.transitions += m.state_transitions as f64;
        if m.offloaded_batches > 0 || !m.invocations.is_empty() {
            self.puts += 1.0;
        }
        for inv in &m.invocations {
            self.gb_seconds += inv.billed_ms as f64 / 1000.0 * f64::from(inv.memory_mb) / 1024.0;
            self.requests += f64::from(inv.attempts);
            self.gets += 2.0 + f64::from(u8::from(inv.load_weights_ms > 0.0));
            self.puts += 1.0;
        }
    }
}

/// Prices of the usage-billed resources, resolved once.
pub(crate) struct Rates {
    gb_second: f64,
    request: f64,
    transition: f64,
    put: f64,
    get: f64,
    broker_hour: f64,
}

impl Rates {
    pub(crate) fn new(config: &StudyConfig, prices: &Prices) -> Result<Rates, StudyError> {
        Ok(Rates {
            gb_second: prices.lambda.gb_second(config.lambda_architecture),
            request: prices.lambda.request(config.lambda_architecture),
            transition: prices.step_functions.standard_transition.value,
            put: prices.s3.put_request.value,
            get: prices.s3.get_request.value,
            broker_hour: prices.broker_hour(&config.broker_type)?,
        })
    }

    /// Prices `u` plus the time-billed EC2 dollars and broker hours.
    pub(crate) fn breakdown(
        &self,
        ec2: f64,
        instance_hours: f64,
        broker_hours: f64,
        u: &Usage,
    ) -> CostBreakdown {
        let lambda_compute = u.gb_seconds * self.gb_second;
        let lambda_requests = u.requests * self.request;
        let step_functions = u.transitions * self.transition;
        let s3_requests = u.puts * self.put + u.gets * self.get;
        let broker = broker_hours * self.broker_hour;
        CostBreakdown {
            ec2,
            lambda_compute,
            lambda_requests,
            step_functions,
            s3_requests,
            broker,
            total: ec2 + lambda_compute + lambda_requests + step_functions + s3_requests + broker,
            quantities: CostQuantities {
                instance_hours,
                gb_seconds: u.gb_seconds,
                lambda_requests: u.requests.round() as u64,
                state_transitions: u.transitions.round() as u64,
                s3_put_requests: u.puts.round() as u64,
                s3_get_requests: u.gets.round() as u64,
                broker_hours,
            },
        }
    }
}

/// EC2 seconds billed for `wall_time_s`: whole seconds, at least [`EC2_MINIMUM_S`].
pub fn ec2_billed_seconds(wall_time_s: f64) -> f64 {
    wall_time_s.max(0.0).ceil().max(EC2_MINIMUM_S)
}

/// What `run` cost, by the rules of this module.
pub fn run_cost(
    run: &DeploymentRun,
    config: &StudyConfig,
    prices: &Prices,
) -> Result<CostBreakdown, StudyError> {
    if !(run.wall_time_s.is_finite() && run.wall_time_s >= 0.0) {
        return Err(StudyError::missing(format!(
            "run {}: wall time {} s is not a duration",
            run.name, run.wall_time_s
        )));
    }
    let rates = Rates::new(config, prices)?;
    let billed_hours = ec2_billed_seconds(run.wall_time_s) / 3600.0;
    let (mut ec2, mut instance_hours) = (0.0, 0.0);
    let mut usage = Usage::default();
    for peer in &run.peers {
        ec2 += prices.instance(&peer.instance_type)?.value * billed_hours;
        instance_hours += billed_hours;
        for m in &peer.rounds {
            usage.add_round(m);
        }
    }
    Ok(rates.breakdown(ec2, instance_hours, run.wall_time_s / 3600.0, &usage))
}

/// Dollars spent by the end of each round, for plotting accuracy against dollars.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostPoint {
    /// Round index (0-based).
    pub round: usize,
    /// Training time so far: Σ of the group's round times (slowest peer, without
    /// evaluation) up to and including this round.
    pub time_s: f64,
    /// Dollars so far: EC2 and the broker prorated over `time_s` (no minimum), plus the
    /// usage of every round up to this one.
    pub dollars: f64,
}

/// The run's cumulative cost after each round.
pub fn cost_curve(
    run: &DeploymentRun,
    config: &StudyConfig,
    prices: &Prices,
) -> Result<Vec<CostPoint>, StudyError> {
    let rates = Rates::new(config, prices)?;
    let mut hourly = 0.0;
    for peer in &run.peers {
        hourly += prices.instance(&peer.instance_type)?.value;
    }
    let mut usage = Usage::default();
    let mut time_s = 0.0;
    let mut out = Vec::new();
    for (round, t) in run.round_times().into_iter().enumerate() {
        time_s += t;
        for peer in &run.peers {
            if let Some(m) = peer.rounds.get(round) {
                usage.add_round(m);
            }
        }
        let hours = time_s / 3600.0;
        let b = rates.breakdown(
            hourly * hours,
            hours * run.peers.len() as f64,
            hours,
            &usage,
        );
        out.push(CostPoint {
            round,
            time_s,
            dollars: b.total,
        });
    }
    Ok(out)
}

/// The billing rules, one sentence each, for the report.
pub fn rules() -> Vec<String> {
    [
        "EC2: every peer is billed for the run's wall time at its instance type's on-demand \
         hourly price, per second (rounded up) with a 60 s minimum.",
        "Lambda compute: the sum over successful invocations of billed_ms/1000 × memory_mb/1024 \
         GB-seconds, at the GB-second price of the configured Lambda architecture.",
        "Lambda requests: one request per attempt of every successful invocation.",
        "Step Functions: the state transitions the peers recorded × the Standard \
         per-transition price.",
        "S3: per round of a peer that offloaded, 1 PUT (weights); per invocation 1 GET of the \
         weights (only when the function loaded them), 1 GET of the batch, 1 PUT of the \
         gradient and 1 GET of the gradient by the peer. DELETEs are free; storage of objects \
         that live for seconds is not counted.",
        "Broker: the run's wall time × the Amazon MQ broker type's hourly price, prorated.",
        "Cost-against-time curves prorate EC2 and the broker over the training time so far \
         (no minimum) and add the usage of the rounds so far.",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}
