//! The typed configuration of a peer and of a run of several peers on one machine. The
//! `peerless` binary builds it once from its flags (and `peerless study` from its study
//! file), and the runtime takes nothing else: closed sets are enums, durations are
//! [`Duration`]s, and every range is checked here, before any data is loaded or any
//! connection made.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use peerless_comm::{Aggregation, CodecSpec, Exchange, OnTimeout, RunId};
use peerless_data::{DatasetKind, Partition, StoreOptions};
use peerless_models::optim::{OptimizerConfig, OptimizerKind};
use peerless_models::schedule::{EarlyStopping, ReduceLrOnPlateau};
use peerless_models::{Architecture, Loss, ModelError};
use serde::{Deserialize, Serialize};

use crate::attack::Attack;
use crate::offload::OffloadPolicy;

/// A configuration that cannot run, with a message naming the flag to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        ConfigError(message.into())
    }
}

/// The longest duration any timeout takes (one week): beyond it a deadline would overflow
/// the clock, and no round or call is meant to wait that long.
pub const MAX_DURATION_S: f64 = 7.0 * 24.0 * 3600.0;

/// Seconds from a flag as a [`Duration`]: positive, finite and at most [`MAX_DURATION_S`].
pub fn duration_secs(flag: &str, secs: f64) -> Result<Duration, ConfigError> {
    if !(secs > 0.0 && secs <= MAX_DURATION_S) {
        return Err(ConfigError(format!(
            "{flag} must be a positive number of seconds up to {MAX_DURATION_S} (one week), \
             got {secs:?}"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The most workers the in-process function pool starts (one thread and runtime each).
pub const MAX_POOL_WORKERS: usize = 64;

/// Where a peer's batches may run besides its own CPU (`--serverless`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerlessMode {
    /// Every batch on the peer (the architecture without serverless).
    #[default]
    None,
    /// An in-process pool running the compute_gradient handler (no cloud needed).
    Local,
    /// AWS Lambda: one invocation per batch.
    Lambda,
    /// AWS Step Functions: one execution per round (`peerless stepfn generate`).
    Stepfn,
}

impl ServerlessMode {
    /// Every mode, in the order help texts list them.
    pub const ALL: [ServerlessMode; 4] = [
        ServerlessMode::None,
        ServerlessMode::Local,
        ServerlessMode::Lambda,
        ServerlessMode::Stepfn,
    ];

    /// The flag value, as metrics record it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Local => "local",
            Self::Lambda => "lambda",
            Self::Stepfn => "stepfn",
        }
    }
}

impl std::fmt::Display for ServerlessMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServerlessMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("expected none, local, lambda or stepfn, got {s:?}"))
    }
}

/// What a round does with a batch whose function failed for good
/// (`--on-function-failure`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFunctionFailure {
    /// Fail the round with the function's error.
    #[default]
    Fail,
    /// Compute the batch on the peer instead.
    Local,
}

impl FromStr for OnFunctionFailure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail" => Ok(OnFunctionFailure::Fail),
            "local" => Ok(OnFunctionFailure::Local),
            _ => Err(format!("expected `fail` or `local`, got {s:?}")),
        }
    }
}

/// The model, optimizer and schedule: identical on every peer of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingConfig {
    pub model: Architecture,
    /// Images per batch (when the split has no batch objects).
    pub batch_size: u32,
    pub optimizer: OptimizerKind,
    pub loss: Loss,
    pub lr: f32,
    /// Momentum for sgd and rmsprop (`None`: PyTorch's default).
    pub momentum: Option<f32>,
    /// Weight decay (`None`: PyTorch's default).
    pub weight_decay: Option<f32>,
    /// Passes over the training data.
    pub epochs: u32,
    /// Seed of weights, shuffling, augmentation and compression.
    pub seed: u64,
    /// Early stopping: evaluations (see [`ExchangeConfig::eval_every`]) without a better
    /// validation loss before stopping.
    pub patience: u32,
    /// ReduceLROnPlateau: evaluations without improvement before cutting the rate.
    pub plateau_patience: u32,
    /// ReduceLROnPlateau: the factor applied to the learning rate.
    pub plateau_factor: f32,
    /// ReduceLROnPlateau: the learning rate's lower bound.
    pub min_lr: f32,
}

