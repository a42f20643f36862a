//! `bench kernel-check`'s attention cases: the few-query kernel (`attention_rows`, f32, and
//! its bf16 output) and the tensor-core kernel for many queries (`attention_tiles`, bf16), each
//! against burn's ops over the same key ranges.

use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use super::{Worst, seconds_per_call, standard_normal};

/// The few-query kernel (decoding) against burn's ops in f32 on random key ranges, one of
/// which is empty, up to 5,000 keys; its bf16 output against its f32 output rounded to
/// nearest (the same values: a relative error of 0).
pub(super) fn check_attention_rows(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::attention_rows::{attention_rows, attention_rows_bf16};
    use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
    let mut rng = StdRng::seed_from_u64(7);
    let mut worst = Worst::new("attention kernel", 1e-5);
    let mut worst_bf16 = Worst::new("attention kernel, bf16 output", 1e-7);
    // (rows, heads, kv heads, queries, keys, head_dim); 5,000 keys take three chunks.
    for [b, heads, kv_heads, t, s, d] in [
        [1usize, 64, 8, 1, 128, 64],
        [2, 8, 2, 3, 5000, 64],
        [32, 64, 8, 1, 256, 64],
        [3, 4, 4, 2, 40, 32],
    ] {
        let normal = |shape: [usize; 4]| standard_normal(shape, device);
        let inputs = AttentionInputs {
            q: normal([b, heads, t, d]),
            k: normal([b, kv_heads, s, d]),
            v: normal([b, kv_heads, s, d]),
            sinks: standard_normal([heads], device),
            ranges: ranges_tensor(random_key_ranges(&mut rng, b * t, s), device),
            scale: (d as f32).powf(-0.5),
        };
        let case = json!({"rows": b, "heads": heads, "kv_heads": kv_heads, "queries": t,
                          "keys": s, "head_dim": d});
        // Only the output: the reference and the timing are the f32 kernel's, below.
        let rounded = {
            let i = inputs.clone();
            attention_rows_bf16(i.q, i.k, i.v, i.sinks, i.ranges, i.scale)
                .reshape([b * t, heads * d])
                .cast(DType::F32)
        };
        let (ours, reference, seconds) = attention_against_reference(attention_rows, inputs)?;
        worst_bf16.record(
            rounded,
            to_nearest_bf16(ours.clone()).cast(DType::F32),
            json!({"kernel": "attention_rows_bf16", "case": case}),
        );
        worst.record(
            ours,
            reference,
            json!({"kernel": "attention_rows", "case": case, "seconds": seconds}),
        );
    }
    worst_bf16.finish()?;
    worst.finish()
}

