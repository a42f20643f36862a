//! Products with the large non-expert matrices (attention projections, lm_head) in the dtype
//! they are stored in: f32 weights use burn's matmul (the reference), bf16 weights the
//! tensor-core kernel (`gpt_oss_kernels::coopmat_gemm`, or `bf16_rows` for a few rows; GPU only;
//! activations rounded to bf16, f32 accumulation and output). [`GptOss::store_weights_bf16`]
//! switches a loaded model.

use burn::nn::Linear;
use burn::tensor::{DType, Tensor};
use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
use gpt_oss_kernels::{bf16_rows, coopmat_gemm};

/// Up to this many rows, bf16 products use the few-rows kernel (decoding) instead of the
/// tensor cores, except where [`takes_rows_kernel`] gives them to the tensor cores' few-rows
/// tiling.
pub const FEW_ROWS: usize = 4 * bf16_rows::ROWS;

/// Whether a bf16 product of `m` rows by a `[k, n]` weight runs on the few-rows kernel (the
/// CUDA cores): up to `few_rows` rows, at widths it takes, but past one block of
/// `bf16_rows::ROWS` rows not where the tensor cores take the product whole in
/// `coopmat_gemm::FEW_ROWS_TILING`. On an H200 that tiling took 64 us against the few-rows
/// kernel's 155 at 32 x 2880 x 4096, and 78 against 217 at 32 x 4096 x 2880 (queued launches,
/// docs/benchmarks.md, fortieth round).
pub fn takes_rows_kernel(m: usize, n: usize, k: usize, few_rows: usize) -> bool {
    m <= few_rows
        && bf16_rows::supports(n)
        && (m <= bf16_rows::ROWS || !coopmat_gemm::takes_few_rows_tiling(m, n, k))
}

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
    if is_tensor_core_product(x.dims()[0], &w, few_rows) {
        return coopmat_gemm::coopmat_gemm_plus_bias(x, w, bias);
    }
    bf16_rows::bf16_rows_matmul(x, w, bias)
}

/// Whether [`times_weight_few_rows_up_to`] runs a product of `m` rows by `w` [k, n] (with
/// `few_rows`) on the tensor cores, which read their input rounded to bf16 (so a producer may
/// write bf16 for it): bf16 weights past the few-rows kernel ([`takes_rows_kernel`]). [`linear`]
/// takes `few_rows` = [`FEW_ROWS`].
pub fn is_tensor_core_product(m: usize, w: &Tensor<2>, few_rows: usize) -> bool {
    let [k, n] = w.dims();
    on_kernel_path(w) && !takes_rows_kernel(m, n, k, few_rows)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_one_block_of_rows_the_tensor_cores_take_what_their_few_rows_tiling_takes_whole() {
        // gpt-oss's o projection [4096, 2880] and q projection [2880, 4096].
        for (n, k) in [(2880, 4096), (4096, 2880)] {
            // Decoding at batch 1 to 8: one block of rows, the few-rows kernel.
            for m in [1, 2, 8] {
                assert!(takes_rows_kernel(m, n, k, FEW_ROWS), "{m} {n} {k}");
            }
            // A 16-token prefill, a batch-32 decode step: the tensor cores.
            for m in [16, 32] {
                assert!(!takes_rows_kernel(m, n, k, FEW_ROWS), "{m} {n} {k}");
            }
            // Rows not whole fragments: the few-rows kernel, as before.
            for m in [9, 20, 31] {
                assert!(takes_rows_kernel(m, n, k, FEW_ROWS), "{m} {n} {k}");
            }
            // Past `few_rows`: the tensor cores.
            assert!(!takes_rows_kernel(33, n, k, FEW_ROWS));
            assert!(!takes_rows_kernel(8, n, k, 4));
        }
        // Widths the few-rows kernel does not take.
        assert!(!takes_rows_kernel(1, 2884, 4096, FEW_ROWS));
        // Columns not whole fragments (but whole lanes): the few-rows kernel at 16 rows.
        assert!(takes_rows_kernel(16, 200, 2880, FEW_ROWS));
    }
}
