//! `bench kernel-check`: every GPU kernel against its burn-ops reference on random inputs, on
//! one device: the grouped MXFP4 kernels (tensor-core tiles and few rows) against the reference
//! grouped matmul (MXFP4 decoded by the tensor path) on a random routing, the few-rows bf16
//! product against burn's f32 product of the same bf16 inputs, the row logsumexp, the RMSNorm,
//! the router and the per-pair experts kernels (against routing by burn ops and the sorted
//! grouped reference; also timed against the sorted grouped kernels) and the few-query attention
//! (random key ranges, some empty, some over several chunks) and the RoPE kernel. Prints the relative error per
//! case; fails when one exceeds bf16 rounding (1e-2), or 1e-5 for the kernels that stay in f32
//! (logsumexp, RMSNorm, router, attention, RoPE).

use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};
use gpt_oss_model::device::{DeviceChoice, select_device};
use gpt_oss_model::transformer::experts::{ExpertMatrix, PackedMxfp4};
use gpt_oss_model::transformer::moe_grouped::{
    ExpertPath, FEW_ROWS, TILE_ROWS, group_by_expert, grouped_matmul, grouped_matmul_reference,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct KernelCheckArgs {
    #[arg(long, default_value = "wgpu")]
    pub device: DeviceChoice,
}

/// (experts, rows, n, k) per case.
const CASES: [(usize, usize, usize, usize); 8] = [
    (1, 1, 128, 32),
    (1, 64, 128, 32),
    (2, 100, 200, 64),
    (4, 300, 256, 128),
    (32, 4, 5760, 2880),
    (32, 128, 2880, 2880),
    (32, 2048, 5760, 2880),
    (32, 65536, 5760, 2880),
];

pub fn kernel_check(args: KernelCheckArgs) -> anyhow::Result<()> {
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    anyhow::ensure!(
        selected.on_gpu,
        "bench kernel-check: the kernels run only on the GPU (--device wgpu), not on {}",
        selected.description
    );
    let device = selected.device;
    let mut rng = StdRng::seed_from_u64(3);
    let mut worst = 0.0f32;
    for (experts, rows, n, k) in CASES {
        let matrix = random_mxfp4(&mut rng, [experts, n, k], 122..=130, &device);
        let ids: Vec<i64> = (0..rows)
            .map(|_| rng.random_range(0..experts as i64))
            .collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows]), &device);
        let a = Tensor::<2>::random([rows, k], Distribution::Default, &device)
            .cast(DType::BF16)
            .cast(DType::F32);
        let kernels = [("tiles", TILE_ROWS), ("rows", FEW_ROWS)];
        for (kernel, tile_rows) in kernels {
            if kernel == "rows" && rows > 4096 {
                continue; // weights re-read every 8 rows: minutes at this size
            }
            let groups = group_by_expert(ids.clone(), experts, tile_rows);
            let run = || grouped_matmul(a.clone(), &matrix, &groups, ExpertPath::GroupedKernel);
            let ours = run();
            let seconds = seconds_per_call(&device, run)?;
            let reference = grouped_matmul_reference(a.clone(), &matrix, &groups);
            let (relative, max_abs) = errors(ours, reference);
            worst = worst.max(relative);
            println!(
                "{}",
                json!({"kernel": kernel, "tile_rows": tile_rows, "experts": experts,
                       "rows": rows, "n": n, "k": k, "seconds": seconds,
                       "tflops": 2.0 * (rows * n * k) as f64 / seconds / 1e12,
                       "relative_error": relative, "max_abs_difference": max_abs})
            );
        }
    }
    anyhow::ensure!(
        worst < 1e-2,
        "grouped kernel differs from the reference: {worst}"
    );
    check_bf16_rows(&device)?;
    check_logsumexp(&device)?;
    check_rms_norm(&device)?;
    check_router(&device)?;
    check_moe_pairs(&device)?;
    check_attention_rows(&device)?;
    check_rotary(&device)
}

