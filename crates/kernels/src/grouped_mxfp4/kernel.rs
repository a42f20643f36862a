//! The tiled grouped product on the tensor cores and its epilogues (see the module docs).

use crate::bf16_nearest::nearest_bf16;
use cubecl::prelude::*;
use half::bf16;

use super::UNITS;
use super::decode::{
    WeightSources, WeightsPlace, fp4_value, load_step_weights, stage_step_weights, step_weights,
};
use crate::bf16_rows::EightBf16;
use crate::coopmat_gemm::{input_matrix, zero_accumulator};
use crate::staged_tiles::{load_tile_words, staged_row_words, store_tile_words};
use crate::tile_order::tile_position;

/// What the kernel does with a tile's products after storing them (comptime codes).
pub(super) const EPILOGUE_NONE: u32 = 0;
pub(super) const EPILOGUE_SWIGLU: u32 = 1;
pub(super) const EPILOGUE_SCALED: u32 = 2;

/// The expert whose tiles (`tile_starts[e]..tile_starts[e + 1]`) include `tile_id`, or
/// `num_experts` for a workgroup past the last tile.
#[cube]
pub(crate) fn expert_of_tile(tile_starts: &[u32], tile_id: u32, num_experts: u32) -> u32 {
    let mut expert = num_experts;
    for e in 0..num_experts {
        if tile_id >= tile_starts[e as usize] && tile_id < tile_starts[e as usize + 1] {
            expert = e;
        }
    }
    expert
}

/// The grouped product over tiles of `tile` rows of one expert each (module docs). Only the tiles
/// of experts `experts_from..experts_to` run; with `decoded`, `bf16_weights` holds their weights
/// from its first row (a launch over part of the experts, `extension::expert_chunks`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn grouped_mxfp4_kernel(
    a: &[EightBf16],
    words: &[u32],
    scales: &[u32],
    bf16_weights: &[EightBf16],
    offsets: &[u32],
    tile_starts: &[u32],
    out: &mut [f32],
    bias: &[f32],
    row_weights: &[f32],
    activation: &mut [bf16],
    pair_of_row: &[u32],
    in_pair_order: &mut [f32],
    n: u32,
    k: u32,
    scale_words_per_expert: u32,
    num_experts: u32,
    experts_from: u32,
    experts_to: u32,
    limit: f32,
    alpha: f32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] use_table: bool,
    #[comptime] decoded: bool,
    #[comptime] columns_first: bool,
    #[comptime] epilogue: u32,
) {
    let (tm, tn, tk) = tile;
    let (tile_id, column_tile) = tile_position(columns_first);
    let expert = expert_of_tile(tile_starts, tile_id, num_experts);
    if expert < experts_from || expert >= experts_to {
        terminate!();
    }
    let row_begin = offsets[expert as usize] + (tile_id - tile_starts[expert as usize]) * tm as u32;
    let row_end = offsets[expert as usize + 1];
    let col_begin = column_tile * tn as u32;
    let out_view = TensorView::new(&*out, seq![row_end, n]).finish();

    // Both stages hold rows of one K step (A: input rows, B: weight rows), padded.
    let stride = comptime![staged_row_words(tk)];
    let mut stage_a = Shared::<[EightBf16]>::new_slice(tm * stride);
    let mut stage_b = Shared::<[EightBf16]>::new_slice(tn * stride);
    let mut table = Shared::<[f32]>::new_slice(16usize);
    if UNIT_POS < 16 {
        table[UNIT_POS as usize] = fp4_value(UNIT_POS);
    }
    let mut loaded = step_weights(tn, tk, decoded);
    let mut next_a = Array::<EightBf16>::new(tm * tk / 8 / UNITS as usize);
    let mut a_mat = input_matrix(cmma::MatrixIdent::A, tile, cmma::MatrixLayout::RowMajor);
    let mut b_mat = input_matrix(cmma::MatrixIdent::B, tile, cmma::MatrixLayout::ColMajor);
    let acc = zero_accumulator(tile);
    let place = WeightsPlace {
        expert_rows: (expert - experts_from) * n,
        expert_words: expert * n * (k / 8),
        expert_scales: expert * scale_words_per_expert,
        col_begin,
        n,
        k,
    };
    let sources = WeightSources::new(words, scales, bf16_weights);
    let steps = k / tk as u32;
    // Step 0's rows and words in registers; each step then stages them, and loads the next
    // step's while the tensor cores multiply.
    load_tile_words(a, &mut next_a, row_begin, row_end, 0, k, k, tm, tk, UNITS);
    load_step_weights(&sources, &mut loaded, &place, 0, tile, decoded);
    sync_cube();
    for step in 0..steps {
        stage_step_weights(&loaded, &table, &mut stage_b, tile, use_table, decoded);
        store_tile_words(&next_a, &mut stage_a, tm, tk, UNITS);
        sync_cube();
        if step + 1 < steps {
            let k_next = (step + 1) * tk as u32;
            load_tile_words(
                a,
                &mut next_a,
                row_begin,
                row_end,
                k_next,
                k,
                k,
                tm,
                tk,
                UNITS,
            );
            load_step_weights(&sources, &mut loaded, &place, k_next, tile, decoded);
        }
        // Strides in u32 words (the loads divide them by an EightBf16's four words).
        cmma::load(&mut a_mat, &stage_a[0..tm * stride], (stride * 4) as u32);
        cmma::load(&mut b_mat, &stage_b[0..tn * stride], (stride * 4) as u32);
        cmma::execute(&a_mat, &b_mat, &acc, &acc);
        sync_cube();
    }
    let mut out_tile = out_view.slice(seq![row_begin, col_begin], seq![tm as u32, tn as u32]);
    cmma::store_tensor(&mut out_tile, &acc);
    let tile_epilogue = TileEpilogue::new(bias, row_weights, pair_of_row, expert, n, limit, alpha);
    fused_epilogue(
        out,
        &tile_epilogue,
        activation,
        in_pair_order,
        row_begin,
        row_end,
        col_begin,
        tm,
        tn,
        epilogue,
    );
}

