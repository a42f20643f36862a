//! (token, rank) pairs sorted by expert in four launches: the grouped MoE's bookkeeping.
//!
//! burn's ops build the same stable counting sort (`moe_grouped::group_by_expert`) from one-hot
//! rows, running sums and scatters: about 34 launches and 0.6 ms per layer at scoring's 65,536
//! pairs on an H100, most of them kernels of 6-10 us. Here:
//! 1. `block_ranks_kernel`: one workgroup per block of [`BLOCK`] pairs stages the block's
//!    expert ids in shared memory; each pair counts the earlier pairs of its expert in the block
//!    (its rank in the block), and one invocation per expert counts the block's pairs of it;
//! 2. `block_starts_kernel`: one workgroup per expert scans its counts over the blocks (the
//!    rows of that expert before each block) and writes its total;
//! 3. `expert_offsets_kernel`: one workgroup turns the totals into each expert's first row and
//!    first tile (prefix sums of the counts and of ceil(count / tile rows));
//! 4. `sorted_rows_kernel`: each pair's row is its expert's first row, plus the rows of its
//!    expert in earlier blocks, plus its rank in its block; the pair and its expert are written
//!    at that row.
//!
//! Stable, as the reference: pairs of one expert keep their order. Up to [`MAX_EXPERTS`]
//! experts.

