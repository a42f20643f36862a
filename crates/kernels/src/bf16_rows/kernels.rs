//! The few-row product kernels: one product, three side by side (with the input norm), and
//! what one workgroup does (its workspace, the norm's 1 / rms, the products, the sums over K
//! slices).

use crate::bf16_nearest::nearest_bf16_value_unless_nan;
use cubecl::prelude::*;

use super::{LANE_COLUMNS, UNITS};
use crate::rms_norm_rows::row_inverse_rms;

/// Eight bf16 weights of one row: four little-endian u32 words.
pub(crate) type EightBf16 = Vector<u32, Const<4>>;

/// The two bf16 halves of a little-endian u32 as f32 (low half first).
#[cube]
pub(crate) fn bf16_pair(word: u32) -> (f32, f32) {
    (
        f32::reinterpret(word << 16),
        f32::reinterpret(word & 0xFFFF_0000),
    )
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn bf16_rows_kernel(
    x: &[f32],
    w: &[EightBf16],
    bias: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] rows: usize,
    #[comptime] groups: u32,
    #[comptime] unroll: u32,
    #[comptime] has_bias: bool,
) {
    let mut work = RowsWorkspace::new(rows);
    // No norm: the bias stands in for the unread norm weight.
    rows_times_weight(
        x, bias, &mut work, w, bias, out, m, n, k, CUBE_POS_X, n, 0, rows, groups, unroll,
        has_bias, false,
    );
}

/// Three products of the same `x` side by side in one launch (the attention's q, k and v
/// projections): workgroups take their columns from `w0`, then `w1`, then `w2` (each
/// segment's column count a multiple of `groups * 8`, so no workgroup straddles two), and
/// the output is [m, n0 + n1 + n2]. With `has_norm` the rows of `x` are RMS-normed with
/// `norm_weight` and `eps` first (the decoder layer's input norm, in the same launch).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn bf16_rows_three_kernel(
    x: &[f32],
    norm_weight: &[f32],
    eps: f32,
    w0: &[EightBf16],
    w1: &[EightBf16],
    w2: &[EightBf16],
    b0: &[f32],
    b1: &[f32],
    b2: &[f32],
    out: &mut [f32],
    m: u32,
    n0: u32,
    n1: u32,
    n2: u32,
    k: u32,
    #[comptime] rows: usize,
    #[comptime] groups: u32,
    #[comptime] unroll: u32,
    #[comptime] has_bias: bool,
    #[comptime] has_norm: bool,
) {
    let mut work = RowsWorkspace::new(rows);
    if has_norm {
        fill_inverse_rms(x, m, k, eps, &mut work.inv_rms, rows);
    }
    let width = n0 + n1 + n2;
    let blocks0 = n0 / (groups * LANE_COLUMNS);
    let blocks1 = n1 / (groups * LANE_COLUMNS);
    if CUBE_POS_X < blocks0 {
        rows_times_weight(
            x,
            norm_weight,
            &mut work,
            w0,
            b0,
            out,
            m,
            n0,
            k,
            CUBE_POS_X,
            width,
            0,
            rows,
            groups,
            unroll,
            has_bias,
            has_norm,
        );
    } else if CUBE_POS_X < blocks0 + blocks1 {
        rows_times_weight(
            x,
            norm_weight,
            &mut work,
            w1,
            b1,
            out,
            m,
            n1,
            k,
            CUBE_POS_X - blocks0,
            width,
            n0,
            rows,
            groups,
            unroll,
            has_bias,
            has_norm,
        );
    } else {
        rows_times_weight(
            x,
            norm_weight,
            &mut work,
            w2,
            b2,
            out,
            m,
            n2,
            k,
            CUBE_POS_X - blocks0 - blocks1,
            width,
            n0 + n1,
            rows,
            groups,
            unroll,
            has_bias,
            has_norm,
        );
    }
}

/// What a product's workgroup keeps beside its registers: the shared memory of the sums over
/// K slices and each row's 1 / rms (for the fused norm). Made once per kernel, so that the
/// three-product kernel's three inlined products share it.
#[derive(CubeType)]
pub(super) struct RowsWorkspace {
    partial: Shared<[f32]>,
    part_sums: Shared<[f32]>,
    inv_rms: Array<f32>,
}

#[cube]
impl RowsWorkspace {
    pub(super) fn new(#[comptime] rows: usize) -> RowsWorkspace {
        let mut inv_rms = Array::<f32>::new(rows);
        #[unroll]
        for r in 0..rows {
            inv_rms[r] = 1.0;
        }
        RowsWorkspace {
            partial: Shared::<[f32]>::new_slice((UNITS * LANE_COLUMNS) as usize),
            part_sums: Shared::<[f32]>::new_slice(UNITS as usize),
            inv_rms,
        }
    }
}

/// Each of the workgroup's rows' 1 / rms into `inv_rms`, the whole workgroup adding its
/// squares as `rms_norm_rows` does. Synchronises the workgroup.
#[cube]
fn fill_inverse_rms(
    x: &[f32],
    m: u32,
    k: u32,
    eps: f32,
    inv_rms: &mut Array<f32>,
    #[comptime] rows: usize,
) {
    let row_begin = CUBE_POS_Y * rows as u32;
    let row_count = min(m - row_begin, rows as u32);
    #[unroll]
    for r in 0..rows {
        // The same for the whole workgroup, so its synchronisations are reached by all or none.
        if (r as u32) < row_count {
            inv_rms[r] = row_inverse_rms(x, (row_begin + r as u32) * k, k, eps);
        }
    }
}

