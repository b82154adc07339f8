//! The study's TOML file (`peerless study --config study.toml`): one training job, the
//! deployments to run it under, the peers' capabilities and the projection grid. Every
//! table refuses unknown keys, and [`StudyConfig::validate`] checks every range before any
//! training starts, naming the offending key.
//!
//! ```toml
//! name = "tiny-fashion"
//! model = "tiny_cnn"              # tiny_cnn | squeezenet1_1 | mobilenet_v3_small | vgg11
//!                                 # or models = [...]: one study per model
//! dataset = "fashion-mnist"       # mnist | fashion-mnist | cifar10 | synthetic
//! batch_size = 64
//! batches_per_peer = 8
//! rounds_per_epoch = 4
//! epochs = 2
//! lr = 0.05
//! [[peer]]
//! speed = 1.0
//! [[peer]]
//! speed = 0.5
//! ```
//!
//! Every other key has a default; `bench/study/default.toml` documents them all.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use peerless_comm::Aggregation;
pub use peerless_data::DatasetKind;
pub use peerless_models::Architecture;
pub use peerless_runtime::Attack;
use peerless_runtime::OffloadPolicy;
pub use peerless_runtime::ServerlessMode;

use super::error::StudyError;

/// How the peers compute their gradients: the three deployments the study compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Deployment {
    /// Every peer computes all its batches itself.
    Instance,
    /// Every peer offloads every batch to functions.
    Serverless,
    /// Slow peers offload just enough batches to keep up (`--offload auto`).
    Hybrid,
}

impl Deployment {
    /// All three, in the order the report lists them.
    pub const ALL: [Deployment; 3] = [
        Deployment::Instance,
        Deployment::Serverless,
        Deployment::Hybrid,
    ];

    /// The name used in config files, metrics directories and the report.
    pub fn name(self) -> &'static str {
        match self {
            Deployment::Instance => "instance",
            Deployment::Serverless => "serverless",
            Deployment::Hybrid => "hybrid",
        }
    }

    /// The peers' offload policy in this deployment (`None`: no functions at all).
    pub fn offload(self) -> Option<OffloadPolicy> {
        match self {
            Deployment::Instance => None,
            Deployment::Serverless => Some(OffloadPolicy::Fixed(1.0)),
            Deployment::Hybrid => Some(OffloadPolicy::Auto),
        }
    }

    /// The deployment called `name`, if any.
    pub fn from_name(name: &str) -> Option<Deployment> {
        Deployment::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The functions' instruction set, which picks the Lambda price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LambdaArch {
    #[default]
    X86_64,
    Arm64,
}

impl LambdaArch {
    /// The name AWS uses.
    pub fn name(self) -> &'static str {
        match self {
            LambdaArch::X86_64 => "x86_64",
            LambdaArch::Arm64 => "arm64",
        }
    }
}

/// One peer's capability: how fast it computes and what it is billed as.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// Compute-speed factor in (0, 1]: 0.5 = the peer needs twice as long per batch.
    #[serde(default = "one")]
    pub speed: f64,
    /// Compute threads for this peer (default: the runner's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// EC2 type this peer is billed as (default: the top-level `instance_type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// How this peer corrupts its gradient (`none`, `sign-flip`, `scale:F`,
    /// `noise:SIGMA`, `nan`), to study robust aggregation.
    #[serde(default, skip_serializing_if = "is_honest")]
    pub attack: Attack,
}

fn is_honest(attack: &Attack) -> bool {
    !attack.is_active()
}

/// One training run of a study: a deployment under one aggregation, with or without the
/// configured attacks.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyRun {
    /// The run's name: the deployment's for its main run (so it is costed and
    /// projected), `<deployment>-<aggregation>` or `<deployment>-clean` for the others.
    pub name: String,
    pub deployment: Deployment,
    pub aggregation: Aggregation,
    /// Whether the `[[peer]]` attacks apply (the clean baseline runs without them).
    pub attacked: bool,
    /// How its peers exchange gradients.
    pub exchange: peerless_comm::Exchange,
}

