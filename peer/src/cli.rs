//! The command line: one source of truth for every option. Each flag can also come from the
//! environment (`PEERLESS_<FLAG>`) or from a TOML config file (`--config FILE`, keys named
//! like the long flags); see `config.rs` for the precedence.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use peerless_comm::{Aggregation, OnTimeout};
use peerless_data::{DatasetKind, Partition, S3Options, StoreOptions};
use peerless_lambda::OnTaskFailure;
use peerless_models::optim::OptimizerKind;
use peerless_models::{Architecture, DeviceChoice, Loss};
use peerless_runtime::config::duration_secs;
use peerless_runtime::{
    Attack, Capability, ExchangeConfig, LocalRunConfig, OffloadPolicy, OnFunctionFailure, Resume,
    ServerlessConfig, ServerlessMode, SplitSource, TrainingConfig,
};

/// Peer-to-peer data-parallel training with and without serverless gradient offload.
#[derive(Debug, Parser)]
#[command(name = "peerless", version, about, propagate_version = true)]
#[command(args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Compute device: `cpu` (Burn's flex backend) or `wgpu` (GPU via Vulkan; needs a
    /// build with `--features wgpu`).
    #[arg(long, global = true, default_value = "cpu", env = "PEERLESS_DEVICE")]
    pub device: DeviceChoice,

    /// More log output (-v debug, -vv trace); `PEERLESS_LOG` takes a full filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// TOML file of flags for any command, keys named like the long flags (`lr = 0.02`,
    /// `batch_size = 32`); command-line flags win and keys only other commands take are
    /// skipped. For `peerless study` it is the study file instead.
    #[arg(long, global = true, value_name = "FILE", env = "PEERLESS_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the models with their parameter counts, gradient sizes and input sizes.
    Models(ModelsArgs),
    /// Time the per-batch gradient step (forward, loss, backward, flatten).
    Bench(BenchArgs),
    /// Train one model in a single process (no peers), with validation and test accuracy.
    Train(TrainArgs),
    /// Dataset tools.
    #[command(subcommand)]
    Data(DataCommand),
    /// Run one peer of a data-parallel run (one per machine, or several over a broker).
    Peer(PeerArgs),
    /// Run N peers on this machine (threads) and print a per-round summary.
    Run(RunArgs),
    /// Step Functions tools.
    #[command(subcommand)]
    Stepfn(StepfnCommand),
    /// Signing keys for authenticated peers.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run the same job instance-only, serverless and hybrid, and write the time, cost and
    /// accuracy report. `--config FILE` names the study (see bench/study/default.toml);
    /// without it the built-in small study runs.
    Study(StudyArgs),
}

#[derive(Debug, Args)]
pub struct StudyArgs {
    /// Folder for metrics, report, plots and CSV; rerunning resumes what is there.
    #[arg(long, value_name = "DIR", default_value = "peerless-study")]
    pub out: PathBuf,
    /// Run these of the config's models only (comma-separated), e.g. to leave out one the
    /// machine has no memory for.
    #[arg(long, value_delimiter = ',', value_name = "MODEL,...")]
    pub models: Vec<Architecture>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write one private key per rank (`rank-R.key`) and the public roster (`roster.txt`):
    /// give each peer's machine its own key and the roster, and start it with `--keys DIR`.
    Generate(KeysGenerateArgs),
}

#[derive(Debug, Args)]
pub struct KeysGenerateArgs {
    /// Number of peers of the run.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_PEERS as i64))]
    pub size: u32,
    /// Folder to write the keys to (created; existing keys are never overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum StepfnCommand {
    /// Print the Amazon States Language definition of the per-round state machine.
    Generate(StepfnGenerateArgs),
}

#[derive(Debug, Args)]
pub struct StepfnGenerateArgs {
    /// Batches per peer (K of `peerless data split --batches K`).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub batches: u32,

