//! Few-row products with bf16 weights (decoding): `x` [m, k] times `w` [k, n] for small m,
//! without tensor cores, the weights streamed once per [`ROWS`] rows.
//!
//! A workgroup takes [`COLUMNS`] output columns (8 per invocation, read as four u32 words of two
//! bf16 each, so n must be even, so the 32 invocations of a plane read 512 consecutive bytes of a row of `w`), one
//! chunk of [`ROWS`] rows, and one of `splits` parts of K; its 8 planes split that part again.
//! The planes' sums are added in shared memory and each K part writes its own partial product;
//! the parts are summed afterwards. The tensor-core GEMM computes 128-row tiles: at one row it
//! leaves most of the GPU idle (16 workgroups for a 2880 x 4096 projection).

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::launch::empty_f32;

/// Rows per workgroup.
pub const ROWS: usize = 8;
/// Invocations per plane, columns per invocation, planes (K slices) per workgroup.
const LANES: u32 = 32;
const LANE_COLUMNS: u32 = 8;
const SLICES: u32 = 8;
/// Output columns per workgroup.
pub const COLUMNS: usize = (LANES * LANE_COLUMNS) as usize;
/// Workgroups to aim for when choosing the K split (two per H100 multiprocessor).
const TARGET_WORKGROUPS: usize = 264;
const MAX_SPLITS: usize = 16;

