//! The command line: one source of truth for every option. Each flag can also come from the
//! environment (`PEERLESS_<FLAG>`) or from a TOML config file (`--config FILE`, keys named
//! like the long flags); see `config.rs` for the precedence.

use clap::{Args, Parser, Subcommand};
use peerless_models::{Architecture, DeviceChoice};

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

    /// TOML file whose keys are long flag names (`lr = 0.02`); command-line flags win.
    #[arg(long, global = true, value_name = "FILE", env = "PEERLESS_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the models with their parameter counts, gradient sizes and input sizes.
    Models(ModelsArgs),
    /// Time the per-batch gradient step (forward, loss, backward, flatten).
    Bench(BenchArgs),
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
    #[arg(long = "model", visible_alias = "model-str", value_delimiter = ',', env = "PEERLESS_MODEL")]
    pub models: Vec<Architecture>,

    /// Batch sizes to time (repeat or comma-separate); default: 16 and 64.
    #[arg(long = "batch", visible_alias = "batch-size", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub batches: Vec<u32>,

    /// Square input size in pixels (3xSIZExSIZE inputs).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
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
}
