//! The model architectures: torchvision's `squeezenet1_1`, `mobilenet_v3_small` and `vgg11`,
//! plus a small CNN for tests and demos. Each is a plain Burn module whose parameter names
//! and order follow torchvision's `state_dict`.

mod mobilenet_v3;
mod squeezenet;
mod tiny_cnn;
mod vgg;

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use mobilenet_v3::MobileNetV3;
pub use squeezenet::SqueezeNet;
pub use tiny_cnn::TinyCnn;
pub use vgg::Vgg;

use crate::ModelError;

/// The network architectures peerless can train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// The small CNN for tests and demos.
    TinyCnn,
    /// torchvision `squeezenet1_1`.
    #[serde(rename = "squeezenet1_1")]
    SqueezeNet1_1,
    /// torchvision `mobilenet_v3_small`.
    #[serde(rename = "mobilenet_v3_small")]
    MobileNetV3Small,
    /// torchvision `vgg11`.
    Vgg11,
}

impl Architecture {
    /// Every architecture, in the order tables list them.
    pub const ALL: [Architecture; 4] = [
        Architecture::TinyCnn,
        Architecture::SqueezeNet1_1,
        Architecture::MobileNetV3Small,
        Architecture::Vgg11,
    ];

    /// The name used on the command line and in files (torchvision's function name).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::TinyCnn => "tiny_cnn",
            Architecture::SqueezeNet1_1 => "squeezenet1_1",
            Architecture::MobileNetV3Small => "mobilenet_v3_small",
            Architecture::Vgg11 => "vgg11",
        }
    }

    /// Default square input size: the original study's (squeezenet1_1 21 px, vgg11 32 px,
    /// mobilenet_v3_small 29 px) and MNIST's 28 px for the small CNN.
    pub fn default_input_size(self) -> usize {
        match self {
            Architecture::TinyCnn => 28,
            Architecture::SqueezeNet1_1 => 21,
            Architecture::MobileNetV3Small => 29,
            Architecture::Vgg11 => 32,
        }
    }

    /// Smallest square input the network accepts (every pooling stage keeps at least 1 px).
    pub fn min_input_size(self) -> usize {
        match self {
            Architecture::TinyCnn => 4,
            Architecture::SqueezeNet1_1 => 17,
            Architecture::MobileNetV3Small => 1,
            Architecture::Vgg11 => 32,
        }
    }

    /// Default number of input channels: 1 for the small CNN (gray images as they are), 3
    /// for the torchvision models (gray images repeated to 3 channels, as the original did).
    pub fn default_in_channels(self) -> usize {
        match self {
            Architecture::TinyCnn => 1,
            _ => 3,
        }
    }

    /// Every valid name, for error messages.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|a| a.name()).collect()
    }

    fn init_rule(self, name: &str, shape: &[usize]) -> Init {
        match self {
            Architecture::TinyCnn => tiny_cnn::init(name, shape),
            Architecture::SqueezeNet1_1 => squeezenet::init(name, shape),
            Architecture::MobileNetV3Small => mobilenet_v3::init(name, shape),
            Architecture::Vgg11 => vgg::init(name, shape),
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Architecture {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|a| a.name() == wanted)
            .ok_or_else(|| ModelError::unknown("model", s, &Self::names()))
    }
}

/// Which network to build and its head/stem options; two peers with equal specs build
/// identical parameter layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelSpec {
    pub arch: Architecture,
    pub num_classes: usize,
    pub in_channels: usize,
}

impl ModelSpec {
    /// The architecture with 10 classes and its default input channels.
    pub fn new(arch: Architecture) -> Self {
        ModelSpec {
            arch,
            num_classes: 10,
            in_channels: arch.default_in_channels(),
        }
    }

    /// Sets the number of classes.
    pub fn with_num_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// Sets the number of input channels.
    pub fn with_in_channels(mut self, in_channels: usize) -> Self {
        self.in_channels = in_channels;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        if self.num_classes == 0 {
            return Err(ModelError::InvalidConfig(
                "num_classes must be at least 1".into(),
            ));
        }
        if self.in_channels == 0 {
            return Err(ModelError::InvalidConfig(
                "in_channels must be at least 1".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn init_rule(&self, name: &str, shape: &[usize]) -> Init {
        self.arch.init_rule(name, shape)
    }
}

/// How one parameter tensor is initialised, following torchvision's `__init__` of each model
/// (and PyTorch's layer defaults for the small CNN).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    Zeros,
    Ones,
    Normal {
        std: f32,
    },
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: `N(0, sqrt(2 / fan_out))`.
    KaimingNormalFanOut,
    /// `kaiming_uniform_()` with its defaults (a = 0): `U(±sqrt(6 / fan_in))`.
    KaimingUniformFanIn,
    /// PyTorch's default layer weight init, `kaiming_uniform_(a=sqrt(5))`: `U(±1/sqrt(fan_in))`.
    KaimingUniformDefault,
    /// PyTorch's default layer bias init: `U(±1/sqrt(fan_in))` of the layer's weight.
    BiasUniformDefault,
}

/// Any of the architectures, as one Burn module.
#[derive(Module, Debug)]
// Built once per model and never moved in a hot path: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Net {
    TinyCnn(TinyCnn),
    SqueezeNet(SqueezeNet),
    MobileNetV3(MobileNetV3),
    Vgg(Vgg),
}

impl Net {
    /// Builds the network on `device` (weights zero until [`crate::Model`] initialises them).
    pub fn new(spec: &ModelSpec, device: &Device) -> Self {
        let (c, k) = (spec.in_channels, spec.num_classes);
        match spec.arch {
            Architecture::TinyCnn => Net::TinyCnn(TinyCnn::new(c, k, device)),
            Architecture::SqueezeNet1_1 => Net::SqueezeNet(SqueezeNet::new(c, k, device)),
            Architecture::MobileNetV3Small => Net::MobileNetV3(MobileNetV3::new(c, k, device)),
            Architecture::Vgg11 => Net::Vgg(Vgg::new(c, k, device)),
        }
    }

    /// `[batch, channels, height, width]` images to `[batch, classes]` logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Net::TinyCnn(m) => m.forward(x),
            Net::SqueezeNet(m) => m.forward(x),
            Net::MobileNetV3(m) => m.forward(x),
            Net::Vgg(m) => m.forward(x),
        }
    }
}
