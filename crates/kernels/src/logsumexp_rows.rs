//! log(sum(exp(row))) of every row of a wide matrix (the log-softmax normaliser over a
//! vocabulary of 201,088 logits).
//!
//! burn's fusion turns log-softmax into one reduction kernel whose only fused variant gives each
//! row to a single invocation: 2,048 rows of 201,088 logits then take about 60 ms. Here each row
//! has a workgroup of [`UNITS`](crate::workgroup_reduce::UNITS) invocations: strided maximum, then strided sum of exp(x - max),
//! each finished by a tree in shared memory.

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{empty_f32, grid_over_rows, same_dtype};
use crate::workgroup_reduce::{UNITS, workgroup_reduce};

#[cube(launch)]
fn logsumexp_rows_kernel(x: &[f32], out: &mut [f32], rows: u32, width: u32) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    let base = row * width;
    let unit = UNIT_POS;

    let mut best = f32::new(-3.0e38);
    let mut i = unit;
    while i < width {
        best = max(best, x[(base + i) as usize]);
        i += UNITS;
    }
    let row_max = workgroup_reduce(best, true);

    let mut sum = 0.0f32;
    let mut j = unit;
    while j < width {
        sum += (x[(base + j) as usize] - row_max).exp();
        j += UNITS;
    }
    let total = workgroup_reduce(sum, false);
    if unit == 0 {
        out[row as usize] = row_max + total.ln();
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait LogSumExpBackend: burn::backend::Backend {
    /// `x` [rows, width] f32 -> [rows] f32.
    #[fusion(dtype = same_dtype(x), shape = rows_shape(x))]
    fn logsumexp_rows(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn rows_shape(x: &Shape) -> Shape {
    Shape::from(vec![x[0]])
}

impl LogSumExpBackend for CubeBackend {
    fn logsumexp_rows(x: CubeTensor) -> CubeTensor {
        let x = into_contiguous(x);
        let [rows, width] = [x.meta.shape()[0], x.meta.shape()[1]];
        let out = empty_f32(&x, vec![rows]);
        logsumexp_rows_kernel::launch(
            &x.client.clone(),
            grid_over_rows(rows),
            CubeDim::new_1d(UNITS),
            x.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            rows as u32,
            width as u32,
        );
        out
    }
}

/// log(sum(exp(x))) per row of `x` [rows, width] (f32) -> [rows]. GPU only.
pub fn logsumexp_rows(x: Tensor<2>) -> Tensor<1> {
    Tensor::from_dispatch(
        <burn::backend::Dispatch as LogSumExpBackend>::logsumexp_rows(
            x.cast(DType::F32).into_dispatch(),
        ),
    )
}

/// What `logsumexp_rows` computes, with burn's ops.
pub fn reference_logsumexp_rows(x: Tensor<2>) -> Tensor<1> {
    let [rows, _] = x.dims();
    let max = x.clone().max_dim(1);
    ((x - max.clone()).exp().sum_dim(1).log() + max).reshape([rows])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles() {
        let compiled = compile_kernel!(
            logsumexp_rows_kernel::LogsumexpRowsKernel,
            CubeDim::new_1d(UNITS),
            [b b s s],
        );
        assert_eq!(compiled, Ok(()));
    }
}
