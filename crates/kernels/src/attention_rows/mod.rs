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

use burn::tensor::{Bool, DType, Int, Tensor};

use crate::workgroup_reduce::UNITS;

mod extension;
mod kernel;

pub use extension::AttentionRowsBackend;

/// Keys scored per pass (shared memory: 8 KiB).
pub const CHUNK: u32 = 2048;
/// Up to this many queries per call the model uses this kernel (each workgroup reads its
/// visible keys once: fine for decoding, not for scoring long sequences).
pub const MAX_QUERIES: usize = 16;

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
    Tensor::from_dispatch(
        <burn::backend::Dispatch as AttentionRowsBackend>::attention_rows(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            sinks.into_dispatch(),
            ranges.into_dispatch(),
            scale,
            bf16,
        ),
    )
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
    Tensor::from_dispatch(
        <burn::backend::Dispatch as AttentionRowsBackend>::attention_step(
            qkv.into_dispatch(),
            cos.into_dispatch(),
            sin.into_dispatch(),
            keys.clone().into_dispatch(),
            values.clone().into_dispatch(),
            slot.cast(DType::F32).into_dispatch(),
            sinks.into_dispatch(),
            ranges.into_dispatch(),
            scale,
            bf16,
        ),
    )
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
