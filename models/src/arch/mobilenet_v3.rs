use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor};

use super::Init;
use crate::layers::dropout::dropout;
use crate::layers::{
    Activation, ConvNormAct, HardSwish, InvertedResidual, InvertedResidualConfig, Linear,
};

/// A layer of MobileNetV3's `features` sequence (indices as in torchvision).
#[derive(Module, Debug)]
// Built once per model and never moved in a hot path: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum FeatureLayer {
    Conv(ConvNormAct),
    Block(InvertedResidual),
}

/// A layer of MobileNetV3's `classifier` sequence.
#[derive(Module, Debug)]
pub enum ClassifierLayer {
    Linear(Linear),
    HardSwish(HardSwish),
    Dropout(Dropout),
}

/// torchvision's `mobilenet_v3_small`: 1,528,106 parameters at 10 classes.
#[derive(Module, Debug)]
pub struct MobileNetV3 {
    pub features: Vec<FeatureLayer>,
    pub classifier: Vec<ClassifierLayer>,
}

/// torchvision's `_mobilenet_v3_conf("mobilenet_v3_small")` table.
fn small_config() -> Vec<InvertedResidualConfig> {
    use Activation::{HardSwish as HS, Relu as RE};
    let row = |input, kernel, expanded, out, use_se, activation, stride| InvertedResidualConfig {
        input,
        kernel,
        expanded,
        out,
        use_se,
        activation,
        stride,
    };
    vec![
        row(16, 3, 16, 16, true, RE, 2),
        row(16, 3, 72, 24, false, RE, 2),
        row(24, 3, 88, 24, false, RE, 1),
        row(24, 5, 96, 40, true, HS, 2),
        row(40, 5, 240, 40, true, HS, 1),
        row(40, 5, 240, 40, true, HS, 1),
        row(40, 5, 120, 48, true, HS, 1),
        row(48, 5, 144, 48, true, HS, 1),
        row(48, 5, 288, 96, true, HS, 2),
        row(96, 5, 576, 96, true, HS, 1),
        row(96, 5, 576, 96, true, HS, 1),
    ]
}

impl MobileNetV3 {
    pub fn new(in_channels: usize, num_classes: usize, device: &Device) -> Self {
        let config = small_config();
        let first = config[0].input;
        let last = config[config.len() - 1].out;
        let last_conv = 6 * last;
        let last_channel = 1024;

        let mut features = vec![FeatureLayer::Conv(ConvNormAct::new(
            in_channels,
            first,
            3,
            2,
            1,
            Activation::HardSwish,
            device,
        ))];
        features.extend(
            config
                .into_iter()
                .map(|c| FeatureLayer::Block(InvertedResidual::new(c, device))),
        );
        features.push(FeatureLayer::Conv(ConvNormAct::new(
            last,
            last_conv,
            1,
            1,
            1,
            Activation::HardSwish,
            device,
        )));
        MobileNetV3 {
            features,
            classifier: vec![
                ClassifierLayer::Linear(Linear::new(last_conv, last_channel, true, device)),
                ClassifierLayer::HardSwish(HardSwish),
                ClassifierLayer::Dropout(DropoutConfig::new(0.2).init()),
                ClassifierLayer::Linear(Linear::new(last_channel, num_classes, true, device)),
            ],
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for layer in &self.features {
            x = match layer {
                FeatureLayer::Conv(l) => l.forward(x),
                FeatureLayer::Block(l) => l.forward(x),
            };
        }
        let mut x = adaptive_avg_pool2d(x, [1, 1]).flatten::<2>(1, 3);
        for layer in &self.classifier {
            x = match layer {
                ClassifierLayer::Linear(l) => l.forward(x),
                ClassifierLayer::HardSwish(l) => l.forward(x),
                ClassifierLayer::Dropout(l) => dropout(l, x),
            };
        }
        x
    }
}

/// torchvision: `kaiming_normal_(mode="fan_out")` for convolutions, ones/zeros for batch
/// norm, `normal_(0, 0.01)` for linear layers, zero biases.
pub(super) fn init(name: &str, shape: &[usize]) -> Init {
    let is_weight = name.ends_with("weight");
    match (is_weight, shape.len()) {
        (true, 4) => Init::KaimingNormalFanOut,
        (true, 2) => Init::Normal { std: 0.01 },
        (true, _) => Init::Ones,
        _ if name.ends_with("running_var") => Init::Ones,
        _ => Init::Zeros,
    }
}
