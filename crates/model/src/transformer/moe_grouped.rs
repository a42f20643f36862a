//! The MoE block's grouped path: (token, rank) pairs sorted by expert on the device, one
//! grouped matmul per projection over all experts, the outputs put back in pair order and
//! summed per token. No host read per layer (the per-expert loop in `moe.rs` reads the
//! selected ids to build its token lists).
//!
//! The grouped matmul itself is either the GPU kernel (`gpt_oss_kernels::grouped_mxfp4`, MXFP4
//! decoded in the kernel, bf16 tensor-core products) or a reference built from burn ops (one
//! product per expert, exact f32), which is what tests compare the sorting against on the CPU.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, Int, IntDType, Tensor};
use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
use gpt_oss_kernels::expert_groups::{self, MAX_EXPERTS};
use gpt_oss_kernels::grouped_mxfp4::{
    self, ExpertTiles, LARGE_TILES, PackedWeights, SMALL_TILES, Tiling,
};

use super::experts::{ExpertMatrix, Experts, PackedMxfp4, swiglu};

/// How the MoE block runs its experts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExpertPath {
    /// One matmul per routed expert on its token list (reads the routing to the host per layer).
    #[default]
    PerExpert,
    /// Pairs sorted on the device, grouped matmul from burn ops (exact f32; CPU and tests).
    GroupedReference,
    /// As `GroupedReference` with the matmul inputs rounded to bf16 as the kernel rounds them:
    /// the kernel's function up to summation order, on any device.
    GroupedReferenceBf16,
    /// Pairs sorted on the device, grouped MXFP4 kernel on the tensor cores (wgpu/Vulkan only).
    GroupedKernel,
}

/// (token, rank) pairs sorted by expert, all on the device.
pub struct ExpertGroups {
    /// Pair index (token * k + rank) of each sorted row [P].
    pub pair_of_row: Tensor<1, Int>,
    /// Sorted row of each pair [P] (the inverse permutation).
    pub row_of_pair: Tensor<1, Int>,
    /// Expert of each sorted row [P].
    pub expert_of_row: Tensor<1, Int>,
    /// Expert e owns rows offsets[e]..offsets[e + 1] [E + 1], 32-bit (as the kernels read it).
    pub offsets: Tensor<1, Int>,
    /// First kernel tile of each expert, prefix sums of ceil(count / tile_rows) [E + 1], 32-bit.
    pub tile_starts: Tensor<1, Int>,
    /// Rows per kernel tile: [`FEW_ROWS`] for the few-rows kernel, a tensor-core tiling's
    /// rows ([`tensor_core_tiling`]) otherwise.
    pub tile_rows: usize,
}

impl ExpertGroups {
    /// The offsets and tile starts as the tensor-core kernel takes them, with `tiling` (whose
    /// rows must be [`Self::tile_rows`]).
    pub fn kernel_tiles(&self, tiling: Tiling) -> ExpertTiles {
        assert_eq!(
            tiling.m, self.tile_rows,
            "tiles counted for another tile height"
        );
        ExpertTiles {
            offsets: self.offsets.clone(),
            tile_starts: self.tile_starts.clone(),
            tiling,
        }
    }
}

/// Rows per block of [`running_sums`]'s first level.
pub const SCAN_BLOCK: usize = 256;

/// Inclusive running sums of `x` [P, C] down its rows, in two levels: within blocks of `block`
/// rows, then the totals of the blocks before. burn's cumulative sum on the GPU adds up every
/// element before each one (quadratic in P: 17 ms per layer at 65,536 pairs); this is not.
pub fn running_sums(x: Tensor<2, Int>, block: usize) -> Tensor<2, Int> {
    let [p, c] = x.dims();
    if p <= block {
        return x.cumsum(0);
    }
    let blocks = p.div_ceil(block);
    let padding = Tensor::<2, Int>::zeros([blocks * block - p, c], &x.device());
    let within = Tensor::cat(vec![x, padding], 0)
        .reshape([blocks, block, c])
        .cumsum(1);
    let totals = within.clone().narrow(1, block - 1, 1);
    let before = totals.clone().cumsum(0) - totals;
    (within + before)
        .reshape([blocks * block, c])
        .narrow(0, 0, p)
}

