//! The MoE block for a few tokens on the GPU: router and experts in three kernels, no sort.
//!
//! Decoding is bound by the number of kernels per token (about 110 per layer before this path,
//! half of them the MoE block's routing and sort). Here the router kernel writes each token's
//! expert ids and gates into one table, and the two experts kernels read their pair's expert
//! from it (`gpt_oss_kernels::experts_pairs`): an expert's weights are read once per pair rather
//! than once per expert, which costs nothing while pairs rarely share an expert. In a decoder
//! layer ([`add_norm_moe_by_pairs`]) the router kernel also does the residual add and the
//! post-attention norm before it (`router_top_k::add_norm_router`); in a decode step
//! ([`o_add_norm_moe_by_pairs`]) the attention's output projection runs in that launch too
//! (`bf16_rows::add_norm_router`).

use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor};
use gpt_oss_kernels::bf16_rows::add_norm_router as bf16_add_norm_router;
use gpt_oss_kernels::{experts_pairs, router_top_k};

use super::experts::{ExpertMatrix, PackedMxfp4};
use super::moe::Moe;
use super::moe_grouped::ExpertPath;
use super::norm::RmsNorm;
use super::project::on_kernel_path;

/// Up to this many (token, rank) pairs the kernel path runs the experts per pair (batch-1
/// decoding has 4, batch-32 decoding 128); above, the pairs are sorted by expert
/// (`moe_grouped`). `bench kernel-check` on an H100 (20b shapes, routing included, the
/// fourth round's kernels): 0.76 ms by pairs vs 5.5 ms sorted at 4 pairs, 1.6 vs 6.0 ms at 32,
/// 2.5 vs 5.3 ms at 128.
pub const MAX_PAIRS: usize = 128;

/// From this many tokens the per-pair path takes its experts expert by expert
/// (`experts_pairs::experts_gate_up` and `experts_down`: each weight decoded once for up to
/// four (gate_up) or two (down) of the pairs routed to its expert); below, pair by pair.
/// Measured at 20b's shapes with the model's workgroups (H200, thirty-ninth round, us per
/// layer for both kernels): 787 against 977 per pair at 32 tokens, 657 against 748 at 24, 497
/// against 511 at 16; at 8 tokens 327 against 282. 17 to 23 tokens lie between two measured
/// wins.
pub const BY_EXPERT_FROM_TOKENS: usize = 16;

/// Whether [`experts_by_pairs`] takes the by-expert kernels for `tokens` tokens of `hidden` by
/// `inter` with `top_k` experts each.
fn takes_by_expert(tokens: usize, hidden: usize, inter: usize, top_k: usize) -> bool {
    let pairs = tokens * top_k;
    tokens >= BY_EXPERT_FROM_TOKENS
        && [
            experts_pairs::BY_EXPERT_GATE_UP_SHAPE,
            experts_pairs::BY_EXPERT_DOWN_SHAPE,
        ]
        .into_iter()
        .all(|shape| experts_pairs::supports_by_expert(hidden, inter, pairs, shape))
}

/// The packed gate_up and down weights when `moe` runs `tokens` tokens through this path (the
/// GPU kernel path, MXFP4 experts of shapes the kernels take, few enough pairs), else `None`.
pub fn pair_weights(moe: &Moe, tokens: usize) -> Option<(&PackedMxfp4, &PackedMxfp4)> {
    let (ExpertMatrix::Mxfp4(gate_up), ExpertMatrix::Mxfp4(down)) =
        (&moe.experts.gate_up, &moe.experts.down)
    else {
        return None;
    };
    let [experts, width, words_per_row] = gate_up.words.dims();
    let runs = moe.path == ExpertPath::GroupedKernel
        && tokens * moe.top_k <= MAX_PAIRS
        && router_top_k::supports(experts, moe.top_k)
        && experts_pairs::supports(words_per_row * 8, width / 2, moe.top_k);
    runs.then_some((gate_up, down))
}

/// The MoE block on `xs` [n, H] (normalised) -> [n, H] with the [`pair_weights`] of `moe`, the
/// router's whole bias [E] when given in place of its own (under an expert mask,
/// [`Moe::router_bias_plus`]), plus `residual` [n, H] when given.
pub fn moe_by_pairs(
    moe: &Moe,
    weights: (&PackedMxfp4, &PackedMxfp4),
    xs: Tensor<2>,
    router_bias: Option<Tensor<1>>,
    residual: Option<Tensor<2>>,
) -> Tensor<2> {
    let bias = router_bias_or_own(moe, router_bias, &xs.device());
    let routing = router_top_k::router_top_k(xs.clone(), moe.router.weight.val(), bias, moe.top_k);
    experts_by_pairs(moe, weights, xs, routing, residual)
}

