//! CubeCL kernels for the GPU path, reached from burn tensors through a backend extension.
//!
//! - `coopmat_gemm`: bf16 x bf16 -> f32 matmul on the tensor cores through workgroup-scope
//!   cooperative matrices (Vulkan `VK_NV_cooperative_matrix2`, cubecl's `cmma::Matrix<_, Cube>`);
//!   `coopmat_warps`: the same product with each subgroup on its own block of the tile in
//!   subgroup-scope fragments (`Scheme::Warps`, the default; also the grouped kernel's loop);
//!   `staged_tiles`: its input tiles (and the grouped kernel's rows) staged in shared memory;
//!   `tile_order`: which tiles the first grid dimension walks (which input the L2 cache keeps);
//!   `coopmat_ceiling`: that kernel's K loop without its global loads (a benchmark, not a
//!   product); `coopmat_specialized`: producer and consumer subgroups on a ring of stages
//!   instead of a barrier per K step (`Scheme::Specialized`, measured against `Warps`).
//! - `grouped_mxfp4`: the MoE experts' grouped matmul with MXFP4 weights decoded in the kernel.
//! - `bf16_rows`, `grouped_mxfp4_rows`: the same two products for a few rows (decoding), without
//!   tensor cores, streaming the weights once per few rows (`bf16_rows_three`: q, k and v side
//!   by side in one launch).
//! - `logsumexp_rows`: the log-softmax normaliser of wide rows (scoring over the vocabulary).
//! - `rms_norm_rows`, `rotary_rows`, `router_top_k`, `experts_pairs`, `attention_rows`:
//!   decoding's norm (with the residual add), RoPE (with the q/k/v split), router, experts (the
//!   down kernel with the residual add) and attention in one kernel each instead of tens of
//!   burn kernels (decoding is bound by kernels per token).
//! - `attention_tiles`: scoring's and prefill's attention (many queries) in one kernel on the
//!   tensor cores, flash-style (each subgroup on its own queries in fragments), instead of f32
//!   matmuls around passes over the scores.
//!
//! - `write_at_index`: an in-place write at an index held on the device (the state of a decode
//!   step captured once and replayed); `greedy_picks`: a decode step's argmax written into that
//!   state in two launches; `embedding_rows`: the step's embedding lookup in one launch;
//!   `write_in_place`: a host-offset write into a kept buffer (that state refilled for the next
//!   generation, so the captured step is replayed again rather than captured anew).
//!
//! - `bf16_nearest`: f32 -> bf16 rounded to nearest even, in kernels and from burn tensors
//!   (burn's cast truncates on NVIDIA's Vulkan driver); every bf16 input goes through it.
//!
//! Every op here has a plain burn reference it is checked against (`reference_*`), which is
//! also what the CPU path runs.

pub mod attention_rows;
pub mod attention_tiles;
pub mod bf16_nearest;
pub mod bf16_rows;
pub mod coopmat_ceiling;
pub mod coopmat_gemm;
pub mod coopmat_specialized;
pub mod coopmat_tiling;
pub mod coopmat_warps;
pub mod embedding_rows;
pub mod expert_groups;
pub mod experts_pairs;
pub mod greedy_picks;
pub mod grouped_mxfp4;
pub mod grouped_mxfp4_rows;
#[cfg(test)]
mod kernel_expansion;
pub mod launch;
pub mod logsumexp_rows;
pub mod rms_norm_rows;
pub mod rotary_rows;
pub mod router_logits;
pub mod router_top_k;
pub mod staged_tiles;
pub mod tile_order;
pub mod workgroup_reduce;
pub mod write_at_index;
pub mod write_in_place;

/// The signature the attention kernels share (`attention_rows::attention_rows` and
/// `attention_rows_bf16`, `attention_tiles::attention_tiles`): q [B, heads, T, D], k and v [B,
/// kv_heads, S, D], sinks [heads], key ranges (lo, hi per row and query, 32-bit), score scale ->
/// [B, T, heads, D] (f32 from `attention_rows`; bf16 from `attention_rows_bf16` and
/// `attention_tiles`, for outputs only a bf16 product reads).
pub type AttentionKernel = fn(
    burn::tensor::Tensor<4>,
    burn::tensor::Tensor<4>,
    burn::tensor::Tensor<4>,
    burn::tensor::Tensor<1>,
    burn::tensor::Tensor<1, burn::tensor::Int>,
    f32,
) -> burn::tensor::Tensor<4>;