    /// ARN of the deployed process_input function.
    #[arg(long, value_name = "ARN")]
    pub process_input_arn: String,

    /// ARN of the deployed compute_gradient function.
    #[arg(long, value_name = "ARN")]
    pub compute_gradient_arn: String,

    /// Largest number of batches computed at once (0: all K at once).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_concurrency: u32,

    /// Retries of a failed task (transient Lambda errors, timeouts, store errors).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub retries: u32,

    /// Seconds before the first retry (doubling after that).
    #[arg(long, default_value_t = 1, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..))]
    pub retry_interval: u32,

    /// Time limit of one compute_gradient attempt in seconds.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..))]
    pub task_timeout: Option<u32>,

    /// A batch that fails for good: fail the execution, or record it so the peer
    /// computes it (use with --on-function-failure local).
    #[arg(long, default_value = "fail", value_name = "fail|record")]
    pub on_failure: OnTaskFailure,

    /// Write the definition to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// How peers exchange gradients and evaluate: shared by `peer` and `run`.
#[derive(Debug, Args, Clone)]
pub struct ExchangeArgs {
    /// Store holding the split (a directory, file:///dir or s3://bucket/prefix); `run`
    /// writes the split there first when it has none.
    #[arg(
        long,
        value_name = "URL",
        default_value = "peerless-store",
        env = "PEERLESS_STORE",
        hide_env_values = true
    )]
    pub store: String,

    /// RabbitMQ URL (amqp:// or amqps://); without it peers exchange in-process.
    #[arg(
        long,
        value_name = "URL",
        env = "PEERLESS_BROKER",
        hide_env_values = true
    )]
    pub broker: Option<String>,

    /// Name of the run: every peer of one run must use the same, and no other run may
    /// (messages of other runs are ignored). `run` makes a fresh one when absent.
    #[arg(long, value_name = "NAME", env = "PEERLESS_RUN_ID")]
    pub run_id: Option<String>,

    /// Gradient compression: none, qsgd8 or topk:RATIO (error feedback).
    #[arg(long, default_value = "none", env = "PEERLESS_COMPRESSION")]
    pub compression: peerless_comm::CodecSpec,

    /// How each round combines the peers' gradients, coordinate by coordinate: mean,
    /// median, or trimmed-mean:K (drop the K lowest and highest values). Every peer must
    /// use the same.
    #[arg(
        long,
        default_value = "mean",
        value_name = "mean|median|trimmed-mean:K"
    )]
    pub aggregation: Aggregation,

    /// How gradients travel: all-to-all (every peer sends its whole gradient to every
    /// other), sharded (each peer aggregates 1/N of the gradient and sends the result to
    /// all: per-peer traffic stays about 2x the gradient whatever the number of peers), or
    /// s3 (all-to-all through the --store: only a signed claim of each gradient crosses
    /// the broker). Every peer must use the same.
    #[arg(
        long,
        default_value = "all-to-all",
        value_name = "all-to-all|sharded|s3"
    )]
    pub exchange: peerless_comm::Exchange,

    /// Scale each gradient to an L2 norm of at most C before aggregating.
    #[arg(long, value_name = "C", value_parser = positive_f32)]
    pub clip_norm: Option<f32>,

    /// Evaluate (validation over all peers' validation shards, test accuracy) once per
    /// epoch, or every --eval-every rounds, and after the last round; drives
    /// ReduceLROnPlateau and early stopping.
    #[arg(long)]
    pub evaluation: bool,

    /// With --evaluation: evaluate after every K-th round (and after the last one).
    /// Default: once per epoch (K = --rounds-per-epoch). Every peer must use the same.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_every: Option<u32>,

    /// Evaluate on at most N images of each set.
    #[arg(long, value_name = "N")]
    pub eval_limit: Option<usize>,

    /// Rounds per pass over the shard (1 = the original: one step per epoch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds_per_epoch: u32,

    /// Seconds a round waits for the other peers.
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    pub round_timeout: f64,

    /// What a round does when a peer is missing at the timeout: fail, or partial (average
    /// what arrived and log the missing ranks).
    #[arg(long, default_value = "fail", value_name = "fail|partial")]
    pub on_timeout: OnTimeout,

    /// Largest message payload in KiB (64 to 131072); bigger gradients are sent in chunks.
    /// The default fits brokers that refuse messages above 512 KiB (Amazon MQ's current
    /// brokers).
    #[arg(long, default_value_t = 448, value_name = "KIB", value_parser = clap::value_parser!(u32).range(64..=131_072))]
    pub chunk_kib: u32,

    /// With --on-timeout partial: rounds a peer may miss in a row before the others stop
    /// waiting for it (it takes part again when restarted). 0 always waits.
    #[arg(long, default_value_t = 2, value_name = "M", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub evict_after: u32,

    /// Seconds a lost broker connection is retried (with backoff) before the peer fails.
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    pub reconnect_timeout: f64,

    /// Write a checkpoint to the store every K rounds (0: never). Default: once per epoch
    /// over a broker, never in-process.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(0..=1_000_000_000))]
    pub checkpoint_every: Option<u32>,

    /// Continue from the run's checkpoints when there are some (auto), or start over (never).
    #[arg(long, default_value = "auto", value_name = "auto|never")]
    pub resume: Resume,

    /// Sign every message with this peer's key and accept only messages signed by their
    /// claimed sender (a folder from `peerless keys generate`). `run` and `study` make keys
    /// for their peers when this is absent.
    #[arg(long, value_name = "DIR", env = "PEERLESS_KEYS")]
    pub keys: Option<PathBuf>,

    #[command(flatten)]
    pub s3: S3Args,

    #[command(flatten)]
    pub serverless: ServerlessArgs,
}