/// 0, 1, ..., p - 1 on `device`. burn-fusion 0.22 builds `arange` as a cumulative sum of ones,
/// which burn's GPU kernel computes element by element over every element before it: 1.9 ms per
/// layer at scoring's 65,536 pairs on an H100 (docs/benchmarks.md). The blocked running sums
/// give the same values without the quadratic cost.
pub fn positions(p: usize, device: &Device) -> Tensor<1, Int> {
    running_sums(Tensor::<2, Int>::ones([p, 1], device), SCAN_BLOCK)
        .reshape([p])
        .sub_scalar(1)
}

/// Sorts `expert_ids` [P] (pair order) by expert with a counting sort made of device ops:
/// one-hot, a running count per expert (rank within the expert), prefix sums of the counts.
/// Stable: pairs of one expert keep their order.
pub fn group_by_expert(
    expert_ids: Tensor<1, Int>,
    num_experts: usize,
    tile_rows: usize,
) -> ExpertGroups {
    let [p] = expert_ids.dims();
    let device = expert_ids.device();
    // burn's one_hot wants two classes at least; a one-expert layer takes a spare column.
    let one_hot: Tensor<2, Int> =
        expert_ids
            .clone()
            .one_hot(num_experts.max(2))
            .narrow(1, 0, num_experts);
    let counts = one_hot.clone().sum_dim(0).reshape([num_experts]);
    let rank = (running_sums(one_hot.clone(), SCAN_BLOCK) * one_hot)
        .sum_dim(1)
        .reshape([p])
        .sub_scalar(1);
    let ends = counts.clone().cumsum(0);
    let starts = ends.clone() - counts.clone();
    let row_of_pair = starts.select(0, expert_ids.clone()) + rank;
    let pair_ids = positions(p, &device);
    // scatter, not select_assign: on the GPU burn's 1-D select_assign runs in one invocation
    // (10 ms at 65,536 pairs); scatter-add is one atomic add per pair.
    let pair_of_row = Tensor::<1, Int>::zeros([p], &device).scatter(
        0,
        row_of_pair.clone(),
        pair_ids,
        burn::tensor::IndexingUpdateOp::Add,
    );
    let expert_of_row = expert_ids.select(0, pair_of_row.clone());
    let zero = Tensor::<1, Int>::zeros([1], &device);
    let offsets = Tensor::cat(vec![zero.clone(), ends], 0);
    let tiles = counts
        .add_scalar(tile_rows as i64 - 1)
        .div_scalar(tile_rows as i64);
    let tile_starts = Tensor::cat(vec![zero, tiles.cumsum(0)], 0);
    ExpertGroups {
        pair_of_row,
        row_of_pair,
        expert_of_row,
        offsets: offsets.cast(IntDType::I32),
        tile_starts: tile_starts.cast(IntDType::I32),
        tile_rows,
    }
}

/// As [`group_by_expert`], in four launches of `gpt_oss_kernels::expert_groups` instead of about
/// 34 (GPU only; the same rows). Up to [`MAX_EXPERTS`] experts.
pub fn group_by_expert_kernel(
    expert_ids: Tensor<1, Int>,
    num_experts: usize,
    tile_rows: usize,
) -> ExpertGroups {
    let sorted =
        expert_groups::expert_groups(expert_ids.cast(IntDType::I32), num_experts, tile_rows);
    ExpertGroups {
        pair_of_row: sorted.pair_of_row,
        row_of_pair: sorted.row_of_pair,
        expert_of_row: sorted.expert_of_row,
        offsets: sorted.offsets,
        tile_starts: sorted.tile_starts,
        tile_rows,
    }
}

/// Whether the experts' pairs are sorted by the kernels of [`group_by_expert_kernel`]: on the
/// GPU kernel path with MXFP4 experts (where the grouped kernels run anyway).
fn sorts_on_kernels(experts: &Experts, path: ExpertPath) -> bool {
    path == ExpertPath::GroupedKernel
        && mxfp4_pair(experts).is_some()
        && experts.gate_up.num_experts() <= MAX_EXPERTS
}