impl Default for TrainingConfig {
    /// The flags' defaults: the original study's settings on the small CNN.
    fn default() -> Self {
        TrainingConfig {
            model: Architecture::TinyCnn,
            batch_size: 64,
            optimizer: OptimizerKind::Sgd,
            loss: Loss::CrossEntropy,
            lr: 0.02,
            momentum: None,
            weight_decay: None,
            epochs: 10,
            seed: 1234,
            patience: 10,
            plateau_patience: 5,
            plateau_factor: 0.1,
            min_lr: 1e-6,
        }
    }
}

impl TrainingConfig {
    /// The optimizer options these settings ask for.
    pub fn optimizer_config(&self) -> OptimizerConfig {
        OptimizerConfig {
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            ..Default::default()
        }
    }

    /// The learning-rate schedule and early stopping these settings ask for, both stepped
    /// with the validation loss.
    pub fn schedule(&self) -> Result<(ReduceLrOnPlateau, EarlyStopping), ModelError> {
        let plateau = ReduceLrOnPlateau::new(
            self.lr,
            self.plateau_factor,
            self.plateau_patience as usize,
            self.min_lr,
        )?;
        Ok((plateau, EarlyStopping::new(self.patience as usize, 0.0)))
    }
}

/// Serverless gradient offload: where batches may run besides the peer, and how calls
/// are bounded and retried.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerlessConfig {
    pub mode: ServerlessMode,
    /// Share of each round's batches offloaded (`None`: all of them when `mode` is not
    /// `None`).
    pub offload: Option<OffloadPolicy>,
    /// Calls in flight at once (`None`: the cores for the local pool, 64 otherwise).
    pub concurrency: Option<usize>,
    /// Retries of a failed or timed-out call.
    pub retries: u32,
    /// How long one call may take before it counts as failed.
    pub timeout: Duration,
    pub on_failure: OnFunctionFailure,
    /// Function memory in MB, for billing when the platform does not report it.
    pub memory_mb: u32,
    /// Name or ARN of the deployed compute_gradient function (`Lambda`).
    pub function: String,
    /// Custom Lambda endpoint (an emulator).
    pub lambda_endpoint: Option<String>,
    /// The state machine (`Stepfn`).
    pub state_machine_arn: Option<String>,
    /// Custom Step Functions endpoint.
    pub sfn_endpoint: Option<String>,
}

impl Default for ServerlessConfig {
    fn default() -> Self {
        ServerlessConfig {
            mode: ServerlessMode::None,
            offload: None,
            concurrency: None,
            retries: 2,
            timeout: Duration::from_secs(300),
            on_failure: OnFunctionFailure::Fail,
            memory_mb: 2048,
            function: "peerless-compute-gradient".into(),
            lambda_endpoint: None,
            state_machine_arn: None,
            sfn_endpoint: None,
        }
    }
}

impl ServerlessConfig {
    /// Calls a peer runs at once: `concurrency`, else every core for the local pool (up
    /// to [`MAX_POOL_WORKERS`]) and 64 for the cloud's functions.
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or_else(|| match self.mode {
            ServerlessMode::Local => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_POOL_WORKERS),
            _ => 64,
        })
    }

    /// Functions of one peer that run in this process (the local pool's workers, each
    /// with a warm model of its own); 0 for functions in the cloud or none.
    pub fn local_workers(&self) -> usize {
        match self.mode {
            ServerlessMode::Local => self.concurrency().max(1),
            _ => 0,
        }
    }

    /// Checks what needs no store or service, so mistakes show before any data is split
    /// or loaded.
    pub fn validate(&self, store: &str) -> Result<(), ConfigError> {
        if self.mode == ServerlessMode::None {
            if self.offload.is_some() {
                return Err(ConfigError::new(
                    "--offload needs --serverless local, lambda or stepfn",
                ));
            }
            return Ok(());
        }
        if self.concurrency == Some(0) {
            return Err(ConfigError::new(
                "--function-concurrency must be at least 1",
            ));
        }
        if self.mode == ServerlessMode::Local
            && self.concurrency.is_some_and(|n| n > MAX_POOL_WORKERS)
        {
            return Err(ConfigError(format!(
                "--serverless local runs at most {MAX_POOL_WORKERS} functions at once in this \
                 process (one thread each); lower --function-concurrency, or use lambda"
            )));
        }
        if !(128..=10240).contains(&self.memory_mb) {
            return Err(ConfigError(format!(
                "--function-memory-mb must be within Lambda's 128..=10240, got {}",
                self.memory_mb
            )));
        }
        if self.mode != ServerlessMode::Local && !store.starts_with("s3://") {
            return Err(ConfigError(format!(
                "--serverless {} runs functions in AWS, which cannot read the local store \
                 {store}: use an s3:// --store",
                self.mode
            )));
        }
        if self.mode == ServerlessMode::Stepfn && self.state_machine_arn.is_none() {
            return Err(ConfigError::new(
                "--serverless stepfn needs --state-machine-arn ARN (a state machine made from \
                 `peerless stepfn generate`)",
            ));
        }
        Ok(())
    }

    /// The offload policy in force: the configured one, or everything.
    pub fn policy(&self) -> OffloadPolicy {
        self.offload.unwrap_or(OffloadPolicy::Fixed(1.0))
    }
}

