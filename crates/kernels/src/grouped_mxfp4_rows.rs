//! The grouped MXFP4 matmul for few rows per expert (decoding): no tensor cores, the weights
//! streamed once per tile of `ROWS` rows.
//!
//! Same inputs and result as [`crate::grouped_mxfp4`], with `tile_starts` counted in tiles of
//! [`ROWS`] rows. A workgroup takes one row tile of one expert and `PLANES * COLUMNS_PER_PLANE`
//! output columns; each of its planes of 32 invocations walks one column at a time, the 32
//! invocations reading consecutive MXFP4 words of that column's weight row (coalesced), decoding
//! them and multiplying with every row of the tile; the 32 partial sums per row are added in
//! shared memory. At one row per expert (batch-1 decode) the tensor-core kernel computes 64
//! rows per tile and waits on its own synchronisation; this one reads the weights at memory
//! speed.

use crate::bf16_nearest::to_nearest_bf16;
use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::grouped_mxfp4::{expert_of_tile, fp4_value, scale_value};
use crate::launch::empty_f32;

/// Rows per tile (the tiles `tile_starts` counts).
pub const ROWS: usize = 8;
/// Invocations per plane (lanes sharing one column), planes per workgroup, columns per plane.
const LANES: u32 = 32;
const PLANES: u32 = 8;
const COLUMNS_PER_PLANE: u32 = 4;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn grouped_mxfp4_rows_kernel(
    a: &[bf16],
    words: &[u32],
    scales: &[u32],
    offsets: &[u32],
    tile_starts: &[u32],
    out: &mut [f32],
    n: u32,
    k: u32,
    scale_words_per_expert: u32,
    num_experts: u32,
    #[comptime] rows: usize,
) {
    let tile_id = CUBE_POS_X;
    let expert = expert_of_tile(tile_starts, tile_id, num_experts);
    if expert == num_experts {
        terminate!();
    }
    let row_begin =
        offsets[expert as usize] + (tile_id - tile_starts[expert as usize]) * rows as u32;
    let row_count = min(offsets[expert as usize + 1] - row_begin, rows as u32);
    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y;
    let words_per_row = k / 8;
    let blocks_per_row = k / 32;
    let expert_words = expert * n * words_per_row;
    let expert_scales = expert * scale_words_per_expert;
    let mut partial = Shared::<[f32]>::new_slice(PLANES as usize * rows * LANES as usize);
    let mut values = Array::<f32>::new(8usize);
    let mut acc = Array::<f32>::new(rows);
    for c in 0..COLUMNS_PER_PLANE {
        let col = (CUBE_POS_Y * PLANES + plane) * COLUMNS_PER_PLANE + c;
        #[unroll]
        for r in 0..rows {
            acc[r] = 0.0;
        }
        if col < n {
            let mut w = lane;
            while w < words_per_row {
                let word = words[(expert_words + col * words_per_row + w) as usize];
                let block = col * blocks_per_row + w / 4;
                let scale_word = scales[(expert_scales + block / 4) as usize];
                let scale = scale_value((scale_word >> ((block % 4) * 8)) & 0xFF);
                #[unroll]
                for q in 0..8u32 {
                    values[q as usize] = fp4_value((word >> (q * 4)) & 0xF) * scale;
                }
                #[unroll]
                for r in 0..rows {
                    if (r as u32) < row_count {
                        let base = ((row_begin + r as u32) * k + w * 8) as usize;
                        let mut sum = 0.0f32;
                        #[unroll]
                        for q in 0..8usize {
                            sum += f32::cast_from(a[base + q]) * values[q];
                        }
                        acc[r] += sum;
                    }
                }
                w += LANES;
            }
        }
        #[unroll]
        for r in 0..rows {
            partial[((plane as usize * rows + r) * LANES as usize) + lane as usize] = acc[r];
        }
        sync_cube();
        // Invocation (plane, lane < rows) adds the 32 partial sums of row `lane`.
        if lane < row_count && col < n {
            let base = (plane as usize * rows + lane as usize) * LANES as usize;
            let mut total = 0.0f32;
            for i in 0..LANES as usize {
                total += partial[base + i];
            }
            out[((row_begin + lane) * n + col) as usize] = total;
        }
        sync_cube();
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait GroupedRowsBackend: burn::backend::Backend {
    /// As `grouped_mxfp4_matmul`, with `tile_starts` counted in tiles of [`ROWS`] rows.
    #[fusion(dtype = accumulator_dtype(a), shape = product_shape(a, words))]
    fn grouped_mxfp4_rows_matmul(
        a: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        offsets: IntTensor<Self>,
        tile_starts: IntTensor<Self>,
    ) -> FloatTensor<Self>;
}

fn accumulator_dtype(_input: DType) -> DType {
    DType::F32
}

fn product_shape(a: &Shape, words: &Shape) -> Shape {
    Shape::from(vec![a[0], words[1]])
}

impl GroupedRowsBackend for CubeBackend {
    fn grouped_mxfp4_rows_matmul(
        a: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        tile_starts: CubeTensor,
    ) -> CubeTensor {
        let [a, words, scales, offsets, tile_starts] =
            [a, words, scales, offsets, tile_starts].map(into_contiguous);
        let (p, k) = (a.meta.shape()[0], a.meta.shape()[1]);
        let (experts, n) = (words.meta.shape()[0], words.meta.shape()[1]);
        let scale_words = scales.meta.shape()[1];
        let client = a.client.clone();
        let out = empty_f32(&a, vec![p, n]);
        let tiles = p.div_ceil(ROWS) + experts;
        let column_blocks = n.div_ceil((PLANES * COLUMNS_PER_PLANE) as usize);
        grouped_mxfp4_rows_kernel::launch(
            &client,
            CubeCount::Static(tiles as u32, column_blocks as u32, 1),
            CubeDim::new_2d(LANES, PLANES),
            a.into_buffer_arg(),
            words.into_buffer_arg(),
            scales.into_buffer_arg(),
            offsets.into_buffer_arg(),
            tile_starts.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            n as u32,
            k as u32,
            scale_words as u32,
            experts as u32,
            ROWS,
        );
        out
    }
}

/// The kernel through burn tensors: `a` is rounded to bf16 (as for the tensor-core kernel);
/// int inputs must be 32-bit.
pub fn grouped_mxfp4_rows_matmul(
    a: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    offsets: Tensor<1, Int>,
    tile_starts: Tensor<1, Int>,
) -> Tensor<2> {
    let a = to_nearest_bf16(a);
    Tensor::from_dispatch(
        <burn::backend::Dispatch as GroupedRowsBackend>::grouped_mxfp4_rows_matmul(
            a.into_dispatch(),
            words.into_dispatch(),
            scales.into_dispatch(),
            offsets.into_dispatch(),
            tile_starts.into_dispatch(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles() {
        let compiled = compile_kernel!(
            grouped_mxfp4_rows_kernel::GroupedMxfp4RowsKernel,
            CubeDim::new_2d(LANES, PLANES),
            [b b b b b b s s s s],
            ROWS,
        );
        assert_eq!(compiled, Ok(()));
    }
}
