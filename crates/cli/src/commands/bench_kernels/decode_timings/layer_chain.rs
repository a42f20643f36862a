//! A decoding layer's launches chained as a decode step chains them: each layer's output the
//! next one's input, so that the time per layer can be set beside the sum of its six launches
//! timed one kernel at a time (what changing kernels and waiting on the previous launch add).

use std::cell::RefCell;

use burn::tensor::{DType, Device, Distribution, Int, IntDType, Tensor, TensorData};
use rand::{SeedableRng, rngs::StdRng};
use serde_json::json;

use gpt_oss_kernels::attention_rows::attention_step;
use gpt_oss_kernels::bf16_rows::add_norm_router::{bf16_rows_add_norm_router, zero_arrival_counts};
use gpt_oss_kernels::bf16_rows::{bf16_rows_matmul, rms_norm_bf16_rows_three};
use gpt_oss_kernels::experts_pairs::{GATE_UP_SHAPE, down_shape, pairs_down, pairs_gate_up};
use gpt_oss_kernels::router_top_k::add_norm_router;

use super::super::{packed_words, random_experts, standard_normal};
use super::{
    EXPERTS, HIDDEN, INTER, KV_WIDTH, LAUNCHES, Q_WIDTH, TOP_K, report, seconds_per_replayed_launch,
};

/// Layers with their own attention weights (q/k/v, o, caches); launches reuse them in turn.
const ATTENTION_SETS: usize = 8;
/// Keys in each layer's caches (the step's slot the last).
const KEYS: usize = 128;