/// Serverless gradient offload: shared by `peer` and `run`.
#[derive(Debug, Args, Clone)]
pub struct ServerlessArgs {
    /// Where batches may be computed besides the peer: none, local (in-process function
    /// pool), lambda or stepfn. Needs a split with batch objects (`--batches K`).
    #[arg(
        long,
        default_value = "none",
        value_name = "none|local|lambda|stepfn",
        env = "PEERLESS_SERVERLESS"
    )]
    pub serverless: ServerlessMode,

    /// Share of each round's batches sent to functions: a fraction from 0 to 1, or `auto`
    /// (just enough to finish with the fastest peer). Default with --serverless: 1.
    #[arg(long, value_name = "auto|F", env = "PEERLESS_OFFLOAD")]
    pub offload: Option<OffloadPolicy>,

    /// Function calls in flight at once (default: the cores for `local`, 64 otherwise).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_FUNCTION_CONCURRENCY as i64))]
    pub function_concurrency: Option<u32>,

    /// Retries of a failed or timed-out function call.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub function_retries: u32,

    /// Seconds one function call may take before it counts as failed.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub function_timeout: f64,

    /// What a round does with a batch whose function failed after its retries: fail, or
    /// local (compute it on the peer).
    #[arg(long, default_value = "fail", value_name = "fail|local")]
    pub on_function_failure: OnFunctionFailure,

    /// Function memory in MB, for billing when the platform does not report it (the pool,
    /// Step Functions).
    #[arg(long, default_value_t = 2048, value_name = "MB", value_parser = clap::value_parser!(u32).range(128..=10240))]
    pub function_memory_mb: u32,

    /// Name or ARN of the deployed compute_gradient function (`--serverless lambda`).
    #[arg(
        long,
        default_value = "peerless-compute-gradient",
        env = "PEERLESS_FUNCTION"
    )]
    pub function: String,

    /// Custom Lambda endpoint, e.g. an emulator (`cargo lambda watch`).
    #[arg(
        long,
        value_name = "URL",
        env = "AWS_ENDPOINT_URL_LAMBDA",
        hide_env_values = true
    )]
    pub lambda_endpoint: Option<String>,

    /// ARN of the state machine (`--serverless stepfn`).
    #[arg(long, value_name = "ARN", env = "PEERLESS_STATE_MACHINE_ARN")]
    pub state_machine_arn: Option<String>,

    /// Custom Step Functions endpoint.
    #[arg(
        long,
        value_name = "URL",
        env = "AWS_ENDPOINT_URL_SFN",
        hide_env_values = true
    )]
    pub sfn_endpoint: Option<String>,
}