/// The grid the scale projection covers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionConfig {
    /// Peer counts to project to.
    #[serde(default = "default_projection_peers")]
    pub peers: Vec<u32>,
    /// EC2 types the peers could run on (empty: the top-level `instance_type`).
    #[serde(default)]
    pub instance_types: Vec<String>,
    /// Lambda memory sizes to project (empty: the top-level `lambda_memory_mb`).
    #[serde(default = "default_projection_memory")]
    pub lambda_memory_mb: Vec<u32>,
    /// The account's concurrent-execution limit, shared by all peers' functions.
    #[serde(default = "default_concurrency_limit")]
    pub lambda_concurrency_limit: u32,
    /// vCPUs one gradient step can use: more Lambda memory buys CPU up to this many
    /// vCPUs (a step runs in at most two parts and kept 1.7-1.9 of 2 cores busy in
    /// bench/README.md), at most 6.
    #[serde(default = "default_useful_vcpus")]
    pub max_useful_vcpus: f64,
    /// Concurrent function calls per peer in the cloud (default: the study's
    /// `function_concurrency`): the local pool shares the study machine's memory and
    /// cores and may have to run fewer at once than Lambda would.
    #[serde(default)]
    pub function_concurrency: Option<usize>,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            peers: default_projection_peers(),
            instance_types: Vec::new(),
            lambda_memory_mb: default_projection_memory(),
            lambda_concurrency_limit: default_concurrency_limit(),
            max_useful_vcpus: default_useful_vcpus(),
            function_concurrency: None,
        }
    }
}

/// The whole study: one training job, the deployments to compare, the peers, the
/// resources they are billed as, and the projection grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// Names the study in the report.
    pub name: String,
    /// The model to train; give either `model` or `models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Architecture>,
    /// Several models: one study per model, each named `<name>-<model>` (see
    /// [`StudyConfig::per_model`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<Architecture>,
    /// The training data (`--dataset`).
    pub dataset: DatasetKind,
    /// Where the data set's files are (default: the runner's per-dataset default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Use only the first N training images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Samples per batch.
    pub batch_size: usize,
    /// Batches each peer computes (or offloads) per round.
    pub batches_per_peer: usize,
    /// Rounds (one gradient exchange and update each) per epoch.
    pub rounds_per_epoch: usize,
    pub epochs: usize,
    /// Learning rate of the peers' SGD.
    pub lr: f64,
    /// SGD momentum in [0, 1).
    #[serde(default)]
    pub momentum: f64,
    /// Seeds weights, shuffling and partitioning: the same seed gives every deployment
    /// the same start.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Evaluate (validation and test accuracy) once per epoch, or every `eval_every`
    /// rounds, and after the last round; off makes runs faster and the report shows loss
    /// only.
    #[serde(default = "yes")]
    pub evaluation: bool,
    /// Rounds between evaluations (default: once per epoch, `rounds_per_epoch`); the
    /// last round is always evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// Evaluate on at most this many images of each validation shard and of the test set.
    #[serde(default)]
    pub eval_limit: Option<usize>,
    /// The deployments to run, in this order (`architectures`, the key's earlier name, is
    /// read too).
    #[serde(default = "default_deployments", alias = "architectures")]
    pub deployments: Vec<Deployment>,
    /// Where offloaded batches run: local, lambda or stepfn.
    #[serde(default = "local_functions")]
    pub serverless: ServerlessMode,
    /// Concurrent function calls per peer.
    #[serde(default = "default_function_concurrency")]
    pub function_concurrency: usize,
    /// Memory of each function, MB (Lambda allows 128..=10240).
    #[serde(default = "default_lambda_memory")]
    pub lambda_memory_mb: u32,
    /// The functions' instruction set, which picks the Lambda price.
    #[serde(default)]
    pub lambda_architecture: LambdaArch,
    /// EC2 type every peer is billed as unless its `[[peer]]` table says otherwise.
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    /// Amazon MQ broker type the RabbitMQ broker is billed as.
    #[serde(default = "default_broker_type")]
    pub broker_type: String,
    /// Prices file: relative paths are tried against the config file's folder, then the
    /// working directory.
    #[serde(default = "default_prices")]
    pub prices: PathBuf,
    /// Object store for shards, weights and gradients (`s3://bucket/prefix` or a folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// RabbitMQ URL (`amqp://...`); without it the runner uses an in-process exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Lambda endpoint (an emulator) when `serverless = "lambda"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_endpoint: Option<String>,
    /// State machine when `serverless = "stepfn"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_machine_arn: Option<String>,
    /// How each round combines the peers' gradients: `mean`, `median` or
    /// `trimmed-mean:K`.
    #[serde(default)]
    pub aggregation: Aggregation,
    /// Further aggregations to compare: each deployment runs once more with each (runs
    /// named `<deployment>-<aggregation>`, reported but not costed or projected).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare_aggregations: Vec<Aggregation>,
    /// Each gradient is scaled to at most this L2 norm before aggregating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f32>,
    /// How gradients travel between peers: `all-to-all` or `sharded`.
    #[serde(default)]
    pub exchange: peerless_comm::Exchange,
    /// Further exchanges to measure: the first deployment runs once more with each (runs
    /// named `<deployment>-<exchange>`, reported but not costed); with a run of each
    /// exchange the projection fits the broker's throughput and a per-hop latency to both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare_exchanges: Vec<peerless_comm::Exchange>,
    /// One `[[peer]]` table per peer.
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerSpec>,
    /// The scale projection's grid.
    #[serde(default)]
    pub projection: ProjectionConfig,
    /// The file this config came from, for error messages and relative paths.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn default_seed() -> u64 {
    1234
}
fn default_deployments() -> Vec<Deployment> {
    Deployment::ALL.to_vec()
}
fn local_functions() -> ServerlessMode {
    ServerlessMode::Local
}
fn default_function_concurrency() -> usize {
    2
}
fn default_lambda_memory() -> u32 {
    2048
}
fn default_instance_type() -> String {
    "t3.medium".into()
}
fn default_broker_type() -> String {
    "mq.m5.large".into()
}
fn default_prices() -> PathBuf {
    PathBuf::from("bench/prices/aws-us-east-1.toml")
}
fn default_projection_peers() -> Vec<u32> {
    vec![4, 8, 16, 32, 64, 128, 256, 512]
}
fn default_projection_memory() -> Vec<u32> {
    vec![1024, 1769, 3008]
}
fn default_concurrency_limit() -> u32 {
    1000
}
fn default_useful_vcpus() -> f64 {
    2.0
}