/// How peers exchange gradients and evaluate, and where their data is: identical on every
/// peer of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeConfig {
    /// The store holding the split (a directory, `file:///dir` or `s3://bucket/prefix`).
    pub store: String,
    pub store_options: StoreOptions,
    /// RabbitMQ URL; `None` exchanges in-process (peers of one process).
    pub broker: Option<String>,
    pub codec: CodecSpec,
    /// Evaluate on the schedule of `eval_every`: validation loss over every peer's
    /// validation shard (drives the schedule and early stopping identically on all peers)
    /// and test accuracy.
    pub evaluation: bool,
    /// Rounds between evaluations (`--eval-every`): after round r when `(r + 1) % k == 0`,
    /// and always after the last round. `None`: once per epoch.
    pub eval_every: Option<u32>,
    /// Evaluate on at most this many images of each set.
    pub eval_limit: Option<usize>,
    /// Rounds per pass over the shard; 1 is the original (one step per epoch).
    pub rounds_per_epoch: u32,
    /// How long a round waits for the other peers.
    pub round_timeout: Duration,
    pub on_timeout: OnTimeout,
    /// Largest message payload; bigger gradients travel in chunks.
    pub max_chunk_bytes: usize,
    pub serverless: ServerlessConfig,
    /// Rounds between checkpoints (`--checkpoint-every`; 0 never). `None`: once per
    /// epoch when training over a broker (peers can crash), never in-process.
    pub checkpoint_every: Option<u32>,
    /// Whether a starting peer continues from its checkpoints (`--resume`).
    pub resume: Resume,
    /// Keys folder (`--keys`): messages are signed and checked. `None`: unauthenticated,
    /// except that [`crate::local::run_local`] makes keys for its peers.
    pub keys: Option<PathBuf>,
    /// With `--on-timeout partial`, rounds a peer may miss in a row before the others stop
    /// waiting for it (`--evict-after`; 0 always waits).
    pub evict_after: u32,
    /// How long a lost broker connection is retried before the peer fails.
    pub reconnect_timeout: Duration,
    /// How each round combines the peers' gradients (`--aggregation`): the mean, or a
    /// robust rule that bad gradients cannot drag far.
    pub aggregation: Aggregation,
    /// Each gradient is scaled to at most this L2 norm before aggregating
    /// (`--clip-norm`), bounding what any one peer can contribute.
    pub clip_norm: Option<f32>,
    /// How gradients travel between peers (`--exchange`): whole gradients to every peer,
    /// or shards to their owners (traffic per peer independent of the number of peers).
    pub exchange: Exchange,
}

/// Whether a peer resumes from its checkpoints (`--resume auto|never`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resume {
    /// Continue from the newest checkpoint round every peer holds, if any.
    #[default]
    Auto,
    /// Start from round 0 (the run's earlier checkpoints are left alone).
    Never,
}

impl FromStr for Resume {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Resume::Auto),
            "never" => Ok(Resume::Never),
            _ => Err(format!("expected `auto` or `never`, got {s:?}")),
        }
    }
}

