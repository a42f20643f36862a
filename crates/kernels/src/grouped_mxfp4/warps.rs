//! The grouped product with subgroup-scope fragments (`Tiling::warps`): the weights decoded first
//! as the checkpoint's rows of K (loaded as column-major B fragments), both inputs staged as the
//! dense GEMM stages them, and each subgroup multiplying its own block of the tile as 16 x 16 x 16
//! fragments (`coopmat_warps::WarpTile`), the layout with which the dense kernel gained 5-8% over
//! one workgroup-scope matrix (docs/benchmarks.md, twenty-second round). A tile's last rows may be
//! the next expert's: a fragment that the expert's end cuts is stored through shared memory, row by
//! row (`WarpTile::store_rows_below`). The epilogues are the tiled kernel's, after the products are
//! stored to global memory; with `Tiling::fragment_epilogues` they run instead on each fragment
//! staged in shared memory, and the products are never stored.

use cubecl::prelude::*;
use half::bf16;

use super::UNITS;
use super::kernel::{EPILOGUE_NONE, EPILOGUE_SWIGLU, TileEpilogue, expert_of_tile, fused_epilogue};
use crate::bf16_rows::EightBf16;
use crate::coopmat_warps::{FRAGMENT, PLANE, THROUGH_WORDS, WarpTile};
use crate::staged_tiles::{ConsecutiveRows, GatheredRows};
use crate::tile_order::tile_position;