#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Number of peers in the run.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_PEERS as i64), env = "PEERLESS_SIZE")]
    pub size: u32,

    /// This peer's rank, 0 .. size-1, or `auto`: the lowest rank no other peer of the run
    /// has claimed (a conditional write of `ranks/<run id>/<rank>` in --store).
    #[arg(long, env = "PEERLESS_RANK", value_name = "R|auto")]
    pub rank: peerless_runtime::rank::RankChoice,

    /// Dataset the split must hold (checked against its manifest).
    #[arg(long)]
    pub dataset: Option<DatasetKind>,

    /// Square input size fed to the model (default: the model's study size).
    #[arg(long, value_name = "PX", value_parser = clap::value_parser!(u32).range(1..=MAX_INPUT_PX as i64))]
    pub resize: Option<u32>,

    /// Pace of this peer's own batches, in (0, 1]: 0.5 idles half the time, like a CPU
    /// quota, to emulate a slower machine.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub speed: f64,

    /// Threads of this peer's own batches (default: every core).
    #[arg(long, value_name = "N", value_parser = thread_count)]
    pub threads: Option<usize>,

    /// Corrupt this peer's own gradient before sending it, to test robust aggregation:
    /// none, sign-flip, scale:F, noise:SIGMA (seeded by --seed, rank and round) or nan.
    #[arg(
        long,
        default_value = "none",
        value_name = "none|sign-flip|scale:F|noise:SIGMA|nan"
    )]
    pub attack: Attack,

    #[command(flatten)]
    pub training: TrainingArgs,

    #[command(flatten)]
    pub exchange: ExchangeArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Number of peers to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=MAX_LOCAL_PEERS as i64))]
    pub peers: u32,

    /// Write each peer's metrics to DIR/peer-<rank>.jsonl.
    #[arg(long, value_name = "DIR", default_value = "peerless-metrics")]
    pub metrics_dir: PathBuf,

    /// Batch objects per peer when `run` writes the split itself.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub batches: Option<u64>,

    /// Partition when `run` writes the split itself: iid or dirichlet:ALPHA.
    #[arg(long, default_value = "iid")]
    pub partition: Partition,

    /// Pace of each peer's own batches, by rank, each in (0, 1] (see `peer --speed`);
    /// unlisted peers run at 1.
    #[arg(long, value_delimiter = ',', value_name = "F,F,...")]
    pub speeds: Vec<f64>,

    /// Threads of each peer's own batches, by rank; 0 or unlisted: every core.
    #[arg(long, value_delimiter = ',', value_name = "N,N,...", value_parser = thread_count_or_all)]
    pub threads: Vec<usize>,

    /// Each peer's attack, by rank (see `peer --attack`), e.g. none,none,sign-flip;
    /// unlisted peers are honest.
    #[arg(long, value_delimiter = ',', value_name = "A,A,...")]
    pub attacks: Vec<Attack>,

    /// Use only the first N training images when `run` writes the split itself.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub limit: Option<u64>,

    #[command(flatten)]
    pub data: DataArgs,

    #[command(flatten)]
    pub training: TrainingArgs,

    #[command(flatten)]
    pub exchange: ExchangeArgs,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Split a dataset into one shard per peer (and optionally one object per batch) in an
    /// object store, with a manifest written last.
    Split(SplitArgs),
}

