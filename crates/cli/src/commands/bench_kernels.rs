//! `bench kernel-check`: every GPU kernel against its burn-ops reference on random inputs, on
//! one device. Each check prints the relative error per case and fails when one exceeds bf16
//! rounding (1e-2), or 1e-5 for the kernels that stay in f32 (logsumexp, RMSNorm, routers,
//! attention, RoPE). The kernels:
//! - the sorting of pairs by expert, against burn's ops (exactly);
//! - the grouped MXFP4 kernels (tensor-core tiles and few rows) against the reference grouped
//!   matmul (MXFP4 decoded by the tensor path) on a random routing;
//! - the few-rows bf16 product against burn's f32 product of the same bf16 inputs;
//! - the row logsumexp and the RMSNorm;
//! - the router and the per-pair experts kernels, against routing by burn ops and the sorted
//!   grouped reference (also timed against the sorted grouped kernels);
//! - the router's logits for many tokens, against burn's f32 matmul (also timed against it);
//! - the few-query attention (random key ranges, some empty, some over several chunks) and the
//!   tensor-core attention for many queries (causal, sliding and random ranges);
//! - the RoPE kernel;
//! - the f32 -> bf16 rounding every bf16 input goes through, against the CPU's (bit for bit).

mod attention;
mod decode_timings;
mod decoding;
mod expert_groups;
mod few_rows;
mod grouped;
mod moe_pairs;
mod rounding;
mod router_logits;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use gpt_oss_kernels::experts_pairs::ExpertShape;
use gpt_oss_model::device::{DeviceChoice, select_device};
use gpt_oss_model::transformer::experts::{ExpertMatrix, Experts, PackedMxfp4};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

pub(crate) use grouped::parse_grouped_tiling;
use grouped::{check_decoded_experts, check_grouped_kernels, time_grouped_tilings};

#[derive(clap::Args, Debug)]
pub struct KernelCheckArgs {
    #[arg(long, default_value = "wgpu")]
    pub device: DeviceChoice,
    /// Instead of every check: time the tensor-core grouped kernel at scoring's size (8 x 2048
    /// tokens x 4 experts, 5760 x 2880) with each tiling, `MxNxK` plus flags after a slash,
    /// `t` (FP4 values from a table), `c` (column tiles first, `tile_order`), `d` (weights
    /// decoded to bf16 before the product), `w` (subgroup-scope fragments), `e` (epilogues from
    /// the fragments) and `g` (gate_up reads its rows through the sorting's index):
    /// `128x256x32/tcdweg`; checked against the reference.
    #[arg(long, value_delimiter = ',')]
    pub grouped_tilings: Vec<String>,
    /// Instead of every check: the device time of each decoding kernel at gpt-oss-20b's
    /// shapes (launches captured as a graph and replayed), the per-pair experts kernels with
    /// each of `--columns-per-plane`.
    #[arg(long)]
    pub decode_timings: bool,
    /// Only the decoding kernels' checks (every one `--only` names): minutes fewer than every
    /// check.
    #[arg(long)]
    pub decoding_only: bool,
    /// Only these checks, by name (an unknown name lists them all; scoring's checks run
    /// before decoding's); with `--decode-timings`, only these groups of timings (small: norms,
    /// router, RoPE and attention; layer_chain; projections; pairs; by_expert).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Output columns per plane of the per-pair experts kernels timed by `--decode-timings`.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub columns_per_plane: Vec<u32>,
    /// Planes (of 32 invocations) per workgroup of the per-pair experts kernels timed by
    /// `--decode-timings`.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    pub planes: Vec<u32>,
    /// Turns (groups of columns each plane takes in turn, the next one's weights loaded during
    /// this one's products) of the per-pair experts kernels timed by `--decode-timings`.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub turns: Vec<u32>,
    /// Token counts at which `--decode-timings` times the per-pair experts kernels: 1 to 32,
    /// the counts the model runs them for.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub pair_tokens: Vec<usize>,
    /// Tilings of the bf16 few-row products timed by `--decode-timings`: `GROUPSxUNROLL`
    /// (column groups of eight per workgroup; weight rows loaded before use; either 0 for the
    /// model's choice), e.g. `0x0,4x16`.
    #[arg(long, value_delimiter = ',', default_value = "0x0")]
    pub rows_tilings: Vec<String>,
    /// Workgroups of the by-expert experts kernels timed by `--decode-timings`: `CxPxR`
    /// (columns per plane, planes, rows per chunk); the model's are 2x16x4 (gate_up) and 2x16x2
    /// (down).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2x16x4,2x16x2,2x8x4,2x8x2,1x8x4,4x8x4,4x8x2"
    )]
    pub expert_shapes: Vec<String>,
    /// Per-pair workgroups of the experts in `--decode-timings`' chained layer (`--only
    /// layer_chain`): `GATE_UP/DOWN`, each `CxPxT` (columns per plane, planes, turns), e.g.
    /// `1x8x1/1x16x1`; the model's at one token when none is given. Shapes for small grids are
    /// better chosen on this chain than on the launches timed alone (docs/lessons.md).
    #[arg(long, value_delimiter = ',')]
    pub chain_experts: Vec<String>,
    /// With `--decode-timings`: every launch of a weight-reading kernel reads the same weights
    /// (one routing, one copy of each projection), so after the first launch they come from
    /// the L2 cache: what the kernels cost when their weights are close.
    #[arg(long)]
    pub weights_in_l2: bool,
}

