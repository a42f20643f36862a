//! RMSNorm of every row in one kernel (spec 4.3): y = w * x / sqrt(mean(x^2) + eps).
//!
//! burn runs the norm as about seven kernels (square, mean, add, sqrt, reciprocal, two
//! products); decoding is bound by the number of kernels per token, and a layer has two norms.
//! A workgroup of [`UNITS`] invocations takes one row.

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{empty_f32, grid_over_rows};
use crate::workgroup_reduce::{UNITS, workgroup_reduce};

#[cube(launch)]
fn rms_norm_rows_kernel(
    x: &[f32],
    weight: &[f32],
    out: &mut [f32],
    rows: u32,
    width: u32,
    eps: f32,
) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    let base = row * width;
    let unit = UNIT_POS;
    let mut squares = 0.0f32;
    let mut i = unit;
    while i < width {
        let v = x[(base + i) as usize];
        squares += v * v;
        i += UNITS;
    }
    let total = workgroup_reduce(squares, false);
    let inv_rms = 1.0 / (total / f32::cast_from(width) + eps).sqrt();
    let mut j = unit;
    while j < width {
        out[(base + j) as usize] = x[(base + j) as usize] * inv_rms * weight[j as usize];
        j += UNITS;
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait RmsNormBackend: burn::backend::Backend {
    /// `x` [rows, width] f32, `weight` [width] -> [rows, width].
    #[fusion(dtype = same_dtype(x), shape = same_shape(x))]
    fn rms_norm_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;
}

fn same_dtype(input: DType) -> DType {
    input
}

fn same_shape(x: &Shape) -> Shape {
    x.clone()
}

impl RmsNormBackend for CubeBackend {
    fn rms_norm_rows(x: CubeTensor, weight: CubeTensor, eps: f32) -> CubeTensor {
        let [x, weight] = [x, weight].map(into_contiguous);
        let [rows, width] = [x.meta.shape()[0], x.meta.shape()[1]];
        let out = empty_f32(&x, vec![rows, width]);
        rms_norm_rows_kernel::launch(
            &x.client.clone(),
            grid_over_rows(rows),
            CubeDim::new_1d(UNITS),
            x.into_buffer_arg(),
            weight.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            rows as u32,
            width as u32,
            eps,
        );
        out
    }
}

/// RMSNorm of each row of `x` [rows, width] (f32) with `weight` [width]. GPU only.
pub fn rms_norm_rows(x: Tensor<2>, weight: Tensor<1>, eps: f64) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as RmsNormBackend>::rms_norm_rows(
        x.cast(DType::F32).into_dispatch(),
        weight.into_dispatch(),
        eps as f32,
    ))
}

/// What `rms_norm_rows` computes, with burn's ops.
pub fn reference_rms_norm_rows(x: Tensor<2>, weight: Tensor<1>, eps: f64) -> Tensor<2> {
    let inv_rms = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x * inv_rms * weight.unsqueeze::<2>()
}