use burn::backend::{backend_extension, tensor::IntTensor};
use burn::tensor::{Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{empty_of, grid_over_rows, same_dtype};

/// Pairs per block, and invocations per workgroup.
pub const BLOCK: u32 = 256;
/// Most experts the kernels take (one invocation per expert, and one more for the end).
pub const MAX_EXPERTS: usize = BLOCK as usize - 1;
/// Rounds of the running sums over a block (2^8 = [`BLOCK`]).
const SCAN_ROUNDS: u32 = 8;
const _: () = assert!(1 << SCAN_ROUNDS == BLOCK);
/// Each part of the flat output starts at a multiple of this many values (256 bytes).
/// burn-cubecl's `narrow` gives a view (no copy) only where the part's first byte and the
/// bytes after its end are multiples of the device's offset alignment: the experts' parts come
/// first, so with a multiple of 64 pairs (scoring's 65,536) the three parts of P values are
/// views; the others are copied by a launch of their own.
const PART_ALIGN: usize = 64;

/// Where the parts of the flat output start, for `pairs` pairs and `experts` experts: (first
/// tile of each expert, sorted row of each pair, pair of each sorted row, expert of each
/// sorted row, total length); each expert's first row starts at 0.
pub fn flat_parts(pairs: usize, experts: usize) -> [usize; 5] {
    let expert_part = (experts + 1).next_multiple_of(PART_ALIGN);
    let rows_at = 2 * expert_part;
    [
        expert_part,
        rows_at,
        rows_at + pairs,
        rows_at + 2 * pairs,
        rows_at + 3 * pairs,
    ]
}

/// The workgroup's index over a `grid_over_rows` grid.
#[cube]
fn workgroup_index() -> u32 {
    CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X
}

#[cube(launch)]
fn block_ranks_kernel(
    ids: &[u32],
    rank_in_block: &mut [u32],
    block_counts: &mut [u32],
    pairs: u32,
    experts: u32,
) {
    let block = workgroup_index();
    if block * BLOCK >= pairs {
        terminate!();
    }
    let mut block_ids = Shared::<[u32]>::new_slice(BLOCK as usize);
    let pair = block * BLOCK + UNIT_POS;
    // Past the last pair: an id no expert has.
    let mut id = experts;
    if pair < pairs {
        id = ids[pair as usize];
    }
    block_ids[UNIT_POS as usize] = id;
    sync_cube();
    if pair < pairs {
        let mut rank = 0u32;
        for j in 0..UNIT_POS {
            if block_ids[j as usize] == id {
                rank += 1;
            }
        }
        rank_in_block[pair as usize] = rank;
    }
    if UNIT_POS < experts {
        let mut count = 0u32;
        for j in 0..BLOCK {
            if block_ids[j as usize] == UNIT_POS {
                count += 1;
            }
        }
        block_counts[(block * experts + UNIT_POS) as usize] = count;
    }
}

#[cube(launch)]
fn block_starts_kernel(
    block_counts: &[u32],
    block_starts: &mut [u32],
    totals: &mut [u32],
    blocks: u32,
    experts: u32,
) {
    let expert = CUBE_POS_X;
    let mut sums = Shared::<[u32]>::new_slice(BLOCK as usize);
    let mut before = 0u32;
    for chunk in 0..blocks.div_ceil(BLOCK) {
        let block = chunk * BLOCK + UNIT_POS;
        let mut count = 0u32;
        if block < blocks {
            count = block_counts[(block * experts + expert) as usize];
        }
        sums[UNIT_POS as usize] = count;
        sync_cube();
        // Inclusive running sums over the chunk, doubling the reach each round.
        for round in 0..SCAN_ROUNDS {
            let reach = 1u32 << round;
            let mut add = 0u32;
            if UNIT_POS >= reach {
                add = sums[(UNIT_POS - reach) as usize];
            }
            sync_cube();
            sums[UNIT_POS as usize] += add;
            sync_cube();
        }
        if block < blocks {
            block_starts[(block * experts + expert) as usize] =
                before + sums[UNIT_POS as usize] - count;
        }
        before += sums[(BLOCK - 1) as usize];
        // Every invocation has read the chunk's sums before the next chunk writes them.
        sync_cube();
    }
    if UNIT_POS == 0 {
        totals[expert as usize] = before;
    }
}

#[cube(launch)]
fn expert_offsets_kernel(
    totals: &[u32],
    out: &mut [u32],
    tiles_at: u32,
    experts: u32,
    tile_rows: u32,
) {
    let mut counts = Shared::<[u32]>::new_slice(BLOCK as usize);
    let e = UNIT_POS;
    let mut count = 0u32;
    if e < experts {
        count = totals[e as usize];
    }
    counts[e as usize] = count;
    sync_cube();
    if e <= experts {
        let mut first_row = 0u32;
        let mut first_tile = 0u32;
        for before in 0..e {
            let c = counts[before as usize];
            first_row += c;
            first_tile += c.div_ceil(tile_rows);
        }
        out[e as usize] = first_row;
        out[(tiles_at + e) as usize] = first_tile;
    }
}

#[cube(launch)]
fn sorted_rows_kernel(
    ids: &[u32],
    rank_in_block: &[u32],
    block_starts: &[u32],
    out: &mut [u32],
    pairs: u32,
    experts: u32,
    rows_at: u32,
    pair_at: u32,
    expert_at: u32,
) {
    let pair = workgroup_index() * BLOCK + UNIT_POS;
    if pair >= pairs {
        terminate!();
    }
    let expert = ids[pair as usize];
    let block = pair / BLOCK;
    let row = out[expert as usize]
        + block_starts[(block * experts + expert) as usize]
        + rank_in_block[pair as usize];
    out[(rows_at + pair) as usize] = row;
    out[(pair_at + row) as usize] = pair;
    out[(expert_at + row) as usize] = expert;
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait ExpertGroupsBackend: burn::backend::Backend {
    /// `expert_ids` [P] (32-bit, pair order, each below `experts`) -> flat 32-bit, each part
    /// where [`flat_parts`] puts it: each expert's first row [E + 1] and first tile of
    /// `tile_rows` rows [E + 1], the sorted row of each pair [P], the pair of each sorted row
    /// [P], the expert of each sorted row [P].
    #[fusion(dtype = same_dtype(expert_ids), shape = Shape::from(vec![flat_parts(expert_ids[0], *experts)[4]]))]
    fn expert_groups(
        expert_ids: IntTensor<Self>,
        experts: usize,
        tile_rows: usize,
    ) -> IntTensor<Self>;
}

impl ExpertGroupsBackend for CubeBackend {
    fn expert_groups(expert_ids: CubeTensor, experts: usize, tile_rows: usize) -> CubeTensor {
        let ids = into_contiguous(expert_ids);
        assert_eq!(ids.dtype.size(), 4, "expert_groups: 32-bit expert ids only");
        assert!(
            (1..=MAX_EXPERTS).contains(&experts) && tile_rows > 0,
            "expert_groups: {experts} experts (1 to {MAX_EXPERTS}), tiles of {tile_rows} rows"
        );
        let pairs = ids.meta.shape()[0];
        // No pairs: no blocks, so every expert's total is 0 (the grids still take one
        // workgroup, which exits at once).
        let blocks = pairs.div_ceil(BLOCK as usize);
        let [tiles_at, rows_at, pair_at, expert_at, len] =
            flat_parts(pairs, experts).map(|at| at as u32);
        let out = empty_of(&ids, vec![len as usize], ids.dtype);
        let u32s = |len: usize| empty_of(&ids, vec![len.max(1)], ids.dtype);
        let (rank_in_block, block_counts) = (u32s(pairs), u32s(blocks * experts));
        let (block_starts, totals) = (u32s(blocks * experts), u32s(experts));
        let client = ids.client.clone();
        let dim = CubeDim::new_1d(BLOCK);
        let (p, e) = (pairs as u32, experts as u32);
        block_ranks_kernel::launch(
            &client,
            grid_over_rows(blocks),
            dim,
            ids.clone().into_buffer_arg(),
            rank_in_block.clone().into_buffer_arg(),
            block_counts.clone().into_buffer_arg(),
            p,
            e,
        );
        block_starts_kernel::launch(
            &client,
            CubeCount::Static(e, 1, 1),
            dim,
            block_counts.into_buffer_arg(),
            block_starts.clone().into_buffer_arg(),
            totals.clone().into_buffer_arg(),
            blocks as u32,
            e,
        );
        expert_offsets_kernel::launch(
            &client,
            CubeCount::Static(1, 1, 1),
            dim,
            totals.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            tiles_at,
            e,
            tile_rows as u32,
        );
        sorted_rows_kernel::launch(
            &client,
            grid_over_rows(blocks),
            dim,
            ids.into_buffer_arg(),
            rank_in_block.into_buffer_arg(),
            block_starts.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            p,
            e,
            rows_at,
            pair_at,
            expert_at,
        );
        out
    }
}

/// The five tensors of a sorting by expert, as `expert_groups` returns them flat.
pub struct SortedByExpert {
    pub row_of_pair: Tensor<1, Int>,
    pub pair_of_row: Tensor<1, Int>,
    pub expert_of_row: Tensor<1, Int>,
    pub offsets: Tensor<1, Int>,
    pub tile_starts: Tensor<1, Int>,
}

/// `expert_ids` [P] (pair order, 32-bit) sorted by expert on the GPU (wgpu only), with each
/// expert's first tile counted in tiles of `tile_rows` rows.
pub fn expert_groups(
    expert_ids: Tensor<1, Int>,
    experts: usize,
    tile_rows: usize,
) -> SortedByExpert {
    let [p] = expert_ids.dims();
    let flat = Tensor::<1, Int>::from_dispatch(
        <burn::backend::Dispatch as ExpertGroupsBackend>::expert_groups(
            expert_ids.into_dispatch(),
            experts,
            tile_rows,
        ),
    );
    let [tiles_at, rows_at, pair_at, expert_at, _] = flat_parts(p, experts);
    let part = |start: usize, len: usize| flat.clone().narrow(0, start, len);
    SortedByExpert {
        row_of_pair: part(rows_at, p),
        pair_of_row: part(pair_at, p),
        expert_of_row: part(expert_at, p),
        offsets: part(0, experts + 1),
        tile_starts: part(tiles_at, experts + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_four_kernels_compile() {
        let ranks = compile_kernel!(
            block_ranks_kernel::BlockRanksKernel,
            CubeDim::new_1d(BLOCK),
            [b b b s s],
        );
        assert_eq!(ranks, Ok(()));
        let starts = compile_kernel!(
            block_starts_kernel::BlockStartsKernel,
            CubeDim::new_1d(BLOCK),
            [b b b s s],
        );
        assert_eq!(starts, Ok(()));
        let offsets = compile_kernel!(
            expert_offsets_kernel::ExpertOffsetsKernel,
            CubeDim::new_1d(BLOCK),
            [b b s s s],
        );
        assert_eq!(offsets, Ok(()));
        let sorted = compile_kernel!(
            sorted_rows_kernel::SortedRowsKernel,
            CubeDim::new_1d(BLOCK),
            [b b b b s s s s s],
        );
        assert_eq!(sorted, Ok(()));
    }

    #[test]
    fn flat_parts_hold_their_values_and_whole_blocks_of_pairs_stay_aligned() {
        for (pairs, experts) in [(1, 1), (4, 32), (300, 4), (65536, 32), (70001, 128)] {
            let [tiles_at, rows_at, pair_at, expert_at, len] = flat_parts(pairs, experts);
            // Each part holds its values before the next begins, and the last ends the output.
            assert!(experts < tiles_at && tiles_at + experts < rows_at);
            assert!(rows_at + pairs <= pair_at && pair_at + pairs <= expert_at);
            assert_eq!(expert_at + pairs, len);
            // The parts of P values start aligned, and with whole 256-byte blocks of pairs they
            // end aligned too (burn-cubecl then narrows them to views).
            assert_eq!(rows_at % PART_ALIGN, 0);
            if pairs % PART_ALIGN == 0 {
                for at in [pair_at, expert_at, len] {
                    assert_eq!(at % PART_ALIGN, 0, "{pairs} pairs, {experts} experts");
                }
            }
        }
    }
}
