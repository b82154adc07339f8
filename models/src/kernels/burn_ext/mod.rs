//! The kernels as a Burn backend extension: [`LayerKernels`] is implemented for the `flex`
//! CPU backend (`flex.rs`) and for autodiff over it with our backward pass (`autodiff.rs`);
//! [`apply_conv2d`], [`apply_linear`], [`apply_max_pool2d`] and [`apply_batch_norm`] are what
//! the model layers call, so they stay Burn modules and keep Burn's own operations on every
//! other device (the GPU). [`set_enabled`] switches the kernels off for comparison.

mod autodiff;
mod flex;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::ops::ConvOptions;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::batch_norm;
use crate::parts;
use flex::norm_shape;
use storage::{contiguous, flex_values, slice};

pub use storage::{copy_to_slice, param_storage_key};

/// The layers computed by our kernels instead of the backend's own operations.
#[backend_extension(Flex, Autodiff)]
pub trait LayerKernels: Backend {
    /// `conv2d(x, weight)` with Burn's semantics and shapes.
    fn conv2d_kernels(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// `conv2d(x, weight) + bias`, the bias added as each output is written.
    fn conv2d_kernels_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// `x' W^T` for `weight` `[out, in]` and `x` `[batch, in / repeat]`, where `x'` repeats
    /// each value of `x` `repeat` times in a row (1: `x' = x`).
    fn linear_kernels(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        repeat: usize,
    ) -> FloatTensor<Self>;

    /// `x' W^T + bias`.
    fn linear_kernels_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        repeat: usize,
    ) -> FloatTensor<Self>;

    /// 2-D max pooling with PyTorch's semantics and output sizes.
    fn max_pool2d_kernels(x: FloatTensor<Self>, options: PoolOptions) -> FloatTensor<Self>;

    /// Batch normalisation of `x` (`[batch, channels, h, w]`) with `stats`, the batch's own
    /// statistics: differentiated with the statistics as functions of `x`, as in training.
    fn batch_norm_train_kernels(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: BatchStats,
    ) -> FloatTensor<Self>;
}

/// A batch's per-channel statistics and the layer's epsilon, as
/// [`LayerKernels::batch_norm_train_kernels`] takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Biased variance per channel.
    pub var: Vec<f32>,
    /// Added to the variance under the square root.
    pub epsilon: f64,
}

/// The settings of one max pooling, as [`LayerKernels::max_pool2d_kernels`] takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// `[[top, bottom], [left, right]]`.
    pub padding: [[usize; 2]; 2],
    /// Step between window taps.
    pub dilation: [usize; 2],
    /// Round the output size up (the last window may hang over the end).
    pub ceil_mode: bool,
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches [`apply_conv2d`], [`apply_linear`], [`apply_max_pool2d`] and [`apply_batch_norm`]
/// between our kernels (the default) and Burn's own operations for the whole process:
/// benchmarks time both in one run to show what the kernels change.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether our kernels are switched on ([`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Applies `conv` to `x`: through [`LayerKernels`] on the CPU (`flex`, with or without
/// autodiff), through Burn's own convolution elsewhere.
pub fn apply_conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if !use_kernels(&x) {
        return conv.forward(x);
    }
    let Some([[top, bottom], [left, right]]) = explicit_padding(&conv.padding) else {
        return conv.forward(x);
    };
    let options = ConvOptions::new_with_padding(
        conv.stride,
        [(top, bottom), (left, right)],
        conv.dilation,
        conv.groups,
    );
    let (x, weight) = (x.into_dispatch(), conv.weight.val().into_dispatch());
    Tensor::from_dispatch(match &conv.bias {
        Some(bias) => <Dispatch as LayerKernels>::conv2d_kernels_bias(
            x,
            weight,
            bias.val().into_dispatch(),
            options,
        ),
        None => <Dispatch as LayerKernels>::conv2d_kernels(x, weight, options),
    })
}

/// Applies a fully connected layer (`weight` `[out, in]`, PyTorch's layout) to `x`
/// (`[batch, in]`): through [`LayerKernels`] on the CPU, as `(W x^T)^T` through Burn's own
/// matrix product elsewhere (so the weight gradient is in the weight's layout either way).
pub fn apply_linear(weight: &Tensor<2>, bias: Option<&Tensor<1>>, x: Tensor<2>) -> Tensor<2> {
    apply_linear_repeated(weight, bias, x, 1)
}

