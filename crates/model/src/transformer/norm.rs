//! RMSNorm (spec 4.3): y = w * x / sqrt(mean(x^2) + eps), no bias, weight not offset by one.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let variance = x.clone().square().mean_dim(D - 1);
        let inv_rms = variance.add_scalar(self.eps).sqrt().recip();
        x * inv_rms * self.weight.val().unsqueeze::<D>()
    }
}
