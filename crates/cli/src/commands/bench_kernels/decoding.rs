//! kernel-check cases for the decoding kernels (one launch each instead of tens of burn ops):
//! RMSNorm, router top-k, RoPE (few-query attention: `attention`; the experts for a few tokens:
//! `moe_pairs`).

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
use serde_json::json;

use super::rounding::ensure_rounded_from;
use super::{Worst, standard_normal};

/// Normal tokens [tokens, hidden] and router weights [hidden, experts] scaled for logits of
/// order one.
pub(super) fn random_tokens_and_router(
    tokens: usize,
    hidden: usize,
    experts: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let x = standard_normal([tokens, hidden], device);
    let w = Tensor::<2>::random([hidden, experts], Distribution::Normal(0.0, 0.05), device);
    (x, w)
}

pub(super) fn check_rms_norm(device: &Device) -> anyhow::Result<()> {
    let mut worst = Worst::new("RMSNorm kernel", 1e-5);
    // The last case needs a second grid dimension (more than 65,535 rows).
    for [rows, width] in [[1, 2880], [5, 7], [70000, 64]] {
        let x = Tensor::<2>::random([rows, width], Distribution::Normal(0.0, 3.0), device);
        let weight = Tensor::<1>::random([width], Distribution::Default, device);
        let eps = 1e-5;
        let ours = gpt_oss_kernels::rms_norm_rows::rms_norm_rows(x.clone(), weight.clone(), eps);
        let reference =
            gpt_oss_kernels::rms_norm_rows::reference_rms_norm_rows(x.clone(), weight.clone(), eps);
        // Written in bf16 (the attention's input on the products path): the f32 norm rounded
        // to nearest, bit for bit.
        ensure_rounded_from(
            gpt_oss_kernels::rms_norm_rows::rms_norm_rows_bf16(x.clone(), weight.clone(), eps),
            ours.clone(),
            "the f32 norm",
            json!({"kernel": "rms_norm_rows_bf16", "rows": rows, "width": width}),
            "differing_from_rounded_norm",
        )?;
        worst.record(
            ours,
            reference,
            json!({"kernel": "rms_norm_rows", "rows": rows, "width": width}),
        );
        // With the residual add: the sum and the norm of the sum.
        let delta = Tensor::<2>::random([rows, width], Distribution::Normal(0.0, 3.0), device);
        let (sum, normed) = gpt_oss_kernels::rms_norm_rows::add_rms_norm_rows(
            x.clone(),
            delta.clone(),
            weight.clone(),
            eps,
        );
        let reference_sum = x + delta;
        let reference = gpt_oss_kernels::rms_norm_rows::reference_rms_norm_rows(
            reference_sum.clone(),
            weight,
            eps,
        );
        worst.record_parts(
            [("sum", sum, reference_sum), ("norm", normed, reference)],
            json!({"kernel": "add_rms_norm_rows", "rows": rows, "width": width}),
        );
    }
    worst.finish()
}

