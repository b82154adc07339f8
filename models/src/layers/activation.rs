use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::{hard_swish, relu};

/// torchvision's `nn.Hardswish` (`x * relu6(x + 3) / 6`) as a parameterless module, so it can
/// sit in a layer list at the same index as in torchvision.
#[derive(Module, Debug, Default)]
pub struct HardSwish;

impl HardSwish {
    /// Applies hard-swish element-wise.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        hard_swish(x)
    }
}

/// The activation that follows a convolution block, chosen per block as in MobileNetV3's
/// configuration table (`RE` or `HS`), or none for linear bottlenecks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// No activation (MobileNetV3's projection convolutions).
    Identity,
    /// `nn.ReLU`.
    Relu,
    /// `nn.Hardswish`.
    HardSwish,
}

impl Activation {
    /// Applies the activation.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Identity => x,
            Activation::Relu => relu(x),
            Activation::HardSwish => hard_swish(x),
        }
    }
}