pub fn kernel_check(args: KernelCheckArgs) -> anyhow::Result<()> {
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    anyhow::ensure!(
        selected.on_gpu,
        "bench kernel-check: the kernels run only on the GPU (--device wgpu), not on {}",
        selected.description
    );
    let device = selected.device;
    if !args.grouped_tilings.is_empty() {
        let tilings: Vec<_> = args
            .grouped_tilings
            .iter()
            .map(|t| parse_grouped_tiling(t))
            .collect::<anyhow::Result<_>>()?;
        return time_grouped_tilings(&tilings, &mut StdRng::seed_from_u64(3), &device);
    }
    if args.decode_timings {
        let rows_tilings: Vec<_> = args
            .rows_tilings
            .iter()
            .map(|t| parse_rows_tiling(t))
            .collect::<anyhow::Result<_>>()?;
        let expert_shapes: Vec<_> = args
            .expert_shapes
            .iter()
            .map(|t| parse_expert_shape(t))
            .collect::<anyhow::Result<_>>()?;
        let chain_experts: Vec<_> = args
            .chain_experts
            .iter()
            .map(|t| decode_timings::parse_chain_experts(t))
            .collect::<anyhow::Result<_>>()?;
        let options = decode_timings::DecodeTimingOptions {
            pair_shapes: decode_timings::pair_shapes(
                &args.columns_per_plane,
                &args.planes,
                &args.turns,
            ),
            pair_tokens: args.pair_tokens.clone(),
            rows_tilings,
            expert_shapes,
            chain_experts,
            weights_in_l2: args.weights_in_l2,
        };
        return decode_timings::time_decode_kernels(&device, &options, &args.only);
    }
    if args.decoding_only {
        return run_checks(&device, &DECODING_CHECKS, &args.only);
    }
    let all: Vec<(&str, Check)> = SCORING_CHECKS
        .iter()
        .chain(DECODING_CHECKS.iter())
        .copied()
        .collect();
    run_checks(&device, &all, &args.only)
}

/// A kernel check on one device.
type Check = fn(&Device) -> anyhow::Result<()>;

/// The checks of the kernels scoring and prefill run, by name (`--only`), in the order a
/// full check runs them (before the decoding checks).
const SCORING_CHECKS: [(&str, Check); 7] = [
    ("bf16_nearest", rounding::check_bf16_nearest),
    ("expert_groups", expert_groups::check_expert_groups),
    ("decoded_experts", check_decoded_experts),
    ("grouped", check_grouped_kernels),
    ("router_logits", router_logits::check_router_logits),
    ("logsumexp", check_logsumexp),
    ("attention_tiles", attention::check_attention_tiles),
];

/// The checks of the kernels a decode step runs, by name (`--only`), in the order
/// `--decoding-only` runs them.
const DECODING_CHECKS: [(&str, Check); 14] = [
    ("few_rows", few_rows::check_bf16_rows),
    ("lm_head", few_rows::check_lm_head_in_one_launch),
    ("projection_paths", few_rows::check_projection_paths),
    ("rms_norm", decoding::check_rms_norm),
    ("router", decoding::check_router),
    ("o_router", decoding::check_o_add_norm_router),
    ("moe_pairs", moe_pairs::check_moe_pairs),
    ("attention_rows", attention::check_attention_rows),
    ("attention_step", attention::check_attention_step),
    ("rotary", decoding::check_rotary),
    ("write_at_index", decoding::check_write_at_index),
    ("write_in_place", decoding::check_write_in_place),
    ("greedy_into_state", decoding::check_greedy_into_state),
    ("embedding_rows", decoding::check_embedding_rows),
];

