//! The MoE experts for a few tokens, straight from the router's table (`router_top_k`): no sort.
//!
//! The grouped path sorts (token, rank) pairs by expert (about 25 burn kernels per layer) so
//! that an expert's weights are read once for all its tokens. At batch-1 decoding each token
//! has its own k experts and the sort buys nothing: here each workgroup reads its pair's expert
//! id from the routing table. Two kernels per layer:
//! - [`pairs_gate_up`]: gate_up product, bias, clamp and SwiGLU fused -> [pairs, I];
//! - [`pairs_down`]: down product and bias for each of a token's k pairs, weighted by the gates
//!   and summed, plus the decoder layer's residual when given -> [tokens, H].
//!
//! Weights stay MXFP4 (decoded in the kernel through a 16-entry table in shared memory);
//! activations are rounded to bf16 before the products, as the grouped kernels round them. A
//! workgroup has [`PLANES`] planes of [`LANES`] invocations and holds its input row in shared
//! memory; each plane takes [`COLUMNS_PER_PLANE`] output columns. Along K, invocation `lane`
//! owns MXFP4 blocks `lane`, `lane + 32`, ... and reads each block's 16 bytes of weights as
//! one four-word load, all of its weight rows' loads issued before any is used (decoding is
//! bound by memory latency: one word per load and one load in flight left these kernels at
//! 0.1-0.2 TB/s). The plane's partial sums are added with a subgroup sum.

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
/// Output columns per plane: their weight loads are all in flight together.
const COLUMNS_PER_PLANE: u32 = 2;
/// Output columns per workgroup.
const COLUMNS: u32 = PLANES * COLUMNS_PER_PLANE;
/// Inputs per MXFP4 block: four u32 words of eight 4-bit codes, and one scale byte.
const BLOCK: u32 = 32;
/// Four-float vectors per block of inputs in shared memory: eight, plus one of padding so
/// that the eight invocations of a quarter plane read different banks.
const BLOCK_VECTORS: u32 = 9;

/// Four consecutive MXFP4 words: one block.
type BlockWords = Vector<u32, Const<4>>;
type Four = Vector<f32, Const<4>>;

/// Fills `table` (16 entries, shared) with the FP4 values of codes 0..16 (no synchronisation).
#[cube]
fn fill_fp4_table(table: &mut [f32]) {
    if UNIT_POS < 16 {
        table[UNIT_POS as usize] = fp4_value(UNIT_POS);
    }
}

/// Copies row `row` of `x` (`blocks_per_row` blocks of 32, read as four-float vectors) into
/// `inputs` (shared, [`BLOCK_VECTORS`] vectors per block), rounded to bf16. Synchronises
/// before (earlier readers) and after.
#[cube]
fn load_input_row(x: &[Four], inputs: &mut [Four], row: u32, blocks_per_row: u32) {
    sync_cube();
    let vectors = blocks_per_row * (BLOCK / 4);
    let mut v = UNIT_POS;
    while v < vectors {
        let four = x[(row * vectors + v) as usize];
        let mut rounded = Four::new(0.0);
        #[unroll]
        for i in 0..4usize {
            rounded.insert(i, f32::cast_from(bf16::cast_from(four.extract(i))));
        }
        inputs[((v / 8) * BLOCK_VECTORS + v % 8) as usize] = rounded;
        v += PLANES * LANES;
    }
    sync_cube();
}

