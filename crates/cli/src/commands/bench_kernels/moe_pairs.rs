//! kernel-check case for the experts of a few tokens (router table in, weighted sum out): the
//! per-pair kernels and the by-expert ones against the grouped reference, and their times.

use burn::tensor::{Device, Tensor};
use gpt_oss_kernels::experts_pairs::{
    BY_EXPERT_DOWN_SHAPE, BY_EXPERT_GATE_UP_SHAPE, GATE_UP_SHAPE, down_shape, experts_down,
    experts_gate_up, pairs_down, pairs_gate_up,
};
use gpt_oss_kernels::router_top_k::{reference_router_top_k, router_top_k};
use gpt_oss_model::transformer::moe_grouped::{ExpertPath, grouped_experts};
use rand::{SeedableRng, rngs::StdRng};
use serde_json::json;

use super::decoding::random_tokens_and_router;
use super::{
    Worst, packed_words, random_experts, seconds_per_call, seconds_per_queued_call, standard_normal,
};

/// The whole MoE block for a few tokens (routing included) by pairs and by expert against the
/// grouped reference (pairs sorted, MXFP4 decoded by burn ops, inputs rounded to bf16); the
/// by-expert gate_up against the per-pair one (the same products, summed in another order);
/// the time of each, and of the sorted grouped kernels (calls queued without a warm-up, so
/// the GPU's clocks may still be rising: rough; `--decode-timings --only by_expert` times the
/// kernels in replayed graphs after one).
pub(super) fn check_moe_pairs(device: &Device) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    let mut worst = Worst::new("experts kernels for a few tokens", 1e-2);
    let mut orders = Worst::new("by-expert gate_up against the per-pair one", 1e-4);
    for [tokens, experts, hidden, inter] in [
        [1, 4, 64, 96],
        [3, 8, 128, 64],
        [32, 4, 64, 96],
        [1, 32, 2880, 2880],
        [2, 32, 2880, 2880],
        [4, 32, 2880, 2880],
        [8, 32, 2880, 2880],
        [16, 32, 2880, 2880],
        [32, 32, 2880, 2880],
    ] {
        let top_k = 4;
        let layer = random_experts(&mut rng, [experts, hidden, inter], device);
        let (gu_words, gu_scales) = packed_words(&layer.gate_up);
        let (down_words, down_scales) = packed_words(&layer.down);
        let (x, w) = random_tokens_and_router(tokens, hidden, experts, device);
        let mut bias = Tensor::<1>::zeros([experts], device);
        if tokens == 3 {
            // Half the experts masked out, as `ExpertMask` does it.
            let masked = Tensor::<1>::full([experts / 2], f32::NEG_INFINITY, device);
            bias = bias.slice_assign(0..experts / 2, masked);
        }
        // The decoder layer's residual stream, added by the down kernels.
        let residual = standard_normal([tokens, hidden], device);
        let routing = || router_top_k(x.clone(), w.clone(), bias.clone(), top_k);
        let gate_up_by_pairs = |routing: Tensor<2>| {
            pairs_gate_up(
                x.clone(),
                routing,
                gu_words.clone(),
                gu_scales.clone(),
                layer.gate_up_bias.val(),
                layer.swiglu_limit,
                layer.swiglu_alpha,
                GATE_UP_SHAPE,
            )
        };
        let gate_up_by_expert = |routing: Tensor<2>| {
            experts_gate_up(
                x.clone(),
                routing,
                gu_words.clone(),
                gu_scales.clone(),
                layer.gate_up_bias.val(),
                layer.swiglu_limit,
                layer.swiglu_alpha,
                BY_EXPERT_GATE_UP_SHAPE,
            )
        };
        let by_pairs = || {
            let routing = routing();
            let act = gate_up_by_pairs(routing.clone());
            pairs_down(
                act,
                routing,
                down_words.clone(),
                down_scales.clone(),
                layer.down_bias.val(),
                Some(residual.clone()),
                down_shape(tokens),
            )
        };
        let by_expert = || {
            let routing = routing();
            let act = gate_up_by_expert(routing.clone());
            experts_down(
                act,
                routing,
                down_words.clone(),
                down_scales.clone(),
                layer.down_bias.val(),
                Some(residual.clone()),
                BY_EXPERT_DOWN_SHAPE,
            )
        };
        let sorted = |path: ExpertPath| {
            let routing = reference_router_top_k(x.clone(), w.clone(), bias.clone(), top_k);
            let ids = routing.clone().narrow(1, 0, top_k).int();
            let gates = routing.narrow(1, top_k, top_k).reshape([tokens * top_k]);
            grouped_experts(&layer, x.clone(), ids, gates, path)
        };
        let reference = sorted(ExpertPath::GroupedReferenceBf16) + residual.clone();
        let fields = json!({"kernel": "experts_pairs", "tokens": tokens, "experts": experts,
                            "hidden": hidden, "inter": inter, "top_k": top_k});
        orders.record(
            gate_up_by_expert(routing()),
            gate_up_by_pairs(routing()),
            json!({"kernel": "experts_gate_up", "tokens": tokens, "experts": experts,
                   "hidden": hidden, "inter": inter}),
        );
        worst.record_parts(
            [
                ("by_pairs", by_pairs(), reference.clone()),
                ("by_expert", by_expert(), reference),
            ],
            fields.clone(),
        );
        let mut times = fields;
        times["kernel"] = json!("experts_pairs_seconds");
        times["by_pairs"] = json!(seconds_per_call(device, by_pairs)?);
        times["by_pairs_queued"] = json!(seconds_per_queued_call(device, by_pairs)?);
        times["by_expert_queued"] = json!(seconds_per_queued_call(device, by_expert)?);
        times["sorted_grouped"] = json!(seconds_per_call(device, || sorted(
            ExpertPath::GroupedKernel
        ))?);
        println!("{times}");
    }
    orders.finish()?;
    worst.finish()
}
