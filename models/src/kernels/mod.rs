//! Our CPU kernels for the operations that dominate a gradient step, wired into Burn as a
//! backend extension ([`burn_ext`]) so the models stay Burn modules: convolution forward and
//! backward as blocked `im2col` + GEMM (without the kernel taps that only read padding),
//! depthwise convolution by direct loops, fully connected layers as products that write the
//! weight gradient in the weight's layout, max pooling, and batch normalisation in training.
//!
//! Burn's `flex` backend computes a convolution's weight gradient as another convolution
//! with the batch and channel axes swapped, which turns into thousands of single-column
//! products; these kernels make it one product per block of images (`bench/README.md`
//! records what each step changed).

pub mod batch_norm;
pub mod burn_ext;
pub mod conv2d;
mod depthwise;
pub mod gemm;
pub mod im2col;
pub mod linear;
pub mod pool;
mod reduce;
#[cfg(test)]
mod reference;
pub mod sink;
#[cfg(test)]
mod tests;
mod trim;

pub use conv2d::{LayerGrads, Needed};
pub use im2col::ConvGeometry;