/// Fails, listing the `known` names, when `only` names something else; `what` says what
/// the names are of.
fn ensure_known(only: &[String], known: &[&str], what: &str) -> anyhow::Result<()> {
    for name in only {
        anyhow::ensure!(
            known.contains(&name.as_str()),
            "--only: no {what} `{name}` (known: {})",
            known.join(", ")
        );
    }
    Ok(())
}

/// The checks of `checks` named in `only` (every one when empty), in their order; an unknown
/// name is an error that lists the known ones, before any check runs.
fn run_checks(device: &Device, checks: &[(&str, Check)], only: &[String]) -> anyhow::Result<()> {
    let known: Vec<&str> = checks.iter().map(|(name, _)| *name).collect();
    ensure_known(only, &known, "check")?;
    let chosen = checks
        .iter()
        .filter(|(name, _)| only.is_empty() || only.iter().any(|o| o == name));
    for (_, check) in chosen {
        check(device)?;
    }
    Ok(())
}

/// `GROUPSxUNROLL` (`4x16`) as a few-row product tiling.
fn parse_rows_tiling(text: &str) -> anyhow::Result<gpt_oss_kernels::bf16_rows::RowsTiling> {
    let parsed = text
        .split_once('x')
        .and_then(|(g, u)| Some((g.parse().ok()?, u.parse().ok()?)))
        .map(|(groups, unroll)| gpt_oss_kernels::bf16_rows::RowsTiling { groups, unroll });
    match parsed {
        Some(tiling) if tiling.is_supported() => Ok(tiling),
        _ => anyhow::bail!(
            "--rows-tilings: {text:?} is not GROUPSxUNROLL (groups 0 or a power of two up to 32, \
             unroll 0 to 32)"
        ),
    }
}

/// A workgroup's three sides from `AxBxC` (or one side for all three, as `bench_matmul`'s
/// splitter reads them), as u32; a side past u32 reads as 0, which every shape check refuses.
/// Errors name `what` and `order`.
pub(super) fn workgroup_sides(text: &str, what: &str, order: &str) -> anyhow::Result<[u32; 3]> {
    let sides = super::bench_matmul::three_sides(text, what, order)?;
    Ok(sides.map(|n| u32::try_from(n).unwrap_or(0)))
}

/// `CxPxR` (`2x16x4`) as a by-expert workgroup: columns per plane, planes, rows per chunk.
fn parse_expert_shape(text: &str) -> anyhow::Result<ExpertShape> {
    let [columns_per_plane, planes, chunk_rows] =
        workgroup_sides(text, "--expert-shapes", "CxPxR")?;
    let shape = ExpertShape {
        columns_per_plane,
        planes,
        chunk_rows,
    };
    anyhow::ensure!(
        shape.is_supported(),
        "--expert-shapes `{text}`: not a workgroup the by-expert kernels take (1 to 8 columns \
         per plane, 4 to 32 planes, 1 to 8 rows per chunk)"
    );
    Ok(shape)
}

/// A random MoE layer's experts of 20b's SwiGLU constants: `experts` gate_up [2 inter, hidden]
/// and down [hidden, inter] matrices in MXFP4 (scales near one), normal biases.
pub(super) fn random_experts(
    rng: &mut StdRng,
    [experts, hidden, inter]: [usize; 3],
    device: &Device,
) -> Experts {
    let bias = |shape: [usize; 2]| {
        burn::module::Param::from_tensor(Tensor::random(
            shape,
            Distribution::Normal(0.0, 0.5),
            device,
        ))
    };
    Experts {
        gate_up: random_mxfp4(rng, [experts, 2 * inter, hidden], 119..=122, device),
        gate_up_bias: bias([experts, 2 * inter]),
        down: random_mxfp4(rng, [experts, hidden, inter], 119..=122, device),
        down_bias: bias([experts, hidden]),
        swiglu_limit: 7.0,
        swiglu_alpha: 1.702,
    }
}

/// The packed words and scale words of an MXFP4 matrix (as [`random_mxfp4`] makes them).
pub(super) fn packed_words(matrix: &ExpertMatrix) -> (Tensor<3, Int>, Tensor<2, Int>) {
    match matrix {
        ExpertMatrix::Mxfp4(p) => (p.words.val(), p.scale_words.val()),
        ExpertMatrix::Dense(_) => unreachable!("random_mxfp4 packs"),
    }
}

