//! `bench kernel-check --decode-timings`: the device time of each kernel of a decode step at
//! gpt-oss-20b's shapes, measured as the step runs them: many launches captured once as a
//! graph (`burn::tensor::capture`) and replayed, so no host work sits between launches.
//! Launches cycle through enough weight sets (different experts, copies of a projection) that
//! one launch's weights are out of the 50 MB L2 cache by the time they come round again.
//! The per-pair experts kernels are timed at every `columns_per_plane`, `planes` and `turns`
//! given, each checked against the sorted grouped reference first.

use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use gpt_oss_kernels::bf16_rows::RowsTiling;
use gpt_oss_kernels::experts_pairs::{ExpertShape, PlaneShape};
use gpt_oss_model::transformer::moe_pairs::MAX_PAIRS;

use super::{Worst, median_after_warm_up, packed_words, random_experts, standard_normal};

mod by_expert;
mod layer_chain;

pub(super) use layer_chain::{ChainExperts, parse_chain_experts};

/// gpt-oss-20b's widths.
const HIDDEN: usize = 2880;
const INTER: usize = 2880;
const EXPERTS: usize = 32;
const TOP_K: usize = 4;
const Q_WIDTH: usize = 4096;
const KV_WIDTH: usize = 512;
/// One lm_head piece (`vocab::PIECE_ROW_MULTIPLE` pieces of gpt-oss's vocabulary).
const LM_HEAD_PIECE: usize = 93_184;
/// Launches per captured graph.
const LAUNCHES: usize = 48;
/// Bytes of distinct weights the launches of one graph cycle through (three times the L2).
const CYCLE_BYTES: usize = 150 << 20;

/// A launch's time in a replayed graph, and how busy the host was meanwhile.
struct LaunchTime {
    seconds: f64,
    /// Seconds per launch with [`QUEUED_REPLAYS`] replays queued before one sync: the host
    /// encodes the next replays while the device runs the first (a decode step's replays are
    /// queued so), where `seconds` has the host's encoding and the device's run one after
    /// the other within each replay.
    queued_seconds: f64,
    /// The CPU time of the busiest host thread over the timed replays, as a share of their
    /// wall time: near one, the launches wait for the host's encoding, not for the device.
    busiest_host_thread: f64,
}

/// Seconds of replays before the timed ones: the GPU's clocks rise only under sustained load
/// and fall within a fraction of a second of idling (an H100 still at 450-555 MHz took 123 us
/// for the per-pair gate_up at one token, 37 us at 1980 MHz, 2026-11-27), and the host work
/// between two timings is such an idle spell.
const WARM_UP_SECONDS: f64 = 1.0;
/// Replays queued before one sync for [`LaunchTime::queued_seconds`].
const QUEUED_REPLAYS: usize = 10;