/// The tiled kernel's arguments (`grouped_mxfp4_kernel`) without the MXFP4 words and scales:
/// the weights come decoded in `bf16_weights` [E * N, K], the checkpoint's rows; `warp` is each
/// subgroup's block (`coopmat_warps::warp_tile`).
/// With `gathered`, `a` holds the tokens' rows and sorted row r is `a`'s row `rows_of[r]`.
/// Only the tiles of experts `experts_from..experts_to` run, whose weights `bf16_weights` holds
/// from its first row (a launch over part of the experts, `extension::expert_chunks`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn grouped_mxfp4_warps_kernel(
    a: &[EightBf16],
    rows_of: &[u32],
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
    num_experts: u32,
    experts_from: u32,
    experts_to: u32,
    limit: f32,
    alpha: f32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] warp: (usize, usize),
    #[comptime] columns_first: bool,
    #[comptime] epilogue: u32,
    #[comptime] fragment_epilogues: bool,
    #[comptime] gathered: bool,
) {
    let (tm, tn, _) = tile;
    let (tile_id, column_tile) = tile_position(columns_first);
    let expert = expert_of_tile(tile_starts, tile_id, num_experts);
    if expert < experts_from || expert >= experts_to {
        terminate!();
    }
    let row_begin = offsets[expert as usize] + (tile_id - tile_starts[expert as usize]) * tm as u32;
    let row_end = offsets[expert as usize + 1];
    let col_begin = column_tile * tn as u32;
    let mut through =
        Shared::<[f32]>::new_slice(comptime![(UNITS / PLANE) as usize * THROUGH_WORDS]);
    let mut warp_tile = WarpTile::new(warp, tn, true);
    // The expert's N rows of K are rows (expert - experts_from) * n.. of the decoded weights.
    let expert_rows = (expert - experts_from) * n;
    // Sorted row r is row r of `a`, or with `gathered` row rows_of[r] (`a` in token order).
    if comptime![gathered] {
        let lhs_rows = GatheredRows::new(rows_of);
        warp_tile.accumulate_staged::<GatheredRows>(
            a,
            &lhs_rows,
            bf16_weights,
            row_begin,
            row_end,
            expert_rows,
            col_begin,
            n,
            k,
            tile,
            UNITS,
        );
    } else {
        let lhs_rows = ConsecutiveRows {};
        warp_tile.accumulate_staged::<ConsecutiveRows>(
            a,
            &lhs_rows,
            bf16_weights,
            row_begin,
            row_end,
            expert_rows,
            col_begin,
            n,
            k,
            tile,
            UNITS,
        );
    }
    let tile_epilogue = TileEpilogue::new(bias, row_weights, pair_of_row, expert, n, limit, alpha);
    if comptime![fragment_epilogues && epilogue != EPILOGUE_NONE] {
        epilogues_from_fragments(
            &warp_tile,
            &mut through,
            &tile_epilogue,
            activation,
            in_pair_order,
            row_begin,
            row_end,
            col_begin,
            warp,
            epilogue,
        );
    } else {
        warp_tile.store_rows_below(out, row_begin, col_begin, row_end, n, &mut through);
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
}

/// The tile's epilogue (`EPILOGUE_SWIGLU` into `activation` or `EPILOGUE_SCALED` into
/// `in_pair_order`, as `fused_epilogue` writes them) straight from each subgroup's fragments,
/// each staged through the subgroup's 1 KB of `through`: the products never go to global memory
/// (`Tiling::fragment_epilogues`). Rows from `row_end` are the next expert's and are left alone.
#[cube]
#[allow(clippy::too_many_arguments)]
fn epilogues_from_fragments(
    warp_tile: &WarpTile,
    through: &mut [f32],
    tile_epilogue: &TileEpilogue,
    activation: &mut [bf16],
    in_pair_order: &mut [f32],
    row_begin: u32,
    row_end: u32,
    col_begin: u32,
    #[comptime] warp: (usize, usize),
    #[comptime] epilogue: u32,
) {
    let (fm, fn_) = comptime![(warp.0 / FRAGMENT, warp.1 / FRAGMENT)];
    let side = comptime![FRAGMENT as u32];
    let n = tile_epilogue.n;
    let lane = UNIT_POS % PLANE;
    let own = (UNIT_POS / PLANE) * THROUGH_WORDS as u32;
    #[unroll]
    for i in 0..fm {
        #[unroll]
        for j in 0..fn_ {
            let (tile_row, tile_col) = warp_tile.stage_fragment(i, j, through);
            let (first_row, first_col) = (row_begin + tile_row, col_begin + tile_col);
            if comptime![epilogue == EPILOGUE_SWIGLU] {
                // Lane e takes unit (gate, up) e % 8 of fragment row e / 8.
                let mut e = lane;
                while e < THROUGH_WORDS as u32 / 2 {
                    let (r, unit) = (e / (side / 2), e % (side / 2));
                    let (row, col) = (first_row + r, first_col + 2 * unit);
                    if row < row_end && col < n {
                        let at = (own + r * side + 2 * unit) as usize;
                        tile_epilogue.write_swiglu(activation, through, at, row, col);
                    }
                    e += PLANE;
                }
            } else {
                let mut e = lane;
                while e < THROUGH_WORDS as u32 {
                    let (row, col) = (first_row + e / side, first_col + e % side);
                    if row < row_end && col < n {
                        tile_epilogue.write_scaled(
                            in_pair_order,
                            through,
                            (own + e) as usize,
                            row,
                            col,
                        );
                    }
                    e += PLANE;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coopmat_warps::warp_tile;
    use crate::grouped_mxfp4::kernel::EPILOGUE_SCALED;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles_with_every_epilogue_within_the_drivers_workgroup_memory() {
        // The large tiles before and after the twenty-fifth round.
        for tile in [(128, 256, 32), (128, 320, 32)] {
            for epilogue in [EPILOGUE_NONE, EPILOGUE_SWIGLU, EPILOGUE_SCALED] {
                for (fragment_epilogues, gathered) in [(false, false), (true, false), (true, true)]
                {
                    let compiled = compile_kernel!(
                        grouped_mxfp4_warps_kernel::GroupedMxfp4WarpsKernel,
                        CubeDim::new_1d(UNITS),
                        [b b b b b b b b b b b s s s s s s s],
                        tile,
                        warp_tile(tile.0, tile.1, UNITS).unwrap(),
                        true,
                        epilogue,
                        fragment_epilogues,
                        gathered,
                    );
                    assert_eq!(
                        compiled,
                        Ok(()),
                        "tile {tile:?}, epilogue {epilogue}, from fragments {fragment_epilogues}, \
                         gathered {gathered}"
                    );
                }
            }
        }
    }
}