/// Random MXFP4 weights for `experts` matrices of [n, k] (k a multiple of 32), scale bytes
/// drawn from `scale_codes` (127 is 1.0).
pub(super) fn random_mxfp4(
    rng: &mut StdRng,
    [experts, n, k]: [usize; 3],
    scale_codes: std::ops::RangeInclusive<u8>,
    device: &Device,
) -> ExpertMatrix {
    let words: Vec<i32> = (0..experts * n * k / 8).map(|_| rng.random()).collect();
    let per_expert = (n * k / 32).div_ceil(4);
    let scales: Vec<i32> = (0..experts * per_expert)
        .map(|_| {
            i32::from_le_bytes(std::array::from_fn(|_| {
                rng.random_range(scale_codes.clone())
            }))
        })
        .collect();
    let words = Tensor::<3, Int>::from_data(TensorData::new(words, [experts, n, k / 8]), device);
    let scales =
        Tensor::<2, Int>::from_data(TensorData::new(scales, [experts, per_expert]), device);
    ExpertMatrix::Mxfp4(PackedMxfp4::new(words, scales))
}

/// Median wall time of one call of `run` over five, after one untimed call, the queue drained
/// after each.
pub(super) fn seconds_per_call(
    device: &Device,
    run: impl Fn() -> Tensor<2>,
) -> anyhow::Result<f64> {
    median_seconds_per_call(device, 1, run)
}

/// Seconds per call of `run` when 20 calls are queued before one sync (as a decoding step
/// queues its kernels): the median over 5 batches after a warm-up batch.
pub(super) fn seconds_per_queued_call(
    device: &Device,
    run: impl Fn() -> Tensor<2>,
) -> anyhow::Result<f64> {
    median_seconds_per_call(device, 20, run)
}

/// Batches of `calls` calls of `run`, one sync per batch: the median seconds per call over five
/// batches after an untimed one.
fn median_seconds_per_call(
    device: &Device,
    calls: usize,
    run: impl Fn() -> Tensor<2>,
) -> anyhow::Result<f64> {
    let mut times = vec![];
    for _ in 0..6 {
        let start = std::time::Instant::now();
        let outputs: Vec<_> = (0..calls).map(|_| run()).collect();
        device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        times.push(start.elapsed().as_secs_f64() / calls as f64);
        drop(outputs);
    }
    Ok(median_after_warm_up(times))
}

/// The median of `times` without the first (warm-up) one.
pub(super) fn median_after_warm_up(mut times: Vec<f64>) -> f64 {
    times.remove(0);
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// sqrt(sum (ours - reference)^2 / sum reference^2) and max |ours - reference|.
pub fn errors<const D: usize>(ours: Tensor<D>, reference: Tensor<D>) -> (f32, f32) {
    let diff: f32 = (ours.clone() - reference.clone())
        .powi_scalar(2)
        .sum()
        .into_scalar();
    let norm: f32 = reference.clone().powi_scalar(2).sum().into_scalar();
    let max_abs: f32 = (ours - reference).abs().max().into_scalar();
    // An all-zero reference passes only when matched exactly (NaN would pass every `max`).
    let relative = if norm > 0.0 {
        (diff / norm).sqrt()
    } else if diff == 0.0 {
        0.0
    } else {
        f32::INFINITY
    };
    (relative, max_abs)
}

/// A tensor of `shape` drawn from the standard normal distribution on `device`.
pub(super) fn standard_normal<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// The largest relative error over a kernel's cases, against its tolerance.
pub(super) struct Worst {
    what: &'static str,
    tolerance: f32,
    worst: f32,
}

impl Worst {
    pub(super) fn new(what: &'static str, tolerance: f32) -> Self {
        Self {
            what,
            tolerance,
            worst: 0.0,
        }
    }

    /// Prints one case (`fields` plus its errors) as a JSON line and keeps its relative error.
    pub(super) fn record<const D: usize>(
        &mut self,
        ours: Tensor<D>,
        reference: Tensor<D>,
        mut fields: serde_json::Value,
    ) {
        let (relative, max_abs) = errors(ours, reference);
        fields["relative_error"] = json!(relative);
        fields["max_abs_difference"] = json!(max_abs);
        println!("{fields}");
        self.worst = self.worst.max(relative);
    }

    /// [`Self::record`] for each named part of one case (`fields` plus `"part"`).
    pub(super) fn record_parts<const D: usize, const N: usize>(
        &mut self,
        parts: [(&str, Tensor<D>, Tensor<D>); N],
        fields: serde_json::Value,
    ) {
        for (part, ours, reference) in parts {
            let mut fields = fields.clone();
            fields["part"] = json!(part);
            self.record(ours, reference, fields);
        }
    }

    /// Fails when a case exceeded the tolerance.
    pub(super) fn finish(self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.worst < self.tolerance,
            "{} differs from the reference: relative error {} (tolerance {})",
            self.what,
            self.worst,
            self.tolerance
        );
        Ok(())
    }
}

