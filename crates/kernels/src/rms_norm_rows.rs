//! RMSNorm of every row in one kernel (spec 4.3): y = w * x / sqrt(mean(x^2) + eps).
//!
//! burn runs the norm as about seven kernels (square, mean, add, sqrt, reciprocal, two
//! products); decoding is bound by the number of kernels per token, and a layer has two norms.
//! A workgroup of [`UNITS`] invocations takes one row. [`add_rms_norm_rows`] also adds the
//! residual stream's update first (and returns the sum): one kernel for the add and the norm.
//! [`rms_norm_rows_bf16`] writes the norm rounded to bf16, for rows that only bf16 products
//! read (the attention's input): the products' rounding pass is then not needed.

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::bf16_nearest::nearest_bf16;
use crate::launch::{bf16_dtype, empty_f32, empty_of, grid_over_rows, same_dtype, same_shape};
use crate::workgroup_reduce::{UNITS, workgroup_reduce};

/// Values of a row each invocation loads before adding their squares.
const NORM_UNROLL: u32 = 4;

/// With `has_delta`, the row is `x + delta`, and that sum is also written, after the normed
/// rows (`out` is then [2 * rows, width]).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_rows_kernel(
    x: &[f32],
    delta: &[f32],
    weight: &[f32],
    out: &mut [f32],
    rows: u32,
    width: u32,
    eps: f32,
    #[comptime] has_delta: bool,
) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    let base = row * width;
    let sums = rows * width;
    let unit = UNIT_POS;
    let squares = strided_squares(x, delta, base, width, has_delta);
    let inv_rms = inverse_rms(workgroup_reduce(squares, false), width, eps);
    // The values again (from the cache): the sum written beside its norm.
    let mut j = unit;
    while j < width {
        let mut v = x[(base + j) as usize];
        if has_delta {
            v += delta[(base + j) as usize];
            out[(sums + base + j) as usize] = v;
        }
        out[(base + j) as usize] = v * inv_rms * weight[j as usize];
        j += UNITS;
    }
}

/// The norm of each row as `rms_norm_rows_kernel` computes it (without a delta), each value
/// written rounded to the nearest bf16.
#[cube(launch)]
fn rms_norm_rows_bf16_kernel(
    x: &[f32],
    weight: &[f32],
    out: &mut [bf16],
    rows: u32,
    width: u32,
    eps: f32,
) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    let base = row * width;
    let inv_rms = row_inverse_rms(x, base, width, eps);
    let mut j = UNIT_POS;
    while j < width {
        out[(base + j) as usize] =
            nearest_bf16(x[(base + j) as usize] * inv_rms * weight[j as usize]);
        j += UNITS;
    }
}

/// 1 / sqrt(mean + eps) for a row of `width` values whose squares add to `squares`: every norm
/// kernel computes it this way, so the norms they fuse equal `rms_norm_rows` exactly.
#[cube]
pub fn inverse_rms(squares: f32, width: u32, eps: f32) -> f32 {
    1.0 / (squares / f32::cast_from(width) + eps).sqrt()
}

/// This invocation's share of the squares of the row of `width` values at `x[base..]` (plus
/// `delta[base..]` when `has_delta`): every [`UNITS`]-th value from its own, [`NORM_UNROLL`]
/// loads issued before any is used (one at a time, a row of 2880 waited for twelve round
/// trips), added in index order.
#[cube]
fn strided_squares(
    x: &[f32],
    delta: &[f32],
    base: u32,
    width: u32,
    #[comptime] has_delta: bool,
) -> f32 {
    let mut squares = 0.0f32;
    let mut i = UNIT_POS;
    while i < width {
        let mut values = Array::<f32>::new(NORM_UNROLL as usize);
        #[unroll]
        for u in 0..NORM_UNROLL {
            let at = i + u * UNITS;
            let mut v = 0.0f32;
            if at < width {
                v = x[(base + at) as usize];
                if has_delta {
                    v += delta[(base + at) as usize];
                }
            }
            values[u as usize] = v;
        }
        #[unroll]
        for u in 0..NORM_UNROLL as usize {
            squares += values[u] * values[u];
        }
        i += NORM_UNROLL * UNITS;
    }
    squares
}

