//! The grouped MXFP4 kernels' checks (tensor-core tiles of 64 rows and the large tiles with their
//! epilogues, and the few-rows kernel) against the reference grouped matmul, and the timing of
//! the tensor-core kernel at scoring's size with other tilings (`--grouped-tilings`).

use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};
use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
use gpt_oss_kernels::{grouped_mxfp4, tile_order::TileOrder};
use gpt_oss_model::transformer::experts::ExpertMatrix;
use gpt_oss_model::transformer::moe_grouped::{
    ExpertGroups, ExpertPath, FEW_ROWS, LARGE_TILE_ROWS, TILE_ROWS, group_by_expert,
    grouped_matmul, grouped_matmul_reference, tensor_core_tiling,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use super::{Worst, random_mxfp4, seconds_per_call, standard_normal};

/// (experts, rows, n, k) per case. 100 experts of gate_up decode to more bytes than one launch
/// takes, so the large tiles run as launches of 32, 32, 32 and 4 experts.
const CASES: [(usize, usize, usize, usize); 9] = [
    (1, 1, 128, 32),
    (1, 64, 128, 32),
    (2, 100, 200, 64),
    (4, 300, 256, 128),
    (32, 4, 5760, 2880),
    (32, 128, 2880, 2880),
    (32, 2048, 5760, 2880),
    (32, 65536, 5760, 2880),
    (100, 8192, 5760, 2880),
];

/// The grouped tensor-core kernels (tiles of 64 rows decoding in the workgroup, the large
/// tiles from weights decoded first, both with their epilogues) and the few-rows grouped kernel
/// on every case, against the reference grouped matmul.
pub(super) fn check_grouped_kernels(device: &Device) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    let mut worst = Worst::new("grouped kernel", 1e-2);
    for (experts, rows, n, k) in CASES {
        let matrix = random_mxfp4(&mut rng, [experts, n, k], 122..=130, device);
        let (ids, a) = random_routed_rows(&mut rng, experts, [rows, k], device);
        let kernels = [
            ("tiles", TILE_ROWS),
            ("large tiles", LARGE_TILE_ROWS),
            ("rows", FEW_ROWS),
        ];
        for (kernel, tile_rows) in kernels {
            if kernel == "rows" && rows > 4096 {
                continue; // weights re-read every 8 rows: minutes at this size
            }
            let groups = group_by_expert(ids.clone(), experts, tile_rows);
            let run = || grouped_matmul(a.clone(), &matrix, &groups, ExpertPath::GroupedKernel);
            let ours = run();
            let seconds = seconds_per_call(device, run)?;
            let reference = grouped_matmul_reference(a.clone(), &matrix, &groups);
            if let Some(tiling) = tensor_core_tiling(tile_rows) {
                check_fused_epilogues(&mut worst, &a, &matrix, &groups, tiling, &reference)?;
            }
            worst.record(
                ours,
                reference,
                json!({"kernel": kernel, "tile_rows": tile_rows, "experts": experts,
                       "rows": rows, "n": n, "k": k, "seconds": seconds,
                       "tflops": 2.0 * (rows * n * k) as f64 / seconds / 1e12}),
            );
        }
    }
    worst.finish()
}

/// (experts, n, k) per case of the decoding checks: rows and K not whole 64-blocks, then
/// gpt-oss's gate_up and down.
const DECODING_CASES: [(usize, usize, usize); 4] = [
    (2, 200, 64),
    (3, 136, 96),
    (32, 5760, 2880),
    (32, 2880, 2880),
];