fn check_logsumexp(device: &Device) -> anyhow::Result<()> {
    let mut worst = Worst::new("logsumexp kernel", 1e-5);
    // The last case needs a second grid dimension (more than 65,535 rows).
    for [rows, width] in [[1, 7], [3, 1000], [64, 201088], [70000, 300]] {
        let x = Tensor::<2>::random([rows, width], Distribution::Normal(0.0, 8.0), device);
        let ours = gpt_oss_kernels::logsumexp_rows::logsumexp_rows(x.clone());
        let reference = gpt_oss_kernels::logsumexp_rows::reference_logsumexp_rows(x);
        worst.record(
            ours,
            reference,
            json!({"kernel": "logsumexp_rows", "rows": rows, "width": width}),
        );
    }
    worst.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--rows-tilings` takes what the kernels take and names the bad value otherwise.
    #[test]
    fn rows_tilings_parse_only_supported_tilings() {
        let tiling = parse_rows_tiling("4x16").unwrap();
        assert_eq!((tiling.groups, tiling.unroll), (4, 16));
        for bad in ["3x8", "64x8", "4x33", "4", "ax8"] {
            let error = parse_rows_tiling(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    /// `--expert-shapes` takes what the by-expert kernels take and names the bad value
    /// otherwise.
    #[test]
    fn expert_shapes_parse_only_supported_workgroups() {
        let shape = parse_expert_shape("2x16x4").unwrap();
        assert_eq!(
            (shape.columns_per_plane, shape.planes, shape.chunk_rows),
            (2, 16, 4)
        );
        for bad in ["2x2x4", "9x16x4", "2x16x9", "2x16", "2x16x4x1", "ax16x4"] {
            let error = parse_expert_shape(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    /// `--only` refuses a name no check has, before running any, and lists the known ones.
    #[test]
    fn only_refuses_unknown_checks() {
        let error = run_checks(
            &Device::flex(),
            &DECODING_CHECKS,
            &["lm_head".into(), "lm-head".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`lm-head`"), "{error}");
        assert!(error.contains("embedding_rows"), "{error}");
        // The scoring checks are not decoding checks.
        let error = run_checks(&Device::flex(), &DECODING_CHECKS, &["grouped".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("`grouped`"), "{error}");
    }

    /// Every check has its own name, so `--only` picks exactly one.
    #[test]
    fn check_names_are_unique() {
        let mut names: Vec<&str> = SCORING_CHECKS
            .iter()
            .chain(DECODING_CHECKS.iter())
            .map(|(name, _)| *name)
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
    }

    /// The decode-timing options of `bench kernel-check`'s defaults, for the tests below.
    fn default_timing_options() -> decode_timings::DecodeTimingOptions {
        decode_timings::DecodeTimingOptions {
            pair_shapes: decode_timings::pair_shapes(&[1], &[8], &[1]),
            pair_tokens: vec![1],
            rows_tilings: vec![],
            expert_shapes: vec![],
            chain_experts: vec![],
            weights_in_l2: false,
        }
    }

    /// `--only` with `--decode-timings` refuses a name no group of timings has, before timing
    /// anything, and lists the groups.
    #[test]
    fn only_refuses_unknown_timing_groups() {
        let error = decode_timings::time_decode_kernels(
            &Device::flex(),
            &default_timing_options(),
            &["router".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("`router`"), "{error}");
        assert!(error.contains("layer_chain"), "{error}");
    }

    /// `--pair-tokens` refuses a token count the model never runs the per-pair kernels for
    /// (none, or more than 128 pairs), before timing anything.
    #[test]
    fn pair_tokens_refuse_counts_the_model_never_runs_per_pair() {
        for (tokens, named) in [(&[4, 33][..], "33"), (&[0][..], "0")] {
            let options = decode_timings::DecodeTimingOptions {
                pair_tokens: tokens.to_vec(),
                ..default_timing_options()
            };
            let error = decode_timings::time_decode_kernels(&Device::flex(), &options, &[])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!("--pair-tokens {named}:")),
                "{error}"
            );
            assert!(error.contains("1 to 32 tokens"), "{error}");
        }
    }

    /// `--planes` and friends refuse a workgroup the per-pair kernels do not take, naming it.
    #[test]
    fn pair_shapes_refuse_workgroups_the_kernels_do_not_take() {
        let options = decode_timings::DecodeTimingOptions {
            pair_shapes: decode_timings::pair_shapes(&[1], &[8, 33], &[1]),
            ..default_timing_options()
        };
        let error = decode_timings::time_decode_kernels(&Device::flex(), &options, &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--planes 33"), "{error}");
    }
}
