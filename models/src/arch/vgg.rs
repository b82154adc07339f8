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

/// The side of the feature map the classifier reads (torchvision's adaptive pooling to 7x7).
const POOLED: usize = 7;

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
                ClassifierLayer::Linear(Linear::new(512 * POOLED * POOLED, 4096, true, device)),
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
        let [_, _, h, w] = x.dims();
        let (mut x, first) = match &self.classifier[0] {
            // At 32x32 inputs the features end at 1x1, and the adaptive pooling would copy
            // each value over 7x7 for the first layer to multiply 49 copies by 49 weights:
            // the layer adds those weights instead (the same output, 49x fewer products).
            ClassifierLayer::Linear(l) if [h, w] == [1, 1] => {
                (l.forward_repeated(x.flatten::<2>(1, 3), POOLED * POOLED), 1)
            }
            _ => (
                adaptive_avg_pool2d(x, [POOLED, POOLED]).flatten::<2>(1, 3),
                0,
            ),
        };
        for layer in &self.classifier[first..] {
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

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    /// The classifier's shortcut for 1x1 features gives what pooling them to 7x7 and
    /// applying the layer gives, values and gradients.
    #[test]
    fn the_first_layer_on_1x1_features_equals_the_layer_on_their_pooled_copies() {
        let device = Device::flex().autodiff();
        let normal = Distribution::Normal(0.0, 1.0);
        let mut layer = Linear::new(4 * POOLED * POOLED, 6, true, &device);
        let w = Tensor::<2>::random([6, 4 * POOLED * POOLED], normal, &device);
        layer.weight = burn::module::Param::from_tensor(w);
        let x = Tensor::<4>::random([3, 4, 1, 1], normal, &device).require_grad();
        let pooled = adaptive_avg_pool2d(x.clone(), [POOLED, POOLED]).flatten::<2>(1, 3);
        let want = layer.forward(pooled);
        let got = layer.forward_repeated(x.clone().flatten::<2>(1, 3), POOLED * POOLED);
        let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        let (g_want, g_got) = (want.clone().sum().backward(), got.clone().sum().backward());
        let close = |a: Vec<f32>, b: Vec<f32>| {
            assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(&b) {
                assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} vs {b}");
            }
        };
        close(values(got), values(want));
        let dx = |g| x.grad(g).unwrap().flatten::<2>(1, 3);
        close(values(dx(&g_got)), values(dx(&g_want)));
        let dw = |g| layer.weight.val().grad(g).unwrap();
        close(values(dw(&g_got)), values(dw(&g_want)));
    }
}
