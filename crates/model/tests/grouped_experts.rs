//! The grouped MoE path (pairs sorted by expert on the device, one grouped matmul per
//! projection) against the per-expert loop, on the CPU: the sort itself on a hand-made
//! routing, and whole-model log-probabilities on the MXFP4 reference fixture. The GPU kernel
//! behind the same path is checked on the GPU machine (tools/gpu/grouped_moe_check.sh).

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use gpt_oss_model::scoring::token_logprobs;
use gpt_oss_model::transformer::moe_grouped::{
    ExpertPath, FEW_PAIRS, FEW_ROWS, LARGE_TILE_PAIRS, LARGE_TILE_ROWS, TILE_ROWS, group_by_expert,
    positions, running_sums, tensor_core_tiling, tile_rows_for,
};
use gpt_oss_model::{ExpertMask, ExpertResidency, ForwardOptions, GptOss, LoadOptions, load_model};

fn ints(t: Tensor<1, Int>) -> Vec<i64> {
    t.try_into_vec_as::<i64>().unwrap()
}

#[test]
fn pairs_are_sorted_by_expert_stably_with_offsets_and_tiles() {
    let device = Device::flex();
    let ids = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 0, 2, 1, 0, 2], [6]), &device);
    let groups = group_by_expert(ids, 4, 2);
    assert_eq!(ints(groups.pair_of_row.clone()), vec![1, 4, 3, 0, 2, 5]);
    assert_eq!(ints(groups.expert_of_row), vec![0, 0, 1, 2, 2, 2]);
    assert_eq!(ints(groups.offsets), vec![0, 2, 3, 6, 6]);
    // Tiles of 2 rows: expert 0 one, expert 1 one, expert 2 two, expert 3 none.
    assert_eq!(ints(groups.tile_starts), vec![0, 1, 2, 4, 4]);
    let pair_of_row = ints(groups.pair_of_row);
    let row_of_pair = ints(groups.row_of_pair);
    for (row, &pair) in pair_of_row.iter().enumerate() {
        assert_eq!(row_of_pair[pair as usize], row as i64);
    }
}

/// Each tile height has its kernel: few rows up to 128 pairs, tensor-core tiles of 64 rows
/// (a decode step of 48 or 64 rows), the large tiles from 16,384 pairs on (scoring); the kernel
/// inputs carry the tiling whose rows the tile starts were counted in.
#[test]
fn pair_counts_pick_tile_heights_that_have_a_kernel() {
    assert_eq!(tile_rows_for(4), FEW_ROWS);
    assert_eq!(tile_rows_for(FEW_PAIRS), FEW_ROWS);
    assert_eq!(tile_rows_for(FEW_PAIRS + 1), TILE_ROWS);
    assert_eq!(tile_rows_for(48 * 4), TILE_ROWS);
    assert_eq!(tile_rows_for(LARGE_TILE_PAIRS - 1), TILE_ROWS);
    assert_eq!(tile_rows_for(8 * 2048 * 4), LARGE_TILE_ROWS);
    assert_eq!(tensor_core_tiling(TILE_ROWS).map(|t| t.m), Some(TILE_ROWS));
    assert_eq!(
        tensor_core_tiling(LARGE_TILE_ROWS).map(|t| t.m),
        Some(LARGE_TILE_ROWS)
    );
    assert!(tensor_core_tiling(FEW_ROWS).is_none());

    let device = Device::flex();
    let ids: Vec<i64> = (0..600).map(|i| (i % 3) as i64).collect();
    let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [600]), &device);
    let groups = group_by_expert(ids, 4, LARGE_TILE_ROWS);
    // 200 rows per expert of three, whole tiles each.
    let per_expert = 200usize.div_ceil(LARGE_TILE_ROWS) as i64;
    assert_eq!(
        ints(groups.tile_starts.clone()),
        vec![
            0,
            per_expert,
            2 * per_expert,
            3 * per_expert,
            3 * per_expert
        ]
    );
    let tiles = groups.kernel_tiles(tensor_core_tiling(LARGE_TILE_ROWS).unwrap());
    assert_eq!(tiles.tiling.m, LARGE_TILE_ROWS);
    let wrong =
        std::panic::catch_unwind(|| groups.kernel_tiles(tensor_core_tiling(TILE_ROWS).unwrap()));
    assert!(
        wrong.is_err(),
        "tiles counted in the large tiles' rows must not launch tiles of 64"
    );
}

#[test]
fn blocked_running_sums_equal_the_plain_cumulative_sum() {
    let device = Device::flex();
    for (p, block) in [(1, 4), (4, 4), (13, 4), (16, 4), (300, 256), (700, 7)] {
        let values: Vec<i64> = (0..p * 3).map(|i| (i * 7919 % 5) as i64 - 1).collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(values, [p, 3]), &device);
        let plain = x.clone().cumsum(0).try_into_vec_as::<i64>().unwrap();
        let blocked = running_sums(x, block).try_into_vec_as::<i64>().unwrap();
        assert_eq!(blocked, plain, "{p} rows, blocks of {block}");
    }
}

#[test]
fn positions_count_from_zero_past_several_scan_blocks() {
    let device = Device::flex();
    for p in [1, 7, 256, 257, 1000] {
        let expected: Vec<i64> = (0..p as i64).collect();
        assert_eq!(ints(positions(p, &device)), expected, "{p} positions");
    }
}

