//! The kernel of [`super`]: one workgroup per (row, head, query), keys in chunks of
//! [`CHUNK`] with a running softmax; with `fresh`, RoPE and the cache writes of a decode step.

use cubecl::prelude::*;

use super::CHUNK;
use crate::bf16_nearest::nearest_as;
use crate::rotary_rows::{rotated_first, rotated_second};
use crate::workgroup_reduce::{UNITS, workgroup_reduce};

/// Value rows each invocation loads before using any: one at a time, a decode step's
/// attention waited for a memory round trip per (256 / head_dim)-th key.
const VALUE_UNROLL: u32 = 8;

/// With `fresh`, `q` is the projection [B, 1, heads + 2 kv_heads, d] (unrotated), rotated
/// with the slot's row of the tables `cos` and `sin` [B, 1, table_slots, d / 2], the new key
/// and value are written into `k` and `v` at slot `slot[0]`, and the visible keys are the
/// slot's row of the table `ranges` [table_slots, B * 2] (a slot past the tables reads their
/// last row); without, `q` is [B, heads, T, d] rotated, `ranges` is [B * T * 2], and `cos`,
/// `sin`, `slot` and `table_slots` are not read. The output is written as an `O` (f32, or bf16
/// rounded to nearest even).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_rows_kernel<O: Float>(
    q: &[f32],
    k: &mut [f32],
    v: &mut [f32],
    sinks: &[f32],
    ranges: &[u32],
    cos: &[f32],
    sin: &[f32],
    slot: &[f32],
    out: &mut [O],
    items: u32,
    heads: u32,
    kv_heads: u32,
    queries: u32,
    keys: u32,
    table_slots: u32,
    scale: f32,
    #[comptime] head_dim: u32,
    #[comptime] fresh: bool,
) {
    let item = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if item >= items {
        terminate!();
    }
    // item = (row * heads + head) * queries + query
    let query = item % queries;
    let head = (item / queries) % heads;
    let row = item / (queries * heads);
    let kv_head = head / (heads / kv_heads);
    // With `fresh`: the slot, and the tables' row for it.
    let mut at = keys;
    let mut lookup = 0u32;
    let mut range = (row * queries + query) * 2;
    if fresh {
        at = u32::cast_from(slot[0]);
        lookup = min(at, table_slots - 1);
        let rows = items / heads;
        range = (lookup * rows + row) * 2;
    }
    let lo = ranges[range as usize];
    let hi = ranges[(range + 1) as usize];
    let kv_base = (row * kv_heads + kv_head) * keys * head_dim;
    let unit = UNIT_POS;

    // Unrolled (head_dim is known when compiling): the array stays in registers.
    let mut scaled_q = Array::<f32>::new(head_dim as usize);
    // The step's own key and value (with `fresh`), standing for buffer index `at` (none
    // without: `keys` is past every index).
    let mut new_key = Shared::<[f32]>::new_slice(head_dim as usize);
    let mut new_value = Shared::<[f32]>::new_slice(head_dim as usize);
    if fresh {
        let width = heads + 2 * kv_heads;
        let angles = (row * table_slots + lookup) * (head_dim / 2);
        let q_base = (row * width + head) * head_dim;
        #[unroll]
        for d in 0..head_dim {
            scaled_q[d as usize] = rotated(q, q_base, cos, sin, angles, d, head_dim) * scale;
        }
        if unit < head_dim {
            let key_base = (row * width + heads + kv_head) * head_dim;
            new_key[unit as usize] = rotated(q, key_base, cos, sin, angles, unit, head_dim);
            new_value[unit as usize] =
                q[((row * width + heads + kv_heads + kv_head) * head_dim + unit) as usize];
        }
        sync_cube();
        // Read by no workgroup of this launch (they take the slot's key and value from
        // `new_key` and `new_value`).
        let rank_in_group = head % (heads / kv_heads);
        if rank_in_group == 0 && at < keys && unit < head_dim {
            let index = kv_base + at * head_dim + unit;
            k[index as usize] = new_key[unit as usize];
            v[index as usize] = new_value[unit as usize];
        }
    } else {
        #[unroll]
        for d in 0..head_dim {
            scaled_q[d as usize] = q[(item * head_dim + d) as usize] * scale;
        }
    }
    let mut scores = Shared::<[f32]>::new_slice(CHUNK as usize);
    let dim = unit % head_dim;
    let group = unit / head_dim;
    let groups = UNITS / head_dim;
    // The sink is one more logit in the softmax: start from it.
    let mut running_max = sinks[head as usize];
    let mut running_sum = 1.0f32;
    let mut acc = 0.0f32;
    let mut start = lo;
    while start < hi {
        let count = min(hi - start, CHUNK);
        let mut local_max = f32::new(-3.0e38);
        let mut j = unit;
        while j < count {
            let key_base = kv_base + (start + j) * head_dim;
            let mut dot = 0.0f32;
            if start + j == at {
                #[unroll]
                for d in 0..head_dim {
                    dot += scaled_q[d as usize] * new_key[d as usize];
                }
            } else {
                #[unroll]
                for d in 0..head_dim {
                    dot += scaled_q[d as usize] * k[(key_base + d) as usize];
                }
            }
            scores[j as usize] = dot;
            local_max = max(local_max, dot);
            j += UNITS;
        }
        let new_max = max(running_max, workgroup_reduce(local_max, true));
        let rescale = (running_max - new_max).exp();
        let mut local_sum = 0.0f32;
        let mut i = unit;
        while i < count {
            let p = (scores[i as usize] - new_max).exp();
            scores[i as usize] = p;
            local_sum += p;
            i += UNITS;
        }
        // The reduction synchronises: every probability of the chunk is in place after it.
        running_sum = running_sum * rescale + workgroup_reduce(local_sum, false);
        running_max = new_max;
        acc *= rescale;
        // VALUE_UNROLL value rows' loads in flight before the products (added in key order,
        // as one at a time would).
        let mut key = group;
        while key < count {
            let mut values = Array::<f32>::new(VALUE_UNROLL as usize);
            let mut probabilities = Array::<f32>::new(VALUE_UNROLL as usize);
            #[unroll]
            for u in 0..VALUE_UNROLL {
                let row_key = key + u * groups;
                let mut value = 0.0f32;
                let mut probability = 0.0f32;
                if row_key < count {
                    if start + row_key == at {
                        value = new_value[dim as usize];
                    } else {
                        value = v[(kv_base + (start + row_key) * head_dim + dim) as usize];
                    }
                    probability = scores[row_key as usize];
                }
                values[u as usize] = value;
                probabilities[u as usize] = probability;
            }
            #[unroll]
            for u in 0..VALUE_UNROLL as usize {
                acc += probabilities[u] * values[u];
            }
            key += VALUE_UNROLL * groups;
        }
        sync_cube();
        start += CHUNK;
    }
    let mut parts = Shared::<[f32]>::new_slice(UNITS as usize);
    parts[unit as usize] = acc;
    sync_cube();
    if unit < head_dim {
        let mut total = 0.0f32;
        for g in 0..groups {
            total += parts[(g * head_dim + unit) as usize];
        }
        let out_index = ((row * queries + query) * heads + head) * head_dim + unit;
        out[out_index as usize] = nearest_as::<O>(total / running_sum);
    }
}

