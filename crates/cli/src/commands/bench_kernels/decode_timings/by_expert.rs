//! `--decode-timings --only by_expert`: the experts of 4 to 32 tokens pair by pair (the
//! model's workgroups) and expert by expert (each workgroup given), in replayed graphs over
//! routings that cycle through the experts, each by-expert result checked against the
//! per-pair one first (the thirty-ninth round's 24 tokens brought
//! `moe_pairs::BY_EXPERT_FROM_TOKENS` down to 16).

use burn::tensor::{Device, Tensor};
use gpt_oss_kernels::experts_pairs::{
    ExpertShape, GATE_UP_SHAPE, down_shape, experts_down, experts_gate_up, pairs_down,
    pairs_gate_up,
};
use rand::{SeedableRng, rngs::StdRng};
use serde_json::json;

use super::{
    EXPERTS, HIDDEN, INTER, TOP_K, WeightCycle, report, routing_table, seconds_per_replayed_launch,
};
use crate::commands::bench_kernels::{Worst, packed_words, random_experts, standard_normal};

/// Each timing at each of `shapes` (`--expert-shapes`), with the per-pair kernels beside them.
pub(super) fn time_by_expert(
    device: &Device,
    shapes: &[ExpertShape],
    cycle: WeightCycle,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(17);
    let layer = random_experts(&mut rng, [EXPERTS, HIDDEN, INTER], device);
    let (gu_words, gu_scales) = packed_words(&layer.gate_up);
    let (down_words, down_scales) = packed_words(&layer.down);
    let mut worst = Worst::new("by-expert experts kernels against the per-pair ones", 1e-4);
    for tokens in [4usize, 8, 16, 24, 32] {
        let routings: Vec<Tensor<2>> = (0..cycle.routings())
            .map(|set| routing_table(&mut rng, tokens, set, device))
            .collect();
        let x = standard_normal([tokens, HIDDEN], device);
        let residual = standard_normal([tokens, HIDDEN], device);
        let gate_up_pairs = |i: usize| {
            pairs_gate_up(
                x.clone(),
                routings[i].clone(),
                gu_words.clone(),
                gu_scales.clone(),
                layer.gate_up_bias.val(),
                layer.swiglu_limit,
                layer.swiglu_alpha,
                GATE_UP_SHAPE,
            )
        };
        let acts: Vec<Tensor<2>> = (0..routings.len()).map(gate_up_pairs).collect();
        let down_pairs = |i: usize| {
            pairs_down(
                acts[i].clone(),
                routings[i].clone(),
                down_words.clone(),
                down_scales.clone(),
                layer.down_bias.val(),
                Some(residual.clone()),
                down_shape(tokens),
            )
        };
        let case = json!({"tokens": tokens, "pairs": tokens * TOP_K});
        report(
            "pairs_gate_up",
            case.clone(),
            seconds_per_replayed_launch(device, routings.len(), gate_up_pairs)?,
            None,
        );
        report(
            "pairs_down",
            case.clone(),
            seconds_per_replayed_launch(device, routings.len(), down_pairs)?,
            None,
        );
        for &shape in shapes {
            let ExpertShape {
                columns_per_plane,
                planes,
                chunk_rows,
            } = shape;
            let gate_up = |i: usize| {
                experts_gate_up(
                    x.clone(),
                    routings[i].clone(),
                    gu_words.clone(),
                    gu_scales.clone(),
                    layer.gate_up_bias.val(),
                    layer.swiglu_limit,
                    layer.swiglu_alpha,
                    shape,
                )
            };
            let down = |i: usize| {
                experts_down(
                    acts[i].clone(),
                    routings[i].clone(),
                    down_words.clone(),
                    down_scales.clone(),
                    layer.down_bias.val(),
                    Some(residual.clone()),
                    shape,
                )
            };
            let mut case = case.clone();
            case["shape"] = json!(format!("{columns_per_plane}x{planes}x{chunk_rows}"));
            worst.record(
                gate_up(0),
                gate_up_pairs(0),
                json!({"kernel": "experts_gate_up", "case": case}),
            );
            worst.record(
                down(0),
                down_pairs(0),
                json!({"kernel": "experts_down", "case": case}),
            );
            report(
                "experts_gate_up",
                case.clone(),
                seconds_per_replayed_launch(device, routings.len(), gate_up)?,
                None,
            );
            report(
                "experts_down",
                case,
                seconds_per_replayed_launch(device, routings.len(), down)?,
                None,
            );
        }
    }
    worst.finish()
}
