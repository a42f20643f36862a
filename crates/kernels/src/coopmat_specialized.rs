//! The dense bf16 GEMM with its subgroups specialised (`Scheme::Specialized` of
//! [`crate::coopmat_gemm`]): a few producer subgroups copy the K steps' input tiles from global
//! memory into a ring of shared stages, and the consumer subgroups multiply them in
//! subgroup-scope fragments, each on its own block of the tile as in `Scheme::Warps`
//! ([`crate::coopmat_warps::WarpTile`]). The two sides wait on counters in shared memory, not
//! on workgroup barriers: a stage is filled when every producer subgroup has stored its share
//! and free when every consumer subgroup has loaded its fragments from it. So a consumer waits
//! only when the producers are behind, never for the slowest consumer of a step, and the stores
//! into a stage run beside the products of the others.
//!
//! What it answers: `Warps` spends half its time on each K step's two workgroup barriers and
//! the stores between them (`coopmat_ceiling`, docs/benchmarks.md, twenty-sixth round). This is
//! how CUDA GEMMs keep the tensor cores fed where there are no asynchronous copies.

use cubecl::prelude::*;

use crate::bf16_rows::EightBf16;
use crate::coopmat_warps::{FRAGMENT, PLANE, WarpTile};
use crate::staged_tiles::{
    ConsecutiveRows, StepPlaces, load_step_words, staged_row_words, store_tile_words_as,
};
use crate::tile_order::tile_origin;

/// The most times a subgroup reads a counter before it goes on without the stage: a bound on a
/// wait that should end within a few K steps, so a wrong count shows as a wrong product rather
/// than a hung GPU.
const MAX_SPINS: u32 = 1 << 14;

/// Whether the kernel takes an `m x k` by `k x n` product with `tile` (m, n, k), `units`
/// consumer invocations and `producers` producer subgroups: as `Scheme::Warps` takes it
/// ([`crate::coopmat_warps::takes`]). A producer subgroup loads whole K steps, and tiles of
/// whole fragments are whole 16-byte words over a subgroup.
pub fn takes(
    m: usize,
    n: usize,
    k: usize,
    tile: (usize, usize, usize),
    units: u32,
    producers: u32,
) -> bool {
    producers > 0 && crate::coopmat_warps::takes(m, n, k, tile, units)
}

/// What the kernel does besides the product (measurements of what feeds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The product.
    Product,
    /// Not a product: the consumers release each stage without loading or multiplying, so the
    /// rate is what the producers can feed (`specialized-P-S-feed`; about 405 TF/s at 8192^3 on
    /// an H200 against the product's 307, docs/benchmarks.md, thirty-second round).
    FeedOnly,
}

/// Invocations of one workgroup: the consumers' `units` and the producers' subgroups.
pub fn workgroup_units(units: u32, producers: u32) -> u32 {
    units + producers * PLANE
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn coopmat_gemm_specialized_kernel(
    lhs: &[EightBf16],
    rhs: &[EightBf16],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] columns_first: bool,
    bias: &[f32],
    #[comptime] with_bias: bool,
    #[comptime] warp: (usize, usize),
    #[comptime] units: u32,
    #[comptime] producers: u32,
    #[comptime] stages: u32,
    #[comptime] feed_only: bool,
) {
    let (tm, tn, tk) = tile;
    let (row, col) = tile_origin(tm, tn, columns_first);
    let a_stride = comptime![staged_row_words(tk)];
    let b_stride = comptime![staged_row_words(tn)];
    let a_words = comptime![tm * a_stride];
    let b_words = comptime![tk * b_stride];
    let mut stage_a = Shared::<[EightBf16]>::new_slice(stages as usize * a_words);
    let mut stage_b = Shared::<[EightBf16]>::new_slice(stages as usize * b_words);
    // filled[s]: steps stored into stage s so far; freed[s]: consumer subgroups' releases of it.
    let filled = Shared::<[Atomic<u32>]>::new_slice(stages as usize);
    let freed = Shared::<[Atomic<u32>]>::new_slice(stages as usize);
    if UNIT_POS < stages {
        filled[UNIT_POS as usize].store(0u32);
        freed[UNIT_POS as usize].store(0u32);
    }
    sync_cube();

    let steps = k.div_ceil(tk as u32);
    let producer_units = comptime![producers * PLANE];
    let consumers = comptime![units / PLANE];
    let lane = UNIT_POS % PLANE;
    if UNIT_POS < producer_units {
        // Producer subgroup p fills the stages of steps p, p + producers, ..: each loads a whole
        // step, so the producers have as many steps' loads in flight as there are of them.
        let places = StepPlaces::dense(row, col, m, n, k);
        let lhs_rows = ConsecutiveRows {};
        let mut next_a = Array::<EightBf16>::new(tm * tk / 8 / PLANE as usize);
        let mut next_b = Array::<EightBf16>::new(tk * tn / 8 / PLANE as usize);
        let mut step = UNIT_POS / PLANE;
        while step < steps {
            // The loads are in flight while the subgroup waits for the stage.
            load_step_words::<ConsecutiveRows>(
                lane,
                lhs,
                &lhs_rows,
                rhs,
                &mut next_a,
                &mut next_b,
                &places,
                step * tk as u32,
                tile,
                false,
                PLANE,
            );
            let s = step % stages;
            // Every consumer has loaded its fragments of the step this stage held before.
            wait_for(&freed[s as usize], (step / stages) * consumers);
            let a_first = s as usize * a_words;
            let b_first = s as usize * b_words;
            store_tile_words_as(
                lane,
                &next_a,
                &mut stage_a[a_first..a_first + a_words],
                tm,
                tk,
                PLANE,
            );
            store_tile_words_as(
                lane,
                &next_b,
                &mut stage_b[b_first..b_first + b_words],
                tk,
                tn,
                PLANE,
            );
            count_subgroup(&filled, s, lane);
            step += producers;
        }
    } else {
        let mut warp_tile = WarpTile::for_plane(UNIT_POS / PLANE - producers, warp, tn, false);
        if comptime![with_bias] {
            warp_tile.start_at_bias(bias, col, n);
        }
        for step in 0..steps {
            let s = step % stages;
            wait_for(&filled[s as usize], step / stages + 1);
            let a_first = s as usize * a_words;
            let b_first = s as usize * b_words;
            let a = &stage_a[a_first..a_first + a_words];
            let b = &stage_b[b_first..b_first + b_words];
            if comptime![feed_only] {
                count_subgroup(&freed, s, lane);
            } else {
                #[unroll]
                for kk in 0..tk / FRAGMENT {
                    warp_tile.load_fragments(a, a_stride, b, b_stride, kk);
                    if comptime![kk + 1 == tk / FRAGMENT] {
                        // The last fragments are loaded: the stage is free for the producers.
                        count_subgroup(&freed, s, lane);
                    }
                    warp_tile.multiply_fragments();
                }
            }
        }
        // Rows and columns are whole fragments (`takes`): a fragment is inside or outside.
        warp_tile.store_whole(out, row, col, m, n);
    }
}