/// Whether [`add_norm_moe_by_pairs`] runs `norm` and `moe` for `tokens` tokens: the per-pair
/// path ([`pair_weights`]), the norm on the kernel path, rows the fused kernel holds.
pub fn fused_norm_pair_weights<'m>(
    moe: &'m Moe,
    norm: &RmsNorm,
    tokens: usize,
) -> Option<(&'m PackedMxfp4, &'m PackedMxfp4)> {
    let hidden = moe.router.weight.dims()[0];
    let fits = norm.on_kernel_path && router_top_k::supports_fused_norm(hidden);
    pair_weights(moe, tokens).filter(|_| fits)
}

/// The decoder layer after attention on the per-pair path: the residual add, `norm` and the
/// router in one kernel (`router_top_k::add_norm_router`), then the experts by pairs with the
/// sum added back -> [n, H]. `x` and `attn_out` [n, H]; `weights` from
/// [`fused_norm_pair_weights`].
pub fn add_norm_moe_by_pairs(
    moe: &Moe,
    weights: (&PackedMxfp4, &PackedMxfp4),
    norm: &RmsNorm,
    (x, attn_out): (Tensor<2>, Tensor<2>),
    router_bias: Option<Tensor<1>>,
) -> Tensor<2> {
    let bias = router_bias_or_own(moe, router_bias, &x.device());
    let (sum, normed, routing) = router_top_k::add_norm_router(
        x,
        attn_out,
        norm.weight.val(),
        norm.eps,
        moe.router.weight.val(),
        bias,
        moe.top_k,
    );
    experts_by_pairs(moe, weights, normed, routing, Some(sum))
}

/// Most tokens for which [`o_add_norm_moe_by_pairs`] runs the output projection in the
/// router's launch. Its last workgroup per chunk of rows picks the rows' experts one row after
/// another, where `router_top_k::add_norm_router` runs a workgroup per row. Random 20b on an
/// H100 (docs/benchmarks.md, seventeenth round): at one token decoding went from 287-290 to
/// 301-308 steps/s, at 32 tokens from 955-957 to 904. Between them it was not measured.
pub const MAX_O_WITH_ROUTER_TOKENS: usize = 1;

/// The zero arrival counts [`o_add_norm_moe_by_pairs`] takes for `tokens` tokens (one set
/// serves every layer of a pass or a decode step), or `None` past [`MAX_O_WITH_ROUTER_TOKENS`],
/// where that launch never runs.
pub fn arrival_counts_for(tokens: usize, device: &Device) -> Option<Tensor<1, Int>> {
    (tokens <= MAX_O_WITH_ROUTER_TOKENS)
        .then(|| bf16_add_norm_router::zero_arrival_counts(tokens, device))
}

/// Whether [`o_add_norm_moe_by_pairs`] runs `o_proj`, `norm` and `moe` for `tokens` tokens:
/// [`fused_norm_pair_weights`], at most [`MAX_O_WITH_ROUTER_TOKENS`] tokens, and an output
/// projection with a bias on the kernel path (bf16) that the few-row launch takes with the
/// router.
pub fn o_fused_pair_weights<'m>(
    moe: &'m Moe,
    o_proj: &Linear,
    norm: &RmsNorm,
    tokens: usize,
) -> Option<(&'m PackedMxfp4, &'m PackedMxfp4)> {
    let weight = o_proj.weight.val();
    let [hidden, experts] = moe.router.weight.dims();
    let fits = on_kernel_path(&weight)
        && o_proj.bias.is_some()
        && tokens <= MAX_O_WITH_ROUTER_TOKENS
        && weight.dims()[1] == hidden
        && bf16_add_norm_router::supports(hidden, experts, moe.top_k);
    fused_norm_pair_weights(moe, norm, tokens).filter(|_| fits)
}

/// The decoder layer from the heads' outputs on the per-pair path: the output projection, the
/// residual add, `norm` and the router in one launch (`bf16_rows::add_norm_router`), then the
/// experts by pairs with the sum added back -> [n, H]. `x` [n, H], `attended` [n, heads *
/// head_dim]; `weights` from [`o_fused_pair_weights`]; `arrivals` the launch's zeroed counts
/// (at least `bf16_add_norm_router::arrival_counts(n)`, left zero).
pub fn o_add_norm_moe_by_pairs(
    moe: &Moe,
    weights: (&PackedMxfp4, &PackedMxfp4),
    o_proj: &Linear,
    norm: &RmsNorm,
    (x, attended): (Tensor<2>, Tensor<2>),
    router_bias: Option<Tensor<1>>,
    arrivals: Tensor<1, Int>,
) -> Tensor<2> {
    let bias = router_bias_or_own(moe, router_bias, &x.device());
    let o_bias = o_proj
        .bias
        .as_ref()
        .expect("o_fused_pair_weights: a bias")
        .val();
    let (sum, normed, routing) = bf16_add_norm_router::bf16_rows_add_norm_router(
        attended,
        (o_proj.weight.val(), o_bias),
        x,
        (norm.weight.val(), norm.eps),
        (moe.router.weight.val(), bias),
        moe.top_k,
        arrivals,
    );
    experts_by_pairs(moe, weights, normed, routing, Some(sum))
}