/// The router kernel's table (ids and gates) against burn's matmul, top-k and softmax; a
/// different choice of experts shows as an error of order one.
pub(super) fn check_router(device: &Device) -> anyhow::Result<()> {
    let mut worst = Worst::new("router kernel", 1e-5);
    // Expert counts off the kernel's quads of four and past a plane; the case of five tokens
    // has half its experts masked out (bias minus infinity, as `ExpertMask` sets it).
    for [tokens, hidden, experts, top_k] in [
        [1, 2880, 32, 4],
        [7, 2880, 128, 4],
        [3, 64, 24, 4],
        [300, 2880, 32, 4],
        [2, 100, 6, 2],
        [1, 2880, 1000, 8],
        [5, 2880, 32, 4],
    ] {
        let (x, w) = random_tokens_and_router(tokens, hidden, experts, device);
        let mut bias = Tensor::<1>::random([experts], Distribution::Normal(0.0, 0.1), device);
        if tokens == 5 {
            let masked = Tensor::<1>::full([experts / 2], f32::NEG_INFINITY, device);
            bias = bias.slice_assign(0..experts / 2, masked);
        }
        use gpt_oss_kernels::router_top_k::{reference_router_top_k, router_top_k};
        let ours = router_top_k(x.clone(), w.clone(), bias.clone(), top_k);
        let reference = reference_router_top_k(x.clone(), w.clone(), bias.clone(), top_k);
        worst.record(
            ours,
            reference,
            json!({"kernel": "router_top_k", "tokens": tokens, "hidden": hidden,
                   "experts": experts, "top_k": top_k}),
        );
        // With the residual add and the norm in front, in the same launch.
        let delta = standard_normal([tokens, hidden], device);
        let norm_weight = Tensor::<1>::random([hidden], Distribution::Default, device);
        let (sum, normed, routing) = gpt_oss_kernels::router_top_k::add_norm_router(
            x.clone(),
            delta.clone(),
            norm_weight.clone(),
            1e-5,
            w.clone(),
            bias.clone(),
            top_k,
        );
        let reference_sum = x + delta;
        let reference_normed = gpt_oss_kernels::rms_norm_rows::reference_rms_norm_rows(
            reference_sum.clone(),
            norm_weight,
            1e-5,
        );
        let reference_routing = reference_router_top_k(reference_normed.clone(), w, bias, top_k);
        worst.record_parts(
            [
                ("sum", sum, reference_sum),
                ("norm", normed, reference_normed),
                // The table's rows past the tokens are padding.
                ("routing", routing.narrow(0, 0, tokens), reference_routing),
            ],
            json!({"kernel": "add_norm_router", "tokens": tokens,
                  "hidden": hidden, "experts": experts, "top_k": top_k}),
        );
    }
    worst.finish()
}

/// The output projection with the residual add, the norm and the router in one launch
/// (`bf16_rows::add_norm_router`) against burn's ops (inputs rounded to bf16 as the kernel
/// rounds them). The cases run in sequence on one set of arrival counts, each twice, so that a
/// count left off zero shows as a wrong or missing routing table in the next launch; nine
/// tokens take two chunks of rows, and one case masks half the experts.
pub(super) fn check_o_add_norm_router(device: &Device) -> anyhow::Result<()> {
    use burn::tensor::DType;
    use gpt_oss_kernels::bf16_rows::add_norm_router::{
        arrival_counts, bf16_rows_add_norm_router, zero_arrival_counts,
    };
    use gpt_oss_kernels::router_top_k::reference_router_top_k;
    let mut worst = Worst::new("output projection with the router", 1e-5);
    let counts = arrival_counts(32);
    let arrivals = zero_arrival_counts(32, device);
    for [tokens, hidden, width, experts, top_k] in [
        [1, 2880, 4096, 32, 4],
        [9, 2880, 4096, 128, 4],
        [3, 64, 96, 8, 2],
        [5, 2880, 4096, 32, 4],
        [32, 2880, 4096, 32, 4],
    ] {
        let (x, router) = random_tokens_and_router(tokens, hidden, experts, device);
        let attended = standard_normal([tokens, width], device);
        let o = Tensor::<2>::random([width, hidden], Distribution::Normal(0.0, 0.02), device)
            .cast(DType::BF16);
        let o_bias = Tensor::<1>::random([hidden], Distribution::Normal(0.0, 0.1), device);
        let norm_weight = Tensor::<1>::random([hidden], Distribution::Default, device);
        let mut bias = Tensor::<1>::random([experts], Distribution::Normal(0.0, 0.1), device);
        if tokens == 5 {
            let masked = Tensor::<1>::full([experts / 2], f32::NEG_INFINITY, device);
            bias = bias.slice_assign(0..experts / 2, masked);
        }
        let rounded = to_nearest_bf16(attended.clone()).cast(DType::F32);
        let reference_sum = rounded.matmul(o.clone().cast(DType::F32))
            + o_bias.clone().unsqueeze::<2>()
            + x.clone();
        let reference_normed = gpt_oss_kernels::rms_norm_rows::reference_rms_norm_rows(
            reference_sum.clone(),
            norm_weight.clone(),
            1e-5,
        );
        let reference_routing = reference_router_top_k(
            reference_normed.clone(),
            router.clone(),
            bias.clone(),
            top_k,
        );
        for launch in 0..2 {
            let (sum, normed, routing) = bf16_rows_add_norm_router(
                attended.clone(),
                (o.clone(), o_bias.clone()),
                x.clone(),
                (norm_weight.clone(), 1e-5),
                (router.clone(), bias.clone()),
                top_k,
                arrivals.clone(),
            );
            worst.record_parts(
                [
                    ("sum", sum, reference_sum.clone()),
                    ("norm", normed, reference_normed.clone()),
                    // The table's rows past the tokens are padding.
                    (
                        "routing",
                        routing.narrow(0, 0, tokens),
                        reference_routing.clone(),
                    ),
                ],
                json!({"kernel": "bf16_rows_add_norm_router", "tokens": tokens, "hidden": hidden,
                       "width": width, "experts": experts, "top_k": top_k, "launch": launch}),
            );
        }
    }
    // Read after the last launch's outputs were (which runs every launch queued before).
    let left: Vec<i64> = arrivals.try_into_vec_as::<i64>().unwrap_or_default();
    anyhow::ensure!(
        left.len() == counts && left.iter().all(|&c| c == 0),
        "output projection with the router: arrival counts left at {left:?}"
    );
    worst.finish()
}

