//! Attention for a few query rows (decoding) in one kernel: scores, sink, softmax and the
//! weighted values (spec 4.4), in f32.
//!
//! burn runs decoding's attention as about twelve kernels (two matmuls, the mask, the sink
//! concatenation, the softmax, copies); decoding is bound by the number of kernels per token.
//! A workgroup of [`UNITS`] invocations takes one (row, head, query): the keys it may see are
//! one contiguous range `ranges[row, query]` of the cache buffer (causality, sliding window and
//! left padding all cut one range; `KeyMask` computes them). Keys go in chunks of [`CHUNK`]:
//! every invocation scores its keys into shared memory, the chunk's maximum and sum update a
//! running softmax (started from the sink's logit), and invocation u adds the probabilities
//! times dimension u % head_dim of every (256 / head_dim)-th value row.
//!
//! [`attention_step`] is the same kernel for a decode step straight from the q/k/v projection:
//! each workgroup rotates its q row and its kv head's new key (RoPE) itself, takes the new key
//! and value from the projection where the step's slot comes up among its keys (the other
//! keys from the caches), and the first query head of each kv head writes that key and value
//! into the caches; no workgroup reads the slot from the caches, so nothing waits for the
//! writes. One launch instead of the RoPE kernel's and this one's.
//!
//! Both write f32, or bf16 rounded to nearest even ([`attention_rows_bf16`], [`attention_step`]
//! with `bf16`) where the output projection is a tensor-core product, which reads bf16: its
//! rounding launch is then not needed.

