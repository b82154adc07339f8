//! [`LayerKernels`] under Burn's autodiff over `flex`: each layer runs the `flex` forward pass
//! and records a backward step of ours ([`Backward`]) that computes its gradients with our
//! kernels, a weight's gradient straight into its gradient sink when the caller opened one.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ConvOptions;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Shape;

use super::flex::{self, Layer, folded, forward, geometry, linear_shape, max_pool, norm_shape};
use super::storage::{contiguous, slice, storage_key, tensor};
use super::{BatchStats, LayerKernels, PoolOptions};
use crate::kernels::batch_norm;
use crate::kernels::conv2d::{self, Needed};
use crate::kernels::linear;
use crate::kernels::pool::{self, PoolGeometry};
use crate::kernels::sink;
use crate::parts::{self, Part, whole_batch_sums};

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
        let y = flex::batch_norm(
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