pub(super) fn check_rotary(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::rotary_rows::{
        reference_rotary_qkv_rows, reference_rotary_rows, rotary_qkv_rows, rotary_rows,
        rotary_rows_bf16,
    };
    let mut worst = Worst::new("RoPE kernel", 1e-6);
    // The last case has more than 65,535 workgroups (a second grid dimension).
    for [b, t, heads, d] in [[1, 1, 64, 64], [3, 5, 8, 32], [8, 2048, 64, 64]] {
        let x = standard_normal([b, t, heads, d], device);
        let cos = Tensor::<4>::random([b, 1, t, d / 2], Distribution::Default, device);
        let sin = Tensor::<4>::random([b, 1, t, d / 2], Distribution::Default, device);
        let ours = rotary_rows(x.clone(), cos.clone(), sin.clone());
        // Written in bf16 (the tensor-core attention's q and k): the f32 rotation rounded to
        // nearest, bit for bit.
        ensure_rounded_from(
            rotary_rows_bf16(x.clone(), cos.clone(), sin.clone()),
            ours.clone(),
            "the f32 rotation",
            json!({"kernel": "rotary_rows_bf16", "rows": b, "positions": t, "heads": heads,
                   "head_dim": d}),
            "differing_from_rounded_rotation",
        )?;
        let reference = reference_rotary_rows(x, cos, sin);
        worst.record(
            ours,
            reference,
            json!({"kernel": "rotary_rows", "rows": b, "positions": t, "heads": heads,
                   "head_dim": d}),
        );
    }
    // The fused q | k | v heads: q and k rotated, v moved, three sections.
    for [b, t, q_heads, kv_heads, d] in [[1, 1, 64, 8, 64], [4, 3, 4, 2, 32]] {
        let heads = q_heads + 2 * kv_heads;
        let x = standard_normal([b, t, heads, d], device);
        let cos = Tensor::<4>::random([b, 1, t, d / 2], Distribution::Default, device);
        let sin = Tensor::<4>::random([b, 1, t, d / 2], Distribution::Default, device);
        let ours = rotary_qkv_rows(x.clone(), cos.clone(), sin.clone(), q_heads, kv_heads);
        let reference = reference_rotary_qkv_rows(x, cos, sin, q_heads, kv_heads);
        worst.record_parts(
            [
                ("q", ours.0, reference.0),
                ("k", ours.1, reference.1),
                ("v", ours.2, reference.2),
            ],
            json!({"kernel": "rotary_qkv_rows", "rows": b, "positions": t,
                  "q_heads": q_heads, "kv_heads": kv_heads, "head_dim": d}),
        );
    }
    check_rotary_into_cache(&mut worst, device);
    worst.finish()
}

