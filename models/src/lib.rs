//! Burn models faithful to torchvision, the losses and optimizers of the original study, and
//! the flat-gradient API that every peer and every Lambda function is built on.
//!
//! The contract other crates rely on:
//! - a model's trainable parameters form one flat `f32` vector in torchvision `state_dict`
//!   order and layout (see [`params::ParamTable`]), and so does its gradient;
//! - [`Model::grad_step`] runs forward, loss and backward for one batch and writes the
//!   gradient into a caller-owned buffer;
//! - [`optim::Optimizer`] applies a flat gradient to the flat weights with PyTorch's semantics;
//! - [`weights`] ships weights as bytes and as safetensors with torchvision key names.

pub mod arch;
pub mod device;
mod error;
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod memory;
mod model;
pub mod optim;
pub mod params;
mod parts;
pub mod schedule;
mod trainer;
pub mod weights;

pub use arch::{Architecture, ModelSpec};
pub use device::{DeviceChoice, select_device};
pub use error::ModelError;
pub use loss::Loss;
pub use model::{Batch, Model, StepStats};
pub use trainer::Trainer;

/// Burn's device type, re-exported so callers need not depend on burn directly.
pub use burn::tensor::Device;

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
