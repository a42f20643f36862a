//! The MoE experts for a few tokens, straight from the router's table (`router_top_k`): no sort.
//!
//! The grouped path sorts (token, rank) pairs by expert (about 25 burn kernels per layer) so
//! that an expert's weights are read once for all its tokens. At batch-1 decoding each token
//! has its own k experts and the sort buys nothing: here each workgroup reads its pair's expert
//! id from the routing table. Two kernels per layer:
//! - [`pairs_gate_up`]: gate_up product, bias, clamp and SwiGLU fused -> [pairs, I];
//! - [`pairs_down`]: down product and bias for each of a token's k pairs, weighted by the gates
//!   and summed -> [tokens, H].
//!
//! Weights stay MXFP4 (decoded in the kernel as `grouped_mxfp4` decodes them); activations are
//! rounded to bf16 before the products, as the grouped kernels round them. A workgroup has
//! [`PLANES`] planes of [`LANES`] invocations; each plane takes [`COLUMNS_PER_PLANE`] output
//! columns one at a time, its lanes reading consecutive MXFP4 words of the column's weight row.

use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::grouped_mxfp4::{fp4_value, scale_value};
use crate::launch::empty_f32;

const LANES: u32 = 32;
const PLANES: u32 = 8;
/// One column per plane: at batch 1 there are only k workgroups per column block, and longer
/// loops per plane left the GPU waiting on memory (four per plane: 190-280 us per kernel).
const COLUMNS_PER_PLANE: u32 = 1;
/// Output columns per workgroup.
const COLUMNS: u32 = PLANES * COLUMNS_PER_PLANE;

/// The dot product of 8 inputs `x[base..base + 8]` (rounded to bf16) with MXFP4 word `w` of
/// weight row `row` (K = 8 * words_per_row) of the expert whose words and scales start at
/// `expert_words` and `expert_scales`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn mxfp4_dot8(
    x: &[f32],
    base: u32,
    words: &[u32],
    scales: &[u32],
    expert_words: u32,
    expert_scales: u32,
    row: u32,
    w: u32,
    words_per_row: u32,
) -> f32 {
    let word = words[(expert_words + row * words_per_row + w) as usize];
    let block = row * (words_per_row / 4) + w / 4;
    let scale_word = scales[(expert_scales + block / 4) as usize];
    let scale = scale_value((scale_word >> ((block % 4) * 8)) & 0xFF);
    let mut sum = 0.0f32;
    #[unroll]
    for q in 0..8u32 {
        let xq = f32::cast_from(bf16::cast_from(x[(base + q) as usize]));
        sum += fp4_value((word >> (q * 4)) & 0xF) * xq;
    }
    sum * scale
}