/// Which dataset, and where its files are.
#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// Dataset: mnist, fashion-mnist, cifar10 or synthetic.
    #[arg(long, default_value = "fashion-mnist", env = "PEERLESS_DATASET")]
    pub dataset: DatasetKind,

    /// Directory holding the dataset files (default: the dataset's usual place, e.g.
    /// /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist).
    #[arg(long, value_name = "DIR", env = "PEERLESS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Square input size fed to the model (default: the model's study size; the small CNN
    /// takes the images as they are).
    #[arg(long, value_name = "PX", value_parser = clap::value_parser!(u32).range(1..=MAX_INPUT_PX as i64))]
    pub resize: Option<u32>,
}

/// The model, optimizer and schedule: shared by every training command, with the original
/// scripts' flag names kept as aliases.
#[derive(Debug, Args, Clone)]
pub struct TrainingArgs {
    /// Model: tiny_cnn, squeezenet1_1, mobilenet_v3_small or vgg11.
    #[arg(
        long,
        visible_alias = "model-str",
        default_value = "tiny_cnn",
        env = "PEERLESS_MODEL"
    )]
    pub model: Architecture,

    /// Images per batch.
    #[arg(long = "batch-size", visible_alias = "batch", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..), env = "PEERLESS_BATCH_SIZE")]
    pub batch_size: u32,

    /// Optimizer: sgd, adam, adamw, rmsprop or adagrad (PyTorch's update rules).
    #[arg(long, default_value = "sgd", env = "PEERLESS_OPTIMIZER")]
    pub optimizer: OptimizerKind,

    /// Loss: cross_entropy or nll.
    #[arg(long, default_value = "cross_entropy", env = "PEERLESS_LOSS")]
    pub loss: Loss,

    /// Learning rate (the original study: 0.02 on peers).
    #[arg(long, default_value_t = 0.02, value_parser = positive_f32, env = "PEERLESS_LR")]
    pub lr: f32,

    /// Momentum for sgd and rmsprop (PyTorch default 0).
    #[arg(long, value_parser = non_negative_f32, env = "PEERLESS_MOMENTUM")]
    pub momentum: Option<f32>,

    /// Weight decay (PyTorch default 0; adamw 0.01).
    #[arg(long, value_parser = non_negative_f32, env = "PEERLESS_WEIGHT_DECAY")]
    pub weight_decay: Option<f32>,

    /// Passes over the training data.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..), env = "PEERLESS_EPOCHS")]
    pub epochs: u32,

    /// Seed of weights, shuffling and augmentation (the original's 1234).
    #[arg(long, default_value_t = 1234, env = "PEERLESS_SEED")]
    pub seed: u64,

    /// Early stopping: evaluations (epochs, for `train` and by default for `peer` and `run`)
    /// without a better validation loss before stopping.
    #[arg(long, default_value_t = 10)]
    pub patience: u32,

    /// ReduceLROnPlateau: evaluations (epochs by default) without improvement before
    /// cutting the learning rate.
    #[arg(long, default_value_t = 5)]
    pub plateau_patience: u32,

    /// ReduceLROnPlateau: factor applied to the learning rate.
    #[arg(long, default_value_t = 0.1, value_parser = positive_f32)]
    pub plateau_factor: f32,

    /// ReduceLROnPlateau: lower bound of the learning rate.
    #[arg(long, default_value_t = 1e-6, value_parser = non_negative_f32)]
    pub min_lr: f32,

    /// Write one JSON line of metrics per epoch (or round) to FILE.
    #[arg(long, value_name = "FILE", env = "PEERLESS_METRICS_OUT")]
    pub metrics_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,

    #[command(flatten)]
    pub training: TrainingArgs,

    /// Use only the first N training images (quick demos and tests).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub limit: Option<u64>,

    /// Save the final weights as safetensors with torchvision keys.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// Number of peers (one shard each).
    #[arg(long, env = "PEERLESS_SIZE", value_parser = clap::value_parser!(u32).range(1..=MAX_PEERS as i64))]
    pub size: u32,

    /// Model the split is for (records its input size in the manifest).
    #[arg(
        long,
        visible_alias = "model-str",
        default_value = "tiny_cnn",
        env = "PEERLESS_MODEL"
    )]
    pub model: Architecture,

    /// Target store: a directory, file:///abs/dir or s3://bucket/prefix.
    #[arg(
        long,
        value_name = "URL",
        env = "PEERLESS_STORE",
        hide_env_values = true
    )]
    pub to: String,

    /// Also write each peer's training part as K batch objects (for serverless functions).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub batches: Option<u64>,

    /// iid (equal seeded shards, as the original) or dirichlet:ALPHA (label skew).
    #[arg(long, default_value = "iid")]
    pub partition: Partition,

    /// Seed of the assignment (the original's 1234).
    #[arg(long, default_value_t = 1234, env = "PEERLESS_SEED")]
    pub seed: u64,

    #[command(flatten)]
    pub s3: S3Args,
}

