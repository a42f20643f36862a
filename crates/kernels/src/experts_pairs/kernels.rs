//! The two per-pair kernels: gate_up with bias, clamp and SwiGLU; down with bias, the gates'
//! weighted sum over a token's k experts and the residual.
//!
//! Each plane takes `turns` groups of `columns_per_plane` columns in turn: the next turn's
//! weight loads are issued before this turn's products (two register buffers), so that a
//! plane's arithmetic can overlap its next weights' memory latency, and the workgroup stages its
//! input rows once for all its turns. Measured, this pays for `pairs_down` from eight tokens
//! and not at one token (`down_shape`, `GATE_UP_SHAPE`).

use cubecl::prelude::*;

use super::lanes::{add_lane_dots, fill_fp4_table, load_input_rows, load_lane_blocks};
use super::{BLOCK_VECTORS, Four, LANES, Words};

/// Register buffers of weight blocks a kernel with `turns` turns needs: one, or two taken in
/// alternation.
fn buffers(turns: usize) -> usize {
    turns.min(2)
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn pairs_gate_up_kernel(
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
    #[comptime] turns: usize,
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
    let width = 2 * inter;
    let expert_blocks = expert * width * blocks_per_row;
    let expert_scales = expert * scale_words_per_expert;
    // Output unit j: gate is weight row 2j, up is row 2j + 1 (spec 3.4); a plane's columns
    // are consecutive, so its rows are too. Past the end the plane reads row 0 (in bounds)
    // and writes nothing.
    let rows = 2 * columns_per_plane;
    let slots = comptime!(buffers(turns) * rows);
    let mut loaded = Array::<Words>::new(slots * blocks_per_lane);
    let mut scale_words = Array::<u32>::new(slots * blocks_per_lane);
    let mut sums = Array::<f32>::new(slots);
    load_gate_up_rows(
        words,
        scales,
        &mut loaded,
        &mut scale_words,
        0usize,
        expert_blocks,
        expert_scales,
        first_column(0usize, columns_per_plane, turns),
        inter,
        blocks_per_row,
        rows,
        blocks_per_lane,
    );
    load_input_rows(x, &mut inputs, token, 1, blocks_per_row);
    #[unroll]
    for turn in 0..turns {
        let first_slot = comptime!((turn % 2) * rows);
        if comptime!(turn + 1 < turns) {
            load_gate_up_rows(
                words,
                scales,
                &mut loaded,
                &mut scale_words,
                comptime!(((turn + 1) % 2) * rows),
                expert_blocks,
                expert_scales,
                first_column(turn + 1, columns_per_plane, turns),
                inter,
                blocks_per_row,
                rows,
                blocks_per_lane,
            );
        }
        #[unroll]
        for slot in 0..rows {
            sums[first_slot + slot] = 0.0;
        }
        add_lane_dots(
            &inputs,
            0u32,
            &table,
            &loaded,
            &scale_words,
            &mut sums,
            first_slot,
            rows,
            blocks_per_row,
            blocks_per_lane,
        );
        write_swiglu_columns(
            &sums,
            first_slot,
            bias,
            out,
            lane,
            expert,
            pair,
            first_column(turn, columns_per_plane, turns),
            inter,
            width,
            limit,
            alpha,
            columns_per_plane,
        );
    }
}

/// Adds up the plane's gate and up sums (`sums[first_slot..]`, gate then up per column) for
/// its `columns_per_plane` columns from `first_j`, and writes each column's SwiGLU activation
/// of `pair` (bias of `expert`, whose gate_up rows are `width` = 2 * `inter`; clamp) into
/// `out` [pairs, inter]: the plane's `lane` 0 writes, columns past `inter` are not written.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn write_swiglu_columns(
    sums: &Array<f32>,
    #[comptime] first_slot: usize,
    bias: &[f32],
    out: &mut [f32],
    lane: u32,
    expert: u32,
    pair: u32,
    first_j: u32,
    inter: u32,
    width: u32,
    limit: f32,
    alpha: f32,
    #[comptime] columns_per_plane: usize,
) {
    #[unroll]
    for c in 0..columns_per_plane {
        let j = first_j + c as u32;
        let gate_total = plane_sum(sums[first_slot + 2 * c]);
        let up_total = plane_sum(sums[first_slot + 2 * c + 1]);
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

/// The first of this plane's `columns_per_plane` output columns at turn `turn` of `turns`:
/// the workgroup's turns take consecutive runs of its planes' columns.
#[cube]
pub(super) fn first_column(
    #[comptime] turn: usize,
    #[comptime] columns_per_plane: usize,
    #[comptime] turns: usize,
) -> u32 {
    ((CUBE_POS_Y * turns as u32 + turn as u32) * CUBE_DIM_Y + UNIT_POS_Y) * columns_per_plane as u32
}

/// Issues the loads of this plane's `rows` gate_up weight rows (gate, then up, per column) for
/// columns `first_j..` into slots `first_slot..`. Past the last of `inter` columns the plane
/// reads row 0 (in bounds, never written).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn load_gate_up_rows(
    words: &[Words],
    scales: &[u32],
    loaded: &mut Array<Words>,
    scale_words: &mut Array<u32>,
    #[comptime] first_slot: usize,
    expert_blocks: u32,
    expert_scales: u32,
    first_j: u32,
    inter: u32,
    blocks_per_row: u32,
    #[comptime] rows: usize,
    #[comptime] blocks_per_lane: usize,
) {
    #[unroll]
    for slot in 0..rows {
        let j = first_j + (slot / 2) as u32;
        load_lane_blocks(
            words,
            scales,
            loaded,
            scale_words,
            first_slot + slot,
            expert_blocks,
            expert_scales,
            select(j < inter, 2 * j + (slot % 2) as u32, 0),
            blocks_per_row,
            blocks_per_lane,
        );
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn pairs_down_kernel(
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
    #[comptime] turns: usize,
    #[comptime] has_residual: bool,
) {
    let mut table = Shared::<[f32]>::new_slice(16usize);
    let mut inputs =
        Shared::<[Words]>::new_slice(top_k * blocks_per_lane * (LANES * BLOCK_VECTORS) as usize);
    fill_fp4_table(&mut table);
    let token = CUBE_POS_X;
    let lane = UNIT_POS_X;
    let table_row = token * 2 * top_k as u32;
    // Slot r * columns_per_plane + c of a buffer: expert r's weight row for column c. Every
    // expert's loads are issued before any product.
    let rows = top_k * columns_per_plane;
    let slots = comptime!(buffers(turns) * rows);
    let mut loaded = Array::<Words>::new(slots * blocks_per_lane);
    let mut scale_words = Array::<u32>::new(slots * blocks_per_lane);
    let mut sums = Array::<f32>::new(slots);
    load_down_rows(
        words,
        scales,
        routing,
        &mut loaded,
        &mut scale_words,
        0usize,
        table_row,
        first_column(0usize, columns_per_plane, turns),
        hidden,
        blocks_per_row,
        scale_words_per_expert,
        top_k,
        columns_per_plane,
        blocks_per_lane,
    );
    load_input_rows(
        act,
        &mut inputs,
        token * top_k as u32,
        top_k as u32,
        blocks_per_row,
    );
    #[unroll]
    for turn in 0..turns {
        let first_slot = comptime!((turn % 2) * rows);
        if comptime!(turn + 1 < turns) {
            load_down_rows(
                words,
                scales,
                routing,
                &mut loaded,
                &mut scale_words,
                comptime!(((turn + 1) % 2) * rows),
                table_row,
                first_column(turn + 1, columns_per_plane, turns),
                hidden,
                blocks_per_row,
                scale_words_per_expert,
                top_k,
                columns_per_plane,
                blocks_per_lane,
            );
        }
        #[unroll]
        for slot in 0..rows {
            sums[first_slot + slot] = 0.0;
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
                first_slot + r * columns_per_plane,
                columns_per_plane,
                blocks_per_row,
                blocks_per_lane,
            );
        }
        let first_col = first_column(turn, columns_per_plane, turns);
        #[unroll]
        for c in 0..columns_per_plane {
            let mut weighted = 0.0f32;
            #[unroll]
            for r in 0..top_k {
                weighted += routing[table_row as usize + top_k + r]
                    * sums[first_slot + r * columns_per_plane + c];
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
}

/// Issues the loads of this plane's down weight rows for columns `first_col..` of every one
/// of the token's k experts (table row `table_row` of `routing`) into slots `first_slot..`
/// (expert r, column c at `first_slot + r * columns_per_plane + c`). Past the last of
/// `hidden` columns the plane reads row 0 (in bounds, never written).
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_down_rows(
    words: &[Words],
    scales: &[u32],
    routing: &[f32],
    loaded: &mut Array<Words>,
    scale_words: &mut Array<u32>,
    #[comptime] first_slot: usize,
    table_row: u32,
    first_col: u32,
    hidden: u32,
    blocks_per_row: u32,
    scale_words_per_expert: u32,
    #[comptime] top_k: usize,
    #[comptime] columns_per_plane: usize,
    #[comptime] blocks_per_lane: usize,
) {
    #[unroll]
    for r in 0..top_k {
        let expert = u32::cast_from(routing[table_row as usize + r]);
        load_down_columns(
            words,
            scales,
            loaded,
            scale_words,
            first_slot + r * columns_per_plane,
            expert * hidden * blocks_per_row,
            expert * scale_words_per_expert,
            first_col,
            hidden,
            blocks_per_row,
            columns_per_plane,
            blocks_per_lane,
        );
    }
}

/// Issues the loads of an expert's down weight rows (its blocks from vector `expert_blocks`,
/// its scale words from `expert_scales`) for this plane's columns `first_col..` into slots
/// `first_slot..` (column c at `first_slot + c`). Past the last of `hidden` columns the plane
/// reads row 0 (in bounds, never written).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn load_down_columns(
    words: &[Words],
    scales: &[u32],
    loaded: &mut Array<Words>,
    scale_words: &mut Array<u32>,
    #[comptime] first_slot: usize,
    expert_blocks: u32,
    expert_scales: u32,
    first_col: u32,
    hidden: u32,
    blocks_per_row: u32,
    #[comptime] columns_per_plane: usize,
    #[comptime] blocks_per_lane: usize,
) {
    #[unroll]
    for c in 0..columns_per_plane {
        let col = first_col + c as u32;
        load_lane_blocks(
            words,
            scales,
            loaded,
            scale_words,
            first_slot + c,
            expert_blocks,
            expert_scales,
            select(col < hidden, col, 0),
            blocks_per_row,
            blocks_per_lane,
        );
    }
}
