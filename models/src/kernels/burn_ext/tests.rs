//! End-to-end checks of the extension through autodiff: each layer's output and gradients
//! against Burn's own layer.

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use super::*;
use crate::kernels::sink;

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
