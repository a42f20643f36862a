//! The sorting of (token, rank) pairs by expert in four launches (`group_by_expert_kernel`)
//! against the same sorting from burn's ops (`group_by_expert`): rows, offsets and tiles must be
//! equal, value for value.

use burn::tensor::{Device, Int, Tensor, TensorData};
use gpt_oss_model::transformer::moe_grouped::{
    ExpertGroups, LARGE_TILE_ROWS, group_by_expert, group_by_expert_kernel,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use super::seconds_per_call;

/// (experts, pairs, tile rows, experts drawn from): the few-rows kernel's tiles at decoding
/// sizes, tensor-core tiles up to scoring's 65,536 pairs and past it (more blocks than one
/// workgroup scans at once), an expert with no pairs, and 120b's 128 experts.
const CASES: [(usize, usize, usize, usize); 8] = [
    (1, 1, 8, 1),
    (2, 3, 8, 2),
    (4, 300, 64, 3),
    (32, 128, 8, 32),
    (32, 8192, 64, 32),
    (32, 65536, LARGE_TILE_ROWS, 32),
    (32, 70001, 256, 31),
    (128, 32768, 64, 128),
];

pub(super) fn check_expert_groups(device: &Device) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    let mut failed = vec![];
    for (experts, pairs, tile_rows, drawn_from) in CASES {
        let ids: Vec<i64> = (0..pairs)
            .map(|_| rng.random_range(0..drawn_from as i64))
            .collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [pairs]), device);
        let ours = group_by_expert_kernel(ids.clone(), experts, tile_rows);
        let reference = group_by_expert(ids.clone(), experts, tile_rows);
        let mismatches = mismatches_by_part(&ours, &reference);
        let timed = |kernels: bool| {
            seconds_per_call(device, || {
                let groups = match kernels {
                    true => group_by_expert_kernel(ids.clone(), experts, tile_rows),
                    false => group_by_expert(ids.clone(), experts, tile_rows),
                };
                groups.pair_of_row.float().reshape([1, pairs])
            })
        };
        let total: usize = mismatches.iter().map(|(_, n)| n).sum();
        println!(
            "{}",
            json!({"kernel": "expert_groups", "experts": experts, "pairs": pairs,
                   "tile_rows": tile_rows, "mismatches": mismatches, "seconds": timed(true)?,
                   "burn_ops_seconds": timed(false)?})
        );
        if total > 0 {
            failed.push(format!("{experts} experts, {pairs} pairs"));
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "expert_groups: the kernels' sorting differs from burn's ops for {}",
        failed.join("; ")
    );
    Ok(())
}

/// The values that differ between `ours` and `reference`, per part.
fn mismatches_by_part(ours: &ExpertGroups, reference: &ExpertGroups) -> Vec<(&'static str, usize)> {
    let parts = |g: &ExpertGroups| {
        [
            ("row_of_pair", g.row_of_pair.clone()),
            ("pair_of_row", g.pair_of_row.clone()),
            ("expert_of_row", g.expert_of_row.clone()),
            ("offsets", g.offsets.clone()),
            ("tile_starts", g.tile_starts.clone()),
        ]
    };
    parts(ours)
        .into_iter()
        .zip(parts(reference))
        .map(|((name, a), (_, b))| {
            let values = |t: Tensor<1, Int>| t.try_into_vec_as::<i64>().expect("integers");
            let (a, b) = (values(a), values(b));
            let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            (name, differing + a.len().abs_diff(b.len()))
        })
        .collect()
}
