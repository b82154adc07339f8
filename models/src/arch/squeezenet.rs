use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Relu};
use burn::tensor::{Device, Tensor};

use super::Init;
use crate::kernels::burn_ext::{apply_conv2d, apply_max_pool2d};
use crate::layers::dropout::dropout;
use crate::layers::{Fire, conv2d};

/// A layer of SqueezeNet's `features` sequence (indices as in torchvision).
#[derive(Module, Debug)]
// Built once per model and never moved in a hot path: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum FeatureLayer {
    Conv(Conv2d),
    Relu(Relu),
    Pool(MaxPool2d),
    Fire(Fire),
}

/// A layer of SqueezeNet's `classifier` sequence.
#[derive(Module, Debug)]
pub enum ClassifierLayer {
    Dropout(Dropout),
    Conv(Conv2d),
    Relu(Relu),
    Pool(AdaptiveAvgPool2d),
}

/// torchvision's `squeezenet1_1`: 727,626 parameters at 10 classes.
#[derive(Module, Debug)]
pub struct SqueezeNet {
    pub features: Vec<FeatureLayer>,
    pub classifier: Vec<ClassifierLayer>,
}

impl SqueezeNet {
    pub fn new(in_channels: usize, num_classes: usize, device: &Device) -> Self {
        let pool = || {
            FeatureLayer::Pool(
                MaxPool2dConfig::new([3, 3])
                    .with_strides([2, 2])
                    .with_ceil_mode(true)
                    .init(),
            )
        };
        let fire = |i, s, e1, e3| FeatureLayer::Fire(Fire::new(i, s, e1, e3, device));
        SqueezeNet {
            features: vec![
                FeatureLayer::Conv(conv2d(in_channels, 64, 3, 2, 0, 1, true, device)),
                FeatureLayer::Relu(Relu),
                pool(),
                fire(64, 16, 64, 64),
                fire(128, 16, 64, 64),
                pool(),
                fire(128, 32, 128, 128),
                fire(256, 32, 128, 128),
                pool(),
                fire(256, 48, 192, 192),
                fire(384, 48, 192, 192),
                fire(384, 64, 256, 256),
                fire(512, 64, 256, 256),
            ],
            classifier: vec![
                ClassifierLayer::Dropout(DropoutConfig::new(0.5).init()),
                ClassifierLayer::Conv(conv2d(512, num_classes, 1, 1, 0, 1, true, device)),
                ClassifierLayer::Relu(Relu),
                ClassifierLayer::Pool(AdaptiveAvgPool2dConfig::new([1, 1]).init()),
            ],
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for layer in &self.features {
            x = match layer {
                FeatureLayer::Conv(l) => apply_conv2d(l, x),
                FeatureLayer::Relu(l) => l.forward(x),
                FeatureLayer::Pool(l) => apply_max_pool2d(l, x),
                FeatureLayer::Fire(l) => l.forward(x),
            };
        }
        for layer in &self.classifier {
            x = match layer {
                ClassifierLayer::Dropout(l) => dropout(l, x),
                ClassifierLayer::Conv(l) => apply_conv2d(l, x),
                ClassifierLayer::Relu(l) => l.forward(x),
                ClassifierLayer::Pool(l) => l.forward(x),
            };
        }
        x.flatten::<2>(1, 3)
    }
}

/// torchvision: `kaiming_uniform_` for convolutions, `normal_(0, 0.01)` for the final one,
/// zero biases.
pub(super) fn init(name: &str, _shape: &[usize]) -> Init {
    if name == "classifier.1.weight" {
        Init::Normal { std: 0.01 }
    } else if name.ends_with("weight") {
        Init::KaimingUniformFanIn
    } else {
        Init::Zeros
    }
}