/// A routing longer than one scan block: rows come out sorted by expert, pairs of one expert
/// in their original order.
#[test]
fn long_routings_sort_stably() {
    let device = Device::flex();
    let experts = 5;
    let ids: Vec<i64> = (0..1000).map(|i| (i * 31 % 17 % experts) as i64).collect();
    let tensor = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [ids.len()]), &device);
    let groups = group_by_expert(tensor, experts as usize, 64);
    let mut expected: Vec<i64> = (0..ids.len() as i64).collect();
    expected.sort_by_key(|&pair| ids[pair as usize]);
    assert_eq!(ints(groups.pair_of_row), expected);
}

/// The MXFP4 reference fixture on the CPU, experts kept packed (the kernel's input layout).
fn packed_fixture() -> GptOss {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/out/tiny-mxfp4");
    let options = LoadOptions {
        experts: ExpertResidency::Packed,
        ..Default::default()
    };
    load_model(&dir, &Device::flex(), options).unwrap()
}

#[test]
fn grouped_reference_path_gives_the_per_expert_log_probabilities() {
    let mut model = packed_fixture();
    let rows: Vec<Vec<u32>> = vec![
        (0..40).map(|i| (i * 7 + 3) % 200).collect(),
        (0..25).collect(),
    ];
    let layers = model.config.num_hidden_layers;
    let experts = model.config.num_experts;
    let keep: Vec<Vec<usize>> = (0..layers)
        .map(|_| (0..experts).step_by(2).collect())
        .collect();
    let mask =
        ExpertMask::keep_only(&keep, layers, experts, model.config.experts_per_token).unwrap();
    for mask in [None, Some(&mask)] {
        let opts = || ForwardOptions {
            observer: None,
            mask,
        };
        let per_expert = token_logprobs(&model, &rows, opts(), 16);
        model.set_expert_path(ExpertPath::GroupedReference);
        let grouped = token_logprobs(&model, &rows, opts(), 16);
        model.set_expert_path(ExpertPath::PerExpert);
        let worst = per_expert
            .iter()
            .flatten()
            .zip(grouped.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "grouped vs per-expert: {worst}");
        assert_eq!(per_expert.iter().map(Vec::len).sum::<usize>(), 39 + 24);
    }
}

/// The bf16 rounding of the kernel's inputs, measured on the CPU: how far the grouped GPU path
/// may legitimately sit from the f32 reference on the fixture (the kernel itself matches its
/// bf16 reference to 1e-6 relative: `gpt-oss-lite bench kernel-check` on the GPU machine).
#[test]
fn bf16_inputs_move_fixture_log_probabilities_by_a_bounded_amount() {
    let mut model = packed_fixture();
    let rows: Vec<Vec<u32>> = vec![(0..40).map(|i| (i * 7 + 3) % 200).collect()];
    let f32_logprobs = token_logprobs(&model, &rows, ForwardOptions::default(), 64);
    model.set_expert_path(ExpertPath::GroupedReferenceBf16);
    let bf16_logprobs = token_logprobs(&model, &rows, ForwardOptions::default(), 64);
    let worst = f32_logprobs[0]
        .iter()
        .zip(&bf16_logprobs[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("bf16 expert inputs: worst log-prob change {worst}");
    assert!(
        worst > 0.0,
        "rounding to bf16 changed nothing: the path was not taken"
    );
    assert!(
        worst < 1.0,
        "bf16 expert inputs moved a log-probability by {worst}"
    );
}

#[derive(Default)]
struct Recorder {
    ids: Vec<u32>,
    gates: Vec<f32>,
    logits: Vec<f32>,
}

impl gpt_oss_model::RoutingObserver for Recorder {
    fn needs(&self) -> gpt_oss_model::ObserverNeeds {
        gpt_oss_model::ObserverNeeds {
            router_logits: true,
            ..Default::default()
        }
    }
    fn observe(&mut self, routing: &gpt_oss_model::LayerRouting<'_>) {
        self.ids.extend_from_slice(routing.expert_ids);
        self.gates.extend_from_slice(routing.gate_weights);
        self.logits
            .extend_from_slice(routing.router_logits.unwrap());
    }
}

/// Tracing on the GPU runs the grouped path: its observer must see the routing the per-expert
/// path reports (the same experts; gates and logits to rounding).
#[test]
fn grouped_path_reports_the_same_routing() {
    let mut model = packed_fixture();
    let rows: Vec<Vec<u32>> = vec![(0..30).map(|i| (i * 11 + 5) % 200).collect()];
    let record = |model: &GptOss| {
        let mut recorder = Recorder::default();
        let options = ForwardOptions {
            observer: Some(&mut recorder),
            mask: None,
        };
        token_logprobs(model, &rows, options, 64);
        recorder
    };
    let per_expert = record(&model);
    model.set_expert_path(ExpertPath::GroupedReference);
    let grouped = record(&model);
    assert!(!per_expert.ids.is_empty());
    assert_eq!(per_expert.ids, grouped.ids);
    // Layer 0 sees identical inputs; later layers differ by summation order only.
    let close = |a: &[f32], b: &[f32]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    };
    assert!(close(&per_expert.gates, &grouped.gates));
    assert!(close(&per_expert.logits, &grouped.logits));
}
