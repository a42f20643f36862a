//! The grouped product with subgroup-scope fragments (`Tiling::warps`): the weights decoded
//! K-major first (`Tiling::k_major`), both inputs staged as the dense GEMM stages them, and
//! each subgroup multiplying its own block of the tile as 16 x 16 x 16 fragments
//! (`coopmat_warps::WarpTile`), the layout with which the dense kernel gained 5-8% over one
//! workgroup-scope matrix (docs/benchmarks.md, twenty-second round). A tile's last rows may be
//! the next expert's: a fragment that the expert's end cuts is stored through shared memory,
//! row by row (`WarpTile::store_rows_below`). The epilogues are the tiled kernel's.

use cubecl::prelude::*;
use half::bf16;

use super::UNITS;
use super::kernel::{expert_of_tile, fused_epilogue};
use crate::bf16_rows::EightBf16;
use crate::coopmat_warps::{PLANE, THROUGH_WORDS, WarpTile};
use crate::staged_tiles::{load_tile_words, staged_row_words, store_tile_words};
use crate::tile_order::tile_position;

/// The tiled kernel's arguments (`grouped_mxfp4_kernel`) without the MXFP4 words and scales:
/// the weights come decoded K-major in `bf16_weights` [E * K, N]; `warp` is each subgroup's
/// block (`coopmat_warps::warp_tile`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn grouped_mxfp4_warps_kernel(
    a: &[EightBf16],
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
    limit: f32,
    alpha: f32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] warp: (usize, usize),
    #[comptime] columns_first: bool,
    #[comptime] epilogue: u32,
) {
    let (tm, tn, tk) = tile;
    let (tile_id, column_tile) = tile_position(columns_first);
    let expert = expert_of_tile(tile_starts, tile_id, num_experts);
    if expert == num_experts {
        terminate!();
    }
    let row_begin = offsets[expert as usize] + (tile_id - tile_starts[expert as usize]) * tm as u32;
    let row_end = offsets[expert as usize + 1];
    let col_begin = column_tile * tn as u32;
    // The expert's K rows of N weights.
    let (k_rows, k_rows_end) = (expert * k, expert * k + k);

    let a_stride = comptime![staged_row_words(tk)];
    let b_stride = comptime![staged_row_words(tn)];
    let mut stage_a = Shared::<[EightBf16]>::new_slice(tm * a_stride);
    let mut stage_b = Shared::<[EightBf16]>::new_slice(tk * b_stride);
    let mut through =
        Shared::<[f32]>::new_slice(comptime![(UNITS / PLANE) as usize * THROUGH_WORDS]);
    let mut next_a = Array::<EightBf16>::new(tm * tk / 8 / UNITS as usize);
    let mut next_b = Array::<EightBf16>::new(tk * tn / 8 / UNITS as usize);
    let mut warp_tile = WarpTile::new(warp, tn);

    let steps = k / tk as u32;
    load_tile_words(a, &mut next_a, row_begin, row_end, 0, k, k, tm, tk, UNITS);
    load_tile_words(
        bf16_weights,
        &mut next_b,
        k_rows,
        k_rows_end,
        col_begin,
        n,
        n,
        tk,
        tn,
        UNITS,
    );
    for step in 0..steps {
        // Every subgroup has loaded its fragments of the previous step before the stages are
        // rewritten.
        sync_cube();
        store_tile_words(&next_a, &mut stage_a, tm, tk, UNITS);
        store_tile_words(&next_b, &mut stage_b, tk, tn, UNITS);
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
            load_tile_words(
                bf16_weights,
                &mut next_b,
                k_rows + k_next,
                k_rows_end,
                col_begin,
                n,
                n,
                tk,
                tn,
                UNITS,
            );
        }
        warp_tile.multiply_step(&stage_a, a_stride, &stage_b, b_stride, tk);
    }
    warp_tile.store_rows_below(out, row_begin, col_begin, row_end, n, &mut through);
    fused_epilogue(
        out,
        bias,
        row_weights,
        activation,
        pair_of_row,
        in_pair_order,
        expert,
        row_begin,
        row_end,
        col_begin,
        n,
        limit,
        alpha,
        tm,
        tn,
        epilogue,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coopmat_warps::warp_tile;
    use crate::grouped_mxfp4::kernel::{EPILOGUE_NONE, EPILOGUE_SCALED, EPILOGUE_SWIGLU};
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles_with_every_epilogue_within_the_drivers_workgroup_memory() {
        let tile = (128, 256, 32);
        for epilogue in [EPILOGUE_NONE, EPILOGUE_SWIGLU, EPILOGUE_SCALED] {
            let compiled = compile_kernel!(
                grouped_mxfp4_warps_kernel::GroupedMxfp4WarpsKernel,
                CubeDim::new_1d(UNITS),
                [b b b b b b b b b b s s s s s],
                tile,
                warp_tile(tile.0, tile.1, UNITS).unwrap(),
                true,
                epilogue,
            );
            assert_eq!(compiled, Ok(()), "epilogue {epilogue}");
        }
    }
}