/// Batch 1, 20b's shapes: per chained layer (the input norm with q/k/v, RoPE with the cache
/// writes and attention, o, the residual add with the norm and the router, the experts' gate_up
/// and down with the residual), and per chained half (the attention's three launches; the MoE's
/// three, its residual delta fixed), and per chained decode-step layer as the model runs it (o
/// in the router's launch: five launches). The experts (all 32, 420 MB) are shared and routed
/// by the data.
pub(super) fn time_layer_chain(device: &Device) -> anyhow::Result<()> {
    let bf16 = |shape: [usize; 2]| {
        standard_normal(shape, device)
            .mul_scalar(0.02)
            .cast(DType::BF16)
    };
    let vector = |n: usize| Tensor::<1>::random([n], Distribution::Default, device);
    let attention: Vec<_> = (0..ATTENTION_SETS)
        .map(|_| {
            let qkv = [Q_WIDTH, KV_WIDTH, KV_WIDTH].map(|n| bf16([HIDDEN, n]));
            let qkv_bias = [Q_WIDTH, KV_WIDTH, KV_WIDTH].map(vector);
            let caches = [0, 1].map(|_| standard_normal([1, KV_WIDTH / 64, KEYS, 64], device));
            (
                qkv,
                qkv_bias,
                caches,
                bf16([Q_WIDTH, HIDDEN]),
                vector(HIDDEN),
            )
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(17);
    let experts = random_experts(&mut rng, [EXPERTS, HIDDEN, INTER], device);
    let (gu_words, gu_scales) = packed_words(&experts.gate_up);
    let (down_words, down_scales) = packed_words(&experts.down);
    let router = standard_normal([HIDDEN, EXPERTS], device).mul_scalar(0.05);
    let (router_bias, norm_weight) = (vector(EXPERTS), vector(HIDDEN));
    let sinks = vector(Q_WIDTH / 64);
    let cos_sin = [0, 1].map(|_| Tensor::<4>::random([1, 1, 1, 32], Distribution::Default, device));
    let slot = Tensor::<1>::from_data(TensorData::new(vec![(KEYS - 1) as f32], [1]), device);
    let ranges = Tensor::<1, Int>::from_data(TensorData::new(vec![0i32, KEYS as i32], [2]), device)
        .cast(IntDType::I32);
    let delta = standard_normal([1, HIDDEN], device);

    // q/k/v with the norm, attention: x -> the heads' outputs.
    let attention_heads = |x: Tensor<2>, set: usize| {
        let (qkv, qkv_bias, [key_cache, value_cache], _, _) = &attention[set];
        let projected = rms_norm_bf16_rows_three(
            x,
            (norm_weight.clone(), 1e-5),
            qkv.clone(),
            Some(qkv_bias.clone()),
        );
        let heads = projected.reshape([1, 1, (Q_WIDTH + 2 * KV_WIDTH) / 64, 64]);
        let [cos, sin] = cos_sin.clone();
        let attended = attention_step(
            heads,
            (cos, sin),
            (key_cache, value_cache),
            slot.clone(),
            sinks.clone(),
            // Tables of one slot: the slot past them reads that row.
            ranges.clone().reshape([1, 2]),
            0.125,
            false,
        );
        attended.reshape([1, Q_WIDTH])
    };
    // ... then o: x -> the attention's output.
    let attention_half = |x: Tensor<2>, set: usize| {
        let (_, _, _, o, o_bias) = &attention[set];
        bf16_rows_matmul(attention_heads(x, set), o.clone(), Some(o_bias.clone()))
    };
    // The experts after the routing: gate_up, down with the residual.
    let experts_half = |normed: Tensor<2>, routing: Tensor<2>, sum: Tensor<2>| {
        let act = pairs_gate_up(
            normed,
            routing.clone(),
            gu_words.clone(),
            gu_scales.clone(),
            experts.gate_up_bias.val(),
            experts.swiglu_limit,
            experts.swiglu_alpha,
            GATE_UP_SHAPE,
        );
        pairs_down(
            act,
            routing,
            down_words.clone(),
            down_scales.clone(),
            experts.down_bias.val(),
            Some(sum),
            down_shape(1),
        )
    };
    // The residual add with the norm and the router, gate_up, down with the residual: the
    // residual grows by bounded amounts (every product's input is normed).
    let moe_half = |x: Tensor<2>, delta: Tensor<2>| {
        let (sum, normed, routing) = add_norm_router(
            x,
            delta,
            norm_weight.clone(),
            1e-5,
            router.clone(),
            router_bias.clone(),
            TOP_K,
        );
        experts_half(normed, routing, sum)
    };

    // A decode step's layer: o with the residual add, the norm and the router in one launch.
    let arrivals = zero_arrival_counts(1, device);
    let fused_layer = |x: Tensor<2>, set: usize| {
        let (_, _, _, o, o_bias) = &attention[set];
        let (sum, normed, routing) = bf16_rows_add_norm_router(
            attention_heads(x.clone(), set),
            (o.clone(), o_bias.clone()),
            x,
            (norm_weight.clone(), 1e-5),
            (router.clone(), router_bias.clone()),
            TOP_K,
            arrivals.clone(),
        );
        experts_half(normed, routing, sum)
    };

    for (part, launches) in [
        ("layer", 6),
        ("attention", 3),
        ("moe", 3),
        ("layer_o_with_router", 5),
    ] {
        // Each call of the timed closure runs one part on the previous call's output, so the
        // graph's LAUNCHES calls are one chain and the time per call is the time per part.
        let current = RefCell::new(standard_normal([1, HIDDEN], device));
        let seconds = seconds_per_replayed_launch(device, ATTENTION_SETS, |set| {
            let x = current.borrow().clone();
            let next = match part {
                "layer" => {
                    let attended = attention_half(x.clone(), set);
                    moe_half(x, attended)
                }
                "attention" => attention_half(x, set),
                "layer_o_with_router" => fused_layer(x, set),
                _ => moe_half(x, delta.clone()),
            };
            *current.borrow_mut() = next.clone();
            next
        })?;
        report(
            "decoding_layer_chain",
            json!({"rows": 1, "keys": KEYS, "part": part, "launches_per_part": launches,
                   "parts_per_graph": LAUNCHES}),
            seconds,
            None,
        );
    }
    Ok(())
}