/// How to reach S3 or an S3-compatible server. Credentials come only from the AWS default
/// chain (environment, profile, instance role), never from flags.
#[derive(Debug, Args, Clone, Default)]
pub struct S3Args {
    /// Custom S3 endpoint (S3-compatible servers; path-style addressing is then used).
    #[arg(
        long,
        value_name = "URL",
        env = "AWS_ENDPOINT_URL_S3",
        hide_env_values = true
    )]
    pub s3_endpoint: Option<String>,
}

/// The most peers one run may have: far beyond the study's 512-peer projection, small
/// enough that per-rank bookkeeping stays small.
pub const MAX_PEERS: u32 = 4096;
/// The most peers `peerless run` starts on one machine (one thread each).
pub const MAX_LOCAL_PEERS: u32 = 256;
/// The largest square input, pixels (the study's models take 17 to 32).
pub const MAX_INPUT_PX: u32 = 1024;
/// The largest batch `peerless bench` allocates.
pub const MAX_BATCH: u32 = 4096;
/// The most compute threads one peer may ask for.
pub const MAX_THREADS: usize = 1024;
/// The most function calls in flight per peer (Lambda's default account concurrency).
pub const MAX_FUNCTION_CONCURRENCY: u32 = 1000;

fn thread_count(s: &str) -> Result<usize, String> {
    match thread_count_or_all(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

fn thread_count_or_all(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= MAX_THREADS => Ok(n),
        Ok(n) => Err(format!("must be at most {MAX_THREADS}, got {n}")),
        Err(e) => Err(e.to_string()),
    }
}

fn non_negative_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(v) => Err(format!("must be a finite number of at least 0, got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("must be a positive number, got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Models to time (repeat or comma-separate); default: the three study models.
    #[arg(
        long = "model",
        visible_alias = "model-str",
        value_delimiter = ',',
        env = "PEERLESS_MODEL"
    )]
    pub models: Vec<Architecture>,

    /// Batch sizes to time (repeat or comma-separate); default: 16 and 64.
    #[arg(long = "batch", visible_alias = "batch-size", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH as i64))]
    pub batches: Vec<u32>,

    /// Square input size in pixels (3xSIZExSIZE inputs).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=MAX_INPUT_PX as i64))]
    pub size: u32,

    /// Timed steps per row (the median is reported).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,

    /// Untimed warm-up steps per row.
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,

    /// Print a JSON array of {model, batch, ms_per_step, images_per_s, ...}.
    #[arg(long)]
    pub json: bool,

    /// Also write the last step's gradient (one model and one batch size only) to FILE as
    /// little-endian f32: the model and the batch are fixed, so two builds (say x86_64 and
    /// aarch64) can be compared value by value.
    #[arg(long, value_name = "FILE")]
    pub gradient_out: Option<std::path::PathBuf>,

    /// A Python with torch and torchvision: also time PyTorch's step in the same run and
    /// print peerless/PyTorch throughput ratios.
    #[arg(long, value_name = "PYTHON", env = "PEERLESS_TORCH_PYTHON")]
    pub torch: Option<std::path::PathBuf>,
}

