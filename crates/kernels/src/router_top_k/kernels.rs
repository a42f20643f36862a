//! The router's kernels: the logits of one token over a workgroup, the k largest and their
//! softmax ([`route_row`], [`top_k_softmax`]), alone or after the residual add and RMSNorm
//! (see the module above for the design and its measurements).

use cubecl::prelude::*;

use super::{FUSED_NORM_PASSES, MAX_EXPERTS, ROUTER_UNITS};
use crate::rms_norm_rows::inverse_rms;

/// Consecutive experts each invocation computes the logits of.
const EXPERTS_PER_UNIT: u32 = 4;
/// Hidden units whose weights each invocation loads before using any.
const ROUTER_UNROLL: u32 = 8;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn router_top_k_kernel(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    rows: u32,
    hidden: u32,
    experts: u32,
    #[comptime] top_k: usize,
) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    route_row(
        x,
        row * hidden,
        w,
        bias,
        out,
        row * 2 * top_k as u32,
        hidden,
        experts,
        top_k,
    );
}

/// The residual add, the post-attention RMSNorm and the router of one row in one workgroup:
/// `out` holds the normed rows [rows, hidden], then the sums `x + delta` [rows, hidden], then
/// the routing tables [rows, 2 top_k]. The normed row stays in shared memory for the router.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn add_norm_router_kernel(
    x: &[f32],
    delta: &[f32],
    norm_weight: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    rows: u32,
    experts: u32,
    eps: f32,
    #[comptime] hidden: usize,
    #[comptime] top_k: usize,
) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    let width = hidden as u32;
    let base = row * width;
    let sums = rows * width;
    let mut normed = Shared::<[f32]>::new_slice(hidden);
    let mut plane_totals = Shared::<[f32]>::new_slice(ROUTER_UNITS as usize);
    // At most FUSED_NORM_PASSES values per invocation, all loaded before any is used.
    let mut values = Array::<f32>::new(FUSED_NORM_PASSES);
    let mut weights = Array::<f32>::new(FUSED_NORM_PASSES);
    #[unroll]
    for p in 0..FUSED_NORM_PASSES {
        let i = UNIT_POS + p as u32 * ROUTER_UNITS;
        let mut v = 0.0f32;
        let mut weight = 0.0f32;
        if i < width {
            v = x[(base + i) as usize] + delta[(base + i) as usize];
            weight = norm_weight[i as usize];
        }
        values[p] = v;
        weights[p] = weight;
    }
    let mut squares = 0.0f32;
    #[unroll]
    for p in 0..FUSED_NORM_PASSES {
        let i = UNIT_POS + p as u32 * ROUTER_UNITS;
        if i < width {
            out[(sums + base + i) as usize] = values[p];
            squares += values[p] * values[p];
        }
    }
    // The sum of squares: per plane, then over the planes.
    let plane_total = plane_sum(squares);
    if UNIT_POS_PLANE == 0 {
        plane_totals[(UNIT_POS / PLANE_DIM) as usize] = plane_total;
    }
    sync_cube();
    let mut total = 0.0f32;
    for p in 0..ROUTER_UNITS / PLANE_DIM {
        total += plane_totals[p as usize];
    }
    let inv_rms = inverse_rms(total, width, eps);
    #[unroll]
    for p in 0..FUSED_NORM_PASSES {
        let i = UNIT_POS + p as u32 * ROUTER_UNITS;
        if i < width {
            let v = values[p] * inv_rms * weights[p];
            normed[i as usize] = v;
            out[(base + i) as usize] = v;
        }
    }
    sync_cube();
    route_row(
        &normed,
        0,
        w,
        bias,
        out,
        2 * sums + row * 2 * top_k as u32,
        width,
        experts,
        top_k,
    );
}