/// Element `d` of the `head_dim`-wide row of `x` at `base` rotated by RoPE (spec 4.3; the
/// angles' cos and sin at `angles..` of `cos` and `sin`), as `rotary_rows` rotates it.
#[cube]
fn rotated(
    x: &[f32],
    base: u32,
    cos: &[f32],
    sin: &[f32],
    angles: u32,
    d: u32,
    #[comptime] head_dim: u32,
) -> f32 {
    let half = head_dim / 2;
    let j = d % half;
    let a = x[(base + j) as usize];
    let b = x[(base + half + j) as usize];
    let c = cos[(angles + j) as usize];
    let s = sin[(angles + j) as usize];
    let mut value = rotated_second(a, b, c, s);
    if d < half {
        value = rotated_first(a, b, c, s);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;
    use half::bf16;

    /// The kernel writing f32 and writing bf16.
    type ToF32 = attention_rows_kernel::AttentionRowsKernel<f32>;
    type ToBf16 = attention_rows_kernel::AttentionRowsKernel<bf16>;

    #[test]
    fn the_kernel_compiles_for_heads_of_64_fresh_or_cached_writing_f32_or_bf16() {
        for fresh in [false, true] {
            let f32_out = compile_kernel!(
                ToF32,
                CubeDim::new_1d(UNITS),
                [b b b b b b b b b s s s s s s s],
                64,
                fresh,
            );
            assert_eq!(f32_out, Ok(()), "fresh {fresh}, f32");
            let bf16_out = compile_kernel!(
                ToBf16,
                CubeDim::new_1d(UNITS),
                [b b b b b b b b b s s s s s s s],
                64,
                fresh,
            );
            assert_eq!(bf16_out, Ok(()), "fresh {fresh}, bf16");
        }
    }
}