/// Adds the subgroup's one count to stage `s`'s counter in `counters` once all its lanes are
/// done with what the count stands for (their stores into the stage, or their fragment loads
/// from it); the add releases those accesses. `lane` is the invocation's lane, computed once by
/// the caller.
#[cube]
fn count_subgroup(counters: &[Atomic<u32>], s: u32, lane: u32) {
    sync_plane();
    if lane == 0 {
        counters[s as usize].fetch_add(1u32);
    }
}

/// Waits until `counter` reaches `target` (or [`MAX_SPINS`] reads pass). The subgroup's first
/// lane reads the counter and shares what it saw, so a waiting subgroup takes one read of
/// shared memory per turn from the others' fragment loads, not one per lane; the barrier after
/// carries what that read acquired (the counting subgroups' stores before their adds) to the
/// other lanes.
#[cube]
fn wait_for(counter: &Atomic<u32>, target: u32) {
    let mut spins = 0u32;
    let mut waiting = true;
    let lane = UNIT_POS % PLANE;
    while waiting {
        let mut seen = 0u32;
        if lane == 0 {
            seen = counter.load();
        }
        seen = plane_broadcast(seen, 0u32);
        spins += 1;
        waiting = seen < target && spins < MAX_SPINS;
    }
    sync_plane();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coopmat_warps::warp_tile;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles_for_its_tilings() {
        use coopmat_gemm_specialized_kernel::CoopmatGemmSpecializedKernel;
        for (tile, units, producers, stages, variant) in [
            ((128, 256, 16), 256, 2, 3, Variant::Product),
            ((128, 256, 16), 256, 4, 3, Variant::Product),
            ((128, 256, 16), 256, 4, 3, Variant::FeedOnly),
            ((128, 256, 32), 256, 2, 1, Variant::Product),
            ((128, 128, 32), 128, 2, 2, Variant::Product),
        ] {
            let feed_only = variant == Variant::FeedOnly;
            let warp = warp_tile(tile.0, tile.1, units).unwrap();
            let all = workgroup_units(units, producers);
            let compiled = compile_kernel!(
                CoopmatGemmSpecializedKernel,
                CubeDim::new_1d(all),
                [b b b s s s b],
                tile,
                true,
                true,
                warp,
                units,
                producers,
                stages,
                feed_only,
            );
            assert_eq!(
                compiled,
                Ok(()),
                "tile {tile:?}, {producers} x {stages}, {variant:?}"
            );
        }
    }

    #[test]
    fn stages_past_the_drivers_workgroup_memory_fail_to_compile() {
        // Two stages of 128 x 256 x 32 with padded rows: 54,272 bytes.
        let (tile, units) = ((128, 256, 32), 256);
        let compiled = compile_kernel!(
            coopmat_gemm_specialized_kernel::CoopmatGemmSpecializedKernel,
            CubeDim::new_1d(workgroup_units(units, 2)),
            [b b b s s s b],
            tile,
            true,
            false,
            warp_tile(tile.0, tile.1, units).unwrap(),
            units,
            2,
            2,
            false,
        );
        let error = compiled.unwrap_err();
        assert!(error.contains("54288 bytes"), "{error}");
    }

    #[test]
    fn the_kernel_takes_what_warps_takes_with_producers() {
        assert!(takes(8192, 8192, 8192, (128, 256, 16), 256, 3));
        // No producers at all is no kernel.
        assert!(!takes(8192, 8192, 8192, (128, 256, 16), 256, 0));
        // What `Warps` refuses, this refuses: rows that are not whole fragments.
        assert!(!takes(8191, 8192, 8192, (128, 256, 16), 256, 2));
    }
}
