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
//! activations are rounded to bf16 before the products, as the grouped kernels round them, and
//! sit in shared memory as pairs of bf16. A workgroup has [`PLANES`] planes of [`LANES`]
//! invocations; each plane takes `columns_per_plane` output columns. Along K, invocation `lane`
//! owns MXFP4 blocks `lane`, `lane + 32`, ... and reads each block's 16 bytes of weights as one
//! four-word load, every weight load of the workgroup's rows (for `pairs_down`, of all k
//! experts) issued before any is used: decoding is bound by memory latency. Each block's 32
//! inputs are read from shared memory once into registers and used for all of the plane's
//! rows (shared-memory reads, not the weights, limited the first version). The plane's partial
//! sums are added with a subgroup sum.

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
/// Output columns per plane of `pairs_gate_up` (two weight rows each: gate and up). `bench
/// kernel-check --decode-timings` on an H100 at 20b's shapes, 1 / 2 / 4: 36 / 116 / 152 us
/// at one token, 592 / 595 / 708 us at 32 (more rows per invocation than its registers hold).
pub const GATE_UP_COLUMNS_PER_PLANE: u32 = 1;
/// Output columns per plane of `pairs_down` (k weight rows each, one per expert); the same
/// measurement: 32 / 95 / 143 us at one token, 493 / 430 / 774 us at 32.
pub const DOWN_COLUMNS_PER_PLANE: u32 = 1;
/// Inputs per MXFP4 block: four u32 words of eight 4-bit codes, and one scale byte.
const BLOCK: u32 = 32;
/// Four-word vectors (eight bf16 inputs each) per block of inputs in shared memory: four, plus
/// one of padding so that the eight invocations of a quarter plane read different banks.
const BLOCK_VECTORS: u32 = 5;
/// Shared memory one workgroup may take for its input rows (Vulkan's guaranteed minimum is
/// 16 KiB; every desktop GPU offers 48 KiB).
const SHARED_INPUT_BYTES: usize = 48 * 1024 - 1024;

/// Four consecutive u32 words: one MXFP4 block of weights, or eight bf16 inputs.
type Words = Vector<u32, Const<4>>;
type Four = Vector<f32, Const<4>>;

/// Fills `table` (16 entries, shared) with the FP4 values of codes 0..16 (no synchronisation).
#[cube]
fn fill_fp4_table(table: &mut [f32]) {
    if UNIT_POS < 16 {
        table[UNIT_POS as usize] = fp4_value(UNIT_POS);
    }
}

/// The bf16 bits of `value` (rounded to nearest even) in the high half of a u32.
#[cube]
fn bf16_high_bits(value: f32) -> u32 {
    u32::reinterpret(f32::cast_from(bf16::cast_from(value))) & 0xFFFF_0000
}

/// Copies `count` consecutive rows of `x` from row `first_row` (`blocks_per_row` blocks of 32
/// each, read as four-float vectors) into `inputs` (shared, [`BLOCK_VECTORS`] vectors per
/// block, the rows one after another), rounded to bf16 and packed two per word (the lower
/// index in the low half). Synchronises before (earlier readers) and after.
#[cube]
fn load_input_rows(
    x: &[Four],
    inputs: &mut [Words],
    first_row: u32,
    count: u32,
    blocks_per_row: u32,
) {
    sync_cube();
    // Each shared vector holds eight inputs: two of x's vectors.
    let vectors = count * blocks_per_row * (BLOCK / 8);
    let mut v = UNIT_POS;
    while v < vectors {
        let low = x[(first_row * blocks_per_row * (BLOCK / 4) + 2 * v) as usize];
        let high = x[(first_row * blocks_per_row * (BLOCK / 4) + 2 * v + 1) as usize];
        let mut packed = Words::new(0u32);
        #[unroll]
        for i in 0..2usize {
            packed.insert(
                i,
                (bf16_high_bits(low.extract(2 * i)) >> 16) | bf16_high_bits(low.extract(2 * i + 1)),
            );
            packed.insert(
                i + 2,
                (bf16_high_bits(high.extract(2 * i)) >> 16)
                    | bf16_high_bits(high.extract(2 * i + 1)),
            );
        }
        inputs[((v / 4) * BLOCK_VECTORS + v % 4) as usize] = packed;
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
    words: &[Words],
    scales: &[u32],
    loaded: &mut Array<Words>,
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
        let mut four = Words::new(0u32);
        let mut scale_word = 0u32;
        if block < blocks_per_row {
            four = words[(expert_blocks + index) as usize];
            scale_word = scales[(expert_scales + index / 4) as usize];
        }
        loaded[slot * blocks_per_lane + b] = four;
        scale_words[slot * blocks_per_lane + b] = scale_word >> ((index % 4) * 8);
    }
}

