use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Relu};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor};

use super::Init;
use crate::kernels::burn_ext::{apply_conv2d, apply_max_pool2d};
use crate::layers::dropout::dropout;
use crate::layers::{Linear, conv2d};

/// A layer of VGG's `features` sequence (indices as in torchvision).
#[derive(Module, Debug)]
pub enum FeatureLayer {
    Conv(Conv2d),
    Relu(Relu),
    Pool(MaxPool2d),
}

/// A layer of VGG's `classifier` sequence.
#[derive(Module, Debug)]
pub enum ClassifierLayer {
    Linear(Linear),
    Relu(Relu),
    Dropout(Dropout),
}

/// torchvision's `vgg11` (configuration "A", no batch norm): 128,807,306 parameters at
/// 10 classes, 103 M of them in the first classifier layer.
#[derive(Module, Debug)]
pub struct Vgg {
    pub features: Vec<FeatureLayer>,
    pub classifier: Vec<ClassifierLayer>,
}

/// Configuration "A": output channels, 0 meaning a 2x2 max-pool.
const CFG_A: [usize; 13] = [64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];

impl Vgg {
    pub fn new(in_channels: usize, num_classes: usize, device: &Device) -> Self {
        let mut features = Vec::new();
        let mut cin = in_channels;
        for &c in &CFG_A {
            if c == 0 {
                features.push(FeatureLayer::Pool(
                    MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
                ));
            } else {
                features.push(FeatureLayer::Conv(conv2d(cin, c, 3, 1, 1, 1, true, device)));
                features.push(FeatureLayer::Relu(Relu));
                cin = c;
            }
        }
        let dropout = || ClassifierLayer::Dropout(DropoutConfig::new(0.5).init());
        Vgg {
            features,
            classifier: vec![
                ClassifierLayer::Linear(Linear::new(512 * 7 * 7, 4096, true, device)),
                ClassifierLayer::Relu(Relu),
                dropout(),
                ClassifierLayer::Linear(Linear::new(4096, 4096, true, device)),
                ClassifierLayer::Relu(Relu),
                dropout(),
                ClassifierLayer::Linear(Linear::new(4096, num_classes, true, device)),
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
            };
        }
        let mut x = adaptive_avg_pool2d(x, [7, 7]).flatten::<2>(1, 3);
        for layer in &self.classifier {
            x = match layer {
                ClassifierLayer::Linear(l) => l.forward(x),
                ClassifierLayer::Relu(l) => l.forward(x),
                ClassifierLayer::Dropout(l) => dropout(l, x),
            };
        }
        x
    }
}

/// torchvision: `kaiming_normal_(mode="fan_out", nonlinearity="relu")` for convolutions,
/// `normal_(0, 0.01)` for linear layers, zero biases.
pub(super) fn init(name: &str, shape: &[usize]) -> Init {
    match (name.ends_with("weight"), shape.len()) {
        (true, 4) => Init::KaimingNormalFanOut,
        (true, _) => Init::Normal { std: 0.01 },
        (false, _) => Init::Zeros,
    }
}