/// Lambda's memory range, MB.
pub const LAMBDA_MEMORY_MB: std::ops::RangeInclusive<u32> = 128..=10240;

impl StudyConfig {
    /// Parses and validates a config held in memory (relative paths resolve against the
    /// working directory).
    pub fn from_toml_str(text: &str) -> Result<StudyConfig, StudyError> {
        Self::parse(text, None)
    }

    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<StudyConfig, StudyError> {
        let text = std::fs::read_to_string(path).map_err(|e| StudyError::io(path, e))?;
        Self::parse(&text, Some(path))
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<StudyConfig, StudyError> {
        let mut config: StudyConfig = toml::from_str(text).map_err(|e| StudyError::Parse {
            file: label(path),
            message: e.to_string(),
        })?;
        config.source = path.map(Path::to_path_buf);
        config.validate()?;
        Ok(config)
    }

    /// The config file's name for messages (`study config` when it came from a string).
    pub fn file_label(&self) -> String {
        label(self.source.as_deref())
    }

    /// Checks every value's range, naming the first offending key.
    pub fn validate(&self) -> Result<(), StudyError> {
        let file = self.file_label();
        let bad = |key: &str, message: String| Err(StudyError::invalid(&file, key, message));
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty".into());
        }
        match (self.model, self.models.is_empty()) {
            (None, true) => return bad("model", "is missing (or give `models`)".into()),
            (Some(_), false) => {
                return bad(
                    "models",
                    "cannot be combined with `model`: give one of them".into(),
                );
            }
            _ => {}
        }
        for (i, m) in self.models.iter().enumerate() {
            if self.models[..i].contains(m) {
                return bad(
                    &format!("models[{i}]"),
                    format!("lists {:?} twice", m.name()),
                );
            }
        }
        for (key, value) in [
            ("batch_size", self.batch_size),
            ("batches_per_peer", self.batches_per_peer),
            ("rounds_per_epoch", self.rounds_per_epoch),
            ("epochs", self.epochs),
            ("function_concurrency", self.function_concurrency),
        ] {
            if value < 1 {
                return bad(key, format!("must be at least 1, got {value}"));
            }
        }
        if self.limit == Some(0) {
            return bad("limit", "must be at least 1 when given, got 0".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("must be a positive number, got {}", self.lr));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return bad(
                "momentum",
                format!("must be in [0, 1), got {}", self.momentum),
            );
        }
        if self.deployments.is_empty() {
            return bad("deployments", "must name at least one deployment".into());
        }
        for (i, a) in self.deployments.iter().enumerate() {
            if self.deployments[..i].contains(a) {
                return bad(
                    &format!("deployments[{i}]"),
                    format!("lists {:?} twice", a.name()),
                );
            }
        }
        if !LAMBDA_MEMORY_MB.contains(&self.lambda_memory_mb) {
            return bad(
                "lambda_memory_mb",
                format!("must be in 128..=10240, got {}", self.lambda_memory_mb),
            );
        }
        if self.instance_type.trim().is_empty() {
            return bad("instance_type", "must not be empty".into());
        }
        if self.broker_type.trim().is_empty() {
            return bad("broker_type", "must not be empty".into());
        }
        if self.peers.is_empty() {
            return bad("peer", "needs at least one [[peer]] table".into());
        }
        if self.eval_every == Some(0) {
            return bad(
                "eval_every",
                "must be at least 1 (rounds between evaluations) when given, got 0".into(),
            );
        }
        if self.eval_every.is_some_and(|k| k > u32::MAX as usize) {
            return bad("eval_every", format!("must be at most {}", u32::MAX));
        }
        if self.eval_limit == Some(0) {
            return bad("eval_limit", "must be at least 1 when given, got 0".into());
        }
        for (i, p) in self.peers.iter().enumerate() {
            if !(p.speed.is_finite() && p.speed > 0.0 && p.speed <= 1.0) {
                return bad(
                    &format!("peer[{i}].speed"),
                    format!("must be in (0, 1], got {}", p.speed),
                );
            }
            if p.threads == Some(0) {
                return bad(
                    &format!("peer[{i}].threads"),
                    "must be at least 1 when given, got 0".into(),
                );
            }
            if p.instance_type
                .as_deref()
                .is_some_and(|t| t.trim().is_empty())
            {
                return bad(
                    &format!("peer[{i}].instance_type"),
                    "must not be empty".into(),
                );
            }
        }
        for (i, a) in self.compare_aggregations.iter().enumerate() {
            if *a == self.aggregation || self.compare_aggregations[..i].contains(a) {
                return bad(
                    &format!("compare_aggregations[{i}]"),
                    format!("lists {:?} twice (with `aggregation`)", a.to_string()),
                );
            }
        }
        for (i, x) in self.compare_exchanges.iter().enumerate() {
            if *x == self.exchange || self.compare_exchanges[..i].contains(x) {
                return bad(
                    &format!("compare_exchanges[{i}]"),
                    format!("lists {:?} twice (with `exchange`)", x.to_string()),
                );
            }
        }
        if let Some(c) = self.clip_norm
            && peerless_comm::aggregate::check_clip_norm(c).is_err()
        {
            return bad("clip_norm", format!("must be a finite number > 0, got {c}"));
        }
        if self.clip_norm.is_some()
            && (self.exchange == peerless_comm::Exchange::Sharded
                || self
                    .compare_exchanges
                    .contains(&peerless_comm::Exchange::Sharded))
        {
            return bad(
                "clip_norm",
                "needs each peer's whole gradient in one place: use exchange = \"all-to-all\""
                    .to_string(),
            );
        }
        if self.offloads() {
            if self.serverless == ServerlessMode::None {
                return bad(
                    "serverless",
                    "must be local, lambda or stepfn when a deployment offloads (serverless \
                     or hybrid); list only \"instance\" in deployments to run without \
                     functions"
                        .into(),
                );
            }
            if self.serverless == ServerlessMode::Stepfn && self.state_machine_arn.is_none() {
                return bad(
                    "state_machine_arn",
                    "is needed when serverless = \"stepfn\"".into(),
                );
            }
            if self.serverless != ServerlessMode::Local && self.store.is_none() {
                return bad(
                    "store",
                    format!(
                        "is needed when serverless = {:?}: the functions read batches and \
                         weights from it",
                        self.serverless.name()
                    ),
                );
            }
        }
        let p = &self.projection;
        if p.peers.is_empty() {
            return bad(
                "projection.peers",
                "must list at least one peer count".into(),
            );
        }
        for (i, &n) in p.peers.iter().enumerate() {
            if n < 1 {
                return bad(
                    &format!("projection.peers[{i}]"),
                    format!("must be at least 1, got {n}"),
                );
            }
        }
        for (i, t) in p.instance_types.iter().enumerate() {
            if t.trim().is_empty() {
                return bad(
                    &format!("projection.instance_types[{i}]"),
                    "must not be empty".into(),
                );
            }
        }
        for (i, m) in p.lambda_memory_mb.iter().enumerate() {
            if !LAMBDA_MEMORY_MB.contains(m) {
                return bad(
                    &format!("projection.lambda_memory_mb[{i}]"),
                    format!("must be in 128..=10240, got {m}"),
                );
            }
        }
        if !(p.max_useful_vcpus.is_finite()
            && p.max_useful_vcpus > 0.0
            && p.max_useful_vcpus <= 6.0)
        {
            return bad(
                "projection.max_useful_vcpus",
                format!("must be in (0, 6], got {}", p.max_useful_vcpus),
            );
        }
        if p.function_concurrency == Some(0) {
            return bad(
                "projection.function_concurrency",
                "must be at least 1, got 0".into(),
            );
        }
        if p.lambda_concurrency_limit < 1 {
            return bad(
                "projection.lambda_concurrency_limit",
                "must be at least 1, got 0".into(),
            );
        }
        Ok(())
    }