/// A decode step's RoPE with the cache writes in the same launch against `rotary_qkv_rows`
/// and two `write_at_index` references: q, and both caches read through the caller's own
/// tensors (written in place); a slot past the end leaves the caches as they were.
fn check_rotary_into_cache(worst: &mut Worst, device: &Device) {
    use gpt_oss_kernels::rotary_rows::{reference_rotary_qkv_rows, rotary_qkv_into_cache};
    use gpt_oss_kernels::write_at_index::reference_write_at_index;
    for [b, q_heads, kv_heads, d, capacity, slot] in [
        [1, 64, 8, 64, 256, 17],
        [3, 4, 2, 32, 40, 39],
        [2, 4, 2, 32, 40, 40],
    ] {
        let heads = q_heads + 2 * kv_heads;
        let x = standard_normal([b, 1, heads, d], device);
        let cos = Tensor::<4>::random([b, 1, 1, d / 2], Distribution::Default, device);
        let sin = Tensor::<4>::random([b, 1, 1, d / 2], Distribution::Default, device);
        let cache =
            || Tensor::<4>::random([b, kv_heads, capacity, d], Distribution::Default, device);
        let (keys, values) = (cache(), cache());
        let at = Tensor::<1>::from_data(TensorData::new(vec![slot as f32], [1]), device);
        let (q, k, v) =
            reference_rotary_qkv_rows(x.clone(), cos.clone(), sin.clone(), q_heads, kv_heads);
        let expected_keys = reference_write_at_index(keys.clone() * 1.0, k, at.clone(), 2);
        let expected_values = reference_write_at_index(values.clone() * 1.0, v, at.clone(), 2);
        let ours = rotary_qkv_into_cache(x, (cos, sin), (&keys, &values), at, q_heads, kv_heads);
        worst.record_parts(
            [
                ("q", ours, q),
                ("keys", keys, expected_keys),
                ("values", values, expected_values),
            ],
            json!({"kernel": "rotary_qkv_into_cache", "rows": b,
                  "q_heads": q_heads, "kv_heads": kv_heads, "head_dim": d,
                  "capacity": capacity, "slot": slot}),
        );
    }
}

/// The in-place write at a device-held index: the KV cache's shape (axis 2), the picks' (axis
/// 1), whole small tensors (axis 0), an index past the end (writes nothing); the written tensor
/// must also be the input's own buffer (read through a clone taken before the write).
pub(super) fn check_write_at_index(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::write_at_index::{reference_write_at_index, write_at_index};
    let mut worst = Worst::new("write_at_index kernel", 1e-7);
    for (dims, axis, index) in [
        ([1, 8, 256, 64], 2, 17),
        ([32, 8, 128, 64], 2, 127),
        ([3, 1, 200, 1], 2, 0),
        ([2, 8, 128, 64], 2, 128),
        ([1, 1, 1, 32], 0, 0),
    ] {
        let dst = Tensor::<4>::random(dims, Distribution::Default, device);
        let mut src_dims = dims;
        src_dims[axis] = 1;
        let src = Tensor::<4>::random(src_dims, Distribution::Default, device);
        let at = Tensor::<1>::from_data(TensorData::new(vec![index as f32], [1]), device);
        let reference = reference_write_at_index(dst.clone() * 1.0, src.clone(), at.clone(), axis);
        let alias = dst.clone();
        let ours = write_at_index(dst, src, at, axis);
        let fields = json!({"kernel": "write_at_index", "dims": dims, "axis": axis,
                            "index": index});
        worst.record(ours, reference.clone(), fields.clone());
        let mut in_place = fields;
        in_place["read_through"] = json!("the input's handle");
        worst.record(alias, reference, in_place);
    }
    worst.finish()
}