/// A decode step's RoPE, cache writes and attention in one launch (`attention_step`, which
/// picks the slot's rows of the step tables itself) against the two launches it replaces
/// (`rotary_qkv_into_cache`, then `attention_rows`, on the rows picked on the host) on copies of
/// the same caches: the output and both caches afterwards. Every other row of the tables is
/// random, so a wrong row shows. Ranges end at the slot (a decode step's) or are random (the
/// slot outside some, one range empty); one slot is past the end (nothing written, the
/// tables' last row read). The bf16 output against the f32 output rounded to nearest, and the
/// caches it writes against the f32 run's.
pub(super) fn check_attention_step(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::attention_rows::{attention_rows, attention_step};
    use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
    use gpt_oss_kernels::rotary_rows::rotary_qkv_into_cache;
    let mut rng = StdRng::seed_from_u64(17);
    let mut worst = Worst::new("attention step kernel", 1e-6);
    let mut worst_bf16 = Worst::new("attention step kernel, bf16 output", 1e-7);
    // (rows, heads, kv heads, head_dim, capacity, slot, whether ranges end at the slot)
    for [b, heads, kv_heads, d, capacity, slot, ending_at_slot] in [
        [1usize, 64, 8, 64, 256, 17, 1],
        [32, 64, 8, 64, 128, 100, 1],
        [3, 4, 2, 32, 40, 39, 0],
        [2, 4, 2, 32, 40, 40, 0],
    ] {
        let normal = |shape: [usize; 4]| standard_normal(shape, device);
        // The tables hold a row per slot of the caches; a slot past them reads the last.
        let lookup = slot.min(capacity - 1);
        let angles = || Tensor::<4>::random([b, 1, capacity, d / 2], Distribution::Default, device);
        let qkv = normal([b, 1, heads + 2 * kv_heads, d]);
        let (cos_table, sin_table) = (angles(), angles());
        let (cos, sin) = (
            cos_table.clone().narrow(2, lookup, 1),
            sin_table.clone().narrow(2, lookup, 1),
        );
        let (keys, values) = (
            normal([b, kv_heads, capacity, d]),
            normal([b, kv_heads, capacity, d]),
        );
        // The two launches write into copies.
        let (two_keys, two_values) = (keys.clone() * 1.0, values.clone() * 1.0);
        let ranges: Vec<i32> = if ending_at_slot == 1 {
            (0..b)
                .flat_map(|_| [rng.random_range(0..=slot as i32), slot as i32 + 1])
                .collect()
        } else {
            random_key_ranges(&mut rng, b, capacity)
        };
        let range_table: Vec<i32> = (0..capacity)
            .flat_map(|s| match s == lookup {
                true => ranges.clone(),
                false => random_key_ranges(&mut rng, b, capacity),
            })
            .collect();
        let range_table = ranges_tensor(range_table, device).reshape([capacity, b * 2]);
        let ranges = ranges_tensor(ranges, device);
        let sinks = standard_normal([heads], device);
        let at = Tensor::<1>::from_data(TensorData::new(vec![slot as f32], [1]), device);
        let scale = (d as f32).powf(-0.5);
        let q = rotary_qkv_into_cache(
            qkv.clone(),
            (cos.clone(), sin.clone()),
            (&two_keys, &two_values),
            at.clone(),
            heads,
            kv_heads,
        );
        let two_launches = attention_rows(
            q,
            two_keys.clone(),
            two_values.clone(),
            sinks.clone(),
            ranges.clone(),
            scale,
        );
        // The bf16 output's run writes into copies of the caches too.
        let (bf16_keys, bf16_values) = (keys.clone() * 1.0, values.clone() * 1.0);
        let step = |(keys, values): (&Tensor<4>, &Tensor<4>), bf16: bool| {
            attention_step(
                qkv.clone(),
                (cos_table.clone(), sin_table.clone()),
                (keys, values),
                at.clone(),
                sinks.clone(),
                range_table.clone(),
                scale,
                bf16,
            )
        };
        let ours = step((&keys, &values), false);
        let rounded = step((&bf16_keys, &bf16_values), true).cast(DType::F32);
        let case = json!({"rows": b, "heads": heads, "kv_heads": kv_heads, "head_dim": d,
                          "capacity": capacity, "slot": slot});
        worst_bf16.record_parts(
            [
                (
                    "out",
                    rounded,
                    to_nearest_bf16(ours.clone()).cast(DType::F32),
                ),
                ("keys", bf16_keys, keys.clone()),
                ("values", bf16_values, values.clone()),
            ],
            json!({"kernel": "attention_step, bf16 output", "case": case}),
        );
        worst.record_parts(
            [
                ("out", ours, two_launches),
                ("keys", keys, two_keys),
                ("values", values, two_values),
            ],
            json!({"kernel": "attention_step", "case": case}),
        );
    }
    worst_bf16.finish()?;
    worst.finish()
}