    /// One study per model: `[(model, config)]` where each config names exactly that
    /// model (`model = Some(..)`, `models` empty) and, for a `models` list, is named
    /// `<name>-<model>`.
    pub fn per_model(&self) -> Vec<(Architecture, StudyConfig)> {
        if let Some(model) = self.model {
            return vec![(model, self.clone())];
        }
        self.models
            .iter()
            .map(|&m| {
                let mut c = self.clone();
                c.name = format!("{}-{}", self.name, m.name());
                c.model = Some(m);
                c.models.clear();
                (m, c)
            })
            .collect()
    }

    /// Keeps only `models` of this config's models (`peerless study --models`), in the
    /// order given; a model the config does not name is refused.
    pub fn select_models(&mut self, models: &[Architecture]) -> Result<(), StudyError> {
        let named: Vec<Architecture> = self.model.into_iter().chain(self.models.clone()).collect();
        if let Some(m) = models.iter().find(|m| !named.contains(m)) {
            return Err(StudyError::invalid(
                &self.file_label(),
                "models",
                format!(
                    "does not name {} (asked for by --models); it names {}",
                    m.name(),
                    self.model_names()
                ),
            ));
        }
        if self.model.is_some() {
            return Ok(()); // one model, and it was asked for
        }
        self.models = models.iter().fold(Vec::new(), |mut chosen, &m| {
            if !chosen.contains(&m) {
                chosen.push(m);
            }
            chosen
        });
        Ok(())
    }

