//! Products with the large non-expert matrices (attention projections, lm_head) in the dtype
//! they are stored in: f32 weights use burn's matmul (the reference), bf16 weights the
//! tensor-core kernel (`gpt_oss_kernels::coopmat_gemm`, or `bf16_rows` for a few rows; GPU only;
//! activations rounded to bf16, f32 accumulation and output). [`GptOss::store_weights_bf16`]
//! switches a loaded model.

use burn::nn::Linear;
use burn::tensor::{DType, Tensor};
use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
use gpt_oss_kernels::bf16_rows;

/// Up to this many rows, bf16 products use the few-rows kernel (decoding) instead of the
/// tensor cores.
pub const FEW_ROWS: usize = 4 * bf16_rows::ROWS;

/// Whether `weight` puts its layer on the GPU kernel path (tensor-core products, the row
/// logsumexp kernel for softmax): only [`GptOss::store_weights_bf16`] stores bf16 weights, and
/// the CLI calls it on the GPU only.
pub fn on_kernel_path(weight: &Tensor<2>) -> bool {
    weight.dtype() == DType::BF16
}

/// `x` [m, in] times `w` [in, out] -> [m, out] f32.
pub fn times_weight(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    times_weight_plus_bias(x, w, None)
}

/// `x` [m, in] times `w` [in, out], plus `bias` [out] when given -> [m, out] f32. The GPU
/// kernels add the bias themselves (decoding counts kernels; scoring saves a pass per product).
pub fn times_weight_plus_bias(x: Tensor<2>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    times_weight_few_rows_up_to(x, w, bias, FEW_ROWS)
}

/// [`times_weight_plus_bias`] with the few-rows kernel taken up to `few_rows` rows instead of
/// [`FEW_ROWS`] (the lm_head's limit is lower: `vocab::FEW_ROWS`).
pub fn times_weight_few_rows_up_to(
    x: Tensor<2>,
    w: Tensor<2>,
    bias: Option<Tensor<1>>,
    few_rows: usize,
) -> Tensor<2> {
    if !on_kernel_path(&w) {
        let product = x.matmul(w);
        return match bias {
            Some(bias) => product + bias.unsqueeze::<2>(),
            None => product,
        };
    }
    if x.dims()[0] <= few_rows && bf16_rows::supports(w.dims()[1]) {
        return bf16_rows::bf16_rows_matmul(x, w, bias);
    }
    gpt_oss_kernels::coopmat_gemm::coopmat_gemm_plus_bias(x, w, bias)
}

/// `layer` applied to `x` [B, T, in] -> [B, T, out].
pub fn linear(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let weight = layer.weight.val();
    if !on_kernel_path(&weight) {
        return layer.forward(x);
    }
    let [b, t, input] = x.dims();
    let bias = layer.bias.as_ref().map(|bias| bias.val());
    let out = times_weight_plus_bias(x.reshape([b * t, input]), weight, bias);
    let width = out.dims()[1];
    out.reshape([b, t, width])
}

/// `layer` with its weight rounded to bf16 (bias kept f32).
pub fn to_bf16(layer: Linear) -> Linear {
    Linear {
        weight: layer.weight.map(to_nearest_bf16),
        ..layer
    }
}