/// The tensor-core attention against burn's ops on the same bf16-rounded inputs: causal ranges
/// (scoring's shape, full and in a sliding window; a sliding window with left padding; queries
/// after cached keys) and random ranges with one query that sees no key.
pub(super) fn check_attention_tiles(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::attention_tiles::attention_tiles;
    let mut rng = StdRng::seed_from_u64(11);
    let mut worst = Worst::new("attention tiles kernel", 1e-2);
    // (rows, heads, kv heads, queries, keys, window, left padding of row 1); window 0: random.
    for [b, heads, kv_heads, t, s, window, pad] in [
        [1usize, 64, 8, 2048, 2048, 2048, 0],
        [1, 64, 8, 2048, 2048, 128, 0],
        [2, 8, 2, 300, 300, 128, 37],
        [2, 16, 8, 100, 612, 612, 0],
        [2, 4, 4, 70, 500, 0, 0],
    ] {
        let ranges: Vec<i32> = if window == 0 {
            random_key_ranges(&mut rng, b * t, s)
        } else {
            (0..b * t)
                .flat_map(|item| {
                    let (row, query) = (item / t, item % t);
                    let position = s - t + query;
                    let first = if row == 1 { pad } else { 0 };
                    let lo = (position + 1).saturating_sub(window).max(first);
                    [lo.min(position + 1) as i32, (position + 1) as i32]
                })
                .collect()
        };
        let normal = |shape: [usize; 4]| {
            standard_normal(shape, device)
                .cast(DType::BF16)
                .cast(DType::F32)
        };
        let inputs = AttentionInputs {
            q: normal([b, heads, t, 64]),
            k: normal([b, kv_heads, s, 64]),
            v: normal([b, kv_heads, s, 64]),
            sinks: standard_normal([heads], device),
            ranges: ranges_tensor(ranges, device),
            scale: 0.125,
        };
        let (ours, reference, seconds) = attention_against_reference(attention_tiles, inputs)?;
        worst.record(
            ours,
            reference,
            json!({"kernel": "attention_tiles", "rows": b, "heads": heads,
                   "kv_heads": kv_heads, "queries": t, "keys": s, "window": window,
                   "seconds": seconds}),
        );
    }
    worst.finish()
}

/// Random key ranges (lo, hi) for `items` (row, query) pairs over `keys` keys; the second pair
/// sees no key at all (its output must be zero).
fn random_key_ranges(rng: &mut StdRng, items: usize, keys: usize) -> Vec<i32> {
    (0..items)
        .flat_map(|item| {
            let lo = rng.random_range(0..keys as i32);
            let hi = if item == 1 {
                lo
            } else {
                rng.random_range(lo..=keys as i32)
            };
            [lo, hi]
        })
        .collect()
}

/// Key ranges as the attention kernels take them: 32-bit ints on `device`.
fn ranges_tensor(ranges: Vec<i32>, device: &Device) -> Tensor<1, Int> {
    let count = ranges.len();
    Tensor::<1, Int>::from_data(TensorData::new(ranges, [count]), device)
        .cast(burn::tensor::IntDType::I32)
}

/// One attention case: q [B, heads, T, d], k and v [B, kv_heads, S, d], sinks [heads], key
/// ranges, score scale.
#[derive(Clone)]
struct AttentionInputs {
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    sinks: Tensor<1>,
    ranges: Tensor<1, Int>,
    scale: f32,
}

/// An attention kernel's output and its burn-ops reference (`reference_attention_rows`), both
/// as [B * T, heads * d], and the kernel's seconds per call.
fn attention_against_reference(
    kernel: gpt_oss_kernels::AttentionKernel,
    inputs: AttentionInputs,
) -> anyhow::Result<(Tensor<2>, Tensor<2>, f64)> {
    use gpt_oss_kernels::attention_rows::reference_attention_rows;
    let AttentionInputs {
        q,
        k,
        v,
        sinks,
        ranges,
        scale,
    } = inputs;
    let [b, heads, t, d] = q.dims();
    let device = q.device();
    let run = || {
        kernel(
            q.clone(),
            k.clone(),
            v.clone(),
            sinks.clone(),
            ranges.clone(),
            scale,
        )
        .reshape([b * t, heads * d])
    };
    // attention_tiles writes bf16: compared in f32.
    let ours = run().cast(DType::F32);
    let seconds = seconds_per_call(&device, run)?;
    let reference =
        reference_attention_rows(q, k, v, sinks, ranges, scale).reshape([b * t, heads * d]);
    Ok((ours, reference, seconds))
}