/// The host-offset in-place write (a kept decode step refilled for the next generation)
/// against burn's slice assignment, read through the returned tensor and through the input's own
/// handle (in place). Cases: a prefill's keys into a cache from slot 0 and, as a sliding layer's,
/// from a later slot, a strided view as the source (`LayerKv::written` narrows the prefill's
/// buffers), whole small tensors (slot, picks) and 32-bit integer tables (key ranges).
pub(super) fn check_write_in_place(device: &Device) -> anyhow::Result<()> {
    use burn::tensor::{Int, IntDType};
    use gpt_oss_kernels::write_in_place::{
        reference_write_in_place, write_in_place, write_in_place_int,
    };
    let mut worst = Worst::new("write_in_place kernel", 1e-7);
    // (dst dims, axis, start, source length along the axis, source a strided view)
    for (dims, axis, start, len, view) in [
        ([1, 8, 256, 64], 2, 0, 17, false),
        ([32, 8, 128, 64], 2, 28, 100, true),
        ([2, 8, 128, 64], 2, 0, 16, true),
        ([1, 1, 1, 1], 0, 0, 1, false),
        ([1, 1, 3, 200], 2, 0, 3, false),
    ] {
        let mut src_dims = dims;
        src_dims[axis] = len;
        let src = if view {
            let mut wider = src_dims;
            wider[axis] += 5;
            Tensor::<4>::random(wider, Distribution::Default, device).narrow(axis, 0, len)
        } else {
            Tensor::<4>::random(src_dims, Distribution::Default, device)
        };
        let dst = Tensor::<4>::random(dims, Distribution::Default, device);
        let reference = reference_write_in_place(dst.clone() * 1.0, src.clone(), axis, start);
        let alias = dst.clone();
        let ours = write_in_place(dst, src, axis, start);
        let fields = json!({"kernel": "write_in_place", "dims": dims, "axis": axis,
                            "start": start, "len": len, "strided_source": view});
        worst.record(ours, reference.clone(), fields.clone());
        let mut in_place = fields;
        in_place["read_through"] = json!("the input's handle");
        worst.record(alias, reference, in_place);
    }
    for (dims, rows) in [([256, 2], 256), ([300, 64], 300), ([128, 64], 40)] {
        let ints = |shape: [usize; 2]| {
            (Tensor::<2>::random(shape, Distribution::Uniform(-1e6, 1e6), device))
                .int()
                .cast(IntDType::I32)
        };
        let src: Tensor<2, Int> = ints([rows, dims[1]]);
        let dst = ints(dims);
        let start = dims[0] - rows;
        let reference = reference_write_in_place(dst.clone() + 0, src.clone(), 0, start);
        let alias = dst.clone();
        let ours = write_in_place_int(dst, src, 0, start);
        let fields = json!({"kernel": "write_in_place_int", "dims": dims, "start": start});
        worst.record(ours.float(), reference.clone().float(), fields.clone());
        let mut in_place = fields;
        in_place["read_through"] = json!("the input's handle");
        worst.record(alias.float(), reference.float(), in_place);
    }
    worst.finish()
}