/// The two bf16 halves of a little-endian u32 as f32 (low half first).
#[cube]
fn bf16_pair(word: u32) -> (f32, f32) {
    (
        f32::reinterpret(word << 16),
        f32::reinterpret(word & 0xFFFF_0000),
    )
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bf16_rows_kernel(
    x: &[f32],
    w: &[u32],
    bias: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    k_per_split: u32,
    #[comptime] rows: usize,
    #[comptime] has_bias: bool,
) {
    let lane = UNIT_POS_X;
    let slice = UNIT_POS_Y;
    let col_begin = CUBE_POS_X * COLUMNS as u32 + lane * LANE_COLUMNS;
    let row_begin = CUBE_POS_Y * rows as u32;
    let row_count = min(m - row_begin, rows as u32);
    let split = CUBE_POS_Z;
    let split_begin = split * k_per_split;
    let split_end = min(k, split_begin + k_per_split);
    let per_slice = k_per_split.div_ceil(SLICES);
    let k_begin = min(split_end, split_begin + slice * per_slice);
    let k_end = min(split_end, k_begin + per_slice);
    let words_per_row = n / 2;
    let mut acc = Array::<f32>::new(rows * LANE_COLUMNS as usize);
    #[unroll]
    for i in 0..rows * LANE_COLUMNS as usize {
        acc[i] = 0.0;
    }
    if col_begin < n {
        for kk in k_begin..k_end {
            let mut weights = Array::<f32>::new(LANE_COLUMNS as usize);
            #[unroll]
            for q in 0..(LANE_COLUMNS / 2) as usize {
                // n is even: a word is either wholly inside the row or wholly past its end.
                let mut word = 0u32;
                if col_begin + 2 * (q as u32) < n {
                    word = w[(kk * words_per_row + col_begin / 2 + q as u32) as usize];
                }
                let (low, high) = bf16_pair(word);
                weights[2 * q] = low;
                weights[2 * q + 1] = high;
            }
            #[unroll]
            for r in 0..rows {
                if (r as u32) < row_count {
                    // Rounded to bf16 as the tensor-core GEMM rounds its inputs.
                    let xv = f32::cast_from(bf16::cast_from(
                        x[((row_begin + r as u32) * k + kk) as usize],
                    ));
                    #[unroll]
                    for c in 0..LANE_COLUMNS as usize {
                        acc[r * LANE_COLUMNS as usize + c] += xv * weights[c];
                    }
                }
            }
        }
    }
    // Per row: every plane stores its 256 column sums, then invocation i adds column i over
    // the planes.
    let mut partial = Shared::<[f32]>::new_slice(SLICES as usize * COLUMNS);
    let unit = (slice * LANES + lane) as usize;
    #[unroll]
    for r in 0..rows {
        #[unroll]
        for c in 0..LANE_COLUMNS as usize {
            partial[slice as usize * COLUMNS + (lane * LANE_COLUMNS) as usize + c] =
                acc[r * LANE_COLUMNS as usize + c];
        }
        sync_cube();
        let col = CUBE_POS_X * COLUMNS as u32 + unit as u32;
        if (r as u32) < row_count && col < n {
            let mut total = 0.0f32;
            for s in 0..SLICES as usize {
                total += partial[s * COLUMNS + unit];
            }
            if has_bias && split == 0 {
                total += bias[col as usize];
            }
            out[((split * m + row_begin + r as u32) * n + col) as usize] = total;
        }
        sync_cube();
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait RowsBackend: burn::backend::Backend {
    /// `x` [m, k] f32 (rounded to bf16) times `w` [k, n] bf16, accumulated in f32, plus `bias`
    /// [n] when `has_bias` (otherwise `bias` is any f32 tensor, unread): partial products
    /// [splits, m, n] over `splits` parts of K (their sum is the product; the first part
    /// carries the bias).
    #[fusion(dtype = accumulator_dtype(x), shape = partials_shape(x, w))]
    fn bf16_rows_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        has_bias: bool,
    ) -> FloatTensor<Self>;
}

fn accumulator_dtype(_input: DType) -> DType {
    DType::F32
}

/// (parts of K, K per part) for an [m, k] x [k, n] product: enough workgroups to keep the
/// GPU's memory system busy.
fn k_split(m: usize, k: usize, n: usize) -> (usize, usize) {
    let blocks = n.div_ceil(COLUMNS) * m.div_ceil(ROWS);
    let splits = TARGET_WORKGROUPS
        .div_ceil(blocks)
        .clamp(1, MAX_SPLITS)
        .min(k);
    let k_per_split = k.div_ceil(splits);
    (k.div_ceil(k_per_split), k_per_split)
}

fn partials_shape(x: &Shape, w: &Shape) -> Shape {
    let (m, k, n) = (x[0], x[1], w[1]);
    Shape::from(vec![k_split(m, k, n).0, m, n])
}

impl RowsBackend for CubeBackend {
    fn bf16_rows_matmul(
        x: CubeTensor,
        w: CubeTensor,
        bias: CubeTensor,
        has_bias: bool,
    ) -> CubeTensor {
        let [x, w, bias] = [x, w, bias].map(into_contiguous);
        let [m, k] = [x.meta.shape()[0], x.meta.shape()[1]];
        let n = w.meta.shape()[1];
        assert!(supports(n), "bf16_rows: n = {n} is odd");
        let (splits, k_per_split) = k_split(m, k, n);
        let client = x.client.clone();
        let partials = empty_f32(&x, vec![splits, m, n]);
        let cubes = CubeCount::Static(
            n.div_ceil(COLUMNS) as u32,
            m.div_ceil(ROWS) as u32,
            splits as u32,
        );
        bf16_rows_kernel::launch(
            &client,
            cubes,
            CubeDim::new_2d(LANES, SLICES),
            x.into_buffer_arg(),
            w.into_buffer_arg(),
            bias.into_buffer_arg(),
            partials.clone().into_buffer_arg(),
            m as u32,
            n as u32,
            k as u32,
            k_per_split as u32,
            ROWS,
            has_bias,
        );
        partials
    }
}

/// Whether the kernel takes products with `n` output columns (rows of `w` are read as u32 words
/// of two bf16, so n must be even).
pub fn supports(n: usize) -> bool {
    n.is_multiple_of(2)
}

/// `x` [m, k] x `w` [k, n] (+ `bias` [n]) with the inputs rounded to bf16 (as `coopmat_gemm`
/// rounds them), result f32. GPU only; meant for m up to a few times [`ROWS`]; n must be even
/// ([`supports`]).
pub fn bf16_rows_matmul(x: Tensor<2>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    let [m, _] = x.dims();
    let n = w.dims()[1];
    let x = x.cast(DType::F32);
    let w = w.cast(DType::BF16);
    let has_bias = bias.is_some();
    // Without a bias the kernel reads none: pass x as the unread buffer.
    let bias = bias.unwrap_or_else(|| x.clone().reshape([m * x.dims()[1]]));
    let partials: Tensor<3> =
        Tensor::from_dispatch(<burn::backend::Dispatch as RowsBackend>::bf16_rows_matmul(
            x.into_dispatch(),
            w.into_dispatch(),
            bias.into_dispatch(),
            has_bias,
        ));
    if partials.dims()[0] == 1 {
        return partials.reshape([m, n]);
    }
    partials.sum_dim(0).reshape([m, n])
}
