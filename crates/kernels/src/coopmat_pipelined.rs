//! The dense bf16 GEMM of [`crate::coopmat_warps`] with its products one 16-wide slice of K
//! behind its fragment loads (`Scheme::Pipelined`): each subgroup loads slice `kk + 1` of the
//! stage into a second set of fragments while the tensor cores multiply slice `kk`, and the
//! products of a step's last slice run between the two barriers around the next step's stores.
//!
//! Why: without barriers the warps kernel's K loop runs at the tensor cores' rate (550-575 TF/s
//! on an H200, `coopmat_ceiling`), with them at half (docs/benchmarks.md, twenty-sixth round).
//! The barriers line the subgroups up, so that all of them load their fragments at once and then
//! all multiply, and nothing multiplies while they store. Here every subgroup has products to
//! run at each of those points. The cost is a second set of fragments in registers (32 more per
//! invocation at 64 x 64 blocks).

use cubecl::prelude::*;

use crate::bf16_rows::EightBf16;
use crate::coopmat_warps::{FRAGMENT, StepPlaces, WarpTile, load_step_words};
use crate::staged_tiles::{ConsecutiveRows, staged_row_words, store_tile_words};
use crate::tile_order::tile_position;

/// The dense warps kernel's arguments (`coopmat_gemm_warps_kernel`) and product.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn coopmat_gemm_pipelined_kernel(
    lhs: &[EightBf16],
    rhs: &[EightBf16],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] columns_first: bool,
    #[comptime] warp: (usize, usize),
    #[comptime] units: u32,
) {
    let (tm, tn, tk) = tile;
    let (row_tile, column_tile) = tile_position(columns_first);
    let row = row_tile * tm as u32;
    let col = column_tile * tn as u32;
    let a_stride = comptime![staged_row_words(tk)];
    let b_stride = comptime![staged_row_words(tn)];
    let mut stage_a = Shared::<[EightBf16]>::new_slice(tm * a_stride);
    let mut stage_b = Shared::<[EightBf16]>::new_slice(tk * b_stride);
    let mut next_a = Array::<EightBf16>::new(tm * tk / 8 / units as usize);
    let mut next_b = Array::<EightBf16>::new(tk * tn / 8 / units as usize);
    let places = StepPlaces {
        row,
        row_end: m,
        rhs_row: 0,
        col,
        n,
        k,
    };
    let lhs_rows = ConsecutiveRows {};
    // A last step past K reads zeros there (`load_step_words`).
    let steps = k.div_ceil(tk as u32);
    let slices = comptime![tk / FRAGMENT];

    // Step 0 staged; step 1's words on their way; step 0's first slice loaded.
    load_step_words::<ConsecutiveRows>(
        lhs,
        &lhs_rows,
        rhs,
        &mut next_a,
        &mut next_b,
        &places,
        0,
        tile,
        false,
        units,
    );
    store_tile_words(&next_a, &mut stage_a, tm, tk, units);
    store_tile_words(&next_b, &mut stage_b, tk, tn, units);
    sync_cube();
    if steps > 1 {
        load_step_words::<ConsecutiveRows>(
            lhs,
            &lhs_rows,
            rhs,
            &mut next_a,
            &mut next_b,
            &places,
            tk as u32,
            tile,
            false,
            units,
        );
    }
    let mut warp_tile = WarpTile::new(warp, tn, false);
    // Slice kk of a step is loaded into `even` or `odd` as kk is even or odd.
    let mut even = warp_tile.fragment_set();
    let mut odd = warp_tile.fragment_set();
    warp_tile.load_into(&mut even, &stage_a, a_stride, &stage_b, b_stride, 0usize);

    for step in 0..steps {
        // Load slice kk while slice kk - 1 is multiplied.
        #[unroll]
        for kk in 1..slices {
            if comptime![kk % 2 == 1] {
                warp_tile.load_into(&mut odd, &stage_a, a_stride, &stage_b, b_stride, kk);
                warp_tile.multiply(&even);
            } else {
                warp_tile.load_into(&mut even, &stage_a, a_stride, &stage_b, b_stride, kk);
                warp_tile.multiply(&odd);
            }
        }
        // Every subgroup has loaded this step's fragments before the stage is rewritten.
        sync_cube();
        if step + 1 < steps {
            store_tile_words(&next_a, &mut stage_a, tm, tk, units);
            store_tile_words(&next_b, &mut stage_b, tk, tn, units);
        }
        // The last slice's products, while the other subgroups store.
        if comptime![(slices - 1) % 2 == 1] {
            warp_tile.multiply(&odd);
        } else {
            warp_tile.multiply(&even);
        }
        sync_cube();
        if step + 2 < steps {
            let k_next = (step + 2) * tk as u32;
            load_step_words::<ConsecutiveRows>(
                lhs,
                &lhs_rows,
                rhs,
                &mut next_a,
                &mut next_b,
                &places,
                k_next,
                tile,
                false,
                units,
            );
        }
        if step + 1 < steps {
            warp_tile.load_into(&mut even, &stage_a, a_stride, &stage_b, b_stride, 0usize);
        }
    }
    // Rows and columns are whole fragments (`coopmat_warps::takes`).
    warp_tile.store_whole(out, row, col, m, n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coopmat_warps::warp_tile;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles_for_one_two_and_three_slices_per_step() {
        for (tile, units) in [
            ((128, 256, 16), 256),
            ((128, 256, 32), 256),
            ((128, 256, 48), 256),
            ((128, 128, 32), 128),
        ] {
            let compiled = compile_kernel!(
                coopmat_gemm_pipelined_kernel::CoopmatGemmPipelinedKernel,
                CubeDim::new_1d(units),
                [b b b s s s],
                tile,
                true,
                warp_tile(tile.0, tile.1, units).unwrap(),
                units,
            );
            assert_eq!(compiled, Ok(()), "tile {tile:?}");
        }
    }
}