/// This invocation's blocks of weight row `row` (of the expert whose blocks start at vector
/// `expert_blocks` and scale words at `expert_scales`), stored from `slot * blocks_per_lane`
/// in `loaded` and `scale_words`: loads only, so that several rows' are in flight together.
/// Blocks past the row read as zeros.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_lane_blocks(
    words: &[BlockWords],
    scales: &[u32],
    loaded: &mut Array<BlockWords>,
    scale_words: &mut Array<u32>,
    #[comptime] slot: usize,
    expert_blocks: u32,
    expert_scales: u32,
    row: u32,
    blocks_per_row: u32,
    #[comptime] blocks_per_lane: usize,
) {
    let lane = UNIT_POS_X;
    #[unroll]
    for b in 0..blocks_per_lane {
        let block = lane + b as u32 * LANES;
        let index = row * blocks_per_row + block;
        let mut four = BlockWords::new(0u32);
        let mut scale_word = 0u32;
        if block < blocks_per_row {
            four = words[(expert_blocks + index) as usize];
            scale_word = scales[(expert_scales + index / 4) as usize];
        }
        loaded[slot * blocks_per_lane + b] = four;
        scale_words[slot * blocks_per_lane + b] = scale_word >> ((index % 4) * 8);
    }
}

/// This invocation's share of the dot product of the shared `inputs` with the weight row
/// loaded into `slot` by [`load_lane_blocks`].
#[cube]
fn lane_dot(
    inputs: &[Four],
    table: &[f32],
    loaded: &Array<BlockWords>,
    scale_words: &Array<u32>,
    #[comptime] slot: usize,
    blocks_per_row: u32,
    #[comptime] blocks_per_lane: usize,
) -> f32 {
    let lane = UNIT_POS_X;
    let mut sum = 0.0f32;
    #[unroll]
    for b in 0..blocks_per_lane {
        let block = lane + b as u32 * LANES;
        if block < blocks_per_row {
            let four = loaded[slot * blocks_per_lane + b];
            // One accumulator per word: four independent chains.
            let mut parts = Four::new(0.0);
            #[unroll]
            for w in 0..4usize {
                let word = four.extract(w);
                let low = inputs[(block * BLOCK_VECTORS + 2 * w as u32) as usize];
                let high = inputs[(block * BLOCK_VECTORS + 2 * w as u32 + 1) as usize];
                let mut part = 0.0f32;
                #[unroll]
                for q in 0..4usize {
                    part += table[((word >> (4 * q as u32)) & 0xF) as usize] * low.extract(q);
                    part += table[((word >> (4 * q as u32 + 16)) & 0xF) as usize] * high.extract(q);
                }
                parts.insert(w, part);
            }
            let block_sum = parts.extract(0usize)
                + parts.extract(1usize)
                + parts.extract(2usize)
                + parts.extract(3usize);
            sum += block_sum * scale_value(scale_words[slot * blocks_per_lane + b] & 0xFF);
        }
    }
    sum
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn pairs_gate_up_kernel(
    x: &[Four],
    routing: &[f32],
    words: &[BlockWords],
    scales: &[u32],
    bias: &[f32],
    out: &mut [f32],
    blocks_per_row: u32,
    inter: u32,
    scale_words_per_expert: u32,
    top_k: u32,
    limit: f32,
    alpha: f32,
    #[comptime] blocks_per_lane: usize,
) {
    let mut table = Shared::<[f32]>::new_slice(16usize);
    let mut inputs =
        Shared::<[Four]>::new_slice(blocks_per_lane * (LANES * BLOCK_VECTORS) as usize);
    fill_fp4_table(&mut table);
    let pair = CUBE_POS_X;
    let token = pair / top_k;
    let rank = pair % top_k;
    let expert = u32::cast_from(routing[(token * 2 * top_k + rank) as usize]);
    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y;
    let width = 2 * inter;
    let expert_blocks = expert * width * blocks_per_row;
    let expert_scales = expert * scale_words_per_expert;
    // Output unit j: gate is weight row 2j, up is row 2j + 1 (spec 3.4); a plane's columns
    // are consecutive, so its rows are too. Past the end the plane reads row 0 (in bounds)
    // and writes nothing.
    let first_j = (CUBE_POS_Y * PLANES + plane) * COLUMNS_PER_PLANE;
    let rows = 2 * COLUMNS_PER_PLANE as usize;
    let mut loaded = Array::<BlockWords>::new(rows * blocks_per_lane);
    let mut scale_words = Array::<u32>::new(rows * blocks_per_lane);
    #[unroll]
    for slot in 0..rows {
        let j = first_j + (slot / 2) as u32;
        let row = select(j < inter, 2 * j + (slot % 2) as u32, 0);
        load_lane_blocks(
            words,
            scales,
            &mut loaded,
            &mut scale_words,
            slot,
            expert_blocks,
            expert_scales,
            row,
            blocks_per_row,
            blocks_per_lane,
        );
    }
    load_input_row(x, &mut inputs, token, blocks_per_row);
    #[unroll]
    for c in 0..COLUMNS_PER_PLANE as usize {
        let j = first_j + c as u32;
        let gate = lane_dot(
            &inputs,
            &table,
            &loaded,
            &scale_words,
            2 * c,
            blocks_per_row,
            blocks_per_lane,
        );
        let up = lane_dot(
            &inputs,
            &table,
            &loaded,
            &scale_words,
            2 * c + 1,
            blocks_per_row,
            blocks_per_lane,
        );
        let gate_total = plane_sum(gate);
        let up_total = plane_sum(up);
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

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn pairs_down_kernel(
    act: &[Four],
    routing: &[f32],
    words: &[BlockWords],
    scales: &[u32],
    bias: &[f32],
    residual: &[f32],
    out: &mut [f32],
    blocks_per_row: u32,
    hidden: u32,
    scale_words_per_expert: u32,
    top_k: u32,
    #[comptime] blocks_per_lane: usize,
    #[comptime] has_residual: bool,
) {
    let mut table = Shared::<[f32]>::new_slice(16usize);
    let mut inputs =
        Shared::<[Four]>::new_slice(blocks_per_lane * (LANES * BLOCK_VECTORS) as usize);
    fill_fp4_table(&mut table);
    let token = CUBE_POS_X;
    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y;
    let table_row = token * 2 * top_k;
    let first_col = (CUBE_POS_Y * PLANES + plane) * COLUMNS_PER_PLANE;
    let columns = COLUMNS_PER_PLANE as usize;
    let mut acc = Array::<f32>::new(columns);
    #[unroll]
    for c in 0..columns {
        acc[c] = 0.0;
    }
    for r in 0..top_k {
        let expert = u32::cast_from(routing[(table_row + r) as usize]);
        let gate = routing[(table_row + top_k + r) as usize];
        let expert_blocks = expert * hidden * blocks_per_row;
        let expert_scales = expert * scale_words_per_expert;
        let mut loaded = Array::<BlockWords>::new(columns * blocks_per_lane);
        let mut scale_words = Array::<u32>::new(columns * blocks_per_lane);
        #[unroll]
        for c in 0..columns {
            // Past the end the plane reads row 0 (in bounds) and writes nothing.
            let col = first_col + c as u32;
            load_lane_blocks(
                words,
                scales,
                &mut loaded,
                &mut scale_words,
                c,
                expert_blocks,
                expert_scales,
                select(col < hidden, col, 0),
                blocks_per_row,
                blocks_per_lane,
            );
        }
        load_input_row(act, &mut inputs, token * top_k + r, blocks_per_row);
        #[unroll]
        for c in 0..columns {
            acc[c] += gate
                * lane_dot(
                    &inputs,
                    &table,
                    &loaded,
                    &scale_words,
                    c,
                    blocks_per_row,
                    blocks_per_lane,
                );
        }
    }
    #[unroll]
    for c in 0..columns {
        let total = plane_sum(acc[c]);
        let col = first_col + c as u32;
        if lane == 0 && col < hidden {
            let mut with_bias = total;
            if has_residual {
                with_bias += residual[(token * hidden + col) as usize];
            }
            for r in 0..top_k {
                let expert = u32::cast_from(routing[(table_row + r) as usize]);
                let gate = routing[(table_row + top_k + r) as usize];
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
    /// [E, H] -> the gate-weighted sum of each token's k expert outputs [n, H], plus
    /// `residual` [n, H] when `has_residual` (otherwise `residual` is any f32 tensor, unread).
    #[fusion(dtype = same_dtype(act), shape = Shape::from(vec![routing[0], words[1]]))]
    #[allow(clippy::too_many_arguments)]
    fn pairs_down(
        act: FloatTensor<Self>,
        routing: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        has_residual: bool,
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
        assert!(
            supports(hidden, inter),
            "pairs_gate_up: widths {hidden}, {inter}"
        );
        let out = empty_f32(&x, vec![tokens * top_k, inter]);
        let blocks_per_row = hidden / BLOCK as usize;
        // Safety: every index is in bounds for the shapes checked above (rows past the end
        // read row 0, blocks past the row are not read).
        unsafe {
            pairs_gate_up_kernel::launch_unchecked(
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
                blocks_per_row as u32,
                inter as u32,
                scale_words as u32,
                top_k as u32,
                limit,
                alpha,
                blocks_per_lane(blocks_per_row),
            )
        };
        out
    }

    fn pairs_down(
        act: CubeTensor,
        routing: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        bias: CubeTensor,
        residual: CubeTensor,
        has_residual: bool,
    ) -> CubeTensor {
        let [act, routing, words, scales, bias, residual] =
            [act, routing, words, scales, bias, residual].map(into_contiguous);
        let inter = act.meta.shape()[1];
        let [tokens, table] = [routing.meta.shape()[0], routing.meta.shape()[1]];
        let hidden = words.meta.shape()[1];
        let scale_words = scales.meta.shape()[1];
        assert!(
            supports(hidden, inter),
            "pairs_down: widths {hidden}, {inter}"
        );
        let out = empty_f32(&act, vec![tokens, hidden]);
        let blocks_per_row = inter / BLOCK as usize;
        // Safety: as for `pairs_gate_up`.
        unsafe {
            pairs_down_kernel::launch_unchecked(
                &act.client.clone(),
                CubeCount::Static(tokens as u32, hidden.div_ceil(COLUMNS as usize) as u32, 1),
                CubeDim::new_2d(LANES, PLANES),
                act.into_buffer_arg(),
                routing.into_buffer_arg(),
                words.into_buffer_arg(),
                scales.into_buffer_arg(),
                bias.into_buffer_arg(),
                residual.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                blocks_per_row as u32,
                hidden as u32,
                scale_words as u32,
                (table / 2) as u32,
                blocks_per_lane(blocks_per_row),
                has_residual,
            )
        };
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

/// Each token's gate-weighted sum of its k experts' down products [n, H], plus `residual`
/// [n, H] when given (the decoder layer's residual stream, in the same launch): `act` [n * k,
/// I] from [`pairs_gate_up`], `routing` [n, 2k], the down MXFP4 `words` [E, H, I / 8] and
/// `scales`, `bias` [E, H]. GPU only.
pub fn pairs_down(
    act: Tensor<2>,
    routing: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    bias: Tensor<2>,
    residual: Option<Tensor<2>>,
) -> Tensor<2> {
    let has_residual = residual.is_some();
    // Without a residual the kernel reads none: pass the bias as the unread buffer.
    let residual = residual.unwrap_or_else(|| bias.clone());
    Tensor::from_dispatch(<burn::backend::Dispatch as PairsBackend>::pairs_down(
        act.into_dispatch(),
        routing.into_dispatch(),
        words.into_dispatch(),
        scales.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
        has_residual,
    ))
}

/// MXFP4 blocks each invocation of a plane owns along a row of `blocks_per_row` blocks.
fn blocks_per_lane(blocks_per_row: usize) -> usize {
    blocks_per_row.div_ceil(LANES as usize)
}

/// Whether the kernels take `hidden` and `inter` widths (MXFP4 blocks of 32 along K, and words
/// read in groups of four per block).
pub fn supports(hidden: usize, inter: usize) -> bool {
    hidden.is_multiple_of(32) && inter.is_multiple_of(32)
}