/// Seconds per launch of `run(i)` (`i` cycling over `sets` weight sets) with [`LAUNCHES`]
/// launches captured as one graph and replayed: the median over five replays after
/// [`WARM_UP_SECONDS`] of untimed ones.
fn seconds_per_replayed_launch(
    device: &Device,
    sets: usize,
    run: impl Fn(usize) -> Tensor<2>,
) -> anyhow::Result<LaunchTime> {
    let mut graph = burn::tensor::capture(device, || {
        (0..LAUNCHES).map(|i| run(i % sets)).collect::<Vec<_>>()
    });
    anyhow::ensure!(
        graph.is_hardware(),
        "bench kernel-check --decode-timings: the device cannot capture graphs, so launches \
         would carry host time"
    );
    let warm_up = std::time::Instant::now();
    while warm_up.elapsed().as_secs_f64() < WARM_UP_SECONDS {
        // Safety: as for the timed replays below.
        unsafe { graph.replay() };
        device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let mut times = vec![];
    let mut cpu_before = crate::host::cpu_seconds_by_thread();
    for replay in 0..6 {
        if replay == 1 {
            cpu_before = crate::host::cpu_seconds_by_thread();
        }
        let start = std::time::Instant::now();
        // Safety: every tensor the launches touch is borrowed by `run`, alive until `graph`
        // is dropped at the end of this function; everything runs on this thread's stream.
        unsafe { graph.replay() };
        device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        times.push(start.elapsed().as_secs_f64());
    }
    let timed_wall: f64 = times[1..].iter().sum();
    let cpu = crate::host::cpu_seconds_between(&cpu_before, &crate::host::cpu_seconds_by_thread());
    let busiest = cpu.values().copied().fold(0.0, f64::max);
    let queued = std::time::Instant::now();
    for _ in 0..QUEUED_REPLAYS {
        // Safety: as above.
        unsafe { graph.replay() };
    }
    device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let queued_seconds = queued.elapsed().as_secs_f64() / (QUEUED_REPLAYS * LAUNCHES) as f64;
    Ok(LaunchTime {
        seconds: median_after_warm_up(times) / LAUNCHES as f64,
        queued_seconds,
        busiest_host_thread: busiest / timed_wall,
    })
}

/// Prints one timing line: the kernel, its case and, where weights are read, bytes per second.
fn report(kernel: &str, case: serde_json::Value, time: LaunchTime, weight_bytes: Option<usize>) {
    let seconds = time.seconds;
    let mut line = json!({"timing": kernel, "case": case, "microseconds": seconds * 1e6,
                          "queued_microseconds": time.queued_seconds * 1e6,
                          "busiest_host_thread": time.busiest_host_thread});
    if let Some(bytes) = weight_bytes {
        line["weight_bytes"] = json!(bytes);
        line["terabytes_per_second"] = json!(bytes as f64 / seconds / 1e12);
    }
    println!("{line}");
}

/// Whether the launches of a weight-reading kernel cycle through more weights than the L2
/// cache holds (as a decode step reads them) or read the same weights each time.
#[derive(Clone, Copy)]
struct WeightCycle {
    weights_in_l2: bool,
}

impl WeightCycle {
    /// Copies of a projection of `bytes` the launches cycle through.
    fn copies(self, bytes: usize) -> usize {
        if self.weights_in_l2 {
            1
        } else {
            CYCLE_BYTES.div_ceil(bytes).max(1)
        }
    }

    /// Routings (sets of experts) the per-pair launches cycle through.
    fn routings(self) -> usize {
        if self.weights_in_l2 { 1 } else { 8 }
    }
}

/// The workgroups the per-pair kernels take (`PlaneShape::is_supported`), as refusals name them.
const PER_PAIR_LIMITS: &str = "1 to 8 columns per plane, 1 to 32 planes, 1 to 16 turns";

/// The groups of timings `--only` can name, in the order they run.
const TIMING_GROUPS: [&str; 5] = ["small", "layer_chain", "projections", "pairs", "by_expert"];

/// What `--decode-timings` times besides the model's own choices: the sweep options of `bench
/// kernel-check`.
pub(super) struct DecodeTimingOptions {
    /// Workgroups of the per-pair kernels (every combination of `--columns-per-plane`,
    /// `--planes` and `--turns`: [`pair_shapes`]).
    pub pair_shapes: Vec<PlaneShape>,
    /// Token counts at which the per-pair kernels are timed.
    pub pair_tokens: Vec<usize>,
    pub rows_tilings: Vec<RowsTiling>,
    pub expert_shapes: Vec<ExpertShape>,
    /// The per-pair workgroups of the chained layer's experts; the model's when empty.
    pub chain_experts: Vec<ChainExperts>,
    pub weights_in_l2: bool,
}

/// Every combination of the per-pair options, in the order given.
pub(super) fn pair_shapes(
    columns_per_plane: &[u32],
    planes: &[u32],
    turns: &[u32],
) -> Vec<PlaneShape> {
    let mut shapes = vec![];
    for &columns_per_plane in columns_per_plane {
        for &planes in planes {
            for &turns in turns {
                shapes.push(PlaneShape {
                    columns_per_plane,
                    planes,
                    turns,
                });
            }
        }
    }
    shapes
}

/// Every timing of the groups `only` names (all of them when empty; see [`TIMING_GROUPS`]), at
/// the workgroups, token counts and tilings `options` names. Options the kernels or the model
/// do not take are refused before anything is timed.
pub(super) fn time_decode_kernels(
    device: &Device,
    options: &DecodeTimingOptions,
    only: &[String],
) -> anyhow::Result<()> {
    super::ensure_known(only, &TIMING_GROUPS, "group of timings")?;
    let wanted = |group: &str| only.is_empty() || only.iter().any(|o| o == group);
    let cycle = WeightCycle {
        weights_in_l2: options.weights_in_l2,
    };
    let shapes = &options.pair_shapes;
    if let Some(shape) = shapes.iter().find(|shape| !shape.is_supported()) {
        anyhow::bail!(
            "--columns-per-plane {} --planes {} --turns {}: not a workgroup the per-pair \
             kernels take ({PER_PAIR_LIMITS})",
            shape.columns_per_plane,
            shape.planes,
            shape.turns
        );
    }
    let pair_tokens = &options.pair_tokens;
    if let Some(tokens) = pair_tokens
        .iter()
        .find(|&&tokens| tokens == 0 || tokens * TOP_K > MAX_PAIRS)
    {
        anyhow::bail!(
            "--pair-tokens {tokens}: the model runs the per-pair kernels for 1 to {} tokens \
             (`moe_pairs::MAX_PAIRS` pairs at k = {TOP_K})",
            MAX_PAIRS / TOP_K
        );
    }
    println!(
        "{}",
        json!({"decode_timings": {"weights_in_l2": options.weights_in_l2}})
    );
    if wanted("small") {
        time_small_kernels(device)?;
    }
    if wanted("layer_chain") {
        layer_chain::time_layer_chain(device, &options.chain_experts)?;
    }
    if wanted("projections") {
        for &tiling in &options.rows_tilings {
            time_projections(device, tiling, cycle)?;
        }
    }
    if wanted("pairs") {
        time_pairs(device, shapes, pair_tokens, cycle)?;
    }
    if wanted("by_expert") {
        by_expert::time_by_expert(device, &options.expert_shapes, cycle)?;
    }
    Ok(())
}

/// The norm (also on 64 values: what one launch costs at the least), the router, RoPE on the
/// q/k/v heads and attention over 128 cached keys, batch 1.
fn time_small_kernels(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::rms_norm_rows::{add_rms_norm_rows, rms_norm_rows};
    let normal = |shape: [usize; 2]| standard_normal(shape, device);
    for width in [64, HIDDEN] {
        let x = normal([1, width]);
        let weight = Tensor::<1>::random([width], Distribution::Default, device);
        let seconds = seconds_per_replayed_launch(device, 1, |_| {
            rms_norm_rows(x.clone(), weight.clone(), 1e-5)
        })?;
        report(
            "rms_norm_rows",
            json!({"rows": 1, "width": width}),
            seconds,
            None,
        );
    }
    let (x, delta) = (normal([1, HIDDEN]), normal([1, HIDDEN]));
    let weight = Tensor::<1>::random([HIDDEN], Distribution::Default, device);
    let seconds = seconds_per_replayed_launch(device, 1, |_| {
        add_rms_norm_rows(x.clone(), delta.clone(), weight.clone(), 1e-5).0
    })?;
    report(
        "add_rms_norm_rows",
        json!({"rows": 1, "width": HIDDEN}),
        seconds,
        None,
    );

    let w = Tensor::<2>::random([HIDDEN, EXPERTS], Distribution::Normal(0.0, 0.05), device);
    let bias = Tensor::<1>::zeros([EXPERTS], device);
    let seconds = seconds_per_replayed_launch(device, 1, |_| {
        gpt_oss_kernels::router_top_k::router_top_k(x.clone(), w.clone(), bias.clone(), TOP_K)
    })?;
    report(
        "router_top_k",
        json!({"rows": 1, "hidden": HIDDEN, "experts": EXPERTS}),
        seconds,
        Some(4 * HIDDEN * EXPERTS),
    );
    let fused = seconds_per_replayed_launch(device, 1, |_| {
        gpt_oss_kernels::router_top_k::add_norm_router(
            x.clone(),
            delta.clone(),
            weight.clone(),
            1e-5,
            w.clone(),
            bias.clone(),
            TOP_K,
        )
        .2
    })?;
    report(
        "add_norm_router",
        json!({"rows": 1, "hidden": HIDDEN, "experts": EXPERTS}),
        fused,
        Some(4 * HIDDEN * EXPERTS),
    );

    let heads = Q_WIDTH / 64 + 2 * KV_WIDTH / 64;
    let qkv = standard_normal([1, 1, heads, 64], device);
    let cos = Tensor::<4>::random([1, 1, 1, 32], Distribution::Default, device);
    let sin = Tensor::<4>::random([1, 1, 1, 32], Distribution::Default, device);
    let seconds = seconds_per_replayed_launch(device, 1, |_| {
        let (q, _, _) = gpt_oss_kernels::rotary_rows::rotary_qkv_rows(
            qkv.clone(),
            cos.clone(),
            sin.clone(),
            Q_WIDTH / 64,
            KV_WIDTH / 64,
        );
        q.reshape([1, Q_WIDTH])
    })?;
    report(
        "rotary_qkv_rows",
        json!({"rows": 1, "heads": heads}),
        seconds,
        None,
    );

    let keys = 128;
    let normal4 = |shape: [usize; 4]| standard_normal(shape, device);
    let (q, k, v) = (
        normal4([1, Q_WIDTH / 64, 1, 64]),
        normal4([1, KV_WIDTH / 64, keys, 64]),
        normal4([1, KV_WIDTH / 64, keys, 64]),
    );
    let sinks = Tensor::<1>::random([Q_WIDTH / 64], Distribution::Default, device);
    let ranges = Tensor::<1, Int>::from_data(TensorData::new(vec![0i32, keys as i32], [2]), device)
        .cast(burn::tensor::IntDType::I32);
    let seconds = seconds_per_replayed_launch(device, 1, |_| {
        gpt_oss_kernels::attention_rows::attention_rows(
            q.clone(),
            k.clone(),
            v.clone(),
            sinks.clone(),
            ranges.clone(),
            0.125,
        )
        .reshape([1, Q_WIDTH])
    })?;
    report(
        "attention_rows",
        json!({"rows": 1, "keys": keys}),
        seconds,
        None,
    );

    // RoPE, the cache writes and attention from the projection, the slot the last key.
    let (key_cache, value_cache) = (k.clone() * 1.0, v.clone() * 1.0);
    let slot = Tensor::<1>::from_data(TensorData::new(vec![(keys - 1) as f32], [1]), device);
    let seconds = seconds_per_replayed_launch(device, 1, |_| {
        gpt_oss_kernels::attention_rows::attention_step(
            qkv.clone(),
            (cos.clone(), sin.clone()),
            (&key_cache, &value_cache),
            slot.clone(),
            sinks.clone(),
            // Tables of one slot: the slot past them reads that row.
            ranges.clone().reshape([1, 2]),
            0.125,
            false,
        )
        .reshape([1, Q_WIDTH])
    })?;
    report(
        "attention_step",
        json!({"rows": 1, "keys": keys}),
        seconds,
        None,
    );
    Ok(())
}

/// The bf16 projections with `tiling` at batch 1 (and 32, at the model's tiling): q/k/v in one
/// launch (also with the input norm in it, at the model's tiling), o, and one lm_head piece.
fn time_projections(device: &Device, tiling: RowsTiling, cycle: WeightCycle) -> anyhow::Result<()> {
    use gpt_oss_kernels::bf16_rows::{
        DEFAULT_TILING, bf16_rows_matmul_tiled, bf16_rows_three_tiled, rms_norm_bf16_rows_three,
    };
    let bf16 = |shape: [usize; 2]| {
        Tensor::<2>::random(shape, Distribution::Default, device).cast(DType::BF16)
    };
    let batches: &[usize] = if tiling == DEFAULT_TILING {
        &[1, 32]
    } else {
        &[1]
    };
    for &m in batches {
        let x = Tensor::<2>::random([m, HIDDEN], Distribution::Default, device);
        let bytes = 2 * HIDDEN * (Q_WIDTH + 2 * KV_WIDTH);
        let sets: Vec<[Tensor<2>; 3]> = (0..cycle.copies(bytes))
            .map(|_| [Q_WIDTH, KV_WIDTH, KV_WIDTH].map(|n| bf16([HIDDEN, n])))
            .collect();
        let seconds = seconds_per_replayed_launch(device, sets.len(), |i| {
            bf16_rows_three_tiled(x.clone(), sets[i].clone(), None, tiling)
        })?;
        let case = json!({"rows": m, "k": HIDDEN, "n": [Q_WIDTH, KV_WIDTH, KV_WIDTH],
                          "groups": tiling.groups, "unroll": tiling.unroll});
        report("bf16_rows_three", case.clone(), seconds, Some(bytes));
        if tiling == DEFAULT_TILING {
            let norm = (
                Tensor::<1>::random([HIDDEN], Distribution::Default, device),
                1e-5,
            );
            let seconds = seconds_per_replayed_launch(device, sets.len(), |i| {
                rms_norm_bf16_rows_three(x.clone(), norm.clone(), sets[i].clone(), None)
            })?;
            report("rms_norm_bf16_rows_three", case, seconds, Some(bytes));
        }

        // A tiling's column groups must tile the width (o's 2880 columns take at most 8).
        let tiles = |n: usize| tiling.groups == 0 || n.is_multiple_of(8 * tiling.groups as usize);
        for [k, n] in [[Q_WIDTH, HIDDEN], [HIDDEN, LM_HEAD_PIECE]] {
            if !tiles(n) {
                continue;
            }
            let x = Tensor::<2>::random([m, k], Distribution::Default, device);
            let bytes = 2 * k * n;
            let sets: Vec<Tensor<2>> = (0..cycle.copies(bytes)).map(|_| bf16([k, n])).collect();
            let seconds = seconds_per_replayed_launch(device, sets.len(), |i| {
                bf16_rows_matmul_tiled(x.clone(), sets[i].clone(), None, tiling)
            })?;
            report(
                "bf16_rows",
                json!({"rows": m, "k": k, "n": n, "groups": tiling.groups,
                       "unroll": tiling.unroll}),
                seconds,
                Some(bytes),
            );
        }
    }
    Ok(())
}

/// The per-pair experts kernels at each of `token_counts` with each workgroup of `shapes`,
/// checked against the sorted grouped reference, then timed over routings that cycle through
/// every expert (at one token, eight disjoint groups of four).
fn time_pairs(
    device: &Device,
    shapes: &[PlaneShape],
    token_counts: &[usize],
    cycle: WeightCycle,
) -> anyhow::Result<()> {
    use gpt_oss_kernels::experts_pairs::{pairs_down, pairs_gate_up};
    use gpt_oss_model::transformer::moe_grouped::{ExpertPath, grouped_experts};
    let mut rng = StdRng::seed_from_u64(13);
    let layer = random_experts(&mut rng, [EXPERTS, HIDDEN, INTER], device);
    let (gu_words, gu_scales) = packed_words(&layer.gate_up);
    let (down_words, down_scales) = packed_words(&layer.down);
    // MXFP4 bytes of one expert's row of K inputs: K / 2 of codes, K / 32 of scales.
    let row_bytes = |k: usize| k / 2 + k / 32;
    let mut worst = Worst::new("per-pair experts kernels (decode timings)", 1e-2);
    for &tokens in token_counts {
        let routings: Vec<Tensor<2>> = (0..cycle.routings())
            .map(|set| routing_table(&mut rng, tokens, set, device))
            .collect();
        let x = standard_normal([tokens, HIDDEN], device);
        let residual = standard_normal([tokens, HIDDEN], device);
        let ids = routings[0].clone().narrow(1, 0, TOP_K).int();
        let gates = routings[0]
            .clone()
            .narrow(1, TOP_K, TOP_K)
            .reshape([tokens * TOP_K]);
        let reference = grouped_experts(
            &layer,
            x.clone(),
            ids,
            gates,
            ExpertPath::GroupedReferenceBf16,
        ) + residual.clone();
        let pairs = tokens * TOP_K;
        for &shape in shapes {
            let gate_up = |i: usize| {
                pairs_gate_up(
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
            let acts: Vec<Tensor<2>> = (0..routings.len()).map(gate_up).collect();
            let down = |i: usize| {
                pairs_down(
                    acts[i].clone(),
                    routings[i].clone(),
                    down_words.clone(),
                    down_scales.clone(),
                    layer.down_bias.val(),
                    Some(residual.clone()),
                    shape,
                )
            };
            let case = json!({"tokens": tokens, "pairs": pairs, "planes": shape.planes,
                              "columns_per_plane": shape.columns_per_plane,
                              "turns": shape.turns});
            worst.record(
                down(0),
                reference.clone(),
                json!({"kernel": "experts_pairs", "case": case}),
            );
            let seconds = seconds_per_replayed_launch(device, routings.len(), gate_up)?;
            report(
                "pairs_gate_up",
                case.clone(),
                seconds,
                Some(pairs * 2 * INTER * row_bytes(HIDDEN)),
            );
            let seconds = seconds_per_replayed_launch(device, routings.len(), down)?;
            report(
                "pairs_down",
                case,
                seconds,
                Some(pairs * HIDDEN * row_bytes(INTER)),
            );
        }
    }
    worst.finish()
}

/// A routing table [tokens, 2k] as `router_top_k` writes it (expert ids as floats, then gates
/// summing to one): at one token, experts `4 set..4 set + 4`; at more, k distinct experts per
/// token at random.
fn routing_table(rng: &mut StdRng, tokens: usize, set: usize, device: &Device) -> Tensor<2> {
    let mut table = vec![];
    for _ in 0..tokens {
        let ids: Vec<usize> = if tokens == 1 {
            (TOP_K * set..TOP_K * set + TOP_K)
                .map(|e| e % EXPERTS)
                .collect()
        } else {
            rand::seq::index::sample(rng, EXPERTS, TOP_K).into_vec()
        };
        let gates: Vec<f32> = (0..TOP_K).map(|_| rng.random_range(0.1..1.0)).collect();
        let total: f32 = gates.iter().sum();
        table.extend(ids.iter().map(|&e| e as f32));
        table.extend(gates.iter().map(|g| g / total));
    }
    Tensor::<2>::from_data(TensorData::new(table, [tokens, 2 * TOP_K]), device)
}
