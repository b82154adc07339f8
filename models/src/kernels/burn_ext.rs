//! The kernels as a Burn backend extension: [`LayerKernels`] is implemented for the `flex`
//! CPU backend and for autodiff over it (with our backward pass); [`apply_conv2d`],
//! [`apply_linear`] and [`apply_max_pool2d`] are what the model layers call, so they stay Burn modules and keep
//! Burn's own operations on every other device (the GPU).

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ConvOptions;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Backend, BackendTensor, Dispatch, DispatchDevice, DispatchTensorKind, Flex, backend_extension,
};
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::batch_norm::{self, NormShape};
use super::conv2d::{self, Needed};
use super::im2col::ConvGeometry;
use super::linear::{self, LinearShape};
use super::pool::{self, PoolGeometry};
use super::sink;
use crate::parts::{self, Part};

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

fn norm_shape(x: &FlexTensor) -> NormShape {
    let shape = x.layout().shape();
    assert_eq!(shape.num_dims(), 4, "batch norm input is 4-D");
    NormShape {
        batch: shape[0],
        channels: shape[1],
        pixels: shape[2] * shape[3],
    }
}

fn batch_norm(
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

fn pool_geometry(x: &FlexTensor, o: &PoolOptions) -> PoolGeometry {
    let shape = x.layout().shape();
    assert_eq!(shape.num_dims(), 4, "pooling input is 4-D");
    let dims = [shape[0], shape[1], shape[2], shape[3]];
    PoolGeometry::new(dims, o.kernel, o.stride, o.padding, o.dilation, o.ceil_mode)
}

/// Max pooling on the CPU backend: the output, its winners and the geometry.
fn max_pool(x: FlexTensor, options: &PoolOptions) -> (FlexTensor, Vec<u32>, PoolGeometry) {
    let x = contiguous(x);
    let g = pool_geometry(&x, options);
    let (y, winners) = pool::max_forward(&g, slice(&x));
    let shape = x.layout().shape();
    let out = tensor(y, [shape[0], shape[1], g.out_size[0], g.out_size[1]]);
    (out, winners, g)
}

/// The backward step of [`LayerKernels::max_pool2d_kernels`] under autodiff.
#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// The winners, the geometry and the input's shape.
    type State = (Vec<u32>, PoolGeometry, Shape);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (winners, g, shape) = ops.state;
        if let Some(node) = node_x {
            let dx = pool::max_backward(&g, &winners, slice(&dy));
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
    }
}

/// Which layer a recorded step computes.
#[derive(Clone, Debug)]
enum Layer {
    Conv2d(ConvOptions<2>),
    /// A fully connected layer whose input values each stand for `repeat` inputs in a row.
    Linear {
        repeat: usize,
    },
}