/// [`inverse_rms`] of the row of `width` values at `x[base..]`, computed by a whole workgroup
/// of [`UNITS`] invocations ([`strided_squares`], then [`workgroup_reduce`]: the order
/// `rms_norm_rows` adds in) and returned to every invocation. Synchronises the workgroup.
#[cube]
pub fn row_inverse_rms(x: &[f32], base: u32, width: u32, eps: f32) -> f32 {
    inverse_rms(
        workgroup_reduce(strided_squares(x, x, base, width, false), false),
        width,
        eps,
    )
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

    /// `x` [rows, width] f32, `weight` [width] -> [rows, width] bf16 (rounded to nearest even).
    #[fusion(dtype = bf16_dtype(x), shape = same_shape(x))]
    fn rms_norm_rows_bf16(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// `x` and `delta` [rows, width] f32, `weight` [width] -> [2 * rows, width]: the norm of
    /// `x + delta`, then `x + delta` itself.
    #[fusion(dtype = same_dtype(x), shape = Shape::from(vec![2 * x[0], x[1]]))]
    fn add_rms_norm_rows(
        x: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;
}

impl RmsNormBackend for CubeBackend {
    fn rms_norm_rows(x: CubeTensor, weight: CubeTensor, eps: f32) -> CubeTensor {
        launch_norm(x, None, weight, eps)
    }

    fn rms_norm_rows_bf16(x: CubeTensor, weight: CubeTensor, eps: f32) -> CubeTensor {
        let [x, weight] = [x, weight].map(into_contiguous);
        let [rows, width] = [x.meta.shape()[0], x.meta.shape()[1]];
        let out = empty_of(&x, vec![rows, width], DType::BF16);
        rms_norm_rows_bf16_kernel::launch(
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

    fn add_rms_norm_rows(
        x: CubeTensor,
        delta: CubeTensor,
        weight: CubeTensor,
        eps: f32,
    ) -> CubeTensor {
        launch_norm(x, Some(delta), weight, eps)
    }
}

/// The norm kernel on `x` (plus `delta`, whose sum with `x` is also returned after the norm).
fn launch_norm(
    x: CubeTensor,
    delta: Option<CubeTensor>,
    weight: CubeTensor,
    eps: f32,
) -> CubeTensor {
    let has_delta = delta.is_some();
    // Without a delta the kernel reads none: pass x as the unread buffer.
    let delta = delta.unwrap_or_else(|| x.clone());
    let [x, delta, weight] = [x, delta, weight].map(into_contiguous);
    let [rows, width] = [x.meta.shape()[0], x.meta.shape()[1]];
    assert_eq!(
        delta.meta.shape()[..],
        x.meta.shape()[..],
        "add_rms_norm_rows: shapes"
    );
    let out_rows = if has_delta { 2 * rows } else { rows };
    let out = empty_f32(&x, vec![out_rows, width]);
    rms_norm_rows_kernel::launch(
        &x.client.clone(),
        grid_over_rows(rows),
        CubeDim::new_1d(UNITS),
        x.into_buffer_arg(),
        delta.into_buffer_arg(),
        weight.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        rows as u32,
        width as u32,
        eps,
        has_delta,
    );
    out
}

/// RMSNorm of each row of `x` [rows, width] (f32) with `weight` [width]. GPU only.
pub fn rms_norm_rows(x: Tensor<2>, weight: Tensor<1>, eps: f64) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as RmsNormBackend>::rms_norm_rows(
        x.cast(DType::F32).into_dispatch(),
        weight.into_dispatch(),
        eps as f32,
    ))
}

/// [`rms_norm_rows`] rounded to bf16 (to nearest even) in the norm's own launch: the same
/// values a bf16 product rounds the f32 norm to. GPU only.
pub fn rms_norm_rows_bf16(x: Tensor<2>, weight: Tensor<1>, eps: f64) -> Tensor<2> {
    Tensor::from_dispatch(
        <burn::backend::Dispatch as RmsNormBackend>::rms_norm_rows_bf16(
            x.cast(DType::F32).into_dispatch(),
            weight.into_dispatch(),
            eps as f32,
        ),
    )
}

/// (`x + delta`, the RMSNorm of each of its rows with `weight`) for `x`, `delta` [rows, width]
/// (f32): the decoder layer's residual add and the next norm in one kernel. GPU only.
pub fn add_rms_norm_rows(
    x: Tensor<2>,
    delta: Tensor<2>,
    weight: Tensor<1>,
    eps: f64,
) -> (Tensor<2>, Tensor<2>) {
    let rows = x.dims()[0];
    let both: Tensor<2> = Tensor::from_dispatch(
        <burn::backend::Dispatch as RmsNormBackend>::add_rms_norm_rows(
            x.cast(DType::F32).into_dispatch(),
            delta.cast(DType::F32).into_dispatch(),
            weight.into_dispatch(),
            eps as f32,
        ),
    );
    (both.clone().narrow(0, rows, rows), both.narrow(0, 0, rows))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles_with_and_without_a_delta() {
        for has_delta in [false, true] {
            let compiled = compile_kernel!(
                rms_norm_rows_kernel::RmsNormRowsKernel,
                CubeDim::new_1d(UNITS),
                [b b b b s s s],
                has_delta,
            );
            assert_eq!(compiled, Ok(()));
        }
    }

    #[test]
    fn the_bf16_kernel_compiles() {
        let compiled = compile_kernel!(
            rms_norm_rows_bf16_kernel::RmsNormRowsBf16Kernel,
            CubeDim::new_1d(UNITS),
            [b b b s s s],
        );
        assert_eq!(compiled, Ok(()));
    }
}