/// Every expert decoded to bf16 before the grouped product ([E, N, K], `Tiling::decoded`)
/// against burn's ops decoding each expert (the values are exact in bf16, so the tolerance is
/// one part in ten million), timed.
pub(super) fn check_decoded_experts(device: &Device) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    let mut worst = Worst::new("decoded experts", 1e-7);
    for (experts, n, k) in DECODING_CASES {
        let matrix = random_mxfp4(&mut rng, [experts, n, k], 100..=154, device);
        let ExpertMatrix::Mxfp4(packed) = &matrix else {
            unreachable!("random_mxfp4 packs MXFP4")
        };
        // Expert e as [K, N], turned to its rows of K.
        let reference =
            Tensor::stack::<3>((0..experts).map(|e| matrix.expert(e)).collect(), 0).swap_dims(1, 2);
        // The decoded bf16 values as a matrix (what `seconds_per_call` times).
        let run = || {
            let decoded = grouped_mxfp4::decoded_expert_weights(packed.kernel_weights());
            decoded.reshape([experts * n, k])
        };
        let seconds = seconds_per_call(device, run)?;
        let shape = reference.dims();
        worst.record(
            run().cast(DType::F32).reshape(shape),
            reference,
            json!({"kernel": "decoded experts", "experts": experts, "n": n, "k": k,
                   "seconds": seconds}),
        );
    }
    worst.finish()
}

/// The tensor-core kernel with its epilogues (gate_up: bias and clamped SwiGLU; down: bias and
/// row weights) against burn's ops on the reference product `product` of `a`.
fn check_fused_epilogues(
    worst: &mut Worst,
    a: &Tensor<2>,
    matrix: &ExpertMatrix,
    groups: &ExpertGroups,
    tiling: grouped_mxfp4::Tiling,
    product: &Tensor<2>,
) -> anyhow::Result<()> {
    let ExpertMatrix::Mxfp4(packed) = matrix else {
        unreachable!("random_mxfp4 packs MXFP4")
    };
    let device = a.device();
    let [rows, n] = product.dims();
    let experts = packed.words.dims()[0];
    let (weights, tiles) = (packed.kernel_weights(), groups.kernel_tiles(tiling));
    let bias = standard_normal([experts, n], &device);
    let row_weights = Tensor::<1>::random([rows], Distribution::Default, &device);
    let biased = product.clone() + bias.clone().select(0, groups.expert_of_row.clone());
    let (limit, alpha) = (7.0, 1.702);
    let swiglu = grouped_mxfp4::grouped_mxfp4_swiglu(
        a.clone(),
        weights.clone(),
        tiles.clone(),
        bias.clone(),
        limit,
        alpha,
    )
    .cast(DType::F32);
    // The same product with its rows read from token order through an index: tokens [T, K]
    // with T < rows, sorted row r being token r % T. It must match the kernel on the rows
    // gathered first (exactly, where the tiling gathers in the kernel; else it is that launch).
    let tokens_count = rows / 2 + 1;
    let rows_of =
        Tensor::<1, Int>::arange(0..rows as i64, &device).remainder_scalar(tokens_count as i64);
    let tokens = a.clone().narrow(0, 0, tokens_count);
    let gathered = grouped_mxfp4::grouped_mxfp4_swiglu_gathered(
        tokens.clone(),
        rows_of.clone(),
        weights.clone(),
        tiles.clone(),
        bias.clone(),
        limit,
        alpha,
    );
    let gathered_first = grouped_mxfp4::grouped_mxfp4_swiglu(
        tokens.select(0, rows_of),
        weights.clone(),
        tiles.clone(),
        bias.clone(),
        limit,
        alpha,
    );
    worst.record(
        gathered.cast(DType::F32),
        gathered_first.cast(DType::F32),
        json!({"kernel": "tiles + bias + SwiGLU, rows gathered", "tile_rows": tiling.m,
               "gathers_in_kernel": tiling.gathers_rows(n), "experts": experts,
               "rows": rows, "n": n}),
    );
    // The kernel writes bf16 activations: the reference is rounded the same way.
    worst.record(
        swiglu,
        to_nearest_bf16(gpt_oss_model::transformer::experts::swiglu(
            biased.clone(),
            limit,
            alpha,
        ))
        .cast(DType::F32),
        json!({"kernel": "tiles + bias + SwiGLU", "tile_rows": tiling.m, "experts": experts,
               "rows": rows, "n": n}),
    );
    let scaled = grouped_mxfp4::grouped_mxfp4_scaled(
        a.clone(),
        weights,
        tiles,
        bias,
        row_weights.clone(),
        groups.pair_of_row.clone(),
    );
    // The kernel writes each sorted row to its pair's row.
    worst.record(
        scaled,
        (biased * row_weights.unsqueeze_dim(1)).select(0, groups.row_of_pair.clone()),
        json!({"kernel": "tiles + bias x row weight", "tile_rows": tiling.m,
               "experts": experts, "rows": rows, "n": n}),
    );
    Ok(())
}