/// What a tile's fused epilogue reads besides its products: the experts' `bias` [E, N] (the
/// tile's `expert`), each row's weight `row_weights` [P] and pair `pair_of_row` [P], and
/// SwiGLU's `limit` and `alpha`. The outputs are passed to each write: held here, they would
/// make the struct mutable, and the compiler would no longer mark these values uniform. The
/// writes take their products as `&mut [f32]` although they only read them: their callers hold
/// the products mutably (global memory or the subgroup's shared `through`), and cubecl does not
/// pass a mutable slice where a shared one is asked for.
#[derive(CubeType)]
pub(super) struct TileEpilogue<'a> {
    bias: &'a [f32],
    row_weights: &'a [f32],
    pair_of_row: &'a [u32],
    expert: u32,
    pub n: u32,
    limit: f32,
    alpha: f32,
}

#[cube]
impl<'a> TileEpilogue<'a> {
    pub fn new(
        bias: &'a [f32],
        row_weights: &'a [f32],
        pair_of_row: &'a [u32],
        expert: u32,
        n: u32,
        limit: f32,
        alpha: f32,
    ) -> TileEpilogue<'a> {
        TileEpilogue::<'a> {
            bias,
            row_weights,
            pair_of_row,
            expert,
            n,
            limit,
            alpha,
        }
    }

    /// Writes the clamped SwiGLU of the gate and up products `products[at]` and
    /// `products[at + 1]` (with their biases) into `activation` [P, N / 2] at (`row`, unit
    /// `col / 2`).
    pub fn write_swiglu(
        &self,
        activation: &mut [bf16],
        products: &mut [f32],
        at: usize,
        row: u32,
        col: u32,
    ) {
        let n = self.n;
        let gate = products[at] + self.bias[(self.expert * n + col) as usize];
        let up = products[at + 1] + self.bias[(self.expert * n + col + 1) as usize];
        activation[(row * (n / 2) + col / 2) as usize] =
            nearest_bf16(clamped_swiglu(gate, up, self.limit, self.alpha));
    }

    /// Writes the product `products[at]` of (`row`, `col`) plus its bias, times the row's
    /// weight, into `in_pair_order` [P, N] at the row's pair.
    pub fn write_scaled(
        &self,
        in_pair_order: &mut [f32],
        products: &mut [f32],
        at: usize,
        row: u32,
        col: u32,
    ) {
        let n = self.n;
        let pair_at = (self.pair_of_row[row as usize] * n + col) as usize;
        in_pair_order[pair_at] = (products[at] + self.bias[(self.expert * n + col) as usize])
            * self.row_weights[row as usize];
    }
}