/// Workgroup `block_x`'s columns of `x` [m, k] (each row RMS-normed first when `has_norm`:
/// times `work.inv_rms` and `norm_weight` [k]) times `w` [k, n] (+ `bias`), written to
/// columns `out_offset..` of `out` [m, out_width].
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn rows_times_weight(
    x: &[f32],
    norm_weight: &[f32],
    work: &mut RowsWorkspace,
    w: &[EightBf16],
    bias: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    block_x: u32,
    out_width: u32,
    out_offset: u32,
    #[comptime] rows: usize,
    #[comptime] groups: u32,
    #[comptime] unroll: u32,
    #[comptime] has_bias: bool,
    #[comptime] has_norm: bool,
) {
    let unit = UNIT_POS;
    let group = unit % groups;
    let slice = unit / groups;
    let slices = UNITS / groups;
    let vectors_per_row = n / LANE_COLUMNS;
    let vector = block_x * groups + group;
    let row_begin = CUBE_POS_Y * rows as u32;
    let row_count = min(m - row_begin, rows as u32);
    let per_slice = k.div_ceil(slices);
    let k_begin = min(k, slice * per_slice);
    let k_end = min(k, k_begin + per_slice);
    let mut acc = Array::<f32>::new(rows * LANE_COLUMNS as usize);
    #[unroll]
    for i in 0..rows * LANE_COLUMNS as usize {
        acc[i] = 0.0;
    }
    if vector < vectors_per_row {
        let mut kk = k_begin;
        while kk < k_end {
            // Every load of the chunk (weights and inputs) before any use: they are in flight
            // together. Past K the weights read as zero and the inputs are not read.
            let mut loaded = Array::<EightBf16>::new(unroll as usize);
            let mut inputs = Array::<f32>::new(unroll as usize * rows);
            #[unroll]
            for u in 0..unroll as usize {
                let row_k = kk + u as u32;
                let mut eight = EightBf16::new(0u32);
                if row_k < k_end {
                    eight = w[(row_k * vectors_per_row + vector) as usize];
                }
                loaded[u] = eight;
                #[unroll]
                for r in 0..rows {
                    let mut input = 0.0f32;
                    if (r as u32) < row_count && row_k < k_end {
                        input = x[((row_begin + r as u32) * k + row_k) as usize];
                        if has_norm {
                            // The norm's own expression, so the product sees its values.
                            input = input * work.inv_rms[r] * norm_weight[row_k as usize];
                        }
                    }
                    inputs[u * rows + r] = input;
                }
            }
            #[unroll]
            for u in 0..unroll as usize {
                let mut weights = Array::<f32>::new(LANE_COLUMNS as usize);
                #[unroll]
                for q in 0..(LANE_COLUMNS / 2) as usize {
                    let (low, high) = bf16_pair(loaded[u].extract(q));
                    weights[2 * q] = low;
                    weights[2 * q + 1] = high;
                }
                #[unroll]
                for r in 0..rows {
                    // Rounded to bf16 as the tensor-core GEMM rounds its inputs (without the
                    // NaN test: a NaN input goes on in the residual stream).
                    let xv = nearest_bf16_value_unless_nan(inputs[u * rows + r]);
                    #[unroll]
                    for c in 0..LANE_COLUMNS as usize {
                        acc[r * LANE_COLUMNS as usize + c] += xv * weights[c];
                    }
                }
            }
            kk += unroll;
        }
    }
    // Per row: every invocation stores its eight column sums; then `parts` invocations per
    // column add a share of the slices each, and one invocation per column adds the parts.
    let columns = groups * LANE_COLUMNS;
    #[unroll]
    for r in 0..rows {
        // The same for the whole workgroup, so its synchronisations are reached by all or none.
        if (r as u32) < row_count {
            sum_row_over_slices(
                &acc,
                &mut work.partial,
                &mut work.part_sums,
                bias,
                out,
                r,
                row_begin + r as u32,
                n,
                block_x * columns,
                out_width,
                out_offset,
                columns,
                slices,
                has_bias,
            );
        }
    }
}

/// Adds row `r`'s column sums over the workgroup's K slices (`acc` holds this invocation's
/// eight) and the bias for its columns `first_col..` of `n`, and writes them to output row
/// `out_row` (of `out_width`, from column `out_offset`). Synchronises the workgroup.
#[cube]
#[allow(clippy::too_many_arguments)]
fn sum_row_over_slices(
    acc: &Array<f32>,
    partial: &mut [f32],
    part_sums: &mut [f32],
    bias: &[f32],
    out: &mut [f32],
    #[comptime] r: usize,
    out_row: u32,
    n: u32,
    first_col: u32,
    out_width: u32,
    out_offset: u32,
    columns: u32,
    slices: u32,
    #[comptime] has_bias: bool,
) {
    let unit = UNIT_POS;
    let parts = UNITS / columns;
    let column = unit % columns;
    let part = unit / columns;
    #[unroll]
    for c in 0..LANE_COLUMNS as usize {
        partial[(unit * LANE_COLUMNS) as usize + c] = acc[r * LANE_COLUMNS as usize + c];
    }
    sync_cube();
    // Slice s's sum for `column` is at s * columns + column (unit = s * groups + group).
    let mut share = 0.0f32;
    let mut s = part;
    while s < slices {
        share += partial[(s * columns + column) as usize];
        s += parts;
    }
    part_sums[unit as usize] = share;
    sync_cube();
    let col = first_col + unit;
    if unit < columns && col < n {
        let mut total = 0.0f32;
        for p in 0..parts {
            total += part_sums[(p * columns + unit) as usize];
        }
        if has_bias {
            total += bias[col as usize];
        }
        out[(out_row * out_width + out_offset + col) as usize] = total;
    }
    sync_cube();
}