impl ExchangeConfig {
    /// Rounds between evaluations for a run of `rounds_per_epoch` rounds an epoch (the
    /// rounds a pass over the shard actually takes).
    pub fn eval_interval(&self, rounds_per_epoch: u64) -> u64 {
        self.eval_every.map_or(rounds_per_epoch, u64::from).max(1)
    }

    /// Whether round `round` (0-based) of `total_rounds` ends with an evaluation: every
    /// [`ExchangeConfig::eval_interval`] rounds and after the last round, so the final
    /// accuracy is always measured. Never without `evaluation`.
    pub fn evaluates_after(&self, round: u64, rounds_per_epoch: u64, total_rounds: u64) -> bool {
        self.evaluation
            && ((round + 1).is_multiple_of(self.eval_interval(rounds_per_epoch))
                || round + 1 >= total_rounds)
    }

    /// Rounds between checkpoints for a run of `rounds_per_epoch` rounds an epoch (0: none).
    pub fn checkpoint_interval(&self) -> u32 {
        match self.checkpoint_every {
            Some(k) => k,
            None if self.broker.is_some() => self.rounds_per_epoch,
            None => 0,
        }
    }
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            store: "peerless-store".into(),
            store_options: StoreOptions::default(),
            broker: None,
            codec: CodecSpec::None,
            evaluation: false,
            eval_every: None,
            eval_limit: None,
            rounds_per_epoch: 1,
            round_timeout: Duration::from_secs(600),
            on_timeout: OnTimeout::Fail,
            max_chunk_bytes: peerless_comm::wire::DEFAULT_MAX_CHUNK_BYTES,
            serverless: ServerlessConfig::default(),
            checkpoint_every: None,
            resume: Resume::Auto,
            keys: None,
            evict_after: 2,
            reconnect_timeout: Duration::from_secs(120),
            aggregation: Aggregation::Mean,
            clip_norm: None,
            exchange: Exchange::AllToAll,
        }
    }
}

impl ExchangeConfig {
    /// Checks the settings every peer shares.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rounds_per_epoch == 0 {
            return Err(ConfigError::new("--rounds-per-epoch must be at least 1"));
        }
        if self.eval_every == Some(0) {
            return Err(ConfigError::new(
                "--eval-every must be at least 1 (rounds between evaluations)",
            ));
        }
        if self.max_chunk_bytes == 0 {
            return Err(ConfigError::new("the chunk size must be positive"));
        }
        if let Some(c) = self.clip_norm {
            peerless_comm::aggregate::check_clip_norm(c)
                .map_err(|e| ConfigError(format!("--clip-norm: {e}")))?;
            if self.exchange == Exchange::Sharded {
                return Err(ConfigError::new(
                    "--clip-norm needs each peer's whole gradient in one place: use it with \
                     --exchange all-to-all",
                ));
            }
        }
        self.serverless.validate(&self.store)
    }
}

/// A peer's compute capability, enforced on its own batches (not on its functions), so a
/// study can have slow and fast peers on one machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Capability {
    /// Pace relative to this machine, in (0, 1]: a CPU duty cycle.
    pub speed: f64,
    /// Threads of the peer's own batches (`None`: every core).
    pub threads: Option<usize>,
}

impl Default for Capability {
    fn default() -> Self {
        Capability {
            speed: 1.0,
            threads: None,
        }
    }
}

impl Capability {
    fn validate(&self, rank: u32) -> Result<(), ConfigError> {
        if self.threads == Some(0) {
            return Err(ConfigError(format!(
                "peer {rank} has 0 threads; give at least 1"
            )));
        }
        let speed = self.speed;
        if !(speed > 0.0 && speed <= 1.0) {
            return Err(ConfigError(format!(
                "the speed of peer {rank} is {speed:?}; it must be in (0, 1]"
            )));
        }
        Ok(())
    }
}

/// Everything one peer needs; identical on every peer of a run except `rank`,
/// `metrics_out`, `capability` and `attack`. Built by [`NodeConfig::new`], which validates it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    pub rank: u32,
    pub size: u32,
    pub run_id: RunId,
    pub training: TrainingConfig,
    pub exchange: ExchangeConfig,
    /// Square input size fed to the model (`None`: the model's study size).
    pub resize: Option<usize>,
    /// One JSON line of [`crate::metrics::RoundMetrics`] per round.
    pub metrics_out: Option<PathBuf>,
    pub capability: Capability,
    /// How this peer corrupts its own gradient (`--attack`; tests and studies only).
    pub attack: Attack,
}

