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
use gpt_oss_kernels::experts_pairs::{
    GATE_UP_SHAPE, PlaneShape, down_shape, pairs_down, pairs_gate_up,
};
use gpt_oss_kernels::router_top_k::add_norm_router;

use super::super::{packed_words, random_experts, standard_normal, workgroup_sides};
use super::{
    EXPERTS, HIDDEN, INTER, KV_WIDTH, LAUNCHES, PER_PAIR_LIMITS, Q_WIDTH, TOP_K, report,
    seconds_per_replayed_launch,
};

/// Layers with their own attention weights (q/k/v, o, caches); launches reuse them in turn.
const ATTENTION_SETS: usize = 8;
/// Keys in each layer's caches (the step's slot the last).
const KEYS: usize = 128;

/// The per-pair workgroups of a chained layer's experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainExperts {
    pub gate_up: PlaneShape,
    pub down: PlaneShape,
}

impl ChainExperts {
    /// What the model takes at one token.
    pub fn model() -> Self {
        Self {
            gate_up: GATE_UP_SHAPE,
            down: down_shape(1),
        }
    }
}

/// `GATE_UP/DOWN`, each `CxPxT` (columns per plane, planes, turns), e.g. `1x8x1/1x16x1`, as the
/// per-pair workgroups of the chained layer's experts.
pub fn parse_chain_experts(text: &str) -> anyhow::Result<ChainExperts> {
    let shape = |side: &str| {
        let [columns_per_plane, planes, turns] = workgroup_sides(side, "--chain-experts", "CxPxT")?;
        let shape = PlaneShape {
            columns_per_plane,
            planes,
            turns,
        };
        anyhow::ensure!(
            shape.is_supported(),
            "--chain-experts `{text}`: `{side}` is not a workgroup the per-pair kernels take \
             ({PER_PAIR_LIMITS})"
        );
        Ok(shape)
    };
    let Some((gate_up, down)) = text.split_once('/') else {
        anyhow::bail!("--chain-experts `{text}`: expected GATE_UP/DOWN, each CxPxT");
    };
    Ok(ChainExperts {
        gate_up: shape(gate_up)?,
        down: shape(down)?,
    })
}

/// Batch 1, 20b's shapes: per chained layer (the input norm with q/k/v, RoPE with the cache
/// writes and attention, o, the residual add with the norm and the router, the experts' gate_up
/// and down with the residual), and per chained half (the attention's three launches; the MoE's
/// three, its residual delta fixed), and per chained decode-step layer as the model runs it (o
/// in the router's launch: five launches). The experts (all 32, 420 MB) are shared and routed
/// by the data. Every part with experts is timed at each of `chain_experts` (the model's
/// workgroups when empty); the attention half once.
pub(super) fn time_layer_chain(
    device: &Device,
    chain_experts: &[ChainExperts],
) -> anyhow::Result<()> {
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
    let experts_half =
        |normed: Tensor<2>, routing: Tensor<2>, sum: Tensor<2>, shapes: ChainExperts| {
            let act = pairs_gate_up(
                normed,
                routing.clone(),
                gu_words.clone(),
                gu_scales.clone(),
                experts.gate_up_bias.val(),
                experts.swiglu_limit,
                experts.swiglu_alpha,
                shapes.gate_up,
            );
            pairs_down(
                act,
                routing,
                down_words.clone(),
                down_scales.clone(),
                experts.down_bias.val(),
                Some(sum),
                shapes.down,
            )
        };
    // The residual add with the norm and the router, gate_up, down with the residual: the
    // residual grows by bounded amounts (every product's input is normed).
    let moe_half = |x: Tensor<2>, delta: Tensor<2>, shapes: ChainExperts| {
        let (sum, normed, routing) = add_norm_router(
            x,
            delta,
            norm_weight.clone(),
            1e-5,
            router.clone(),
            router_bias.clone(),
            TOP_K,
        );
        experts_half(normed, routing, sum, shapes)
    };

    // A decode step's layer: o with the residual add, the norm and the router in one launch.
    let arrivals = zero_arrival_counts(1, device);
    let fused_layer = |x: Tensor<2>, set: usize, shapes: ChainExperts| {
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
        experts_half(normed, routing, sum, shapes)
    };

    let model = [ChainExperts::model()];
    let chain_experts = if chain_experts.is_empty() {
        &model[..]
    } else {
        chain_experts
    };
    let shape = |s: PlaneShape| format!("{}x{}x{}", s.columns_per_plane, s.planes, s.turns);
    for (index, &shapes) in chain_experts.iter().enumerate() {
        for (part, launches) in [
            ("layer", 6),
            ("attention", 3),
            ("moe", 3),
            ("layer_o_with_router", 5),
        ] {
            if part == "attention" && index > 0 {
                continue;
            }
            // Each call of the timed closure runs one part on the previous call's output, so
            // the graph's LAUNCHES calls are one chain and the time per call is the time per part.
            let current = RefCell::new(standard_normal([1, HIDDEN], device));
            let seconds = seconds_per_replayed_launch(device, ATTENTION_SETS, |set| {
                let x = current.borrow().clone();
                let next = match part {
                    "layer" => {
                        let attended = attention_half(x.clone(), set);
                        moe_half(x, attended, shapes)
                    }
                    "attention" => attention_half(x, set),
                    "layer_o_with_router" => fused_layer(x, set, shapes),
                    _ => moe_half(x, delta.clone(), shapes),
                };
                *current.borrow_mut() = next.clone();
                next
            })?;
            report(
                "decoding_layer_chain",
                json!({"rows": 1, "keys": KEYS, "part": part, "launches_per_part": launches,
                       "parts_per_graph": LAUNCHES, "gate_up": shape(shapes.gate_up),
                       "down": shape(shapes.down)}),
                seconds,
                None,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--chain-experts` reads `GATE_UP/DOWN` workgroups, and refuses text without both sides
    /// or a workgroup the per-pair kernels do not take, naming what it read.
    #[test]
    fn chain_experts_parse_both_workgroups_and_refuse_others() {
        let parsed = parse_chain_experts("1x8x1/1x16x2").unwrap();
        let shape = |planes, turns| PlaneShape {
            columns_per_plane: 1,
            planes,
            turns,
        };
        assert_eq!(parsed.gate_up, shape(8, 1));
        assert_eq!(parsed.down, shape(16, 2));
        for (text, named) in [
            ("1x8x1", "GATE_UP/DOWN"),
            ("1x8x1/1x64x1", "`1x64x1`"),
            ("1x8/1x8x1", "`1x8`"),
            ("1x8x1/1x8x0", "`1x8x0`"),
        ] {
            let error = parse_chain_experts(text).unwrap_err().to_string();
            assert!(error.contains("--chain-experts"), "{text}: {error}");
            assert!(error.contains(named), "{text}: {error}");
        }
    }
}