/// [`apply_linear`] to the input that repeats each value of `x` (`[batch, in / repeat]`)
/// `repeat` times in a row: on the CPU without building that input, with `repeat` times
/// fewer products ([`linear::fold_repeats`]).
pub fn apply_linear_repeated(
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    x: Tensor<2>,
    repeat: usize,
) -> Tensor<2> {
    if !use_kernels(&x) {
        let x = if repeat == 1 {
            x
        } else {
            let [n, d] = x.dims();
            x.unsqueeze_dim::<3>(2)
                .repeat_dim(2, repeat)
                .reshape([n, d * repeat])
        };
        let y = weight.clone().matmul(x.transpose()).transpose();
        return match bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        };
    }
    let (x, w) = (x.into_dispatch(), weight.clone().into_dispatch());
    Tensor::from_dispatch(match bias {
        Some(b) => {
            <Dispatch as LayerKernels>::linear_kernels_bias(x, w, b.clone().into_dispatch(), repeat)
        }
        None => <Dispatch as LayerKernels>::linear_kernels(x, w, repeat),
    })
}

/// Applies `bn` to `x` as `BatchNorm::forward` does: in training on the CPU through
/// [`LayerKernels`] (statistics per channel on all threads, the running statistics updated
/// as Burn updates them), otherwise through Burn's own layer.
pub fn apply_batch_norm(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    let values = match flex_values(&x) {
        Some(v) if use_kernels(&x) && device.is_autodiff() && bn.training.is_enabled() => v,
        _ => return bn.forward(x),
    };
    let values = contiguous(values);
    let shape = norm_shape(&values);
    let (mean, var) = batch_norm::stats(shape, slice(&values));
    // In a split step, the statistics of the whole batch; its first part updates the
    // running statistics for all.
    let part = parts::current();
    let (mean, var) = match &part {
        Some(part) => parts::whole_batch_stats(part, shape, mean, var),
        None => (mean, var),
    };
    let channels = mean.len();
    let running = |state: &burn::module::RunningState<Tensor<1>>, batch: &[f32]| {
        let batch = Tensor::<1>::from_data(TensorData::new(batch.to_vec(), [channels]), &device);
        let updated = state
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - bn.momentum)
            .add(batch.mul_scalar(bn.momentum));
        state.update(updated.detach());
    };
    if part.is_none_or(|p| p.index() == 0) {
        running(&bn.running_mean, &mean);
        running(&bn.running_var, &var);
    }
    let stats = BatchStats {
        mean,
        var,
        epsilon: bn.epsilon,
    };
    Tensor::from_dispatch(<Dispatch as LayerKernels>::batch_norm_train_kernels(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        stats,
    ))
}

/// Applies `pool` to `x`: through [`LayerKernels`] on the CPU, through Burn's own max
/// pooling elsewhere.
pub fn apply_max_pool2d(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    if !use_kernels(&x) {
        return pool.forward(x);
    }
    let Some(padding) = explicit_padding(&pool.padding) else {
        return pool.forward(x);
    };
    let options = PoolOptions {
        kernel: pool.kernel_size,
        stride: pool.stride,
        padding,
        dilation: pool.dilation,
        ceil_mode: pool.ceil_mode,
    };
    Tensor::from_dispatch(<Dispatch as LayerKernels>::max_pool2d_kernels(
        x.into_dispatch(),
        options,
    ))
}

/// `[[top, bottom], [left, right]]` of a padding that does not depend on the input size;
/// `None` for `Same`, which the layers leave to Burn.
fn explicit_padding(padding: &PaddingConfig2d) -> Option<[[usize; 2]; 2]> {
    match *padding {
        PaddingConfig2d::Valid => Some([[0, 0], [0, 0]]),
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([[top, bottom], [left, right]]),
        PaddingConfig2d::Same => None,
    }
}

/// Whether `x` goes through our kernels: `f32` on the CPU backend, unless switched off.
fn use_kernels<const D: usize>(x: &Tensor<D>) -> bool {
    is_cpu(&x.device()) && x.dtype() == DType::F32 && enabled()
}

/// Whether `device` is the CPU (Burn's `flex` backend, with or without autodiff).
pub fn is_cpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}