/// The packed gate_up and down weights, when both are MXFP4.
fn mxfp4_pair(experts: &Experts) -> Option<(&PackedMxfp4, &PackedMxfp4)> {
    match (&experts.gate_up, &experts.down) {
        (ExpertMatrix::Mxfp4(gate_up), ExpertMatrix::Mxfp4(down)) => Some((gate_up, down)),
        _ => None,
    }
}

/// `rows` [P, K] sorted by expert times each row's expert matrix -> [P, N].
pub fn grouped_matmul(
    rows: Tensor<2>,
    weights: &ExpertMatrix,
    groups: &ExpertGroups,
    path: ExpertPath,
) -> Tensor<2> {
    match (path, weights) {
        (ExpertPath::GroupedKernel, ExpertMatrix::Mxfp4(packed)) => {
            if groups.tile_rows == FEW_ROWS {
                return gpt_oss_kernels::grouped_mxfp4_rows::grouped_mxfp4_rows_matmul(
                    rows,
                    packed.words.val(),
                    packed.scale_words.val(),
                    groups.offsets.clone(),
                    groups.tile_starts.clone(),
                );
            }
            let tiling = tensor_core_tiling(groups.tile_rows).unwrap_or_else(|| {
                panic!("no grouped kernel takes tiles of {} rows", groups.tile_rows)
            });
            grouped_mxfp4::grouped_mxfp4_matmul(
                rows,
                packed.kernel_weights(),
                groups.kernel_tiles(tiling),
            )
        }
        (ExpertPath::GroupedReferenceBf16, _) | (ExpertPath::GroupedKernel, _) => {
            let rounded = to_nearest_bf16(rows).cast(DType::F32);
            grouped_matmul_reference(rounded, weights, groups)
        }
        _ => grouped_matmul_reference(rows, weights, groups),
    }
}

/// The grouped matmul from burn ops: reads the offsets to the host and runs one product per
/// expert with rows (exact f32).
pub fn grouped_matmul_reference(
    rows: Tensor<2>,
    weights: &ExpertMatrix,
    groups: &ExpertGroups,
) -> Tensor<2> {
    let offsets: Vec<i64> = groups
        .offsets
        .clone()
        .try_into_vec_as::<i64>()
        .expect("integer offsets");
    let pieces: Vec<Tensor<2>> = offsets
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] > w[0])
        .map(|(e, w)| {
            let part = rows
                .clone()
                .narrow(0, w[0] as usize, (w[1] - w[0]) as usize);
            part.matmul(weights.expert(e))
        })
        .collect();
    Tensor::cat(pieces, 0)
}

/// Rows per tile of the tensor-core kernel's tilings (the reference ignores tiles).
pub const TILE_ROWS: usize = SMALL_TILES.m;
pub const LARGE_TILE_ROWS: usize = LARGE_TILES.m;
/// Rows per tile of the few-rows kernel.
pub const FEW_ROWS: usize = gpt_oss_kernels::grouped_mxfp4_rows::ROWS;
/// Up to this many (token, rank) pairs a layer's experts run through the few-rows kernel: 32
/// tokens at k = 4, as many as the per-pair path takes (`moe_pairs::MAX_PAIRS`), so that with
/// MXFP4 experts on the kernel path only a pass with an observer (which the per-pair path has
/// no hook for) sorts so few pairs. From 129 pairs the tensor-core tiles: batch
/// 48 decoded at 1,187.8 tok/s and batch 64 at 1,522.8 with them, against 547.9 and 597.7
/// through the few-rows kernel (step by step, random 20b, H200, docs/benchmarks.md, forty-third
/// round).
pub const FEW_PAIRS: usize = super::moe_pairs::MAX_PAIRS;
/// From this many pairs on, tiles of [`LARGE_TILE_ROWS`] (scoring's 8 x 2048 tokens make
/// 65,536 pairs, about 2,048 rows per expert of 32; below, padding the last tile of each expert
/// to the larger tiles' rows, and decoding every expert's weights first, would cost more than
/// the larger tiles save).
pub const LARGE_TILE_PAIRS: usize = 16384;