use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{Bool, DType, Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::bf16_nearest::nearest_as;
use crate::launch::{assert_caches_writable, bf16_dtype, empty_of, grid_over_rows, same_dtype};
use crate::rotary_rows::{rotated_first, rotated_second};
use crate::workgroup_reduce::{UNITS, workgroup_reduce};
use half::bf16;

/// Keys scored per pass (shared memory: 8 KiB).
pub const CHUNK: u32 = 2048;
/// Value rows each invocation loads before using any: one at a time, a decode step's
/// attention waited for a memory round trip per (256 / head_dim)-th key.
const VALUE_UNROLL: u32 = 8;
/// Up to this many queries per call the model uses this kernel (each workgroup reads its
/// visible keys once: fine for decoding, not for scoring long sequences).
pub const MAX_QUERIES: usize = 16;

/// With `fresh`, `q` is the projection [B, 1, heads + 2 kv_heads, d] (unrotated), rotated
/// with the slot's row of the tables `cos` and `sin` [B, 1, table_slots, d / 2], the new key
/// and value are written into `k` and `v` at slot `slot[0]`, and the visible keys are the
/// slot's row of the table `ranges` [table_slots, B * 2] (a slot past the tables reads their
/// last row); without, `q` is [B, heads, T, d] rotated, `ranges` is [B * T * 2], and `cos`,
/// `sin`, `slot` and `table_slots` are not read. The output is written as an `O` (f32, or bf16
/// rounded to nearest even).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_rows_kernel<O: Float>(
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

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait AttentionRowsBackend: burn::backend::Backend {
    /// `q` [B, heads, T, d], `k` and `v` [B, kv_heads, S, d], `sinks` [heads], `ranges` [B * T
    /// * 2] (visible keys lo..hi per row and query, 32-bit) -> [B, T, heads, d].
    #[fusion(dtype = same_dtype(q), shape = Shape::from(vec![q[0], q[2], q[1], q[3]]))]
    fn attention_rows(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        sinks: FloatTensor<Self>,
        ranges: IntTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// `qkv` [B, 1, heads + 2 kv_heads, d] (unrotated), the tables `cos` and `sin` [B, 1,
    /// slots, d / 2], the caches `keys` and `values` [B, kv_heads, capacity, d] (f32,
    /// contiguous: written in place at slot `slot[0]`), `sinks` [heads], the table `ranges`
    /// [slots, B * 2] -> [B, 1, heads, d].
    #[fusion(dtype = same_dtype(qkv), shape = Shape::from(vec![qkv[0], 1, qkv[2] - 2 * keys[1], qkv[3]]))]
    #[allow(clippy::too_many_arguments)]
    fn attention_step(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        slot: FloatTensor<Self>,
        sinks: FloatTensor<Self>,
        ranges: IntTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// As `attention_rows`, the output written in bf16 (rounded to nearest even).
    #[fusion(dtype = bf16_dtype(q), shape = Shape::from(vec![q[0], q[2], q[1], q[3]]))]
    fn attention_rows_bf16(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        sinks: FloatTensor<Self>,
        ranges: IntTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// As `attention_step`, the output written in bf16 (rounded to nearest even).
    #[fusion(dtype = bf16_dtype(qkv), shape = Shape::from(vec![qkv[0], 1, qkv[2] - 2 * keys[1], qkv[3]]))]
    #[allow(clippy::too_many_arguments)]
    fn attention_step_bf16(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        slot: FloatTensor<Self>,
        sinks: FloatTensor<Self>,
        ranges: IntTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
}

impl AttentionRowsBackend for CubeBackend {
    fn attention_rows(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        sinks: CubeTensor,
        ranges: CubeTensor,
        scale: f32,
    ) -> CubeTensor {
        launch_rows([q, k, v, sinks, ranges], scale, DType::F32)
    }

    fn attention_step(
        qkv: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        keys: CubeTensor,
        values: CubeTensor,
        slot: CubeTensor,
        sinks: CubeTensor,
        ranges: CubeTensor,
        scale: f32,
    ) -> CubeTensor {
        launch_step(
            [qkv, cos, sin, keys, values, slot, sinks, ranges],
            scale,
            DType::F32,
        )
    }

    fn attention_rows_bf16(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        sinks: CubeTensor,
        ranges: CubeTensor,
        scale: f32,
    ) -> CubeTensor {
        launch_rows([q, k, v, sinks, ranges], scale, DType::BF16)
    }

    fn attention_step_bf16(
        qkv: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        keys: CubeTensor,
        values: CubeTensor,
        slot: CubeTensor,
        sinks: CubeTensor,
        ranges: CubeTensor,
        scale: f32,
    ) -> CubeTensor {
        launch_step(
            [qkv, cos, sin, keys, values, slot, sinks, ranges],
            scale,
            DType::BF16,
        )
    }
}

/// [`AttentionRowsBackend::attention_rows`] writing `dtype` (f32 or bf16).
fn launch_rows([q, k, v, sinks, ranges]: [CubeTensor; 5], scale: f32, dtype: DType) -> CubeTensor {
    let [q, k, v, sinks, ranges] = [q, k, v, sinks, ranges].map(into_contiguous);
    let [b, heads, t, _] = [0, 1, 2, 3].map(|i| q.meta.shape()[i]);
    // Not read without `fresh`: the sinks stand in for the angles and the slot.
    let unread = || sinks.clone();
    let [cos, sin, slot] = [unread(), unread(), unread()];
    launch_attention(
        q,
        k,
        v,
        sinks,
        ranges,
        ([cos, sin, slot], 1),
        [b, heads, t],
        scale,
        (false, dtype),
    )
}

/// [`AttentionRowsBackend::attention_step`] writing `dtype` (f32 or bf16).
fn launch_step(
    [qkv, cos, sin, keys, values, slot, sinks, ranges]: [CubeTensor; 8],
    scale: f32,
    dtype: DType,
) -> CubeTensor {
    assert_caches_writable("attention_step", &keys, &values);
    let [qkv, cos, sin, slot, sinks, ranges] =
        [qkv, cos, sin, slot, sinks, ranges].map(into_contiguous);
    let [b, t, width, d] = [0, 1, 2, 3].map(|i| qkv.meta.shape()[i]);
    let kv_heads = keys.meta.shape()[1];
    assert!(
        t == 1 && width > 2 * kv_heads,
        "attention_step: one position of heads + 2 kv_heads heads, caches of kv_heads heads"
    );
    assert_eq!(keys.meta.shape()[3], d, "attention_step: head widths");
    let heads = width - 2 * kv_heads;
    let slots = cos.meta.shape()[2];
    assert!(
        cos.meta.shape()[..] == [b, 1, slots, d / 2]
            && sin.meta.shape()[..] == cos.meta.shape()[..]
            && ranges.meta.shape()[..] == [slots, b * 2],
        "attention_step: tables of cos and sin [{b}, 1, slots, {}] and ranges [slots, {}]",
        d / 2,
        b * 2
    );
    launch_attention(
        qkv,
        keys,
        values,
        sinks,
        ranges,
        ([cos, sin, slot], slots),
        [b, heads, 1],
        scale,
        (true, dtype),
    )
}

/// Launches [`attention_rows_kernel`] over `b x heads x queries` items (`fresh`: see the
/// kernel) and returns its output [B, queries, heads, d] in `dtype` (f32 or bf16).
#[allow(clippy::too_many_arguments)]
fn launch_attention(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    sinks: CubeTensor,
    ranges: CubeTensor,
    ([cos, sin, slot], table_slots): ([CubeTensor; 3], usize),
    [b, heads, queries]: [usize; 3],
    scale: f32,
    (fresh, dtype): (bool, DType),
) -> CubeTensor {
    let [kv_heads, keys, d] = [1, 2, 3].map(|i| k.meta.shape()[i]);
    assert!(supports(d), "attention_rows: head_dim {d}");
    assert!(
        heads.is_multiple_of(kv_heads),
        "attention_rows: {heads} heads over {kv_heads} kv heads"
    );
    let items = b * heads * queries;
    let out = empty_of(&q, vec![b, queries, heads, d], dtype);
    let launch = match dtype {
        DType::BF16 => attention_rows_kernel::launch::<bf16>,
        _ => attention_rows_kernel::launch::<f32>,
    };
    launch(
        &q.client.clone(),
        grid_over_rows(items),
        CubeDim::new_1d(UNITS),
        q.into_buffer_arg(),
        k.into_buffer_arg(),
        v.into_buffer_arg(),
        sinks.into_buffer_arg(),
        ranges.into_buffer_arg(),
        cos.into_buffer_arg(),
        sin.into_buffer_arg(),
        slot.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        items as u32,
        heads as u32,
        kv_heads as u32,
        queries as u32,
        keys as u32,
        table_slots as u32,
        scale,
        d as u32,
        fresh,
    );
    out
}

/// Whether the kernel takes heads of `head_dim` (a divisor of the workgroup's [`UNITS`]).
pub fn supports(head_dim: usize) -> bool {
    head_dim > 0 && (UNITS as usize).is_multiple_of(head_dim)
}

/// Attention of queries `q` [B, heads, T, d] over keys and values [B, kv_heads, S, d] (query
/// head h reads kv head h / (heads / kv_heads)), each query seeing the keys
/// `ranges[(b * T + i) * 2]..ranges[(b * T + i) * 2 + 1]` (32-bit ints), with one sink logit per
/// head in the softmax -> [B, T, heads, d]. f32, GPU only.
pub fn attention_rows(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    sinks: Tensor<1>,
    ranges: Tensor<1, Int>,
    scale: f32,
) -> Tensor<4> {
    rows_written_as(false, q, k, v, sinks, ranges, scale)
}

/// [`attention_rows`] written in bf16, each value rounded to nearest even: for an output only a
/// tensor-core product reads (which rounds its input to bf16 anyway). GPU only.
pub fn attention_rows_bf16(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    sinks: Tensor<1>,
    ranges: Tensor<1, Int>,
    scale: f32,
) -> Tensor<4> {
    rows_written_as(true, q, k, v, sinks, ranges, scale)
}

/// [`attention_rows`] (`bf16`: [`attention_rows_bf16`]).
fn rows_written_as(
    bf16: bool,
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    sinks: Tensor<1>,
    ranges: Tensor<1, Int>,
    scale: f32,
) -> Tensor<4> {
    let op = match bf16 {
        true => <burn::backend::Dispatch as AttentionRowsBackend>::attention_rows_bf16,
        false => <burn::backend::Dispatch as AttentionRowsBackend>::attention_rows,
    };
    Tensor::from_dispatch(op(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        sinks.into_dispatch(),
        ranges.into_dispatch(),
        scale,
    ))
}

/// A decode step's RoPE, cache writes and attention in one launch: `qkv` [B, 1, heads + 2
/// kv_heads, d] as the q/k/v projection leaves it (unrotated); q and the new key rotated with
/// the row for slot `slot[0]` of the tables `cos_sin` ([B, 1, slots, d / 2] each), the new key
/// and value written into `keys` and `values` [B, kv_heads, capacity, d] (f32, contiguous, in
/// place) at that slot (nothing past the end), then what [`attention_rows`] computes over the
/// slot's row of the table `ranges` [slots, B * 2], the slot's key and value taken from `qkv`
/// -> [B, 1, heads, d], in bf16 (rounded to nearest even) when `bf16` says so (for an output
/// only a tensor-core product reads), else f32. The slot picks the tables' rows in the launch
/// (a slot past them, their last). GPU only.
#[allow(clippy::too_many_arguments)]
pub fn attention_step(
    qkv: Tensor<4>,
    cos_sin: (Tensor<4>, Tensor<4>),
    (keys, values): (&Tensor<4>, &Tensor<4>),
    slot: Tensor<1>,
    sinks: Tensor<1>,
    ranges: Tensor<2, Int>,
    scale: f32,
    bf16: bool,
) -> Tensor<4> {
    let (cos, sin) = cos_sin;
    let op = match bf16 {
        true => <burn::backend::Dispatch as AttentionRowsBackend>::attention_step_bf16,
        false => <burn::backend::Dispatch as AttentionRowsBackend>::attention_step,
    };
    Tensor::from_dispatch(op(
        qkv.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        keys.clone().into_dispatch(),
        values.clone().into_dispatch(),
        slot.cast(DType::F32).into_dispatch(),
        sinks.into_dispatch(),
        ranges.into_dispatch(),
        scale,
    ))
}

/// What `attention_rows` computes, with burn's ops (keys outside a query's range masked).
pub fn reference_attention_rows(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    sinks: Tensor<1>,
    ranges: Tensor<1, Int>,
    scale: f32,
) -> Tensor<4> {
    let [b, heads, t, d] = q.dims();
    let [_, kv_heads, s, _] = k.dims();
    let group = heads / kv_heads;
    let device = q.device();
    // Compared as floats (exact for these sizes): the ranges are 32-bit, arange is not.
    let ranges = ranges.float().reshape([b, 1, t, 2]);
    let lo = ranges.clone().narrow(3, 0, 1);
    let hi = ranges.narrow(3, 1, 1);
    let key = Tensor::<1, Int>::arange(0..s as i64, &device)
        .float()
        .reshape([1, 1, 1, s]);
    let blocked: Tensor<4, Bool> = key
        .clone()
        .lower(lo.expand([b, 1, t, s]))
        .bool_or(key.greater_equal(hi.expand([b, 1, t, s])));
    let scores = q
        .reshape([b, kv_heads, group * t, d])
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(scale)
        .reshape([b, heads, t, s])
        .mask_fill(blocked.expand([b, heads, t, s]), f32::NEG_INFINITY);
    let sinks = sinks.reshape([1, heads, 1, 1]).expand([b, heads, t, 1]);
    let probs =
        burn::tensor::activation::softmax(Tensor::cat(vec![scores, sinks], 3), 3).narrow(3, 0, s);
    probs
        .reshape([b, kv_heads, group * t, s])
        .matmul(v)
        .reshape([b, heads, t, d])
        .swap_dims(1, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

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
