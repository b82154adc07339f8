use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::conv2d;
use crate::kernels::burn_ext::apply_conv2d;

/// SqueezeNet's Fire module: a 1x1 squeeze convolution feeding parallel 1x1 and 3x3 expand
/// convolutions whose ReLU outputs are concatenated along channels.
#[derive(Module, Debug)]
pub struct Fire {
    /// `inplanes -> squeeze`, 1x1.
    pub squeeze: Conv2d,
    /// `squeeze -> expand1x1`, 1x1.
    pub expand1x1: Conv2d,
    /// `squeeze -> expand3x3`, 3x3, padding 1.
    pub expand3x3: Conv2d,
}

impl Fire {
    /// `Fire(inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes)`.
    pub fn new(inplanes: usize, squeeze: usize, e1: usize, e3: usize, device: &Device) -> Self {
        Fire {
            squeeze: conv2d(inplanes, squeeze, 1, 1, 0, 1, true, device),
            expand1x1: conv2d(squeeze, e1, 1, 1, 0, 1, true, device),
            expand3x3: conv2d(squeeze, e3, 3, 1, 1, 1, true, device),
        }
    }

    /// squeeze -> relu -> [expand1x1 -> relu, expand3x3 -> relu] concatenated.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let s = relu(apply_conv2d(&self.squeeze, x));
        let a = relu(apply_conv2d(&self.expand1x1, s.clone()));
        let b = relu(apply_conv2d(&self.expand3x3, s));
        Tensor::cat(vec![a, b], 1)
    }
}
