use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

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

    /// `y = x W^T + b`, computed as `(W x^T)^T` so the weight gradient comes out of the
    /// backward pass as `dy^T x`, already in the weight's `[out, in]` layout (as `x W^T` it
    /// would be a transposed view, and copying VGG11's 411 MB classifier gradient out of a
    /// transposed view costs more than the product itself).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.weight.val().matmul(x.transpose()).transpose();
        match &self.bias {
            Some(b) => y + b.val().unsqueeze::<2>(),
            None => y,
        }
    }
}
