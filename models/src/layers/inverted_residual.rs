use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::{Activation, ConvNormAct, SqueezeExcitation};

/// One row of MobileNetV3's configuration table
/// (`input, kernel, expanded, out, use_se, activation, stride`).
#[derive(Clone, Copy, Debug)]
pub struct InvertedResidualConfig {
    pub input: usize,
    pub kernel: usize,
    pub expanded: usize,
    pub out: usize,
    pub use_se: bool,
    pub activation: Activation,
    pub stride: usize,
}

/// A layer of an inverted-residual block, kept in one list so parameter indices match
/// torchvision's `block.N`.
#[derive(Module, Debug)]
pub enum BlockLayer {
    /// Expansion, depthwise or projection convolution.
    Conv(ConvNormAct),
    /// Squeeze-and-excitation.
    Se(SqueezeExcitation),
}

/// MobileNetV3's `InvertedResidual`: optional 1x1 expansion, depthwise kxk convolution,
/// optional squeeze-excitation, linear 1x1 projection, and a residual connection when the
/// shape is preserved.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    /// torchvision's `block` sequence.
    pub block: Vec<BlockLayer>,
    #[module(skip)]
    residual: bool,
}

/// torchvision's `_make_divisible(v, 8)`.
fn make_divisible(v: usize, divisor: usize) -> usize {
    let new_v = divisor.max((v + divisor / 2) / divisor * divisor);
    if (new_v as f64) < 0.9 * v as f64 {
        new_v + divisor
    } else {
        new_v
    }
}

impl InvertedResidual {
    /// Builds the block for one configuration row.
    pub fn new(c: InvertedResidualConfig, device: &Device) -> Self {
        let mut block = Vec::new();
        if c.expanded != c.input {
            block.push(BlockLayer::Conv(ConvNormAct::new(
                c.input,
                c.expanded,
                1,
                1,
                1,
                c.activation,
                device,
            )));
        }
        block.push(BlockLayer::Conv(ConvNormAct::new(
            c.expanded,
            c.expanded,
            c.kernel,
            c.stride,
            c.expanded,
            c.activation,
            device,
        )));
        if c.use_se {
            let squeeze = make_divisible(c.expanded / 4, 8);
            block.push(BlockLayer::Se(SqueezeExcitation::new(
                c.expanded, squeeze, device,
            )));
        }
        block.push(BlockLayer::Conv(ConvNormAct::new(
            c.expanded,
            c.out,
            1,
            1,
            1,
            Activation::Identity,
            device,
        )));
        InvertedResidual {
            block,
            residual: c.stride == 1 && c.input == c.out,
        }
    }

    /// Runs the block, adding the input back when the block is residual.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        for layer in &self.block {
            y = match layer {
                BlockLayer::Conv(l) => l.forward(y),
                BlockLayer::Se(l) => l.forward(y),
            };
        }
        if self.residual { y + x } else { y }
    }
}

#[cfg(test)]
mod tests {
    use super::make_divisible;

    #[test]
    fn make_divisible_matches_torchvision() {
        // Values torchvision computes for MobileNetV3-small's squeeze widths.
        assert_eq!(make_divisible(16 / 4, 8), 8);
        assert_eq!(make_divisible(96 / 4, 8), 24);
        assert_eq!(make_divisible(240 / 4, 8), 64);
        assert_eq!(make_divisible(120 / 4, 8), 32);
        assert_eq!(make_divisible(144 / 4, 8), 40);
        assert_eq!(make_divisible(288 / 4, 8), 72);
        assert_eq!(make_divisible(576 / 4, 8), 144);
    }
}