impl NodeConfig {
    /// A validated configuration for `rank` of `size`.
    pub fn new(
        rank: u32,
        size: u32,
        run_id: RunId,
        training: TrainingConfig,
        exchange: ExchangeConfig,
    ) -> Result<Self, ConfigError> {
        let config = NodeConfig {
            rank,
            size,
            run_id,
            training,
            exchange,
            resize: None,
            metrics_out: None,
            capability: Capability::default(),
            attack: Attack::None,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting; [`crate::Node::prepare`] calls it again, so a configuration
    /// changed after [`NodeConfig::new`] is checked too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.size == 0 {
            return Err(ConfigError::new("a run needs at least one peer"));
        }
        if self.rank >= self.size {
            return Err(ConfigError(format!(
                "--rank {} must be below --size {}",
                self.rank, self.size
            )));
        }
        if self.training.batch_size == 0 || self.training.epochs == 0 {
            return Err(ConfigError::new(
                "--batch-size and --epochs must be at least 1",
            ));
        }
        if self.resize == Some(0) {
            return Err(ConfigError::new("--resize must be at least 1 pixel"));
        }
        self.capability.validate(self.rank)?;
        self.exchange.validate()
    }

    /// With the peer's capability.
    pub fn with_capability(mut self, capability: Capability) -> Result<Self, ConfigError> {
        capability.validate(self.rank)?;
        self.capability = capability;
        Ok(self)
    }
}

/// Where a local run's split comes from when the store has none yet.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitSource {
    pub dataset: DatasetKind,
    /// The dataset's folder (`None`: its usual place).
    pub data_dir: Option<PathBuf>,
    /// Use only the first N training images.
    pub limit: Option<usize>,
    /// Batch objects per peer (for functions).
    pub batches: Option<usize>,
    pub partition: Partition,
}

impl Default for SplitSource {
    fn default() -> Self {
        SplitSource {
            dataset: DatasetKind::FashionMnist,
            data_dir: None,
            limit: None,
            batches: None,
            partition: Partition::Iid,
        }
    }
}

/// N peers on this machine, one thread each (`peerless run`, and each architecture of
/// `peerless study`).
#[derive(Clone, Debug, PartialEq)]
pub struct LocalRunConfig {
    pub peers: u32,
    /// The run's name (`None`: a fresh random id).
    pub run_id: Option<String>,
    /// Each peer writes `peer-<rank>.jsonl` here.
    pub metrics_dir: PathBuf,
    pub split: SplitSource,
    pub resize: Option<usize>,
    pub training: TrainingConfig,
    pub exchange: ExchangeConfig,
    /// By rank; missing ranks get the default (full speed, every core).
    pub capabilities: Vec<Capability>,
    /// Each peer's attack, by rank; missing ranks are honest.
    pub attacks: Vec<Attack>,
}