/// The greedy picks written into a decode step's state (two launches) against burn's argmax
/// and in-place writes: picks, tokens and slot equal exactly. Rows hold a tie for their
/// maximum (the first index must win), one of them across two segments; the last case's slot
/// is the last, so its picks are left alone.
pub(super) fn check_greedy_into_state(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::greedy_picks::{SEGMENT, greedy_into_state, reference_greedy_into_state};
    let mut worst = Worst::new("greedy picks kernels", 1e-7);
    let segment = SEGMENT as usize;
    for (rows, vocab, capacity, slot) in [
        (1, 201_088, 64, 10),
        (32, 201_088, 128, 100),
        (3, 5000, 8, 0),
        (2, 7, 4, 3),
    ] {
        let mut values: Vec<f32> = standard_normal([rows, vocab], device)
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        for row in 0..rows {
            // A tie for the row's maximum: at a later index of the same segment and, where
            // the row is wide enough, in a later segment.
            let base = row * vocab;
            let first = (row * 37) % vocab.min(segment);
            let later = [first + 1, first + segment].map(|i| i.min(vocab - 1));
            for at in std::iter::once(first).chain(later) {
                values[base + at] = 100.0;
            }
        }
        let logits = Tensor::<2>::from_data(TensorData::new(values, [rows, vocab]), device);
        let state = || {
            (
                Tensor::<2>::random([rows, capacity], Distribution::Default, device),
                Tensor::<2>::random([1, rows], Distribution::Default, device),
                Tensor::<1>::from_data(TensorData::new(vec![slot as f32], [1]), device),
            )
        };
        let ours_in = state();
        let reference_in = (
            ours_in.0.clone() * 1.0,
            ours_in.1.clone() * 1.0,
            ours_in.2.clone() * 1.0,
        );
        let (picks, tokens, next) = greedy_into_state(logits.clone(), ours_in);
        let (want_picks, want_tokens, want_next) =
            reference_greedy_into_state(logits, reference_in);
        let fields = json!({"kernel": "greedy_into_state", "rows": rows, "vocab": vocab,
                            "capacity": capacity, "slot": slot});
        worst.record_parts(
            [
                ("picks", picks, want_picks),
                ("tokens", tokens, want_tokens),
            ],
            fields.clone(),
        );
        let mut slot_fields = fields;
        slot_fields["part"] = json!("slot");
        worst.record(next, want_next, slot_fields);
    }
    worst.finish()
}

/// A decode step's embedding lookup in one launch against the model's lookup by burn ops
/// (exact: both copy bf16 values): gpt-oss's table in three pieces with ids at every piece's
/// edges, and tables of one and two pieces.
pub(super) fn check_embedding_rows(device: &Device) -> anyhow::Result<()> {
    use burn::module::Param;
    use burn::tensor::{DType, Int};
    use gpt_oss_model::transformer::vocab::Embedding;
    let mut worst = Worst::new("embedding_rows kernel", 1e-7);
    for (rows_per_piece, vocab, width, ids) in [
        (
            93_184,
            201_088,
            2880,
            vec![0, 93_183, 93_184, 186_367, 186_368, 201_087, 5, 200_001],
        ),
        (100, 100, 64, vec![99, 0, 42]),
        (40, 53, 24, vec![39, 40, 52, 0]),
    ] {
        let pieces = (0..vocab)
            .step_by(rows_per_piece)
            .map(|start| {
                let rows = rows_per_piece.min(vocab - start);
                let piece = Tensor::<2>::random([rows, width], Distribution::Default, device);
                Param::from_tensor(piece.cast(DType::BF16))
            })
            .collect();
        let embedding = Embedding {
            pieces,
            rows_per_piece,
        };
        let n = ids.len();
        let values: Vec<f32> = ids.iter().map(|&id| id as f32).collect();
        let values = Tensor::<1>::from_data(TensorData::new(values, [n]), device);
        let ids: Tensor<1, Int> = values.clone().int();
        let ours = embedding.forward_token_values(values);
        let reference = embedding.forward_ids(ids);
        worst.record(
            ours,
            reference,
            json!({"kernel": "embedding_rows", "pieces": embedding.pieces.len(),
                   "vocab": vocab, "width": width, "rows": n}),
        );
    }
    worst.finish()
}