/// One row's routing written at `out[out_base..]` (ids as floats, then gates) from the row of
/// `hidden` values at `x[x_row..]`: the logits over the workgroup's [`ROUTER_UNITS`]
/// invocations, then the k largest and their softmax by the first plane.
///
/// Invocation u takes experts 4q..4q + 4 (q = u % quads) over every `slices`-th hidden unit,
/// [`ROUTER_UNROLL`] hidden units' weights loaded before any is used: at batch 1 the router is
/// one workgroup, so the number of dependent loads in a row is its latency (one product per
/// step took 250 us, four products per step about 20 us).
#[cube]
#[allow(clippy::too_many_arguments)]
fn route_row(
    x: &[f32],
    x_row: u32,
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    out_base: u32,
    hidden: u32,
    experts: u32,
    #[comptime] top_k: usize,
) {
    let unit = UNIT_POS;
    let quads = experts.div_ceil(EXPERTS_PER_UNIT);
    // Experts padded to whole quads: the stride of the partial sums.
    let padded = quads * EXPERTS_PER_UNIT;
    let slices = ROUTER_UNITS / quads;
    let quad = unit % quads;
    let slice = unit / quads;
    let first = quad * EXPERTS_PER_UNIT;
    let mut acc = Array::<f32>::new(EXPERTS_PER_UNIT as usize);
    #[unroll]
    for j in 0..EXPERTS_PER_UNIT as usize {
        acc[j] = 0.0;
    }
    if slice < slices {
        let mut h = slice;
        while h < hidden {
            let mut xs = Array::<f32>::new(ROUTER_UNROLL as usize);
            let mut ws = Array::<f32>::new((ROUTER_UNROLL * EXPERTS_PER_UNIT) as usize);
            #[unroll]
            for r in 0..ROUTER_UNROLL as usize {
                let row = h + r as u32 * slices;
                let mut xv = 0.0f32;
                if row < hidden {
                    xv = x[(x_row + row) as usize];
                }
                xs[r] = xv;
                #[unroll]
                for j in 0..EXPERTS_PER_UNIT as usize {
                    let e = first + j as u32;
                    let mut wv = 0.0f32;
                    if row < hidden && e < experts {
                        wv = w[(row * experts + e) as usize];
                    }
                    ws[r * EXPERTS_PER_UNIT as usize + j] = wv;
                }
            }
            #[unroll]
            for r in 0..ROUTER_UNROLL as usize {
                #[unroll]
                for j in 0..EXPERTS_PER_UNIT as usize {
                    acc[j] += xs[r] * ws[r * EXPERTS_PER_UNIT as usize + j];
                }
            }
            h += ROUTER_UNROLL * slices;
        }
    }
    // Slice s's sums at s * padded + expert; `parts` invocations per expert add a share of the
    // slices each, then one invocation per expert adds the shares and the bias.
    let mut partial = Shared::<[f32]>::new_slice((ROUTER_UNITS * EXPERTS_PER_UNIT) as usize);
    let mut shares = Shared::<[f32]>::new_slice(ROUTER_UNITS as usize);
    let mut logits = Shared::<[f32]>::new_slice(MAX_EXPERTS);
    if slice < slices {
        #[unroll]
        for j in 0..EXPERTS_PER_UNIT as usize {
            partial[(slice * padded + first + j as u32) as usize] = acc[j];
        }
    }
    sync_cube();
    let parts = ROUTER_UNITS / padded;
    let expert = unit % padded;
    let part = unit / padded;
    if part < parts {
        let mut share = 0.0f32;
        let mut s = part;
        while s < slices {
            share += partial[(s * padded + expert) as usize];
            s += parts;
        }
        shares[(part * padded + expert) as usize] = share;
    }
    sync_cube();
    if unit < experts {
        let mut total = bias[unit as usize];
        for p in 0..parts {
            total += shares[(p * padded + unit) as usize];
        }
        logits[unit as usize] = total;
    }
    sync_cube();
    if unit < PLANE_DIM {
        top_k_softmax(&logits, out, out_base, experts, top_k);
    }
}

/// The k largest of `logits[..experts]` (lowest id first among equal values) and their
/// softmax, written at `out[out_base..]` (ids as floats, then gates) by lane 0; run by one
/// whole plane, each lane scanning every `PLANE_DIM`-th expert.
#[cube]
pub(crate) fn top_k_softmax(
    logits: &[f32],
    out: &mut [f32],
    out_base: u32,
    experts: u32,
    #[comptime] top_k: usize,
) {
    let lane = UNIT_POS_PLANE;
    let mut chosen = Array::<u32>::new(top_k);
    let mut values = Array::<f32>::new(top_k);
    #[unroll]
    for j in 0..top_k {
        // This lane's best expert not chosen yet (`experts` when it has none).
        let mut best = experts;
        let mut best_value = f32::new(f32::NEG_INFINITY);
        let mut e = lane;
        while e < experts {
            let mut taken = false;
            #[unroll]
            for i in 0..j {
                if chosen[i] == e {
                    taken = true;
                }
            }
            let value = logits[e as usize];
            if !taken && (best == experts || value > best_value) {
                best = e;
                best_value = value;
            }
            e += PLANE_DIM;
        }
        let top = plane_max(best_value);
        let winner = plane_min(select(best < experts && best_value == top, best, experts));
        chosen[j] = winner;
        values[j] = top;
    }
    if lane == 0 {
        // values[0] is the largest: softmax without overflow.
        let largest = values[0];
        let mut sum = 0.0f32;
        #[unroll]
        for j in 0..top_k {
            values[j] = (values[j] - largest).exp();
            sum += values[j];
        }
        #[unroll]
        for j in 0..top_k {
            out[(out_base + j as u32) as usize] = f32::cast_from(chosen[j]);
            out[(out_base + top_k as u32 + j as u32) as usize] = values[j] / sum;
        }
    }
}