impl LocalRunConfig {
    /// The validated configuration of every peer.
    pub fn node_configs(&self) -> Result<Vec<NodeConfig>, ConfigError> {
        if self.capabilities.len() > self.peers as usize {
            return Err(ConfigError(format!(
                "--speeds or --threads lists {} peers but --peers is {}",
                self.capabilities.len(),
                self.peers
            )));
        }
        if self.attacks.len() > self.peers as usize {
            return Err(ConfigError(format!(
                "--attacks lists {} peers but --peers is {}",
                self.attacks.len(),
                self.peers
            )));
        }
        if self.split.limit.is_some_and(|l| l < 2) {
            return Err(ConfigError::new("--limit must be at least 2"));
        }
        let run_id = match &self.run_id {
            Some(name) => RunId::from_name(name),
            None => RunId::random(),
        };
        (0..self.peers)
            .map(|rank| {
                let mut config = NodeConfig::new(
                    rank,
                    self.peers,
                    run_id,
                    self.training.clone(),
                    self.exchange.clone(),
                )?;
                config.resize = self.resize;
                config.metrics_out = Some(self.metrics_dir.join(format!("peer-{rank}.jsonl")));
                let capability = self
                    .capabilities
                    .get(rank as usize)
                    .copied()
                    .unwrap_or_default();
                config.attack = self.attacks.get(rank as usize).copied().unwrap_or_default();
                config.with_capability(capability)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_parses_from_its_name() {
        for m in ServerlessMode::ALL {
            assert_eq!(m.name().parse::<ServerlessMode>(), Ok(m));
        }
        assert!("aws".parse::<ServerlessMode>().is_err());
        assert_eq!("local".parse(), Ok(OnFunctionFailure::Local));
        assert!("retry".parse::<OnFunctionFailure>().is_err());
    }

    #[test]
    fn durations_beyond_a_week_or_not_positive_are_refused() {
        assert_eq!(
            duration_secs("--round-timeout", 1.5),
            Ok(Duration::from_millis(1500))
        );
        for bad in [0.0, -1.0, 1e20, f64::INFINITY, f64::NAN] {
            let e = duration_secs("--round-timeout", bad).unwrap_err();
            assert!(e.0.contains("--round-timeout"), "{e}");
        }
    }

    #[test]
    fn node_configs_check_ranks_speeds_and_serverless_settings() {
        let t = TrainingConfig::default;
        let x = ExchangeConfig::default;
        let id = RunId::from_name("t");
        assert!(NodeConfig::new(1, 2, id, t(), x()).is_ok());
        let e = NodeConfig::new(2, 2, id, t(), x()).unwrap_err();
        assert!(e.0.contains("below --size 2"), "{e}");
        let slow = Capability {
            speed: 1.5,
            threads: None,
        };
        let e = NodeConfig::new(0, 2, id, t(), x())
            .unwrap()
            .with_capability(slow)
            .unwrap_err();
        assert!(e.0.contains("(0, 1]"), "{e}");
        let mut lambda = x();
        lambda.serverless.mode = ServerlessMode::Lambda;
        let e = NodeConfig::new(0, 1, id, t(), lambda).unwrap_err();
        assert!(e.0.contains("use an s3:// --store"), "{e}");
        let mut offload = x();
        offload.serverless.offload = Some(OffloadPolicy::Auto);
        let e = NodeConfig::new(0, 1, id, t(), offload).unwrap_err();
        assert!(e.0.contains("--offload needs --serverless"), "{e}");
    }

    #[test]
    fn evaluation_runs_once_per_epoch_by_default_and_always_after_the_last_round() {
        let evaluated = |x: &ExchangeConfig, per_epoch, total| -> Vec<u64> {
            (0..total)
                .filter(|&r| x.evaluates_after(r, per_epoch, total))
                .collect()
        };
        let mut x = ExchangeConfig {
            evaluation: true,
            ..ExchangeConfig::default()
        };
        assert_eq!(evaluated(&x, 3, 6), vec![2, 5]);
        x.eval_every = Some(1);
        assert_eq!(evaluated(&x, 3, 6), (0..6).collect::<Vec<_>>());
        x.eval_every = Some(4);
        assert_eq!(evaluated(&x, 3, 6), vec![3, 5], "the last round always");
        x.evaluation = false;
        assert!(evaluated(&x, 3, 6).is_empty());
        x.eval_every = Some(0);
        let e = x.validate().unwrap_err();
        assert!(e.0.contains("--eval-every"), "{e}");
    }

    #[test]
    fn local_runs_give_each_peer_its_metrics_file_and_capability() {
        let run = LocalRunConfig {
            peers: 3,
            run_id: Some("r".into()),
            metrics_dir: PathBuf::from("m"),
            split: SplitSource::default(),
            resize: None,
            training: TrainingConfig::default(),
            exchange: ExchangeConfig::default(),
            capabilities: vec![Capability {
                speed: 0.5,
                threads: Some(1),
            }],
            attacks: vec![Attack::None, Attack::SignFlip],
        };
        let nodes = run.node_configs().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[2].metrics_out, Some(PathBuf::from("m/peer-2.jsonl")));
        assert_eq!(nodes[0].capability.speed, 0.5);
        assert_eq!(nodes[1].capability, Capability::default());
        assert_eq!(nodes[1].attack, Attack::SignFlip);
        assert_eq!(nodes[2].attack, Attack::None);
        assert!(nodes.iter().all(|n| n.run_id == RunId::from_name("r")));
    }
}
