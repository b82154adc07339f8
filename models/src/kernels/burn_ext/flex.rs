//! The forward pass of [`LayerKernels`] on Burn's `flex` CPU backend, and the shapes and
//! geometries our kernels read off its tensors (the backward pass in `autodiff.rs` reuses them).

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ConvOptions;

use super::storage::{contiguous, slice, tensor};
use super::{BatchStats, LayerKernels, PoolOptions};
use crate::kernels::batch_norm::{self, NormShape};
use crate::kernels::conv2d;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::linear::{self, LinearShape};
use crate::kernels::pool::{self, PoolGeometry};

/// Which layer a recorded step computes.
#[derive(Clone, Debug)]
pub(super) enum Layer {
    Conv2d(ConvOptions<2>),
    /// A fully connected layer whose input values each stand for `repeat` inputs in a row.
    Linear {
        repeat: usize,
    },
}

impl LayerKernels for Flex {
    fn conv2d_kernels(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        forward(&Layer::Conv2d(options), x, weight, None)
    }

    fn conv2d_kernels_bias(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        forward(&Layer::Conv2d(options), x, weight, Some(bias))
    }

    fn linear_kernels(x: FlexTensor, weight: FlexTensor, repeat: usize) -> FlexTensor {
        forward(&Layer::Linear { repeat }, x, weight, None)
    }

    fn linear_kernels_bias(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        repeat: usize,
    ) -> FlexTensor {
        forward(&Layer::Linear { repeat }, x, weight, Some(bias))
    }

    fn batch_norm_train_kernels(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: BatchStats,
    ) -> FlexTensor {
        batch_norm(x, gamma, beta, &stats)
    }

    fn max_pool2d_kernels(x: FlexTensor, options: PoolOptions) -> FlexTensor {
        max_pool(x, &options).0
    }
}

pub(super) fn forward(
    layer: &Layer,
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
) -> FlexTensor {
    let (x, weight) = (contiguous(x), contiguous(weight));
    let bias = bias.map(contiguous);
    let bias = bias.as_ref().map(slice);
    match layer {
        Layer::Conv2d(options) => {
            let g = geometry(&x, &weight, options);
            let y = conv2d::forward(&g, slice(&x), slice(&weight), bias);
            tensor(y, [g.batch, g.out_channels, g.out_size[0], g.out_size[1]])
        }
        &Layer::Linear { repeat } => {
            let s = linear_shape(&x, &weight, repeat);
            let weight = folded(&weight, s, repeat);
            tensor(
                linear::forward(s, slice(&x), &weight, bias),
                [s.batch, s.d_out],
            )
        }
    }
}

pub(super) fn norm_shape(x: &FlexTensor) -> NormShape {
    let shape = x.layout().shape();
    assert_eq!(shape.num_dims(), 4, "batch norm input is 4-D");
    NormShape {
        batch: shape[0],
        channels: shape[1],
        pixels: shape[2] * shape[3],
    }
}

pub(super) fn batch_norm(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    stats: &BatchStats,
) -> FlexTensor {
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let s = norm_shape(&x);
    let y = batch_norm::forward(
        s,
        slice(&x),
        slice(&gamma),
        slice(&beta),
        (&stats.mean, &stats.var),
        stats.epsilon,
    );
    tensor(y, x.layout().shape().clone())
}

fn pool_geometry(x: &FlexTensor, o: &PoolOptions) -> PoolGeometry {
    let shape = x.layout().shape();
    assert_eq!(shape.num_dims(), 4, "pooling input is 4-D");
    let dims = [shape[0], shape[1], shape[2], shape[3]];
    PoolGeometry::new(dims, o.kernel, o.stride, o.padding, o.dilation, o.ceil_mode)
}

/// Max pooling on the CPU backend: the output, its winners and the geometry.
pub(super) fn max_pool(
    x: FlexTensor,
    options: &PoolOptions,
) -> (FlexTensor, Vec<u32>, PoolGeometry) {
    let x = contiguous(x);
    let g = pool_geometry(&x, options);
    let (y, winners) = pool::max_forward(&g, slice(&x));
    let shape = x.layout().shape();
    let out = tensor(y, [shape[0], shape[1], g.out_size[0], g.out_size[1]]);
    (out, winners, g)
}

/// The shape of the products of a fully connected layer whose input values each stand for
/// `repeat` inputs (`d_in` counts the input's own values).
pub(super) fn linear_shape(x: &FlexTensor, weight: &FlexTensor, repeat: usize) -> LinearShape {
    let (xs, ws) = (x.layout().shape(), weight.layout().shape());
    assert!(
        xs.num_dims() == 2 && ws.num_dims() == 2,
        "linear operands are 2-D"
    );
    assert_eq!(
        xs[1] * repeat,
        ws[1],
        "input features of the input (x{repeat}) and the weight"
    );
    LinearShape {
        batch: xs[0],
        d_in: xs[1],
        d_out: ws[0],
    }
}

/// The weight the products of `s` use: the weight itself, or its runs of `repeat` columns
/// summed ([`linear::fold_repeats`]).
pub(super) fn folded(
    weight: &FlexTensor,
    s: LinearShape,
    repeat: usize,
) -> std::borrow::Cow<'_, [f32]> {
    if repeat == 1 {
        std::borrow::Cow::Borrowed(slice(weight))
    } else {
        std::borrow::Cow::Owned(linear::fold_repeats(slice(weight), s.d_out, repeat))
    }
}

pub(super) fn geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvOptions<2>,
) -> ConvGeometry {
    let dims = |t: &FlexTensor| -> [usize; 4] {
        let shape = t.layout().shape();
        assert_eq!(shape.num_dims(), 4, "convolution operands are 4-D");
        [shape[0], shape[1], shape[2], shape[3]]
    };
    ConvGeometry::new(
        dims(x),
        dims(weight),
        options.stride,
        options.padding.map(|(begin, end)| [begin, end]),
        options.dilation,
        options.groups,
    )
}