/// Random MXFP4 weights for `experts` matrices of [n, k] (k a multiple of 32), scale bytes
/// drawn from `scale_codes` (127 is 1.0).
fn random_mxfp4(
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
fn seconds_per_call(device: &Device, run: impl Fn() -> Tensor<2>) -> anyhow::Result<f64> {
    let mut times = vec![];
    for _ in 0..6 {
        let start = std::time::Instant::now();
        let _ = run();
        device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
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

fn check_bf16_rows(device: &Device) -> anyhow::Result<()> {
    let mut worst = 0.0f32;
    for [m, k, n] in [
        [1, 32, 10],
        [5, 64, 100],
        [1, 2880, 4096],
        [32, 2880, 5760],
        [9, 2880, 50002],
    ] {
        let x = Tensor::<2>::random([m, k], Distribution::Default, device);
        let w = Tensor::<2>::random([k, n], Distribution::Default, device).cast(DType::BF16);
        // Odd row counts also add a bias (which the kernel adds to its first K part).
        let bias = (m % 2 == 1).then(|| Tensor::<1>::random([n], Distribution::Default, device));
        let ours = gpt_oss_kernels::bf16_rows::bf16_rows_matmul(x.clone(), w.clone(), bias.clone());
        let product = gpt_oss_kernels::coopmat_gemm::reference_gemm(x, w.cast(DType::F32));
        let reference = match bias {
            Some(bias) => product + bias.unsqueeze::<2>(),
            None => product,
        };
        let (relative, max_abs) = errors(ours, reference);
        worst = worst.max(relative);
        println!(
            "{}",
            json!({"kernel": "bf16_rows", "m": m, "k": k, "n": n, "bias": m % 2 == 1,
                   "relative_error": relative, "max_abs_difference": max_abs})
        );
    }
    anyhow::ensure!(
        worst < 1e-2,
        "few-rows kernel differs from the reference: {worst}"
    );
    Ok(())
}

fn check_logsumexp(device: &Device) -> anyhow::Result<()> {
    let mut worst = 0.0f32;
    // The last case needs a second grid dimension (more than 65,535 rows).
    for [rows, width] in [[1, 7], [3, 1000], [64, 201088], [70000, 300]] {
        let x = Tensor::<2>::random([rows, width], Distribution::Normal(0.0, 8.0), device);
        let ours = gpt_oss_kernels::logsumexp_rows::logsumexp_rows(x.clone());
        let reference = gpt_oss_kernels::logsumexp_rows::reference_logsumexp_rows(x);
        let (relative, max_abs) = errors(ours, reference);
        worst = worst.max(relative);
        println!(
            "{}",
            json!({"kernel": "logsumexp_rows", "rows": rows, "width": width,
                   "relative_error": relative, "max_abs_difference": max_abs})
        );
    }
    anyhow::ensure!(
        worst < 1e-5,
        "logsumexp kernel differs from the reference: {worst}"
    );
    Ok(())
}

fn check_rms_norm(device: &Device) -> anyhow::Result<()> {
    let mut worst = 0.0f32;
    // The last case needs a second grid dimension (more than 65,535 rows).
    for [rows, width] in [[1, 2880], [5, 7], [70000, 64]] {
        let x = Tensor::<2>::random([rows, width], Distribution::Normal(0.0, 3.0), device);
        let weight = Tensor::<1>::random([width], Distribution::Default, device);
        let eps = 1e-5;
        let ours = gpt_oss_kernels::rms_norm_rows::rms_norm_rows(x.clone(), weight.clone(), eps);
        let reference = gpt_oss_kernels::rms_norm_rows::reference_rms_norm_rows(x, weight, eps);
        let (relative, max_abs) = errors(ours, reference);
        worst = worst.max(relative);
        println!(
            "{}",
            json!({"kernel": "rms_norm_rows", "rows": rows, "width": width,
                   "relative_error": relative, "max_abs_difference": max_abs})
        );
    }
    anyhow::ensure!(
        worst < 1e-5,
        "RMSNorm kernel differs from the reference: {worst}"
    );
    Ok(())
}

/// The router kernel's table (ids and gates) against burn's matmul, top-k and softmax; a
/// different choice of experts shows as an error of order one.
fn check_router(device: &Device) -> anyhow::Result<()> {
    let mut worst = 0.0f32;
    for [tokens, hidden, experts, top_k] in [
        [1, 2880, 32, 4],
        [7, 2880, 128, 4],
        [3, 64, 24, 4],
        [300, 2880, 32, 4],
    ] {
        let x = Tensor::<2>::random([tokens, hidden], Distribution::Normal(0.0, 1.0), device);
        let w = Tensor::<2>::random([hidden, experts], Distribution::Normal(0.0, 0.05), device);
        let bias = Tensor::<1>::random([experts], Distribution::Normal(0.0, 0.1), device);
        use gpt_oss_kernels::router_top_k::{reference_router_top_k, router_top_k};
        let ours = router_top_k(x.clone(), w.clone(), bias.clone(), top_k);
        let reference = reference_router_top_k(x, w, bias, top_k);
        let (relative, max_abs) = errors(ours, reference);
        worst = worst.max(relative);
        println!(
            "{}",
            json!({"kernel": "router_top_k", "tokens": tokens, "hidden": hidden,
                   "experts": experts, "top_k": top_k,
                   "relative_error": relative, "max_abs_difference": max_abs})
        );
    }
    anyhow::ensure!(
        worst < 1e-5,
        "router kernel differs from the reference: {worst}"
    );
    Ok(())
}

/// The per-pair experts kernels (router table in, weighted sum out) against the grouped
/// reference (pairs sorted, MXFP4 decoded by burn ops, inputs rounded to bf16), and the time of
/// the whole MoE block (routing included) by pairs and by the sorted grouped kernels.
fn check_moe_pairs(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::experts_pairs::{pairs_down, pairs_gate_up};
    use gpt_oss_kernels::router_top_k::{reference_router_top_k, router_top_k};
    use gpt_oss_model::transformer::experts::Experts;
    use gpt_oss_model::transformer::moe_grouped::grouped_experts;
    let mut rng = StdRng::seed_from_u64(5);
    let mut worst = 0.0f32;
    for [tokens, experts, hidden, inter] in [
        [1, 4, 64, 96],
        [3, 8, 128, 64],
        [1, 32, 2880, 2880],
        [4, 32, 2880, 2880],
        [8, 32, 2880, 2880],
        [32, 32, 2880, 2880],
    ] {
        let top_k = 4;
        let layer = Experts {
            gate_up: random_mxfp4(&mut rng, [experts, 2 * inter, hidden], 119..=122, device),
            gate_up_bias: burn::module::Param::from_tensor(Tensor::random(
                [experts, 2 * inter],
                Distribution::Normal(0.0, 0.5),
                device,
            )),
            down: random_mxfp4(&mut rng, [experts, hidden, inter], 119..=122, device),
            down_bias: burn::module::Param::from_tensor(Tensor::random(
                [experts, hidden],
                Distribution::Normal(0.0, 0.5),
                device,
            )),
            swiglu_limit: 7.0,
            swiglu_alpha: 1.702,
        };
        let packed = |m: &ExpertMatrix| match m {
            ExpertMatrix::Mxfp4(p) => (p.words.val(), p.scale_words.val()),
            ExpertMatrix::Dense(_) => unreachable!("random_mxfp4 packs"),
        };
        let (gu_words, gu_scales) = packed(&layer.gate_up);
        let (down_words, down_scales) = packed(&layer.down);
        let x = Tensor::<2>::random([tokens, hidden], Distribution::Normal(0.0, 1.0), device);
        let w = Tensor::<2>::random([hidden, experts], Distribution::Normal(0.0, 0.05), device);
        let bias = Tensor::<1>::zeros([experts], device);
        let by_pairs = || {
            let routing = router_top_k(x.clone(), w.clone(), bias.clone(), top_k);
            let act = pairs_gate_up(
                x.clone(),
                routing.clone(),
                gu_words.clone(),
                gu_scales.clone(),
                layer.gate_up_bias.val(),
                layer.swiglu_limit,
                layer.swiglu_alpha,
            );
            pairs_down(
                act,
                routing,
                down_words.clone(),
                down_scales.clone(),
                layer.down_bias.val(),
            )
        };
        let sorted = |path: ExpertPath| {
            let routing = reference_router_top_k(x.clone(), w.clone(), bias.clone(), top_k);
            let ids = routing.clone().narrow(1, 0, top_k).int();
            let gates = routing.narrow(1, top_k, top_k).reshape([tokens * top_k]);
            grouped_experts(&layer, x.clone(), ids, gates, path)
        };
        let ours = by_pairs();
        let reference = sorted(ExpertPath::GroupedReferenceBf16);
        let (relative, max_abs) = errors(ours, reference);
        worst = worst.max(relative);
        let pairs_seconds = seconds_per_call(device, by_pairs)?;
        let sorted_seconds = seconds_per_call(device, || sorted(ExpertPath::GroupedKernel))?;
        println!(
            "{}",
            json!({"kernel": "experts_pairs", "tokens": tokens, "experts": experts,
                   "hidden": hidden, "inter": inter, "top_k": top_k,
                   "seconds_by_pairs": pairs_seconds, "seconds_sorted_grouped": sorted_seconds,
                   "relative_error": relative, "max_abs_difference": max_abs})
        );
    }
    anyhow::ensure!(
        worst < 1e-2,
        "per-pair experts kernels differ from the reference: {worst}"
    );
    Ok(())
}

fn check_attention_rows(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::attention_rows::{attention_rows, reference_attention_rows};
    let mut rng = StdRng::seed_from_u64(7);
    let mut worst = 0.0f32;
    // (rows, heads, kv heads, queries, keys, head_dim); 5,000 keys take three chunks.
    for [b, heads, kv_heads, t, s, d] in [
        [1, 64, 8, 1, 128, 64],
        [2, 8, 2, 3, 5000, 64],
        [32, 64, 8, 1, 256, 64],
        [3, 4, 4, 2, 40, 32],
    ] {
        let q = Tensor::<4>::random([b, heads, t, d], Distribution::Normal(0.0, 1.0), device);
        let k = Tensor::<4>::random([b, kv_heads, s, d], Distribution::Normal(0.0, 1.0), device);
        let v = Tensor::<4>::random([b, kv_heads, s, d], Distribution::Normal(0.0, 1.0), device);
        let sinks = Tensor::<1>::random([heads], Distribution::Normal(0.0, 1.0), device);
        // Random ranges; the second (row, query) sees no key at all (its output is zero).
        let ranges: Vec<i32> = (0..b * t)
            .flat_map(|item| {
                let lo = rng.random_range(0..s);
                let hi = if item == 1 {
                    lo
                } else {
                    rng.random_range(lo..=s)
                };
                [lo as i32, hi as i32]
            })
            .collect();
        let ranges = Tensor::<1, Int>::from_data(TensorData::new(ranges, [b * t * 2]), device)
            .cast(burn::tensor::IntDType::I32);
        let scale = (d as f32).powf(-0.5);
        let run = || {
            attention_rows(
                q.clone(),
                k.clone(),
                v.clone(),
                sinks.clone(),
                ranges.clone(),
                scale,
            )
            .reshape([b * t, heads * d])
        };
        let ours = run();
        let seconds = seconds_per_call(device, run)?;
        let reference = reference_attention_rows(
            q.clone(),
            k.clone(),
            v.clone(),
            sinks.clone(),
            ranges.clone(),
            scale,
        )
        .reshape([b * t, heads * d]);
        let (relative, max_abs) = errors(ours, reference);
        worst = worst.max(relative);
        println!(
            "{}",
            json!({"kernel": "attention_rows", "rows": b, "heads": heads, "kv_heads": kv_heads,
                   "queries": t, "keys": s, "head_dim": d, "seconds": seconds,
                   "relative_error": relative, "max_abs_difference": max_abs})
        );
    }
    anyhow::ensure!(
        worst < 1e-5,
        "attention kernel differs from the reference: {worst}"
    );
    Ok(())
}

fn check_rotary(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::rotary_rows::{reference_rotary_rows, rotary_rows};
    let mut worst = 0.0f32;
    // The last case has more than 65,535 workgroups (a second grid dimension).
    for [b, t, heads, d] in [[1, 1, 64, 64], [3, 5, 8, 32], [8, 2048, 64, 64]] {
        let x = Tensor::<4>::random([b, t, heads, d], Distribution::Normal(0.0, 1.0), device);
        let cos = Tensor::<4>::random([b, 1, t, d / 2], Distribution::Default, device);
        let sin = Tensor::<4>::random([b, 1, t, d / 2], Distribution::Default, device);
        let ours = rotary_rows(x.clone(), cos.clone(), sin.clone());
        let reference = reference_rotary_rows(x, cos, sin);
        let (relative, max_abs) = errors(ours, reference);
        worst = worst.max(relative);
        println!(
            "{}",
            json!({"kernel": "rotary_rows", "rows": b, "positions": t, "heads": heads,
                   "head_dim": d, "relative_error": relative, "max_abs_difference": max_abs})
        );
    }
    anyhow::ensure!(
        worst < 1e-6,
        "RoPE kernel differs from the reference: {worst}"
    );
    Ok(())
}
