//! The study (issue 6): the same training job under three deployments (`instance`,
//! `serverless`, `hybrid`), compared on time, dollars and accuracy. The peer runtime
//! (`peerless_runtime::run_local`) runs the job; this module does everything that works from metrics alone: the study's config
//! file, the prices file, the cost model, the projection to cloud scale and the report.
//!
//! The runner's order of calls:
//! 1. [`StudyConfig::load`] (parses and validates), [`Prices::load`] of
//!    [`StudyConfig::prices_path`], [`Prices::check_covers`]: all before any training;
//! 2. per deployment, run the peers and read their metrics with
//!    [`DeploymentRun::load_dir`] (or build [`DeploymentRun`] from memory);
//! 3. [`project`] (calibration, projection grid, validation), then [`write_report`].

pub mod config;
pub mod cost;
pub mod error;
pub mod prices;
pub mod report;
pub mod runs;
pub mod simulate;

pub use config::{
    Aggregation, Architecture, Attack, DatasetKind, Deployment, LambdaArch, PeerSpec,
    ProjectionConfig, ServerlessMode, StudyConfig, StudyRun,
};
pub use cost::{CostBreakdown, CostPoint, CostQuantities, cost_curve, run_cost};
pub use error::StudyError;
pub use prices::{Day, InstancePrice, Price, Prices, StalePrice};
pub use report::{Headline, ReportFiles, SECTIONS, TimeSplit, stale_prices_note, write_report};
pub use runs::{DeploymentRun, PeerRun, read_metrics_jsonl};
pub use simulate::{
    Calibration, ExchangeFit, ExchangePoint, ExchangeSetup, ExchangeTraffic, FunctionCalibration,
    Projection, ProjectionPoint, RoundPrediction, Scenario, Validation, assumptions, calibrate,
    predict_mean_round_s, predict_round, project, validate_against,
};
