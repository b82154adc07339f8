//! Choosing the compute device: the CPU (Burn's `flex` backend) or a GPU through burn-wgpu
//! on Vulkan when built with the `wgpu` feature.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::ModelError;

/// The device a user asks for with `--device`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// Burn's pure-Rust `flex` CPU backend (SIMD, all cores).
    #[default]
    Cpu,
    /// A GPU through burn-wgpu on Vulkan (needs the `wgpu` cargo feature).
    Wgpu,
}

impl DeviceChoice {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Wgpu => "wgpu",
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceChoice {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" | "vulkan" => Ok(DeviceChoice::Wgpu),
            _ => Err(ModelError::unknown("device", s, &["cpu", "wgpu"])),
        }
    }
}

/// Returns a ready device, or an error (never a panic) when it cannot be used.
pub fn select_device(choice: DeviceChoice) -> Result<Device, ModelError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Wgpu => wgpu_device(),
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, ModelError> {
    Err(ModelError::DeviceUnavailable(
        "this build has no GPU support; rebuild with `cargo build --release --features wgpu` \
         (burn-wgpu on Vulkan) or use `--device cpu`"
            .into(),
    ))
}

/// burn-wgpu panics when no adapter exists; probe it with one tiny operation and turn a
/// panic into an error.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, ModelError> {
    use burn::tensor::{DeviceKind, Tensor};

    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let device = Device::vulkan(DeviceKind::DefaultDevice);
        let sum = Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>();
        (device, sum)
    });
    std::panic::set_hook(previous);
    match probe {
        Ok((device, sum)) if sum == 4.0 => Ok(device),
        Ok((_, sum)) => Err(ModelError::DeviceUnavailable(format!(
            "the Vulkan device computed 1+1+1+1 = {sum}"
        ))),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            Err(ModelError::DeviceUnavailable(format!(
                "no usable Vulkan GPU adapter ({reason}); install a Vulkan driver and \
                 libvulkan1, or use `--device cpu`"
            )))
        }
    }
}
