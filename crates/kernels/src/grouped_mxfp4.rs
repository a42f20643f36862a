//! Grouped MoE matmul with MXFP4 weights decoded inside the kernel.
//!
//! Rows of `a` [P, K] are sorted by expert: expert e owns rows `offsets[e]..offsets[e + 1]`.
//! Each workgroup computes one `tm x tn` tile of `out = a_e x W_e^T` for one expert, with W_e
//! [N, K] read from the checkpoint's MXFP4 words (8 nibbles per u32, low nibble first) and
//! scale bytes (packed four to a u32) and decoded to bf16 in shared memory one 32-wide block
//! column at a time; the products run on the tensor cores (workgroup-scope cooperative
//! matrices). Which expert and row tile a workgroup takes comes from `tile_starts` (prefix sums
//! of ceil(count / tm)), computed on the device: no host round trip. The grid is sized for the
//! worst case (ceil(P / tm) + E tiles); workgroups past the last tile exit at once.

use crate::launch::empty_f32;
use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

/// Rows per tile, columns per tile, K step (one MXFP4 block), invocations per workgroup.
pub const TILE_M: usize = 64;
pub const TILE_N: usize = 128;
pub const TILE_K: usize = 32;
pub const UNITS: u32 = 256;

/// The E2M1 value of a 4-bit code (sign in bit 3).
#[cube]
pub(crate) fn fp4_value(code: u32) -> f32 {
    let magnitude = code & 7;
    let exponent = magnitude >> 1;
    let mantissa = f32::cast_from(magnitude & 1);
    let subnormal = mantissa * 0.5;
    let normal = (1.0 + 0.5 * mantissa) * f32::cast_from(1u32 << exponent) * 0.5;
    let value = select(exponent == 0, subnormal, normal);
    select(code >= 8, -value, value)
}

/// 2^(code - 127) for a UE8M0 scale byte (code 0 is the subnormal 2^-127).
#[cube]
pub(crate) fn scale_value(code: u32) -> f32 {
    let bits = select(code == 0, 0x0040_0000u32, code << 23);
    f32::reinterpret(bits)
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn grouped_mxfp4_kernel(
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
    #[comptime] tile: (usize, usize, usize),
) {
    let (tm, tn, tk) = tile;
    let tile_id = CUBE_POS_X;
    let mut expert = num_experts;
    for e in 0..num_experts {
        if tile_id >= tile_starts[e as usize] && tile_id < tile_starts[e as usize + 1] {
            expert = e;
        }
    }
    if expert == num_experts {
        terminate!();
    }
    let row_begin = offsets[expert as usize] + (tile_id - tile_starts[expert as usize]) * tm as u32;
    let row_end = offsets[expert as usize + 1];
    let col_begin = CUBE_POS_Y * tn as u32;
    let a_view = TensorView::new(a, seq![row_end, k]).finish();
    let out_view = TensorView::new(&*out, seq![row_end, n]).finish();

    let mut stage_b = Shared::<[bf16]>::new_aligned_slice(tn * tk, 16usize);
    let mut a_mat = unsafe {
        cmma::Matrix::<bf16, cmma::Cube>::uninitialized(
            cmma::MatrixIdent::A,
            tm,
            tn,
            tk,
            cmma::MatrixLayout::Undefined,
        )
    };
    let mut b_mat = unsafe {
        cmma::Matrix::<bf16, cmma::Cube>::uninitialized(
            cmma::MatrixIdent::B,
            tm,
            tn,
            tk,
            cmma::MatrixLayout::ColMajor,
        )
    };
    let acc = cmma::Matrix::<f32, cmma::Cube>::from_value(
        cmma::MatrixIdent::Accumulator,
        tm,
        tn,
        tk,
        cmma::MatrixLayout::Undefined,
        0.0,
    );
    let words_per_row = k / 8;
    let blocks_per_row = k / 32;
    let expert_words = expert * n * words_per_row;
    let expert_scales = expert * scale_words_per_expert;
    let words_per_tile = (tn * 4) as u32;
    for k_begin in range_stepped(0, k, tk as u32) {
        // Decode W_e[col_begin .. col_begin + tn, k_begin .. k_begin + 32] into stage_b as
        // [tn][32] bf16: element (kk, col) of B = W^T sits at col * 32 + kk (column-major B).
        let mut w = UNIT_POS;
        while w < words_per_tile {
            let local_row = w / 4;
            let quarter = w % 4;
            let row = col_begin + local_row;
            let base = (local_row * 32 + quarter * 8) as usize;
            if row < n {
                let word =
                    words[(expert_words + row * words_per_row + k_begin / 8 + quarter) as usize];
                let block = row * blocks_per_row + k_begin / 32;
                let scale_word = scales[(expert_scales + block / 4) as usize];
                let scale = scale_value((scale_word >> ((block % 4) * 8)) & 0xFF);
                #[unroll]
                for q in 0..8u32 {
                    let code = (word >> (q * 4)) & 0xF;
                    stage_b[base + q as usize] = bf16::cast_from(fp4_value(code) * scale);
                }
            } else {
                #[unroll]
                for q in 0..8u32 {
                    stage_b[base + q as usize] = bf16::cast_from(0.0f32);
                }
            }
            w += CUBE_DIM;
        }
        sync_cube();
        let a_tile = a_view.slice(seq![row_begin, k_begin], seq![tm as u32, tk as u32]);
        cmma::load_tensor(&mut a_mat, &a_tile);
        cmma::load(&mut b_mat, &stage_b[0..tn * tk], tk as u32);
        cmma::execute(&a_mat, &b_mat, &acc, &acc);
        sync_cube();
    }
    let mut out_tile = out_view.slice(seq![row_begin, col_begin], seq![tm as u32, tn as u32]);
    cmma::store_tensor(&mut out_tile, &acc);
}

/// GPU extension ops for the grouped MoE; only the CubeCL backend implements them.
#[backend_extension(Cube, Fusion)]
pub trait GroupedBackend: burn::backend::Backend {
    /// `a` [P, K] bf16 rows sorted by expert, `words` [E, N, K / 8] and `scales` [E, S] the
    /// packed MXFP4 weights, `offsets` and `tile_starts` [E + 1] -> [P, N] f32.
    #[fusion(dtype = accumulator_dtype(a), shape = product_shape(a, words))]
    fn grouped_mxfp4_matmul(
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

impl GroupedBackend for CubeBackend {
    fn grouped_mxfp4_matmul(
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
        let tiles = p.div_ceil(TILE_M) + experts;
        grouped_mxfp4_kernel::launch(
            &client,
            CubeCount::Static(tiles as u32, n.div_ceil(TILE_N) as u32, 1),
            CubeDim::new_1d(UNITS),
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
            (TILE_M, TILE_N, TILE_K),
        );
        out
    }
}

/// The kernel through burn tensors: `a` is cast to bf16; int inputs must be 32-bit.
pub fn grouped_mxfp4_matmul(
    a: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    offsets: Tensor<1, Int>,
    tile_starts: Tensor<1, Int>,
) -> Tensor<2> {
    let a = a.cast(DType::BF16);
    Tensor::from_dispatch(
        <burn::backend::Dispatch as GroupedBackend>::grouped_mxfp4_matmul(
            a.into_dispatch(),
            words.into_dispatch(),
            scales.into_dispatch(),
            offsets.into_dispatch(),
            tile_starts.into_dispatch(),
        ),
    )
}