/// The sum of `value` over the [`LANES`] invocations of each plane, valid in lane 0.
/// Synchronises the workgroup: every invocation must reach it.
#[cube]
fn plane_total(value: f32) -> f32 {
    let mut partial = Shared::<[f32]>::new_slice((PLANES * LANES) as usize);
    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y;
    partial[(plane * LANES + lane) as usize] = value;
    sync_cube();
    let mut total = 0.0f32;
    if lane == 0 {
        for i in 0..LANES {
            total += partial[(plane * LANES + i) as usize];
        }
    }
    sync_cube();
    total
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn pairs_gate_up_kernel(
    x: &[f32],
    routing: &[f32],
    words: &[u32],
    scales: &[u32],
    bias: &[f32],
    out: &mut [f32],
    hidden: u32,
    inter: u32,
    scale_words_per_expert: u32,
    top_k: u32,
    limit: f32,
    alpha: f32,
) {
    let pair = CUBE_POS_X;
    let token = pair / top_k;
    let rank = pair % top_k;
    let expert = u32::cast_from(routing[(token * 2 * top_k + rank) as usize]);
    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y;
    let words_per_row = hidden / 8;
    let width = 2 * inter;
    let expert_words = expert * width * words_per_row;
    let expert_scales = expert * scale_words_per_expert;
    for c in 0..COLUMNS_PER_PLANE {
        // Output unit j: gate is weight row 2j, up is row 2j + 1 (spec 3.4).
        let j = (CUBE_POS_Y * PLANES + plane) * COLUMNS_PER_PLANE + c;
        let mut gate = 0.0f32;
        let mut up = 0.0f32;
        if j < inter {
            let mut w = lane;
            while w < words_per_row {
                let base = token * hidden + w * 8;
                gate += mxfp4_dot8(
                    x,
                    base,
                    words,
                    scales,
                    expert_words,
                    expert_scales,
                    2 * j,
                    w,
                    words_per_row,
                );
                up += mxfp4_dot8(
                    x,
                    base,
                    words,
                    scales,
                    expert_words,
                    expert_scales,
                    2 * j + 1,
                    w,
                    words_per_row,
                );
                w += LANES;
            }
        }
        let gate_total = plane_total(gate);
        let up_total = plane_total(up);
        if lane == 0 && j < inter {
            // spec 4.6: gate clamped above only, up on both sides, "+1" on up.
            let g = min(gate_total + bias[(expert * width + 2 * j) as usize], limit);
            let u = clamp(
                up_total + bias[(expert * width + 2 * j + 1) as usize],
                -limit,
                limit,
            );
            let glu = g / (1.0 + (-alpha * g).exp());
            out[(pair * inter + j) as usize] = glu * (u + 1.0);
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn pairs_down_kernel(
    act: &[f32],
    routing: &[f32],
    words: &[u32],
    scales: &[u32],
    bias: &[f32],
    out: &mut [f32],
    inter: u32,
    hidden: u32,
    scale_words_per_expert: u32,
    top_k: u32,
) {
    let token = CUBE_POS_X;
    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y;
    let words_per_row = inter / 8;
    let table = token * 2 * top_k;
    for c in 0..COLUMNS_PER_PLANE {
        let col = (CUBE_POS_Y * PLANES + plane) * COLUMNS_PER_PLANE + c;
        let mut acc = 0.0f32;
        if col < hidden {
            for r in 0..top_k {
                let expert = u32::cast_from(routing[(table + r) as usize]);
                let gate = routing[(table + top_k + r) as usize];
                let expert_words = expert * hidden * words_per_row;
                let expert_scales = expert * scale_words_per_expert;
                let mut dot = 0.0f32;
                let mut w = lane;
                while w < words_per_row {
                    let base = (token * top_k + r) * inter + w * 8;
                    dot += mxfp4_dot8(
                        act,
                        base,
                        words,
                        scales,
                        expert_words,
                        expert_scales,
                        col,
                        w,
                        words_per_row,
                    );
                    w += LANES;
                }
                acc += gate * dot;
            }
        }
        let total = plane_total(acc);
        if lane == 0 && col < hidden {
            let mut with_bias = total;
            for r in 0..top_k {
                let expert = u32::cast_from(routing[(table + r) as usize]);
                let gate = routing[(table + top_k + r) as usize];
                with_bias += gate * bias[(expert * hidden + col) as usize];
            }
            out[(token * hidden + col) as usize] = with_bias;
        }
    }
}

/// GPU extension ops; only the CubeCL backend implements them.
#[backend_extension(Cube, Fusion)]
pub trait PairsBackend: burn::backend::Backend {
    /// `x` [n, H], `routing` [n, 2k] (`router_top_k`), gate_up `words` [E, 2I, H / 8] and
    /// `scales`, `bias` [E, 2I] -> SwiGLU activations [n * k, I] (pair order: token-major).
    #[fusion(dtype = same_dtype(x), shape = Shape::from(vec![routing[0] * routing[1] / 2, words[1] / 2]))]
    #[allow(clippy::too_many_arguments)]
    fn pairs_gate_up(
        x: FloatTensor<Self>,
        routing: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        bias: FloatTensor<Self>,
        limit: f32,
        alpha: f32,
    ) -> FloatTensor<Self>;

    /// `act` [n * k, I], `routing` [n, 2k], down `words` [E, H, I / 8] and `scales`, `bias`
    /// [E, H] -> the gate-weighted sum of each token's k expert outputs [n, H].
    #[fusion(dtype = same_dtype(act), shape = Shape::from(vec![routing[0], words[1]]))]
    fn pairs_down(
        act: FloatTensor<Self>,
        routing: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

fn same_dtype(input: DType) -> DType {
    input
}

impl PairsBackend for CubeBackend {
    fn pairs_gate_up(
        x: CubeTensor,
        routing: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        bias: CubeTensor,
        limit: f32,
        alpha: f32,
    ) -> CubeTensor {
        let [x, routing, words, scales, bias] =
            [x, routing, words, scales, bias].map(into_contiguous);
        let hidden = x.meta.shape()[1];
        let [tokens, table] = [routing.meta.shape()[0], routing.meta.shape()[1]];
        let top_k = table / 2;
        let inter = words.meta.shape()[1] / 2;
        let scale_words = scales.meta.shape()[1];
        let out = empty_f32(&x, vec![tokens * top_k, inter]);
        pairs_gate_up_kernel::launch(
            &x.client.clone(),
            CubeCount::Static(
                (tokens * top_k) as u32,
                inter.div_ceil(COLUMNS as usize) as u32,
                1,
            ),
            CubeDim::new_2d(LANES, PLANES),
            x.into_buffer_arg(),
            routing.into_buffer_arg(),
            words.into_buffer_arg(),
            scales.into_buffer_arg(),
            bias.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            hidden as u32,
            inter as u32,
            scale_words as u32,
            top_k as u32,
            limit,
            alpha,
        );
        out
    }

    fn pairs_down(
        act: CubeTensor,
        routing: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        bias: CubeTensor,
    ) -> CubeTensor {
        let [act, routing, words, scales, bias] =
            [act, routing, words, scales, bias].map(into_contiguous);
        let inter = act.meta.shape()[1];
        let [tokens, table] = [routing.meta.shape()[0], routing.meta.shape()[1]];
        let hidden = words.meta.shape()[1];
        let scale_words = scales.meta.shape()[1];
        let out = empty_f32(&act, vec![tokens, hidden]);
        pairs_down_kernel::launch(
            &act.client.clone(),
            CubeCount::Static(tokens as u32, hidden.div_ceil(COLUMNS as usize) as u32, 1),
            CubeDim::new_2d(LANES, PLANES),
            act.into_buffer_arg(),
            routing.into_buffer_arg(),
            words.into_buffer_arg(),
            scales.into_buffer_arg(),
            bias.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            inter as u32,
            hidden as u32,
            scale_words as u32,
            (table / 2) as u32,
        );
        out
    }
}

/// SwiGLU activations [n * k, I] of every (token, rank) pair: `x` [n, H] f32, `routing` [n, 2k]
/// from `router_top_k`, the gate_up MXFP4 `words` [E, 2I, H / 8] (int, 32-bit) and `scales`,
/// `bias` [E, 2I]. GPU only.
pub fn pairs_gate_up(
    x: Tensor<2>,
    routing: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    bias: Tensor<2>,
    limit: f32,
    alpha: f32,
) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as PairsBackend>::pairs_gate_up(
        x.into_dispatch(),
        routing.into_dispatch(),
        words.into_dispatch(),
        scales.into_dispatch(),
        bias.into_dispatch(),
        limit,
        alpha,
    ))
}

/// Each token's gate-weighted sum of its k experts' down products [n, H]: `act` [n * k, I]
/// from [`pairs_gate_up`], `routing` [n, 2k], the down MXFP4 `words` [E, H, I / 8] and
/// `scales`, `bias` [E, H]. GPU only.
pub fn pairs_down(
    act: Tensor<2>,
    routing: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    bias: Tensor<2>,
) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as PairsBackend>::pairs_down(
        act.into_dispatch(),
        routing.into_dispatch(),
        words.into_dispatch(),
        scales.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// Whether the kernels take `hidden` and `inter` widths (MXFP4 blocks of 32 along K, and words
/// read in groups of four per block).
pub fn supports(hidden: usize, inter: usize) -> bool {
    hidden.is_multiple_of(32) && inter.is_multiple_of(32)
}