/// `MxNxK` with optional `/flags`: `t` FP4 table, `c` column tiles first, `d` weights decoded
/// to bf16 before the product (`Tiling::decoded`), `w` with `d`: multiplied in subgroup-scope
/// fragments (`Tiling::warps`), `e` with `w`: the epilogues from the fragments
/// (`Tiling::fragment_epilogues`), `g` with `w`: gate_up's rows read through the sorting's
/// index (`Tiling::gathered`).
pub(crate) fn parse_grouped_tiling(text: &str) -> anyhow::Result<grouped_mxfp4::Tiling> {
    let (shape, flags) = text.split_once('/').unwrap_or((text, ""));
    let [m, n, k] = super::super::bench_matmul::parse_tile_sides(shape)?;
    if let Some(bad) = flags.chars().find(|c| !"tcdweg".contains(*c)) {
        anyhow::bail!(
            "grouped tiling `{text}`: unknown flag `{bad}` (t: table, c: column tiles first, \
             d: weights decoded first, w: subgroup-scope fragments, e: epilogues from the \
             fragments, g: gate_up's rows read through the sorting's index)"
        );
    }
    for flag in ['e', 'g'] {
        anyhow::ensure!(
            !flags.contains(flag) || flags.contains('w'),
            "grouped tiling `{text}`: `{flag}` works on the fragments and needs `w`"
        );
    }
    anyhow::ensure!(
        !flags.contains('w') || flags.contains('d'),
        "grouped tiling `{text}`: `w` (subgroup-scope fragments) needs `d` (weights decoded first)"
    );
    anyhow::ensure!(
        k % 32 == 0 && m % 16 == 0 && n % 16 == 0,
        "grouped tiling `{text}`: K must be a multiple of 32, M and N of 16"
    );
    let tiling = grouped_mxfp4::Tiling {
        m,
        n,
        k,
        table: flags.contains('t'),
        decoded: flags.contains('d'),
        warps: flags.contains('w'),
        fragment_epilogues: flags.contains('e'),
        gathered: flags.contains('g'),
        order: match flags.contains('c') {
            true => TileOrder::ColumnsFirst,
            false => TileOrder::RowsFirst,
        },
    };
    anyhow::ensure!(
        tiling.stages_split_into_words(),
        "grouped tiling `{text}`: its {m} x {k} and {n} x {k} stages do not split into whole \
         16-byte words over the kernel's {} invocations",
        grouped_mxfp4::UNITS
    );
    Ok(tiling)
}