/// The tile height for `pairs` (token, rank) pairs.
pub fn tile_rows_for(pairs: usize) -> usize {
    if pairs <= FEW_PAIRS {
        FEW_ROWS
    } else if pairs < LARGE_TILE_PAIRS {
        TILE_ROWS
    } else {
        LARGE_TILE_ROWS
    }
}

/// The packed gate_up and down weights and the tiles, when the experts run on the tensor-core
/// kernel with bias, SwiGLU and gate weights in its epilogues (MXFP4 weights, the grouped
/// kernel path, tensor-core tiles).
fn fused_epilogue_kernels(
    experts: &Experts,
    groups: &ExpertGroups,
    path: ExpertPath,
) -> Option<(PackedWeights, PackedWeights, ExpertTiles)> {
    let (gate_up, down) = mxfp4_pair(experts)?;
    let tiling = tensor_core_tiling(groups.tile_rows)?;
    (path == ExpertPath::GroupedKernel).then(|| {
        (
            gate_up.kernel_weights(),
            down.kernel_weights(),
            groups.kernel_tiles(tiling),
        )
    })
}

/// The tensor-core kernel's tiling with tiles of `rows` rows.
pub fn tensor_core_tiling(rows: usize) -> Option<Tiling> {
    [SMALL_TILES, grouped_mxfp4::large_tiles()]
        .into_iter()
        .find(|t| t.m == rows)
}

/// The experts on `xs` [n, H] for `top_ids` [n, k] with softmax `gates` [n * k] -> [n, H].
pub fn grouped_experts(
    experts: &Experts,
    xs: Tensor<2>,
    top_ids: Tensor<2, Int>,
    gates: Tensor<1>,
    path: ExpertPath,
) -> Tensor<2> {
    let [n, h] = xs.dims();
    let [_, k] = top_ids.dims();
    let num_experts = experts.gate_up.num_experts();
    let (ids, tile_rows) = (top_ids.reshape([n * k]), tile_rows_for(n * k));
    let groups = match sorts_on_kernels(experts, path) {
        true => group_by_expert_kernel(ids, num_experts, tile_rows),
        false => group_by_expert(ids, num_experts, tile_rows),
    };
    let token_of_row = groups.pair_of_row.clone().div_scalar(k as i64);
    let row_weights = gates.select(0, groups.pair_of_row.clone());
    // Each pair's weighted expert output, in pair order (token * k + rank).
    let in_pair_order = match fused_epilogue_kernels(experts, &groups, path) {
        Some((gate_up, down, tiles)) => {
            // gate_up reads the tokens' rows rounded to bf16, through the sorting's index (gathered
            // first by tilings that do not gather in the kernel).
            let act = grouped_mxfp4::grouped_mxfp4_swiglu_gathered(
                xs,
                token_of_row,
                gate_up,
                tiles.clone(),
                experts.gate_up_bias.val(),
                experts.swiglu_limit,
                experts.swiglu_alpha,
            );
            grouped_mxfp4::grouped_mxfp4_scaled(
                act,
                down,
                tiles,
                experts.down_bias.val(),
                row_weights,
                groups.pair_of_row,
            )
        }
        None => {
            let rows = xs.select(0, token_of_row);
            let gate_up = grouped_matmul(rows, &experts.gate_up, &groups, path)
                + experts
                    .gate_up_bias
                    .val()
                    .select(0, groups.expert_of_row.clone());
            let act = swiglu(gate_up, experts.swiglu_limit, experts.swiglu_alpha);
            let down = grouped_matmul(act, &experts.down, &groups, path)
                + experts
                    .down_bias
                    .val()
                    .select(0, groups.expert_of_row.clone());
            (down * row_weights.unsqueeze_dim(1)).select(0, groups.row_of_pair)
        }
    };
    in_pair_order.reshape([n, k, h]).sum_dim(1).reshape([n, h])
}

/// Softmax over the k largest router logits: (gates [n * k], ids [n, k]).
pub fn route(logits: Tensor<2>, k: usize) -> (Tensor<1>, Tensor<2, Int>) {
    let [n, _] = logits.dims();
    let (top_logits, top_ids) = logits.topk_with_indices(k, 1);
    (softmax(top_logits, 1).reshape([n * k]), top_ids)
}