    /// The model names, for messages and the report (`a, b, c` for a list).
    pub fn model_names(&self) -> String {
        match self.model {
            Some(m) => m.name().to_string(),
            None => self
                .models
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Whether any peer attacks.
    pub fn attacks(&self) -> bool {
        self.peers.iter().any(|p| p.attack.is_active())
    }

    /// Every run of the study, in order: each deployment under `aggregation`, then under
    /// each of `compare_aggregations`, then the first deployment with each of
    /// `compare_exchanges`, then (when a peer attacks) the first deployment without
    /// attacks and with the mean, the clean baseline.
    pub fn runs(&self) -> Vec<StudyRun> {
        let attacked = self.attacks();
        let exchange = self.exchange;
        let mut runs = Vec::new();
        for &deployment in &self.deployments {
            runs.push(StudyRun {
                name: deployment.name().to_string(),
                deployment,
                aggregation: self.aggregation,
                attacked,
                exchange,
            });
            for &aggregation in &self.compare_aggregations {
                runs.push(StudyRun {
                    name: format!("{}-{}", deployment.name(), aggregation).replace(':', "-"),
                    deployment,
                    aggregation,
                    attacked,
                    exchange,
                });
            }
        }
        if let Some(&deployment) = self.deployments.first() {
            for &other in &self.compare_exchanges {
                runs.push(StudyRun {
                    name: format!("{}-{}", deployment.name(), other),
                    deployment,
                    aggregation: self.aggregation,
                    attacked,
                    exchange: other,
                });
            }
        }
        if let (true, Some(&deployment)) = (attacked, self.deployments.first()) {
            runs.push(StudyRun {
                name: format!("{}-clean", deployment.name()),
                deployment,
                aggregation: Aggregation::Mean,
                attacked: false,
                exchange,
            });
        }
        runs
    }

    /// The exchange of the run named `name` (the config's `exchange` for a name that is
    /// not one of [`StudyConfig::runs`]).
    pub fn exchange_of(&self, name: &str) -> peerless_comm::Exchange {
        self.runs()
            .into_iter()
            .find(|r| r.name == name)
            .map_or(self.exchange, |r| r.exchange)
    }

    /// The attacks as text for the report (`peer 3: scale:-10`), empty without any.
    pub fn attack_summary(&self) -> String {
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.attack.is_active())
            .map(|(i, p)| format!("peer {i}: {}", p.attack))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether any deployment calls functions.
    pub fn offloads(&self) -> bool {
        self.deployments.iter().any(|a| *a != Deployment::Instance)
    }

    /// Function calls a peer runs at once in the projection: `projection.function_concurrency`,
    /// else `function_concurrency`.
    pub fn projected_function_concurrency(&self) -> usize {
        self.projection
            .function_concurrency
            .unwrap_or(self.function_concurrency)
    }

    /// Batches each peer covers in one round (the most any round has): the shard's batch
    /// objects split over `rounds_per_epoch` rounds, as the peers split them.
    pub fn batches_per_round(&self) -> usize {
        self.batches_per_peer
            .div_ceil(self.rounds_per_epoch.clamp(1, self.batches_per_peer.max(1)))
    }

    /// Rounds between evaluations: `eval_every`, else once per epoch (the rounds an epoch
    /// actually takes: at most one per batch object).
    pub fn eval_interval(&self) -> usize {
        self.eval_every
            .unwrap_or_else(|| self.rounds_per_epoch.clamp(1, self.batches_per_peer.max(1)))
    }

    /// Rounds the runs are planned to take (early stopping may end them sooner).
    pub fn rounds(&self) -> u64 {
        (self.epochs as u64).saturating_mul(self.rounds_per_epoch as u64)
    }

    /// The EC2 type peer `rank` is billed as.
    pub fn peer_instance_type(&self, rank: usize) -> &str {
        self.peers
            .get(rank)
            .and_then(|p| p.instance_type.as_deref())
            .unwrap_or(&self.instance_type)
    }

    /// Peer `rank`'s speed factor (1.0 for ranks beyond the `[[peer]]` tables).
    pub fn peer_speed(&self, rank: usize) -> f64 {
        self.peers.get(rank).map_or(1.0, |p| p.speed)
    }

    /// The EC2 types the projection covers.
    pub fn projection_instance_types(&self) -> Vec<String> {
        if self.projection.instance_types.is_empty() {
            vec![self.instance_type.clone()]
        } else {
            self.projection.instance_types.clone()
        }
    }

    /// The Lambda memory sizes the projection covers.
    pub fn projection_memory_mb(&self) -> Vec<u32> {
        if self.projection.lambda_memory_mb.is_empty() {
            vec![self.lambda_memory_mb]
        } else {
            self.projection.lambda_memory_mb.clone()
        }
    }

    /// The prices file: an absolute path as is; a relative one against the config file's
    /// folder when it exists there, else against the working directory.
    pub fn prices_path(&self) -> PathBuf {
        if self.prices.is_absolute() {
            return self.prices.clone();
        }
        if let Some(dir) = self.source.as_deref().and_then(Path::parent) {
            let candidate = dir.join(&self.prices);
            if candidate.exists() {
                return candidate;
            }
        }
        self.prices.clone()
    }

    /// The config as TOML, for the report's setup section and the study's folder, with
    /// the password of every URL masked: reports and saved configs get shared, and the
    /// runner never reads them back.
    pub fn to_toml_string(&self) -> String {
        let mut shown = self.clone();
        let mask = |url: &mut Option<String>| {
            if let Some(url) = url {
                *url = peerless_comm::mask_password(url);
            }
        };
        mask(&mut shown.broker);
        mask(&mut shown.store);
        mask(&mut shown.lambda_endpoint);
        toml::to_string(&shown).unwrap_or_else(|e| format!("# not representable as TOML: {e}"))
    }
}

fn label(path: Option<&Path>) -> String {
    path.map_or_else(|| "study config".to_string(), |p| p.display().to_string())
}