/// Times the tensor-core grouped kernel with each tiling on scoring's experts (65,536 rows
/// routed at random over 32 experts, 5760 x 2880), checked against the reference with and
/// without its fused epilogues.
pub(super) fn time_grouped_tilings(
    tilings: &[grouped_mxfp4::Tiling],
    rng: &mut StdRng,
    device: &Device,
) -> anyhow::Result<()> {
    let (experts, rows, n, k) = (32, 65536, 5760, 2880);
    let matrix = random_mxfp4(rng, [experts, n, k], 122..=130, device);
    let ExpertMatrix::Mxfp4(packed) = &matrix else {
        unreachable!("random_mxfp4 packs MXFP4")
    };
    let (ids, a) = random_routed_rows(rng, experts, [rows, k], device);
    let mut worst = Worst::new("grouped kernel", 1e-2);
    let mut reference = None;
    for &tiling in tilings {
        let groups = group_by_expert(ids.clone(), experts, tiling.m);
        let reference = reference
            .get_or_insert_with(|| grouped_matmul_reference(a.clone(), &matrix, &groups))
            .clone();
        let (weights, tiles) = (packed.kernel_weights(), groups.kernel_tiles(tiling));
        let run = || grouped_mxfp4::grouped_mxfp4_matmul(a.clone(), weights.clone(), tiles.clone());
        let ours = run();
        let seconds = seconds_per_call(device, run)?;
        check_fused_epilogues(&mut worst, &a, &matrix, &groups, tiling, &reference)?;
        worst.record(
            ours,
            reference,
            json!({"kernel": "grouped tiles", "tiling": format!("{tiling:?}"),
                   "rows": rows, "n": n, "k": k, "seconds": seconds,
                   "tflops": 2.0 * (rows * n * k) as f64 / seconds / 1e12}),
        );
    }
    worst.finish()
}

/// Expert ids [rows] drawn at random from `experts`, and rows [rows, k] of bf16-representable
/// values (the kernels round their inputs to bf16; the reference then sees the same values).
fn random_routed_rows(
    rng: &mut StdRng,
    experts: usize,
    [rows, k]: [usize; 2],
    device: &Device,
) -> (Tensor<1, Int>, Tensor<2>) {
    let ids: Vec<i64> = (0..rows)
        .map(|_| rng.random_range(0..experts as i64))
        .collect();
    let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows]), device);
    let a = Tensor::<2>::random([rows, k], Distribution::Default, device)
        .cast(DType::BF16)
        .cast(DType::F32);
    (ids, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_tilings_parse_their_flags_and_reject_others() {
        let plain = parse_grouped_tiling("256x128x32").unwrap();
        assert_eq!((plain.m, plain.n, plain.k), (256, 128, 32));
        assert!(!plain.table && !plain.decoded);
        assert_eq!(plain.order, TileOrder::RowsFirst);
        let flagged = parse_grouped_tiling("64x128x64/tc").unwrap();
        assert!(flagged.table && !flagged.decoded);
        assert_eq!(flagged.order, TileOrder::ColumnsFirst);
        assert!(parse_grouped_tiling("256x128x32/tcd").unwrap().decoded);
        let warps = parse_grouped_tiling("128x256x32/tcdw").unwrap();
        assert_eq!(warps.warp_block(5760), Some((64, 64)));
        // N not whole fragments: the workgroup-scope kernel.
        assert_eq!(warps.warp_block(5768), None);
        assert_eq!(
            parse_grouped_tiling("128x256x32/tcd")
                .unwrap()
                .warp_block(5760),
            None
        );
        assert!(parse_grouped_tiling("128x256x32/tcw").is_err());
        assert!(
            parse_grouped_tiling("128x256x32/tcdwe")
                .unwrap()
                .fragment_epilogues
        );
        assert!(parse_grouped_tiling("128x256x32/tcde").is_err());
        // `r` (the weights as rows of K, instead of K-major) is what `w` always does now.
        assert!(parse_grouped_tiling("128x256x32/tcdwer").is_err());
        let gathered = parse_grouped_tiling("128x256x32/tcdweg").unwrap();
        assert!(gathered.gathers_rows(5760));
        assert!(!gathered.gathers_rows(5768));
        assert!(parse_grouped_tiling("128x256x32/tcdg").is_err());
        // A 160 x 32 stage is 640 words, not whole words for 256 invocations.
        let uneven = parse_grouped_tiling("128x160x32/tcdweg").unwrap_err();
        assert!(uneven.to_string().contains("160 x 32"), "{uneven}");
        assert!(parse_grouped_tiling("256x128x32/x").is_err());
        assert!(parse_grouped_tiling("256x128x40/t").is_err());
    }
}
