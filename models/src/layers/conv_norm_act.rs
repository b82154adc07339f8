use crate::kernels::burn_ext::{apply_batch_norm, apply_conv2d};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Tensor};

use super::{Activation, conv2d};

/// torchvision's `Conv2dNormActivation`: a bias-free convolution, batch norm and an optional
/// activation. Its parameters are named `0.*` (conv) and `1.*` (norm) as in torchvision.
#[derive(Module, Debug)]
pub struct ConvNormAct {
    /// The convolution (`.0`).
    pub conv: Conv2d,
    /// The batch norm (`.1`).
    pub bn: BatchNorm,
    #[module(skip)]
    activation: Activation,
}

impl ConvNormAct {
    /// `Conv2dNormActivation(cin, cout, kernel, stride, groups)` with "same" padding
    /// `(kernel - 1) / 2` and MobileNetV3's batch-norm settings (eps 1e-3, momentum 0.01).
    pub fn new(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        activation: Activation,
        device: &Device,
    ) -> Self {
        ConvNormAct {
            conv: conv2d(
                cin,
                cout,
                kernel,
                stride,
                (kernel - 1) / 2,
                groups,
                false,
                device,
            ),
            bn: BatchNormConfig::new(cout)
                .with_epsilon(1e-3)
                .with_momentum(0.01)
                .init(device),
            activation,
        }
    }

    /// conv -> bn -> activation.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.activation
            .apply(apply_batch_norm(&self.bn, apply_conv2d(&self.conv, x)))
    }
}