/// After the tile's products are stored to `out`: the tile's epilogue (`EPILOGUE_SWIGLU` into
/// `activation`, `EPILOGUE_SCALED` into `in_pair_order`), for its rows under `row_end`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn fused_epilogue(
    out: &mut [f32],
    tile_epilogue: &TileEpilogue,
    activation: &mut [bf16],
    in_pair_order: &mut [f32],
    row_begin: u32,
    row_end: u32,
    col_begin: u32,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] epilogue: u32,
) {
    if comptime![epilogue != EPILOGUE_NONE] {
        // The tile's products are read back by other invocations than the ones that stored
        // them: a barrier over storage memory.
        sync_storage();
        let rows = min(row_end - row_begin, tm as u32);
        if comptime![epilogue == EPILOGUE_SWIGLU] {
            swiglu_epilogue(
                out,
                tile_epilogue,
                activation,
                row_begin,
                rows,
                col_begin,
                tm,
                tn,
            );
        } else {
            scaled_epilogue(
                out,
                tile_epilogue,
                in_pair_order,
                row_begin,
                rows,
                col_begin,
                tm,
                tn,
            );
        }
    }
}

/// gpt-oss's clamped SwiGLU of one unit's `gate` and `up` (bias added; spec 3.4):
/// min(gate, limit) * sigmoid(alpha * min(gate, limit)) * (clamp(up, -limit, limit) + 1).
#[cube]
pub(super) fn clamped_swiglu(gate: f32, up: f32, limit: f32, alpha: f32) -> f32 {
    let gate = min(gate, limit);
    let up = clamp(up, -limit, limit);
    gate / (1.0 + (-(gate * alpha)).exp()) * (up + 1.0)
}

/// The product [P, N] of gate (even columns) and up (odd columns) units plus the expert's
/// bias, to the clamped SwiGLU [P, N / 2] in bf16 ([`clamped_swiglu`]), the down product's
/// input, for this tile's rows and columns.
#[cube]
#[allow(clippy::too_many_arguments)]
fn swiglu_epilogue(
    product: &mut [f32],
    tile_epilogue: &TileEpilogue,
    activation: &mut [bf16],
    row_begin: u32,
    rows: u32,
    col_begin: u32,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
) {
    let n = tile_epilogue.n;
    let units = (tn / 2) as u32;
    let mut e = UNIT_POS;
    while e < (tm * tn / 2) as u32 {
        let r = e / units;
        let col = col_begin + 2 * (e % units);
        if r < rows && col < n {
            let at = (row_begin + r) * n + col;
            tile_epilogue.write_swiglu(activation, product, at as usize, row_begin + r, col);
        }
        e += UNITS;
    }
}

/// The product [P, N] plus the expert's bias, times each row's weight (its gate), written in
/// pair order: row r of the tile to row `pair_of_row[r]` of `in_pair_order` [P, N], so the
/// token's sum over its pairs needs no gather.
#[cube]
#[allow(clippy::too_many_arguments)]
fn scaled_epilogue(
    product: &mut [f32],
    tile_epilogue: &TileEpilogue,
    in_pair_order: &mut [f32],
    row_begin: u32,
    rows: u32,
    col_begin: u32,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
) {
    let n = tile_epilogue.n;
    let mut e = UNIT_POS;
    while e < (tm * tn) as u32 {
        let r = e / tn as u32;
        let col = col_begin + e % tn as u32;
        if r < rows && col < n {
            let row = row_begin + r;
            tile_epilogue.write_scaled(in_pair_order, product, (row * n + col) as usize, row, col);
        }
        e += UNITS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grouped_mxfp4::{LARGE_TILES, SMALL_TILES};
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles_for_the_model_tilings_and_every_epilogue() {
        // The large tiles take the warps kernel where N is whole fragments, this one elsewhere
        // (N = 200 in kernel-check).
        assert_eq!(LARGE_TILES.warp_block(200), None);
        for t in [SMALL_TILES, LARGE_TILES] {
            for epilogue in [EPILOGUE_NONE, EPILOGUE_SWIGLU, EPILOGUE_SCALED] {
                let compiled = compile_kernel!(
                    grouped_mxfp4_kernel::GroupedMxfp4Kernel,
                    CubeDim::new_1d(UNITS),
                    [b b b b b b b b b b b b s s s s s s s s],
                    (t.m, t.n, t.k),
                    t.table,
                    t.decoded,
                    t.order.columns_first(),
                    epilogue,
                );
                assert_eq!(compiled, Ok(()), "{t:?}, epilogue {epilogue}");
            }
        }
    }
}
