//! The experts for a few tokens taken expert by expert: workgroup (expert, column group) lists
//! the pairs routed to its expert, loads its weight rows once, and multiplies each decoded
//! weight with up to `chunk_rows` of those pairs' input rows at a time. The per-pair kernels
//! (`kernels.rs`) decode every weight again for each pair routed to its expert; at 32 tokens
//! their products, not memory, are most of their time (docs/benchmarks.md, twelfth round).
//! Taken expert by expert, 32 tokens' experts run 19% faster, 24 tokens' 12%, 16 tokens' 3%;
//! fewer run slower (thirty-eighth and thirty-ninth rounds). Multiplying on the tensor cores
//! instead, in tiles with a barrier per K step, was slower at every count (thirty-ninth round).

use cubecl::prelude::*;

use super::kernels::{first_column, load_down_columns, load_gate_up_rows, write_swiglu_columns};
use super::lanes::{add_listed_dots, fill_fp4_table, load_listed_rows};
use super::{BLOCK_VECTORS, Four, LANES, MAX_LISTED, Words};

/// Lists in `listed` the pairs (token-major, `pairs` of them, at most [`MAX_LISTED`]) that
/// `routing` [n, 2k] sends to `expert`, in pair order, and returns how many: invocation p looks
/// at pair p, and each plane's ballot counts its 32. The workgroup has at least
/// `MAX_LISTED / 32` planes of 32. Synchronises before returning.
#[cube]
// cubecl unrolls a range, not an iterator over shared memory.
#[allow(clippy::needless_range_loop)]
fn list_pairs_of(
    routing: &[f32],
    top_k: u32,
    pairs: u32,
    expert: u32,
    listed: &mut [u32],
    plane_counts: &mut [u32],
) -> u32 {
    let pair = UNIT_POS;
    let lane = UNIT_POS_X;
    let mut hit = false;
    if pair < pairs {
        let table_index = (pair / top_k) * 2 * top_k + pair % top_k;
        hit = u32::cast_from(routing[table_index as usize]) == expert;
    }
    let mask = plane_ballot(hit).extract(0usize);
    let planes = comptime!(MAX_LISTED / LANES as usize);
    if lane == 0 && UNIT_POS_Y < planes as u32 {
        plane_counts[UNIT_POS_Y as usize] = mask.count_ones();
    }
    sync_cube();
    let mut before = (mask & ((1u32 << lane) - 1)).count_ones();
    let mut total = 0u32;
    #[unroll]
    for y in 0..planes {
        let count = plane_counts[y];
        total += count;
        if (y as u32) < UNIT_POS_Y {
            before += count;
        }
    }
    if hit {
        listed[before as usize] = pair;
    }
    sync_cube();
    total
}

/// SwiGLU activations of every pair routed to expert `CUBE_POS_X`, for the columns of column
/// group `CUBE_POS_Y`: the values of `pairs_gate_up_kernel` (sums in another order).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn experts_gate_up_kernel(
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
    pairs: u32,
    limit: f32,
    alpha: f32,
    #[comptime] blocks_per_lane: usize,
    #[comptime] columns_per_plane: usize,
    #[comptime] chunk_rows: usize,
) {
    let expert = CUBE_POS_X;
    let lane = UNIT_POS_X;
    let width = 2 * inter;
    let slots = comptime!(2 * columns_per_plane);
    let mut loaded = Array::<Words>::new(slots * blocks_per_lane);
    let mut scale_words = Array::<u32>::new(slots * blocks_per_lane);
    let first_j = first_column(0usize, columns_per_plane, 1usize);
    let (expert_blocks, expert_scales) = (
        expert * width * blocks_per_row,
        expert * scale_words_per_expert,
    );
    let mut listed = Shared::<[u32]>::new_slice(MAX_LISTED);
    let mut plane_counts = Shared::<[u32]>::new_slice(MAX_LISTED / LANES as usize);
    let total = list_pairs_of(
        routing,
        top_k,
        pairs,
        expert,
        &mut listed,
        &mut plane_counts,
    );
    if total == 0 {
        terminate!();
    }
    load_gate_up_rows(
        words,
        scales,
        &mut loaded,
        &mut scale_words,
        0usize,
        expert_blocks,
        expert_scales,
        first_j,
        inter,
        blocks_per_row,
        slots,
        blocks_per_lane,
    );
    let mut table = Shared::<[f32]>::new_slice(16usize);
    let mut inputs = Shared::<[Words]>::new_slice(
        chunk_rows * blocks_per_lane * (LANES * BLOCK_VECTORS) as usize,
    );
    fill_fp4_table(&mut table);
    let mut sums = Array::<f32>::new(slots * chunk_rows);
    let mut first = 0u32;
    while first < total {
        let count = min(total - first, chunk_rows as u32);
        // Synchronises before (the table's fill, the last chunk's readers) and after.
        load_listed_rows(x, &mut inputs, &listed, first, count, top_k, blocks_per_row);
        add_listed_dots(
            &inputs,
            &table,
            &loaded,
            &scale_words,
            &mut sums,
            count,
            blocks_per_row,
            slots,
            blocks_per_lane,
            chunk_rows,
        );
        #[unroll]
        for r in 0..chunk_rows {
            if (r as u32) < count {
                write_swiglu_columns(
                    &sums,
                    comptime!(r * slots),
                    bias,
                    out,
                    lane,
                    expert,
                    listed[(first + r as u32) as usize],
                    first_j,
                    inter,
                    width,
                    limit,
                    alpha,
                    columns_per_plane,
                );
            }
        }
        first += chunk_rows as u32;
    }
}

