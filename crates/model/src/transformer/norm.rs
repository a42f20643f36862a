//! RMSNorm (spec 4.3): y = w * x / sqrt(mean(x^2) + eps), no bias, weight not offset by one.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
use gpt_oss_kernels::rms_norm_rows::{add_rms_norm_rows, rms_norm_rows, rms_norm_rows_bf16};

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
    /// Run as one GPU kernel (`rms_norm_rows`) instead of burn's ops: set with the other GPU
    /// kernels by [`super::GptOss::store_weights_bf16`].
    #[module(skip)]
    pub on_kernel_path: bool,
}

impl RmsNorm {
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
            on_kernel_path: false,
        }
    }

    /// (`x + delta`, its norm): the residual add and the norm in one kernel on the kernel path.
    pub fn forward_after_residual(&self, x: Tensor<3>, delta: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        if self.on_kernel_path {
            let dims = x.dims();
            let rows = dims[0] * dims[1];
            let (sum, normed) = add_rms_norm_rows(
                x.reshape([rows, dims[2]]),
                delta.reshape([rows, dims[2]]),
                self.weight.val(),
                self.eps,
            );
            return (sum.reshape(dims), normed.reshape(dims));
        }
        let sum = x + delta;
        (sum.clone(), self.forward(sum))
    }

    /// [`Self::forward`] rounded to bf16 (to nearest even), for rows only bf16 products read:
    /// on the kernel path in the norm's own launch (no rounding pass over the f32 norm).
    pub fn forward_rounded_to_bf16<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.on_kernel_path {
            return self.kernel_over_rows(x, rms_norm_rows_bf16);
        }
        to_nearest_bf16(self.forward(x))
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.on_kernel_path {
            return self.kernel_over_rows(x, rms_norm_rows);
        }
        let variance = x.clone().square().mean_dim(D - 1);
        let inv_rms = variance.add_scalar(self.eps).sqrt().recip();
        x * inv_rms * self.weight.val().unsqueeze::<D>()
    }

    /// A norm kernel (on [rows, width], with the weight and eps) over the last dimension of `x`.
    fn kernel_over_rows<const D: usize>(
        &self,
        x: Tensor<D>,
        kernel: fn(Tensor<2>, Tensor<1>, f64) -> Tensor<2>,
    ) -> Tensor<D> {
        let dims = x.dims();
        let width = dims[D - 1];
        let rows = x.shape().num_elements() / width;
        kernel(x.reshape([rows, width]), self.weight.val(), self.eps).reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;

    /// The norm kernel's reference (burn ops on [rows, width]) is the model's norm.
    #[test]
    fn kernel_reference_is_the_model_norm() {
        let device = Device::flex();
        let weight = Tensor::<1>::random([48], Distribution::Default, &device);
        let norm = RmsNorm::new(weight.clone(), 1e-5);
        let x = Tensor::<3>::random([2, 5, 48], Distribution::Normal(0.0, 4.0), &device);
        let ours = norm.forward(x.clone()).reshape([10, 48]);
        let reference = gpt_oss_kernels::rms_norm_rows::reference_rms_norm_rows(
            x.reshape([10, 48]),
            weight,
            1e-5,
        );
        let diff: f32 = (ours - reference).abs().max().into_scalar();
        assert!(diff < 1e-6, "differs by {diff}");
    }
}