// The flags as the runtime's typed configuration: converted once, here, and validated by
// the runtime before anything is loaded.

impl S3Args {
    /// Store options from the S3 flags.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            s3: S3Options {
                endpoint_url: self.s3_endpoint.clone(),
                ..S3Options::default()
            },
        }
    }
}

impl TrainingArgs {
    /// The training settings every peer shares (`--metrics-out` is per peer).
    pub fn to_config(&self) -> TrainingConfig {
        TrainingConfig {
            model: self.model,
            batch_size: self.batch_size,
            optimizer: self.optimizer,
            loss: self.loss,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            epochs: self.epochs,
            seed: self.seed,
            patience: self.patience,
            plateau_patience: self.plateau_patience,
            plateau_factor: self.plateau_factor,
            min_lr: self.min_lr,
        }
    }
}

impl ServerlessArgs {
    /// The offload settings, with durations checked.
    pub fn to_config(&self) -> Result<ServerlessConfig> {
        Ok(ServerlessConfig {
            mode: self.serverless,
            offload: self.offload,
            concurrency: self.function_concurrency.map(|n| n as usize),
            retries: self.function_retries,
            timeout: duration_secs("--function-timeout", self.function_timeout)?,
            on_failure: self.on_function_failure,
            memory_mb: self.function_memory_mb,
            function: self.function.clone(),
            lambda_endpoint: self.lambda_endpoint.clone(),
            state_machine_arn: self.state_machine_arn.clone(),
            sfn_endpoint: self.sfn_endpoint.clone(),
        })
    }
}

impl ExchangeArgs {
    /// The exchange settings every peer shares, validated.
    pub fn to_config(&self) -> Result<ExchangeConfig> {
        let config = ExchangeConfig {
            store: self.store.clone(),
            store_options: self.s3.store_options(),
            broker: self.broker.clone(),
            codec: self.compression,
            evaluation: self.evaluation,
            eval_every: self.eval_every,
            eval_limit: self.eval_limit,
            rounds_per_epoch: self.rounds_per_epoch,
            round_timeout: duration_secs("--round-timeout", self.round_timeout)?,
            on_timeout: self.on_timeout,
            max_chunk_bytes: self.chunk_kib as usize * 1024,
            serverless: self.serverless.to_config()?,
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            keys: self.keys.clone(),
            evict_after: self.evict_after,
            reconnect_timeout: duration_secs("--reconnect-timeout", self.reconnect_timeout)?,
            aggregation: self.aggregation,
            clip_norm: self.clip_norm,
            exchange: self.exchange,
        };
        config.validate()?;
        Ok(config)
    }
}

impl RunArgs {
    /// The local run these flags describe, validated peer by peer.
    pub fn to_config(&self) -> Result<LocalRunConfig> {
        let capabilities = (0..self.speeds.len().max(self.threads.len()))
            .map(|rank| Capability {
                speed: self.speeds.get(rank).copied().unwrap_or(1.0),
                threads: self.threads.get(rank).copied().filter(|&t| t > 0),
            })
            .collect();
        let config = LocalRunConfig {
            peers: self.peers,
            run_id: self.exchange.run_id.clone(),
            metrics_dir: self.metrics_dir.clone(),
            split: SplitSource {
                dataset: self.data.dataset,
                data_dir: self.data.data_dir.clone(),
                limit: self.limit.map(|l| l as usize),
                batches: self.batches.map(|k| k as usize),
                partition: self.partition,
            },
            resize: self.data.resize.map(|r| r as usize),
            training: self.training.to_config(),
            exchange: self.exchange.to_config()?,
            capabilities,
            attacks: self.attacks.clone(),
        };
        config.node_configs()?;
        Ok(config)
    }
}
