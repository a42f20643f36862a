//! `bench grouped-check`: the grouped MXFP4 kernel against the reference grouped matmul (burn
//! ops, MXFP4 decoded by the tensor path) on random weights and a random routing, on one
//! device. Prints the relative error per case; fails when one exceeds bf16 rounding (1e-2).

use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use gpt_oss_model::device::{DeviceChoice, select_device};
use gpt_oss_model::transformer::experts::{ExpertMatrix, PackedMxfp4};
use gpt_oss_model::transformer::moe_grouped::{
    ExpertPath, TILE_ROWS, group_by_expert, grouped_matmul, grouped_matmul_reference,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct GroupedCheckArgs {
    #[arg(long, default_value = "wgpu")]
    pub device: DeviceChoice,
}

/// (experts, rows, n, k) per case.
const CASES: [(usize, usize, usize, usize); 4] = [
    (1, 64, 128, 32),
    (2, 100, 200, 64),
    (4, 300, 256, 128),
    (32, 2048, 5760, 2880),
];

pub fn grouped_check(args: GroupedCheckArgs) -> anyhow::Result<()> {
    let (device, description) = select_device(args.device)?;
    eprintln!("device: {description}");
    let mut rng = StdRng::seed_from_u64(3);
    let mut worst = 0.0f32;
    for (experts, rows, n, k) in CASES {
        let words: Vec<i32> = (0..experts * n * k / 8).map(|_| rng.random()).collect();
        let per_expert = (n * k / 32).div_ceil(4);
        let scales: Vec<i32> = (0..experts * per_expert)
            .map(|_| i32::from_le_bytes(std::array::from_fn(|_| rng.random_range(122u8..=130))))
            .collect();
        let words =
            Tensor::<3, Int>::from_data(TensorData::new(words, [experts, n, k / 8]), &device);
        let scales =
            Tensor::<2, Int>::from_data(TensorData::new(scales, [experts, per_expert]), &device);
        let matrix = ExpertMatrix::Mxfp4(PackedMxfp4::new(words, scales));
        let ids: Vec<i64> = (0..rows)
            .map(|_| rng.random_range(0..experts as i64))
            .collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows]), &device);
        let groups = group_by_expert(ids, experts, TILE_ROWS);
        let a = Tensor::<2>::random([rows, k], Distribution::Default, &device)
            .cast(DType::BF16)
            .cast(DType::F32);
        let ours = grouped_matmul(a.clone(), &matrix, &groups, ExpertPath::GroupedKernel);
        let reference = grouped_matmul_reference(a, &matrix, &groups);
        let diff: f32 = (ours.clone() - reference.clone())
            .powi_scalar(2)
            .sum()
            .into_scalar();
        let norm: f32 = reference.clone().powi_scalar(2).sum().into_scalar();
        let max_abs: f32 = (ours - reference).abs().max().into_scalar();
        let relative = (diff / norm).sqrt();
        worst = worst.max(relative);
        println!(
            "{}",
            json!({"experts": experts, "rows": rows, "n": n, "k": k,
                   "relative_error": relative, "max_abs_difference": max_abs})
        );
    }
    anyhow::ensure!(
        worst < 1e-2,
        "grouped kernel differs from the reference: {worst}"
    );
    Ok(())
}