/// Each pair's down product for expert `CUBE_POS_X`'s pairs and column group `CUBE_POS_Y`,
/// plus the bias, times the pair's gate -> `out` [pairs, H]; `sum_ranks_kernel` adds up a
/// token's k of them.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn experts_down_kernel(
    act: &[Four],
    routing: &[f32],
    words: &[Words],
    scales: &[u32],
    bias: &[f32],
    out: &mut [f32],
    blocks_per_row: u32,
    hidden: u32,
    scale_words_per_expert: u32,
    top_k: u32,
    pairs: u32,
    #[comptime] blocks_per_lane: usize,
    #[comptime] columns_per_plane: usize,
    #[comptime] chunk_rows: usize,
) {
    let expert = CUBE_POS_X;
    let lane = UNIT_POS_X;
    let mut loaded = Array::<Words>::new(columns_per_plane * blocks_per_lane);
    let mut scale_words = Array::<u32>::new(columns_per_plane * blocks_per_lane);
    let first_col = first_column(0usize, columns_per_plane, 1usize);
    let (expert_blocks, expert_scales) = (
        expert * hidden * blocks_per_row,
        expert * scale_words_per_expert,
    );
    let mut listed = Shared::<[u32]>::new_slice(MAX_LISTED);
    let mut plane_counts = Shared::<[u32]>::new_slice(MAX_LISTED / LANES as usize);
    let total = list_pairs_of(
        routing,
        top_k,
        pairs,
        expert,
        &mut listed,
        &mut plane_counts,
    );
    if total == 0 {
        terminate!();
    }
    load_down_columns(
        words,
        scales,
        &mut loaded,
        &mut scale_words,
        0usize,
        expert_blocks,
        expert_scales,
        first_col,
        hidden,
        blocks_per_row,
        columns_per_plane,
        blocks_per_lane,
    );
    let mut table = Shared::<[f32]>::new_slice(16usize);
    let mut inputs = Shared::<[Words]>::new_slice(
        chunk_rows * blocks_per_lane * (LANES * BLOCK_VECTORS) as usize,
    );
    fill_fp4_table(&mut table);
    let mut sums = Array::<f32>::new(columns_per_plane * chunk_rows);
    let mut first = 0u32;
    while first < total {
        let count = min(total - first, chunk_rows as u32);
        load_listed_rows(
            act,
            &mut inputs,
            &listed,
            first,
            count,
            1u32,
            blocks_per_row,
        );
        add_listed_dots(
            &inputs,
            &table,
            &loaded,
            &scale_words,
            &mut sums,
            count,
            blocks_per_row,
            columns_per_plane,
            blocks_per_lane,
            chunk_rows,
        );
        #[unroll]
        for r in 0..chunk_rows {
            if (r as u32) < count {
                let pair = listed[(first + r as u32) as usize];
                let gate = routing[((pair / top_k) * 2 * top_k + top_k + pair % top_k) as usize];
                #[unroll]
                for c in 0..columns_per_plane {
                    let total = plane_sum(sums[r * columns_per_plane + c]);
                    let col = first_col + c as u32;
                    if lane == 0 && col < hidden {
                        out[(pair * hidden + col) as usize] =
                            gate * (total + bias[(expert * hidden + col) as usize]);
                    }
                }
            }
        }
        first += chunk_rows as u32;
    }
}

/// `out` [n, H]: each token's k rows of `pair_out` [n * k, H] added in rank order, plus
/// `residual` [n, H] when `has_residual`.
#[cube(launch_unchecked)]
pub(super) fn sum_ranks_kernel(
    pair_out: &[f32],
    residual: &[f32],
    out: &mut [f32],
    hidden: u32,
    values: u32,
    #[comptime] top_k: usize,
    #[comptime] has_residual: bool,
) {
    let i = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    if i < values {
        let token = i / hidden;
        let col = i % hidden;
        let mut total = 0.0f32;
        #[unroll]
        for r in 0..top_k {
            total += pair_out[((token * top_k as u32 + r as u32) * hidden + col) as usize];
        }
        if has_residual {
            total += residual[i as usize];
        }
        out[i as usize] = total;
    }
}
