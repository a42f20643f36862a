//! Few-row products with bf16 weights (decoding): `x` [m, k] times `w` [k, n] for small m,
//! without tensor cores, the weights streamed once per [`ROWS`] rows.
//!
//! A workgroup takes 32 output columns and one chunk of [`ROWS`] rows; its 8 planes split K
//! into 8 slices, each invocation walking its slice for one column (the 32 invocations of a
//! plane read 32 consecutive weights of a row of `w`, coalesced) and keeping one sum per row;
//! the 8 slices' sums are added in shared memory. The tensor-core GEMM computes 128-row tiles:
//! at one row it leaves most of the GPU idle (16 workgroups for a 2880 x 4096 projection).

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

/// Rows per workgroup.
pub const ROWS: usize = 8;
/// Columns per workgroup (one per invocation of a plane) and K slices (planes).
const COLUMNS: u32 = 32;
const SLICES: u32 = 8;

#[cube(launch)]
fn bf16_rows_kernel(
    x: &[bf16],
    w: &[bf16],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] rows: usize,
) {
    let lane = UNIT_POS_X;
    let slice = UNIT_POS_Y;
    let col = CUBE_POS_X * COLUMNS + lane;
    let row_begin = CUBE_POS_Y * rows as u32;
    let row_count = min(m - row_begin, rows as u32);
    let per_slice = k.div_ceil(SLICES);
    let k_begin = slice * per_slice;
    let k_end = min(k, k_begin + per_slice);
    let mut acc = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = 0.0;
    }
    if col < n {
        for kk in k_begin..k_end {
            let weight = f32::cast_from(w[(kk * n + col) as usize]);
            #[unroll]
            for r in 0..rows {
                if (r as u32) < row_count {
                    acc[r] +=
                        f32::cast_from(x[((row_begin + r as u32) * k + kk) as usize]) * weight;
                }
            }
        }
    }
    let mut partial = Shared::<[f32]>::new_slice(SLICES as usize * rows * COLUMNS as usize);
    #[unroll]
    for r in 0..rows {
        partial[(slice as usize * rows + r) * COLUMNS as usize + lane as usize] = acc[r];
    }
    sync_cube();
    // Slice s adds up row s (rows <= SLICES).
    if slice < row_count && col < n {
        let mut total = 0.0f32;
        for s in 0..SLICES as usize {
            total += partial[(s * rows + slice as usize) * COLUMNS as usize + lane as usize];
        }
        out[((row_begin + slice) * n + col) as usize] = total;
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait RowsBackend: burn::backend::Backend {
    /// `x` [m, k] bf16 times `w` [k, n] bf16, accumulated and returned in f32.
    #[fusion(dtype = accumulator_dtype(x), shape = product_shape(x, w))]
    fn bf16_rows_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn accumulator_dtype(_input: DType) -> DType {
    DType::F32
}

fn product_shape(x: &Shape, w: &Shape) -> Shape {
    Shape::from(vec![x[0], w[1]])
}

impl RowsBackend for CubeBackend {
    fn bf16_rows_matmul(x: CubeTensor, w: CubeTensor) -> CubeTensor {
        let x = into_contiguous(x);
        let w = into_contiguous(w);
        let [m, k] = [x.meta.shape()[0], x.meta.shape()[1]];
        let n = w.meta.shape()[1];
        let client = x.client.clone();
        let out = CubeTensor::new_contiguous(
            client.clone(),
            x.device.clone(),
            Shape::from(vec![m, n]),
            client.empty(m * n * DType::F32.size()),
            DType::F32,
        );
        let cubes = CubeCount::Static(
            n.div_ceil(COLUMNS as usize) as u32,
            m.div_ceil(ROWS) as u32,
            1,
        );
        bf16_rows_kernel::launch(
            &client,
            cubes,
            CubeDim::new_2d(COLUMNS, SLICES),
            x.into_buffer_arg(),
            w.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            m as u32,
            n as u32,
            k as u32,
            ROWS,
        );
        out
    }
}

/// `x` [m, k] x `w` [k, n] with inputs cast to bf16 (as `coopmat_gemm` rounds them), result
/// f32. GPU only; meant for m up to a few times [`ROWS`].
pub fn bf16_rows_matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let x = x.cast(DType::BF16);
    let w = w.cast(DType::BF16);
    Tensor::from_dispatch(<burn::backend::Dispatch as RowsBackend>::bf16_rows_matmul(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}
