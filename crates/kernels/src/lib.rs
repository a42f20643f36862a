//! CubeCL kernels for the GPU path, reached from burn tensors through a backend extension.
//!
//! - `coopmat_gemm`: bf16 x bf16 -> f32 matmul on the tensor cores through workgroup-scope
//!   cooperative matrices (Vulkan `VK_NV_cooperative_matrix2`, cubecl's `cmma::Matrix<_, Cube>`).
//! - `grouped_mxfp4`: the MoE experts' grouped matmul with MXFP4 weights decoded in the kernel.
//! - `bf16_rows`, `grouped_mxfp4_rows`: the same two products for a few rows (decoding), without
//!   tensor cores, streaming the weights once per few rows.
//! - `logsumexp_rows`: the log-softmax normaliser of wide rows (scoring over the vocabulary).
//!
//! Every op here has a plain burn reference it is checked against (`reference_*`), which is
//! also what the CPU path runs.

pub mod bf16_rows;
pub mod coopmat_gemm;
pub mod grouped_mxfp4;
pub mod grouped_mxfp4_rows;
pub mod logsumexp_rows;
