use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::Device;

/// Builds a square `nn.Conv2d(cin, cout, kernel, stride, padding, groups, bias)` the way
/// torchvision declares it. Weights start at zero: [`crate::Model::new`] overwrites every
/// parameter with torchvision's seeded initialisation in flat space.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_groups(groups)
        .with_bias(bias)
        .with_initializer(Initializer::Zeros)
        .init(device)
}