/// Adds this invocation's share of the dot products of input row `input_row` (in shared
/// `inputs`, as [`load_input_rows`] stores it) with the `count` weight rows loaded into slots
/// `first_slot..` by [`load_lane_blocks`] to `sums[first_slot..]`. Each block's inputs are
/// read once for all `count` rows.
#[cube]
#[allow(clippy::too_many_arguments)]
fn add_lane_dots(
    inputs: &[Words],
    input_row: u32,
    table: &[f32],
    loaded: &Array<Words>,
    scale_words: &Array<u32>,
    sums: &mut Array<f32>,
    #[comptime] first_slot: usize,
    #[comptime] count: usize,
    blocks_per_row: u32,
    #[comptime] blocks_per_lane: usize,
) {
    let lane = UNIT_POS_X;
    #[unroll]
    for b in 0..blocks_per_lane {
        let block = lane + b as u32 * LANES;
        if block < blocks_per_row {
            // The block's 32 inputs as f32: word w's eight codes meet inputs 8w..8w + 8.
            let mut xs = Array::<f32>::new(BLOCK as usize);
            #[unroll]
            for w in 0..4usize {
                let pairs =
                    inputs[((input_row * blocks_per_row + block) * BLOCK_VECTORS) as usize + w];
                #[unroll]
                for p in 0..4usize {
                    let word = pairs.extract(p);
                    xs[8 * w + 2 * p] = f32::reinterpret(word << 16);
                    xs[8 * w + 2 * p + 1] = f32::reinterpret(word & 0xFFFF_0000);
                }
            }
            #[unroll]
            for s in 0..count {
                let slot = first_slot + s;
                let four = loaded[slot * blocks_per_lane + b];
                // One accumulator per word: four independent chains.
                let mut parts = Four::new(0.0);
                #[unroll]
                for w in 0..4usize {
                    let word = four.extract(w);
                    let mut part = 0.0f32;
                    #[unroll]
                    for q in 0..8usize {
                        part += table[((word >> (4 * q as u32)) & 0xF) as usize] * xs[8 * w + q];
                    }
                    parts.insert(w, part);
                }
                let block_sum = parts.extract(0usize)
                    + parts.extract(1usize)
                    + parts.extract(2usize)
                    + parts.extract(3usize);
                sums[slot] +=
                    block_sum * scale_value(scale_words[slot * blocks_per_lane + b] & 0xFF);
            }
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn pairs_gate_up_kernel(
    x: &[Four],
    routing: &[f32],
    words: &[Words],
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
    #[comptime] columns_per_plane: usize,
) {
    let mut table = Shared::<[f32]>::new_slice(16usize);
    let mut inputs =
        Shared::<[Words]>::new_slice(blocks_per_lane * (LANES * BLOCK_VECTORS) as usize);
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
    let first_j = (CUBE_POS_Y * PLANES + plane) * columns_per_plane as u32;
    let rows = 2 * columns_per_plane;
    let mut loaded = Array::<Words>::new(rows * blocks_per_lane);
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
    load_input_rows(x, &mut inputs, token, 1, blocks_per_row);
    let mut sums = Array::<f32>::new(rows);
    #[unroll]
    for slot in 0..rows {
        sums[slot] = 0.0;
    }
    add_lane_dots(
        &inputs,
        0u32,
        &table,
        &loaded,
        &scale_words,
        &mut sums,
        0usize,
        rows,
        blocks_per_row,
        blocks_per_lane,
    );
    #[unroll]
    for c in 0..columns_per_plane {
        let j = first_j + c as u32;
        let gate_total = plane_sum(sums[2 * c]);
        let up_total = plane_sum(sums[2 * c + 1]);
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
    words: &[Words],
    scales: &[u32],
    bias: &[f32],
    residual: &[f32],
    out: &mut [f32],
    blocks_per_row: u32,
    hidden: u32,
    scale_words_per_expert: u32,
    #[comptime] top_k: usize,
    #[comptime] blocks_per_lane: usize,
    #[comptime] columns_per_plane: usize,
    #[comptime] has_residual: bool,
) {
    let mut table = Shared::<[f32]>::new_slice(16usize);
    let mut inputs =
        Shared::<[Words]>::new_slice(top_k * blocks_per_lane * (LANES * BLOCK_VECTORS) as usize);
    fill_fp4_table(&mut table);
    let token = CUBE_POS_X;
    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y;
    let table_row = token * 2 * top_k as u32;
    let first_col = (CUBE_POS_Y * PLANES + plane) * columns_per_plane as u32;
    // Slot r * columns_per_plane + c: expert r's weight row for column c. Every expert's
    // loads are issued before any product.
    let rows = top_k * columns_per_plane;
    let mut loaded = Array::<Words>::new(rows * blocks_per_lane);
    let mut scale_words = Array::<u32>::new(rows * blocks_per_lane);
    #[unroll]
    for r in 0..top_k {
        let expert = u32::cast_from(routing[table_row as usize + r]);
        #[unroll]
        for c in 0..columns_per_plane {
            // Past the end the plane reads row 0 (in bounds) and writes nothing.
            let col = first_col + c as u32;
            load_lane_blocks(
                words,
                scales,
                &mut loaded,
                &mut scale_words,
                r * columns_per_plane + c,
                expert * hidden * blocks_per_row,
                expert * scale_words_per_expert,
                select(col < hidden, col, 0),
                blocks_per_row,
                blocks_per_lane,
            );
        }
    }
    load_input_rows(
        act,
        &mut inputs,
        token * top_k as u32,
        top_k as u32,
        blocks_per_row,
    );
    let mut sums = Array::<f32>::new(rows);
    #[unroll]
    for slot in 0..rows {
        sums[slot] = 0.0;
    }
    #[unroll]
    for r in 0..top_k {
        add_lane_dots(
            &inputs,
            r as u32,
            &table,
            &loaded,
            &scale_words,
            &mut sums,
            r * columns_per_plane,
            columns_per_plane,
            blocks_per_row,
            blocks_per_lane,
        );
    }
    #[unroll]
    for c in 0..columns_per_plane {
        let mut weighted = 0.0f32;
        #[unroll]
        for r in 0..top_k {
            weighted += routing[table_row as usize + top_k + r] * sums[r * columns_per_plane + c];
        }
        let total = plane_sum(weighted);
        let col = first_col + c as u32;
        if lane == 0 && col < hidden {
            let mut with_bias = total;
            if has_residual {
                with_bias += residual[(token * hidden + col) as usize];
            }
            #[unroll]
            for r in 0..top_k {
                let expert = u32::cast_from(routing[table_row as usize + r]);
                let gate = routing[table_row as usize + top_k + r];
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
        columns_per_plane: u32,
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
        columns_per_plane: u32,
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
        columns_per_plane: u32,
    ) -> CubeTensor {
        let [x, routing, words, scales, bias] =
            [x, routing, words, scales, bias].map(into_contiguous);
        let hidden = x.meta.shape()[1];
        let [tokens, table] = [routing.meta.shape()[0], routing.meta.shape()[1]];
        let top_k = table / 2;
        let inter = words.meta.shape()[1] / 2;
        let scale_words = scales.meta.shape()[1];
        assert!(
            supports(hidden, inter, top_k),
            "pairs_gate_up: widths {hidden}, {inter}, {top_k} experts per token"
        );
        let out = empty_f32(&x, vec![tokens * top_k, inter]);
        let blocks_per_row = hidden / BLOCK as usize;
        let columns = (PLANES * columns_per_plane) as usize;
        // Safety: every index is in bounds for the shapes checked above (rows past the end
        // read row 0, blocks past the row are not read).
        unsafe {
            pairs_gate_up_kernel::launch_unchecked(
                &x.client.clone(),
                CubeCount::Static((tokens * top_k) as u32, inter.div_ceil(columns) as u32, 1),
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
                columns_per_plane as usize,
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
        columns_per_plane: u32,
    ) -> CubeTensor {
        let [act, routing, words, scales, bias, residual] =
            [act, routing, words, scales, bias, residual].map(into_contiguous);
        let inter = act.meta.shape()[1];
        let [tokens, table] = [routing.meta.shape()[0], routing.meta.shape()[1]];
        let top_k = table / 2;
        let hidden = words.meta.shape()[1];
        let scale_words = scales.meta.shape()[1];
        assert!(
            supports(hidden, inter, top_k),
            "pairs_down: widths {hidden}, {inter}, {top_k} experts per token"
        );
        let out = empty_f32(&act, vec![tokens, hidden]);
        let blocks_per_row = inter / BLOCK as usize;
        let columns = (PLANES * columns_per_plane) as usize;
        // Safety: as for `pairs_gate_up`.
        unsafe {
            pairs_down_kernel::launch_unchecked(
                &act.client.clone(),
                CubeCount::Static(tokens as u32, hidden.div_ceil(columns) as u32, 1),
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
                top_k,
                blocks_per_lane(blocks_per_row),
                columns_per_plane as usize,
                has_residual,
            )
        };
        out
    }
}

/// SwiGLU activations [n * k, I] of every (token, rank) pair: `x` [n, H] f32, `routing` [n, 2k]
/// from `router_top_k`, the gate_up MXFP4 `words` [E, 2I, H / 8] (int, 32-bit) and `scales`,
/// `bias` [E, 2I], each plane of a workgroup taking `columns_per_plane` outputs
/// ([`GATE_UP_COLUMNS_PER_PLANE`] unless measuring another). GPU only.
#[allow(clippy::too_many_arguments)]
pub fn pairs_gate_up(
    x: Tensor<2>,
    routing: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    bias: Tensor<2>,
    limit: f32,
    alpha: f32,
    columns_per_plane: u32,
) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as PairsBackend>::pairs_gate_up(
        x.into_dispatch(),
        routing.into_dispatch(),
        words.into_dispatch(),
        scales.into_dispatch(),
        bias.into_dispatch(),
        limit,
        alpha,
        columns_per_plane,
    ))
}

/// Each token's gate-weighted sum of its k experts' down products [n, H], plus `residual`
/// [n, H] when given (the decoder layer's residual stream, in the same launch): `act` [n * k,
/// I] from [`pairs_gate_up`], `routing` [n, 2k], the down MXFP4 `words` [E, H, I / 8] and
/// `scales`, `bias` [E, H], each plane taking `columns_per_plane` outputs
/// ([`DOWN_COLUMNS_PER_PLANE`] unless measuring another). GPU only.
pub fn pairs_down(
    act: Tensor<2>,
    routing: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    bias: Tensor<2>,
    residual: Option<Tensor<2>>,
    columns_per_plane: u32,
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
        columns_per_plane,
    ))
}

/// MXFP4 blocks each invocation of a plane owns along a row of `blocks_per_row` blocks.
fn blocks_per_lane(blocks_per_row: usize) -> usize {
    blocks_per_row.div_ceil(LANES as usize)
}

/// Whether the kernels take `hidden` and `inter` widths with `top_k` experts per token: MXFP4
/// blocks of 32 along K, and the down kernel's k input rows (bf16, padded per block) within
/// the shared memory a workgroup may take.
pub fn supports(hidden: usize, inter: usize, top_k: usize) -> bool {
    let row_bytes = |width: usize| {
        blocks_per_lane(width / BLOCK as usize) * (LANES * BLOCK_VECTORS) as usize * 16
    };
    hidden.is_multiple_of(32)
        && inter.is_multiple_of(32)
        && top_k * row_bytes(inter) <= SHARED_INPUT_BYTES
        && row_bytes(hidden) <= SHARED_INPUT_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gpt-oss-20b and -120b (2880 wide, four experts per token) fit; a row of 16,384 inputs
    /// per expert at k = 4 does not, nor widths off the 32-input blocks.
    #[test]
    fn supports_gpt_oss_widths_and_refuses_what_does_not_fit() {
        assert!(supports(2880, 2880, 4));
        assert!(supports(64, 96, 4));
        assert!(!supports(2880, 16384, 4));
        assert!(!supports(2880, 2880 + 16, 4));
        assert!(!supports(65536, 2880, 1));
    }
}
