//! Serverless gradient computation for peerless: the `compute_gradient` and
//! `process_input` functions (run on AWS Lambda through `lambda_runtime`, or in-process by
//! the peer's local pool) and the Step Functions definition that fans a round out.
//!
//! - [`ComputeGradient`] loads the round's weights (cached across warm invocations),
//!   computes one batch's gradient with `Model::grad_step` and writes it to the store as a
//!   `peerless_comm` wire message ([`gradient`]).
//! - [`process_input::expand`] turns a peer's request into per-batch events.
//! - [`asl::state_machine_definition`] emits the Amazon States Language definition.
//! - [`billing::parse_report`] reads what Lambda billed from an invocation's log tail.
//!
//! Events and responses ([`event`]) carry object keys only, never tensors.

pub mod allowed;
pub mod asl;
pub mod billing;
pub mod error;
pub mod event;
pub mod faults;
pub mod gradient;
mod handler;
pub mod process_input;

pub use allowed::AllowedStore;
pub use asl::{OnTaskFailure, RetryPolicy, StateMachineConfig, state_machine_definition};
pub use billing::{InvocationReport, billed_ms, parse_report};
pub use error::{ComputeGradientError, ProcessInputError};
pub use event::{
    ComputeGradientEvent, ComputeGradientResponse, ProcessInputOutput, ProcessInputRequest,
    RoundContext, RuntimeInfo, StoreLocation, Timings,
};
pub use handler::ComputeGradient;
pub use process_input::{batch_seed, dropout_seed, gradient_key};
