//! Building blocks that torchvision has and Burn does not (or has with another layout),
//! composed from Burn modules so every model stays a plain Burn module.

mod activation;
mod conv;
mod conv_norm_act;
pub mod dropout;
mod fire;
mod inverted_residual;
mod linear;
mod squeeze_excitation;

pub use activation::{Activation, HardSwish};
pub use conv::conv2d;
pub use conv_norm_act::ConvNormAct;
pub use fire::Fire;
pub use inverted_residual::{InvertedResidual, InvertedResidualConfig};
pub use linear::Linear;
pub use squeeze_excitation::SqueezeExcitation;
