use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::kernels::burn_ext::apply_linear_repeated;

/// A fully connected layer storing its weight as `[out, in]`, PyTorch's layout, so the flat
/// parameter vector and safetensors files need no transposition (Burn's `Linear` stores
/// `[in, out]`).
#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_output, d_input]`.
    pub weight: Param<Tensor<2>>,
    /// `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// A zero-initialised layer (the model initialises it in flat space).
    pub fn new(d_input: usize, d_output: usize, bias: bool, device: &Device) -> Self {
        Linear {
            weight: Param::from_tensor(Tensor::zeros([d_output, d_input], device)),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_output], device))),
        }
    }

    /// `y = x W^T + b`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_repeated(x, 1)
    }

    /// [`Linear::forward`] of the input that repeats each value of `x` `repeat` times in a
    /// row, without building it ([`apply_linear_repeated`]).
    pub fn forward_repeated(&self, x: Tensor<2>, repeat: usize) -> Tensor<2> {
        let bias = self.bias.as_ref().map(|b| b.val());
        apply_linear_repeated(&self.weight.val(), bias.as_ref(), x, repeat)
    }
}
