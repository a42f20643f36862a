//! Not a product: the dense warps kernel's K loop (`crate::coopmat_warps`) with parts of its work
//! left out, to measure what bounds it. Each workgroup stages its first K step, then runs the
//! K loop's steps with only some of the product's work (`Feed`). Their rates against the
//! product's say which part of a step takes the time, and how far the driver's subgroup-scope
//! products can go at all (`bench matmul --tilings M x N x K/units/ceiling-FEED`).

use cubecl::prelude::*;

use crate::bf16_rows::EightBf16;
use crate::coopmat_warps::{FRAGMENT, WarpTile};
use crate::staged_tiles::{
    ConsecutiveRows, StepPlaces, load_step_words, staged_row_words, store_tile_words,
};
use crate::tile_order::tile_origin;

/// Which of the product's work each K step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Multiplies fragments loaded once: the tensor cores alone (`ceiling-mma`).
    Registers,
    /// Loads the fragments from the stage filled once, and multiplies (`ceiling-shared`).
    Shared,
    /// Also stores the words loaded once into the stage between two barriers, as the product
    /// does (`ceiling-restaged`): everything but the global loads.
    Restaged,
    /// Also loads the next words from global memory, always from the first two K steps, which
    /// the caches hold (`ceiling-cached`): the product with loads that do not wait on memory.
    Cached,
}

/// The kernel's comptime codes of the feeds.
const REGISTERS: u32 = 0;
const SHARED: u32 = 1;
const RESTAGED: u32 = 2;
const CACHED: u32 = 3;

impl Feed {
    /// The kernel's comptime code.
    pub fn code(self) -> u32 {
        match self {
            Feed::Registers => REGISTERS,
            Feed::Shared => SHARED,
            Feed::Restaged => RESTAGED,
            Feed::Cached => CACHED,
        }
    }
}

/// The dense warps kernel's arguments (`coopmat_gemm_warps_kernel`); `out` receives each
/// workgroup's accumulators, which are not the product (every step multiplies the first K step).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn coopmat_ceiling_kernel(
    lhs: &[EightBf16],
    rhs: &[EightBf16],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] columns_first: bool,
    #[comptime] warp: (usize, usize),
    #[comptime] feed: u32,
    #[comptime] units: u32,
) {
    let (tm, tn, tk) = tile;
    let (row, col) = tile_origin(tm, tn, columns_first);
    let a_stride = comptime![staged_row_words(tk)];
    let b_stride = comptime![staged_row_words(tn)];
    let mut stage_a = Shared::<[EightBf16]>::new_slice(tm * a_stride);
    let mut stage_b = Shared::<[EightBf16]>::new_slice(tk * b_stride);
    let mut words_a = Array::<EightBf16>::new(tm * tk / 8 / units as usize);
    let mut words_b = Array::<EightBf16>::new(tk * tn / 8 / units as usize);
    let places = StepPlaces::dense(row, col, m, n, k);
    let lhs_rows = ConsecutiveRows {};
    load_step_words::<ConsecutiveRows>(
        UNIT_POS,
        lhs,
        &lhs_rows,
        rhs,
        &mut words_a,
        &mut words_b,
        &places,
        0,
        tile,
        false,
        units,
    );
    store_tile_words(&words_a, &mut stage_a, tm, tk, units);
    store_tile_words(&words_b, &mut stage_b, tk, tn, units);
    sync_cube();

    let mut warp_tile = WarpTile::new(warp, tn, false);
    let steps = k.div_ceil(tk as u32);
    if comptime![feed == REGISTERS] {
        warp_tile.load_fragments(&stage_a, a_stride, &stage_b, b_stride, 0usize);
        for _ in 0..steps {
            #[unroll]
            for _ in 0..tk / FRAGMENT {
                warp_tile.multiply_fragments();
            }
        }
    } else {
        for step in 0..steps {
            if comptime![feed == RESTAGED || feed == CACHED] {
                sync_cube();
                store_tile_words(&words_a, &mut stage_a, tm, tk, units);
                store_tile_words(&words_b, &mut stage_b, tk, tn, units);
                sync_cube();
            }
            if comptime![feed == CACHED] {
                // Steps 0 and 1 in turn: loads the compiler cannot hoist out of the loop.
                let k_step = (step % 2) * tk as u32;
                load_step_words::<ConsecutiveRows>(
                    UNIT_POS,
                    lhs,
                    &lhs_rows,
                    rhs,
                    &mut words_a,
                    &mut words_b,
                    &places,
                    k_step,
                    tile,
                    false,
                    units,
                );
            }
            warp_tile.multiply_step(&stage_a, a_stride, &stage_b, b_stride, tk);
        }
    }
    warp_tile.store_whole(out, row, col, m, n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coopmat_warps::warp_tile;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn every_feed_compiles_for_the_default_tile() {
        let (tile, units) = ((128, 256, 32), 256);
        for feed in [Feed::Registers, Feed::Shared, Feed::Restaged, Feed::Cached] {
            let compiled = compile_kernel!(
                coopmat_ceiling_kernel::CoopmatCeilingKernel,
                CubeDim::new_1d(units),
                [b b b s s s],
                tile,
                false,
                warp_tile(tile.0, tile.1, units).unwrap(),
                feed.code(),
                units,
            );
            assert_eq!(compiled, Ok(()), "{feed:?}");
        }
    }
}
