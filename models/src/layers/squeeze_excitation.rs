use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::{hard_sigmoid, relu};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor};

use super::conv2d;
use crate::kernels::burn_ext::apply_conv2d;

/// torchvision's `SqueezeExcitation` as MobileNetV3 uses it: global average pool, 1x1 conv
/// (`fc1`), ReLU, 1x1 conv (`fc2`), hard-sigmoid, and a channel-wise rescale of the input.
#[derive(Module, Debug)]
pub struct SqueezeExcitation {
    /// Squeeze: `channels -> squeeze`.
    pub fc1: Conv2d,
    /// Excite: `squeeze -> channels`.
    pub fc2: Conv2d,
}

impl SqueezeExcitation {
    /// A block for `channels` inputs squeezed to `squeeze` channels.
    pub fn new(channels: usize, squeeze: usize, device: &Device) -> Self {
        SqueezeExcitation {
            fc1: conv2d(channels, squeeze, 1, 1, 0, 1, true, device),
            fc2: conv2d(squeeze, channels, 1, 1, 0, 1, true, device),
        }
    }

    /// Rescales each channel of `x` by its learned excitation.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let scale = adaptive_avg_pool2d(x.clone(), [1, 1]);
        let scale = relu(apply_conv2d(&self.fc1, scale));
        // torchvision's Hardsigmoid is relu6(x + 3) / 6 (Burn's default alpha is 0.2).
        let scale = hard_sigmoid(apply_conv2d(&self.fc2, scale), 1.0 / 6.0, 0.5);
        x * scale
    }
}
