//! The peer runtime: one peer of a data-parallel run ([`Node`]), where its gradients come
//! from ([`source`]: its own CPU and serverless functions), the offload rule, the per-round
//! metrics schema, evaluation, and [`local::run_local`] for several peers on one machine.
//! It takes a typed, validated [`config`] and knows nothing of command lines, so tests and
//! `peerless study` drive it directly; the `peerless` binary is a thin layer over it.

pub mod attack;
pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod local;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod offload;
pub mod pipeline;
pub mod rank;
pub mod source;
pub mod sys;

pub use attack::Attack;
pub use config::{
    Capability, ConfigError, ExchangeConfig, LocalRunConfig, NodeConfig, OnFunctionFailure, Resume,
    ServerlessConfig, ServerlessMode, SplitSource, TrainingConfig,
};
pub use local::{connect, run_local};
pub use metrics::{InvocationRecord, RoundMetrics};
pub use node::{Node, NodeSummary};
pub use offload::OffloadPolicy;