/// `whole` when given (the router's bias with an expert mask's), else the router's own bias
/// [E] (zeros when it has none).
fn router_bias_or_own(
    moe: &Moe,
    whole: Option<Tensor<1>>,
    device: &burn::tensor::Device,
) -> Tensor<1> {
    whole.unwrap_or_else(|| match &moe.router.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([moe.num_experts()], device),
    })
}

/// The experts kernels on `xs` [n, H] routed by `routing` [n, 2k] (`router_top_k`'s table),
/// plus `residual` when given -> [n, H].
fn experts_by_pairs(
    moe: &Moe,
    (gate_up, down): (&PackedMxfp4, &PackedMxfp4),
    xs: Tensor<2>,
    routing: Tensor<2>,
    residual: Option<Tensor<2>>,
) -> Tensor<2> {
    let experts = &moe.experts;
    let [tokens, hidden] = xs.dims();
    let inter = gate_up.words.dims()[1] / 2;
    if takes_by_expert(tokens, hidden, inter, moe.top_k) {
        let act = experts_pairs::experts_gate_up(
            xs,
            routing.clone(),
            gate_up.words.val(),
            gate_up.scale_words.val(),
            experts.gate_up_bias.val(),
            experts.swiglu_limit,
            experts.swiglu_alpha,
            experts_pairs::BY_EXPERT_GATE_UP_SHAPE,
        );
        return experts_pairs::experts_down(
            act,
            routing,
            down.words.val(),
            down.scale_words.val(),
            experts.down_bias.val(),
            residual,
            experts_pairs::BY_EXPERT_DOWN_SHAPE,
        );
    }
    let act = experts_pairs::pairs_gate_up(
        xs,
        routing.clone(),
        gate_up.words.val(),
        gate_up.scale_words.val(),
        experts.gate_up_bias.val(),
        experts.swiglu_limit,
        experts.swiglu_alpha,
        experts_pairs::GATE_UP_SHAPE,
    );
    experts_pairs::pairs_down(
        act,
        routing,
        down.words.val(),
        down.scale_words.val(),
        experts.down_bias.val(),
        residual,
        experts_pairs::down_shape(tokens),
    )
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::transformer::moe_grouped::route;
    use crate::{ExpertResidency, LoadOptions, load_model};

    fn tiny_mxfp4() -> crate::transformer::GptOss {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tools/reference/out/tiny-mxfp4");
        let options = LoadOptions {
            experts: ExpertResidency::Packed,
            ..Default::default()
        };
        load_model(&dir, &Device::flex(), options).unwrap()
    }

    /// Only the GPU kernel path takes pairs, and only up to `MAX_PAIRS` of them: the CPU paths
    /// never reach the kernels.
    #[test]
    fn only_the_kernel_path_with_few_pairs_runs_by_pairs() {
        let mut model = tiny_mxfp4();
        let top_k = model.layers[0].mlp.top_k;
        let most_tokens = MAX_PAIRS / top_k;
        for path in [
            ExpertPath::PerExpert,
            ExpertPath::GroupedReference,
            ExpertPath::GroupedReferenceBf16,
            ExpertPath::GroupedKernel,
        ] {
            model.set_expert_path(path);
            let moe = &model.layers[0].mlp;
            let kernel = path == ExpertPath::GroupedKernel;
            assert_eq!(
                pair_weights(moe, 1).is_some(),
                kernel,
                "{path:?}, one token"
            );
            assert_eq!(pair_weights(moe, most_tokens).is_some(), kernel, "{path:?}");
            assert!(
                pair_weights(moe, most_tokens + 1).is_none(),
                "{path:?}, too many"
            );
        }
    }

    /// The experts go by expert from `BY_EXPERT_FROM_TOKENS` tokens, for widths the by-expert
    /// kernels take and no more pairs than they list.
    #[test]
    fn by_expert_from_its_token_count_at_widths_it_takes() {
        let from = BY_EXPERT_FROM_TOKENS;
        assert!(takes_by_expert(from, 2880, 2880, 4));
        assert!(!takes_by_expert(from - 1, 2880, 2880, 4));
        assert!(!takes_by_expert(from, 2880, 2880 + 16, 4));
        assert!(!takes_by_expert(MAX_PAIRS + 1, 2880, 2880, 1));
    }

    /// The add, norm and router run in one kernel only where the MoE runs by pairs and the norm
    /// is on the kernel path too.
    #[test]
    fn the_fused_norm_needs_pairs_and_the_norm_on_the_kernel_path() {
        let mut model = tiny_mxfp4();
        model.set_expert_path(ExpertPath::GroupedKernel);
        let layer = &mut model.layers[0];
        let most_tokens = MAX_PAIRS / layer.mlp.top_k;
        layer.post_attention_layernorm.on_kernel_path = false;
        let norm = &layer.post_attention_layernorm;
        assert!(
            fused_norm_pair_weights(&layer.mlp, norm, 1).is_none(),
            "norm off"
        );
        layer.post_attention_layernorm.on_kernel_path = true;
        let norm = &layer.post_attention_layernorm;
        assert!(fused_norm_pair_weights(&layer.mlp, norm, 1).is_some());
        assert!(fused_norm_pair_weights(&layer.mlp, norm, most_tokens).is_some());
        assert!(fused_norm_pair_weights(&layer.mlp, norm, most_tokens + 1).is_none());
        model.set_expert_path(ExpertPath::GroupedReferenceBf16);
        let layer = &model.layers[0];
        let norm = &layer.post_attention_layernorm;
        assert!(
            fused_norm_pair_weights(&layer.mlp, norm, 1).is_none(),
            "reference path"
        );
    }

    /// The output projection joins the router's launch only at one token, with the fused
    /// norm's conditions, and only for a bf16 projection with a bias.
    #[test]
    fn the_output_projection_joins_the_router_at_one_token_only() {
        let mut model = tiny_mxfp4();
        model.set_expert_path(ExpertPath::GroupedKernel);
        let layer = &mut model.layers[0];
        layer.post_attention_layernorm.on_kernel_path = true;
        let f32_o = layer.self_attn.o_proj.clone();
        let o_fused = |layer: &crate::transformer::DecoderLayer, tokens| {
            o_fused_pair_weights(
                &layer.mlp,
                &layer.self_attn.o_proj,
                &layer.post_attention_layernorm,
                tokens,
            )
            .is_some()
        };
        assert!(!o_fused(layer, 1), "f32 projection");
        layer.self_attn.o_proj = crate::transformer::project::to_bf16(f32_o.clone());
        assert!(o_fused(layer, 1));
        assert!(!o_fused(layer, MAX_O_WITH_ROUTER_TOKENS + 1), "more tokens");
        layer.post_attention_layernorm.on_kernel_path = false;
        assert!(!o_fused(layer, 1), "norm off the kernel path");
        layer.post_attention_layernorm.on_kernel_path = true;
        layer.self_attn.o_proj.bias = None;
        assert!(!o_fused(layer, 1), "no bias");
    }

    /// Arrival counts exist exactly where the fused launch can run: up to
    /// MAX_O_WITH_ROUTER_TOKENS tokens, zeroed.
    #[test]
    fn arrival_counts_are_made_only_where_the_fused_launch_runs() {
        let device = Device::flex();
        let counts = arrival_counts_for(MAX_O_WITH_ROUTER_TOKENS, &device).expect("counts");
        let values = counts.try_into_vec_as::<i64>().unwrap();
        assert!(!values.is_empty() && values.iter().all(|&v| v == 0));
        assert!(arrival_counts_for(MAX_O_WITH_ROUTER_TOKENS + 1, &device).is_none());
    }

    /// The router kernel's reference (burn ops) makes the model's choice: same ids in the same
    /// order (largest first) and the same gates.
    #[test]
    fn router_reference_is_the_model_routing() {
        let model = tiny_mxfp4();
        let device = Device::flex();
        let moe = &model.layers[1].mlp;
        let (n, k) = (9, moe.top_k);
        let xs = Tensor::<2>::random([n, 64], Distribution::Normal(0.0, 1.0), &device);
        let bias = moe.router.bias.as_ref().unwrap().val();
        let table =
            router_top_k::reference_router_top_k(xs.clone(), moe.router.weight.val(), bias, k);
        let (gates, ids) = route(moe.router.forward(xs), k);
        let ids: Vec<f32> = ids.float().try_into_vec_as::<f32>().unwrap();
        let gates: Vec<f32> = gates.try_into_vec_as::<f32>().unwrap();
        let table: Vec<f32> = table.try_into_vec_as::<f32>().unwrap();
        for token in 0..n {
            let row = &table[token * 2 * k..(token + 1) * 2 * k];
            assert_eq!(&row[..k], &ids[token * k..(token + 1) * k], "token {token}");
            for (ours, theirs) in row[k..].iter().zip(&gates[token * k..(token + 1) * k]) {
                assert!(
                    (ours - theirs).abs() < 1e-6,
                    "token {token}: {ours} vs {theirs}"
                );
            }
        }
    }
}