/// The backward step of [`LayerKernels::batch_norm_train_kernels`] under autodiff: parents
/// are the input, gamma and beta.
#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    /// The input's and gamma's checkpoints, the statistics, and the part of a split step
    /// the layer ran in ([`crate::parts`]).
    type State = (NodeId, NodeId, BatchStats, Option<Part>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (x_state, gamma_state, stats, part) = ops.state;
        let x = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(x_state));
        let gamma = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(gamma_state));
        let s = norm_shape(&x);
        let moments = (&stats.mean[..], &stats.var[..]);
        let (dgamma, dbeta) =
            batch_norm::param_grads(s, slice(&x), moments, stats.epsilon, slice(&dy));
        let (sums, count) = match &part {
            Some(part) => whole_batch_sums(part, s, &dgamma, &dbeta),
            None => ([dbeta.clone(), dgamma.clone()], s.batch * s.pixels),
        };
        if let Some(node) = node_x {
            let dx = batch_norm::input_grad(
                s,
                slice(&x),
                slice(&gamma),
                moments,
                stats.epsilon,
                slice(&dy),
                (&sums[0], &sums[1]),
                count,
            );
            grads.register::<Flex>(node.id, tensor(dx, x.layout().shape().clone()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, tensor(dgamma, [s.channels]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, tensor(dbeta, [s.channels]));
        }
    }
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

fn forward(
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

impl<C: CheckpointStrategy> LayerKernels for Autodiff<Flex, C> {
    fn conv2d_kernels(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        record::<C, 2>(
            [x.node(), weight.node()],
            Layer::Conv2d(options),
            x,
            weight,
            None,
        )
    }

    fn conv2d_kernels_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let parents = [x.node(), weight.node(), bias.node()];
        record::<C, 3>(parents, Layer::Conv2d(options), x, weight, Some(bias))
    }

    fn linear_kernels(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        repeat: usize,
    ) -> FloatTensor<Self> {
        let parents = [x.node(), weight.node()];
        record::<C, 2>(parents, Layer::Linear { repeat }, x, weight, None)
    }

    fn linear_kernels_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        repeat: usize,
    ) -> FloatTensor<Self> {
        let parents = [x.node(), weight.node(), bias.node()];
        record::<C, 3>(parents, Layer::Linear { repeat }, x, weight, Some(bias))
    }

    fn batch_norm_train_kernels(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: BatchStats,
    ) -> FloatTensor<Self> {
        let parents = [x.node(), gamma.node(), beta.node()];
        let y = batch_norm(
            x.primitive().clone(),
            gamma.primitive().clone(),
            beta.into_primitive(),
            &stats,
        );
        match BatchNormBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (x_state, gamma_state) = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                prep.finish((x_state, gamma_state, stats, parts::current()), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn max_pool2d_kernels(x: FloatTensor<Self>, options: PoolOptions) -> FloatTensor<Self> {
        match PoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let shape = x.primitive().layout().shape().clone();
                let (y, winners, g) = max_pool(x.into_primitive(), &options);
                prep.finish((winners, g, shape), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(max_pool(x.into_primitive(), &options).0),
        }
    }
}

/// Runs the forward pass and, when any input is tracked, records [`LayerBackward`] with the
/// inputs' nodes as parents (input, weight and, when `N == 3`, bias).
fn record<C: CheckpointStrategy, const N: usize>(
    parents: [burn::backend::autodiff::ops::NodeGuard; N],
    layer: Layer,
    x: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    bias: Option<FloatTensor<Autodiff<Flex, C>>>,
) -> FloatTensor<Autodiff<Flex, C>> {
    let output = forward(
        &layer,
        x.primitive().clone(),
        weight.primitive().clone(),
        bias.map(|b| b.into_primitive()),
    );
    match LayerBackward
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let (x_state, weight_state) = (prep.checkpoint(&x), prep.checkpoint(&weight));
            prep.finish((x_state, weight_state, layer), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// The backward step of a [`LayerKernels`] layer under autodiff: parents are the input, the
/// weight and (when there is one) the bias.
#[derive(Debug)]
struct LayerBackward;

impl<const N: usize> Backward<Flex, N> for LayerBackward {
    type State = (NodeId, NodeId, Layer);

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let mut parents = ops.parents.into_iter();
        let node_x = parents.next().flatten();
        let node_weight = parents.next().flatten();
        let node_bias = parents.next().flatten();
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (x_state, weight_state, layer) = ops.state;
        let x = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(x_state));
        let weight = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(weight_state));
        let needed = Needed {
            x: node_x.is_some(),
            weight: node_weight.is_some(),
            bias: node_bias.is_some(),
        };
        let (xs, ws, dys) = (slice(&x), slice(&weight), slice(&dy));
        let run = |dw: Option<&mut [f32]>| match &layer {
            Layer::Conv2d(options) => {
                let g = geometry(&x, &weight, options);
                (
                    conv2d::backward_into(&g, xs, ws, dys, needed, dw),
                    g.out_channels,
                )
            }
            &Layer::Linear { repeat: 1 } => {
                let s = linear_shape(&x, &weight, 1);
                (linear::backward_into(s, xs, ws, dys, needed, dw), s.d_out)
            }
            &Layer::Linear { repeat } => {
                // The products run on the folded weight; its gradient is copied over each
                // run of `repeat` columns.
                let s = linear_shape(&x, &weight, repeat);
                let folded = folded(&weight, s, repeat);
                let mut out = linear::backward_into(s, xs, &folded, dys, needed, None);
                if let Some(small) = out.weight.take() {
                    match dw {
                        Some(dw) => linear::unfold_repeats(&small, repeat, dw),
                        None => {
                            let mut full = vec![0.0; ws.len()];
                            linear::unfold_repeats(&small, repeat, &mut full);
                            out.weight = Some(full);
                        }
                    }
                }
                (out, s.d_out)
            }
        };
        // The weight gradient goes straight into the caller's flat buffer when it opened a
        // sink for this weight (`Model::grad_step` does).
        let mut sunk = None;
        if needed.weight {
            sink::write_with(storage_key(&weight), ws.len(), |dw| {
                sunk = Some(run(Some(dw)))
            });
        }
        let (out, channels) = sunk.unwrap_or_else(|| run(None));
        if let (Some(node), Some(dx)) = (node_x, out.x) {
            grads.register::<Flex>(node.id, tensor(dx, x.layout().shape().clone()));
        }
        if let (Some(node), Some(dw)) = (node_weight, out.weight) {
            grads.register::<Flex>(node.id, tensor(dw, weight.layout().shape().clone()));
        }
        if let (Some(node), Some(db)) = (node_bias, out.bias) {
            grads.register::<Flex>(node.id, tensor(db, [channels]));
        }
    }
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
        Some(part) => whole_batch_stats(part, shape, mean, var),
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

/// What the parts of a step share at a batch normalisation: its sizes and direction, the
/// same in every part when they are in step.
fn share_tag(s: NormShape, backward: bool) -> u64 {
    ((s.pixels as u64) << 33) | ((s.channels as u64) << 1) | u64::from(backward)
}

/// The whole batch's mean and variance per channel, pooled from every part's.
fn whole_batch_stats(
    part: &Part,
    s: NormShape,
    mean: Vec<f32>,
    var: Vec<f32>,
) -> (Vec<f32>, Vec<f32>) {
    let c = s.channels;
    let all = part.share(share_tag(s, false), [mean, var].concat());
    let views: Vec<_> = all
        .iter()
        .zip(part.sizes())
        .map(|(v, &n)| (n, &v[..c], &v[c..]))
        .collect();
    batch_norm::pooled_stats(&views)
}

/// The sums of `dy` and `dy * xhat` per channel over the whole batch, on this part's scale,
/// and the number of values they are over. Each part's loss is the mean over its own images
/// and its gradient counts with its share of the batch, so part `q`'s sums weigh
/// `size(q) / size(this part)` here.
fn whole_batch_sums(
    part: &Part,
    s: NormShape,
    dgamma: &[f32],
    dbeta: &[f32],
) -> ([Vec<f32>; 2], usize) {
    let c = s.channels;
    let all = part.share(share_tag(s, true), [dbeta, dgamma].concat());
    let sizes = part.sizes();
    let mine = sizes[part.index()] as f32;
    let mut total = vec![0.0f32; 2 * c];
    for (values, &n) in all.iter().zip(sizes) {
        let w = n as f32 / mine;
        total.iter_mut().zip(values).for_each(|(t, v)| *t += w * v);
    }
    let sum_dy_xhat = total.split_off(c);
    ([total, sum_dy_xhat], sizes.iter().sum::<usize>() * s.pixels)
}

/// The values of a tensor on the CPU backend (tracked or not), without copying them.
fn flex_values<const D: usize>(tensor: &Tensor<D>) -> Option<FlexTensor> {
    fn of(kind: DispatchTensorKind) -> Option<FlexTensor> {
        match kind {
            DispatchTensorKind::Flex(BackendTensor::Float(t)) => Some(t),
            DispatchTensorKind::Flex(BackendTensor::Autodiff(t)) => Some(t.primitive().clone()),
            DispatchTensorKind::Autodiff(inner) => of(*inner),
            _ => None,
        }
    }
    of(tensor.clone().into_dispatch().kind)
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

/// Identifies a tensor's values on the CPU backend by their address, the same for a
/// parameter and for the copies of it that the autodiff graph keeps: the key of a gradient
/// sink ([`super::sink`]). `None` for tensors elsewhere.
pub fn param_storage_key<const D: usize>(tensor: &Tensor<D>) -> Option<usize> {
    flex_values(tensor)?
        .as_slice::<f32>()
        .map(|v| v.as_ptr() as usize)
}

fn storage_key(t: &FlexTensor) -> usize {
    slice(t).as_ptr() as usize
}

/// Copies the `f32` values of a tensor on the CPU backend into `out` in row-major order,
/// straight from its storage and on every thread; `false` (nothing written) for any other
/// tensor, which the caller reads through [`TensorData`]. Reading gradients this way avoids
/// a fresh intermediate copy per tensor per step (515 MB for VGG11).
pub fn copy_to_slice<const D: usize>(tensor: &Tensor<D>, out: &mut [f32]) -> bool {
    let t = match tensor.clone().into_dispatch().kind {
        DispatchTensorKind::Flex(BackendTensor::Float(t)) => t,
        _ => return false,
    };
    if t.dtype() != DType::F32 || t.layout().num_elements() != out.len() {
        return false;
    }
    let t = contiguous(t);
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK)
        .zip(slice(&t).par_chunks(CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
    true
}

/// The shape of the products of a fully connected layer whose input values each stand for
/// `repeat` inputs (`d_in` counts the input's own values).
fn linear_shape(x: &FlexTensor, weight: &FlexTensor, repeat: usize) -> LinearShape {
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
fn folded(weight: &FlexTensor, s: LinearShape, repeat: usize) -> std::borrow::Cow<'_, [f32]> {
    if repeat == 1 {
        std::borrow::Cow::Borrowed(slice(weight))
    } else {
        std::borrow::Cow::Owned(linear::fold_repeats(slice(weight), s.d_out, repeat))
    }
}

fn geometry(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> ConvGeometry {
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

/// The tensor itself when its `f32` values lie in row-major order, else a row-major copy.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The values of a tensor [`contiguous`] returned; [`apply_conv2d`] only routes `f32` tensors here.
fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("the convolution kernels take contiguous f32 tensors")
}

fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    fn close(what: &str, got: Tensor<4>, want: Tensor<4>) {
        let (got, want) = (
            got.into_data().try_to_vec::<f32>().unwrap(),
            want.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{what}[{i}]: {a} vs Burn's {b}"
            );
        }
    }

    /// Through autodiff, the extension gives Burn's own convolution's output and gradients
    /// (input, weight, bias) for strided, padded, grouped, depthwise and pointwise layers.
    #[test]
    fn matches_burns_convolution_forward_and_backward() {
        let device = Device::flex().autodiff();
        let cases = [
            // (in, out, kernel, stride, padding, groups, bias, size)
            (3, 8, 3, 2, [0, 0, 0, 0], 1, true, 15),
            (4, 6, 3, 1, [1, 1, 1, 1], 2, false, 7),
            (6, 6, 5, 2, [2, 2, 2, 2], 6, false, 9),
            (5, 7, 1, 1, [0, 0, 0, 0], 1, true, 6),
            (4, 4, 3, 1, [1, 0, 2, 1], 1, true, 5),
        ];
        for (cin, cout, k, s, [t, l, b, r], groups, bias, size) in cases {
            let conv = Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(t, l, b, r))
                .with_groups(groups)
                .with_bias(bias)
                .init(&device);
            let conv = Conv2d {
                bias: conv
                    .bias
                    .map(|_| Param::from_tensor(Tensor::<1>::full([cout], 0.25, &device))),
                ..conv
            };
            let x = Tensor::<4>::random(
                [3, cin, size, size + 1],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let ours = apply_conv2d(&conv, x.clone());
            let theirs = conv.forward(x.clone());
            close("output", ours.clone(), theirs.clone());
            let weights = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
            let g_ours = (ours * weights.clone()).sum().backward();
            let g_theirs = (theirs * weights).sum().backward();
            close("dx", x.grad(&g_ours).unwrap(), x.grad(&g_theirs).unwrap());
            let w = conv.weight.val();
            close(
                "dweight",
                w.grad(&g_ours).unwrap(),
                w.grad(&g_theirs).unwrap(),
            );
            if let Some(bias) = &conv.bias {
                let b = bias.val();
                close(
                    "dbias",
                    b.grad(&g_ours).unwrap().reshape([1, 1, 1, cout]),
                    b.grad(&g_theirs).unwrap().reshape([1, 1, 1, cout]),
                );
            }
        }
    }

    /// Through autodiff, the fully connected kernels give Burn's own `linear`'s output and
    /// gradients, with and without a bias.
    #[test]
    fn linear_matches_burns_linear_forward_and_backward() {
        let device = Device::flex().autodiff();
        let normal = Distribution::Normal(0.0, 1.0);
        for bias in [true, false] {
            let x = Tensor::<2>::random([5, 7], normal, &device).require_grad();
            let w = Tensor::<2>::random([3, 7], normal, &device).require_grad();
            let b = Tensor::<1>::random([3], normal, &device).require_grad();
            let b = bias.then_some(b);
            let ours = apply_linear(&w, b.as_ref(), x.clone());
            let theirs = burn::tensor::module::linear(x.clone(), w.clone().transpose(), b.clone());
            let as4 = |t: Tensor<2>| t.unsqueeze::<4>();
            close("output", as4(ours.clone()), as4(theirs.clone()));
            let weights = Tensor::<2>::random([5, 3], normal, &device);
            let g_ours = (ours * weights.clone()).sum().backward();
            let g_theirs = (theirs * weights).sum().backward();
            close(
                "dx",
                as4(x.grad(&g_ours).unwrap()),
                as4(x.grad(&g_theirs).unwrap()),
            );
            close(
                "dweight",
                as4(w.grad(&g_ours).unwrap()),
                as4(w.grad(&g_theirs).unwrap()),
            );
            if let Some(b) = &b {
                let as4 = |t: Tensor<1>| t.reshape([1, 1, 1, 3]);
                close(
                    "dbias",
                    as4(b.grad(&g_ours).unwrap()),
                    as4(b.grad(&g_theirs).unwrap()),
                );
            }
        }
    }

    /// A layer on an input whose values repeat gives the same output and gradients as
    /// Burn's `linear` on the repeated input, with its weight gradient in a sink or not.
    #[test]
    fn linear_on_repeated_inputs_matches_the_layer_on_the_repeated_input() {
        let device = Device::flex().autodiff();
        let normal = Distribution::Normal(0.0, 1.0);
        for into_sink in [false, true] {
            let x = Tensor::<2>::random([4, 6], normal, &device).require_grad();
            let w = Tensor::<2>::random([5, 18], normal, &device).require_grad();
            let b = Tensor::<1>::random([5], normal, &device).require_grad();
            let ours = apply_linear_repeated(&w, Some(&b), x.clone(), 3);
            let repeated = x
                .clone()
                .unsqueeze_dim::<3>(2)
                .repeat_dim(2, 3)
                .reshape([4, 18]);
            let theirs = burn::tensor::module::linear(repeated, w.clone().transpose(), Some(b));
            let as4 = |t: Tensor<2>| t.unsqueeze::<4>();
            close("output", as4(ours.clone()), as4(theirs.clone()));
            let weights = Tensor::<2>::random([4, 5], normal, &device);
            let mut sink = vec![f32::NAN; 5 * 18];
            let key = param_storage_key(&w).unwrap();
            let (g_ours, written) = if into_sink {
                sink::with_sinks(vec![(key, &mut sink[..])], || {
                    (ours * weights.clone()).sum().backward()
                })
            } else {
                ((ours * weights.clone()).sum().backward(), vec![false])
            };
            let g_theirs = (theirs * weights).sum().backward();
            close(
                "dx",
                as4(x.grad(&g_ours).unwrap()),
                as4(x.grad(&g_theirs).unwrap()),
            );
            let want = as4(w.grad(&g_theirs).unwrap());
            if into_sink {
                assert_eq!(written, [true]);
                let got = Tensor::<2>::from_data(TensorData::new(sink, [5, 18]), &device);
                close("dweight (sink)", as4(got), want);
            } else {
                close("dweight", as4(w.grad(&g_ours).unwrap()), want);
            }
        }
    }

    /// In training, the batch norm kernels give Burn's own layer's output, gradients (input,
    /// gamma, beta) and running statistics, also on 1x1 images (MobileNet's last layers).
    #[test]
    fn batch_norm_matches_burns_layer_in_training() {
        use burn::nn::BatchNormConfig;
        let device = Device::flex().autodiff();
        let normal = Distribution::Normal(0.5, 2.0);
        for shape in [[4, 3, 5, 7], [3, 6, 1, 1], [1, 2, 4, 4]] {
            let fresh = || {
                let mut bn = BatchNormConfig::new(shape[1]).init(&device);
                let gamma = Tensor::<1>::random([shape[1]], normal, &device);
                bn.gamma = burn::module::Param::from_tensor(gamma.clone());
                bn.beta = burn::module::Param::from_tensor(gamma.mul_scalar(-0.5));
                bn
            };
            let (ours_bn, theirs_bn) = (fresh(), fresh());
            let mut theirs_bn = theirs_bn;
            theirs_bn.gamma = ours_bn.gamma.clone();
            theirs_bn.beta = ours_bn.beta.clone();
            let x = Tensor::<4>::random(shape, normal, &device).require_grad();
            let ours = apply_batch_norm(&ours_bn, x.clone());
            let theirs = theirs_bn.forward(x.clone());
            close("output", ours.clone(), theirs.clone());
            let weights = Tensor::<4>::random(shape, normal, &device);
            let g_ours = (ours * weights.clone()).sum().backward();
            let g_theirs = (theirs * weights).sum().backward();
            close("dx", x.grad(&g_ours).unwrap(), x.grad(&g_theirs).unwrap());
            let as4 = |t: Tensor<1>| t.reshape([1, 1, 1, shape[1]]);
            for (what, p) in [("dgamma", &ours_bn.gamma), ("dbeta", &ours_bn.beta)] {
                close(
                    what,
                    as4(p.val().grad(&g_ours).unwrap()),
                    as4(p.val().grad(&g_theirs).unwrap()),
                );
            }
            close(
                "running mean",
                as4(ours_bn.running_mean.value()),
                as4(theirs_bn.running_mean.value()),
            );
            close(
                "running var",
                as4(ours_bn.running_var.value()),
                as4(theirs_bn.running_var.value()),
            );
        }
    }

    /// Through autodiff, the pooling kernel gives Burn's own max pooling's output and input
    /// gradient (SqueezeNet's ceil-mode 3x3 stride-2 pooling, VGG's 2x2, padded windows).
    #[test]
    fn max_pool_matches_burns_forward_and_backward() {
        use burn::nn::pool::MaxPool2dConfig;
        let device = Device::flex().autodiff();
        let pools = [
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_ceil_mode(true),
            MaxPool2dConfig::new([2, 2]).with_strides([2, 2]),
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
        ];
        for config in pools {
            let pool = config.init();
            let x = Tensor::<4>::random([2, 3, 9, 8], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let ours = apply_max_pool2d(&pool, x.clone());
            let theirs = pool.forward(x.clone());
            close("output", ours.clone(), theirs.clone());
            let weights = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
            let g_ours = (ours * weights.clone()).sum().backward();
            let g_theirs = (theirs * weights).sum().backward();
            close("dx", x.grad(&g_ours).unwrap(), x.grad(&g_theirs).unwrap());
        }
    }
}
