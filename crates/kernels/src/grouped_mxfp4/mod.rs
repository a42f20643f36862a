//! Grouped MoE matmul with MXFP4 weights decoded inside the kernel.
//!
//! Rows of `a` [P, K] are sorted by expert: expert e owns rows `offsets[e]..offsets[e + 1]`.
//! Each workgroup computes one `tm x tn` tile of `out = a_e x W_e^T` for one expert, with W_e
//! [N, K] read from the checkpoint's MXFP4 words (8 nibbles per u32, low nibble first) and
//! scale bytes (packed four to a u32) and decoded to bf16 in shared memory one K step (whole
//! 32-wide blocks) at a time; the products run on the tensor cores (workgroup-scope cooperative
//! matrices). The rows of `a` are staged in shared memory too (`staged_tiles`). Each step
//! decodes its words and stores its rows, then loads the next step's words and rows into
//! registers while the tensor cores multiply (staging the rows took the kernel from 96 to 124
//! TF/s at scoring's size, and storing the decoded weights in 16-byte words into padded rows
//! to 141; a second shared stage was measured earlier and removed: docs/benchmarks.md).
//! With `Tiling::decoded` (scoring's large tiles) the launch first decodes every
//! expert's weights to bf16 in global memory (`decode_experts_kernel`), and the product stages
//! each step's weight rows from there exactly as it stages its input rows: each weight tile is
//! otherwise decoded again by every row tile of its expert (eight at scoring's 2,048 rows per
//! expert), and the decoding sits between the step's loads and its product.
//! Which expert and row tile a workgroup takes comes from `tile_starts` (prefix sums of
//! ceil(count / tm)), computed on the device: no host round trip. The grid is sized for the
//! worst case (ceil(P / tm) + E tiles); workgroups past the last tile exit at once.
//!
//! Epilogues (issue 7's "gate_up with bias, clamp and SwiGLU fused; down with the gate weight
//! fused"): a workgroup-scope accumulator can only be stored whole, and a 256 x 128 f32 tile
//! does not fit in shared memory, so the tile is stored to the output, a storage barrier makes
//! it visible to the whole workgroup, and the invocations read it back (from cache) to add the
//! expert's bias and write either the clamped SwiGLU [P, N / 2] (in bf16: the down product's
//! input) or the product times each row's gate weight, written to the row of its (token,
//! rank) pair (so a token's sum over its pairs reads them without a gather), in the same launch.
//!
//! Files: `decode` (MXFP4 codes to values, a K step of weights into shared memory, all
//! experts to bf16),
//! `kernel` (the tiled product and its epilogues), `warps` (the same product with subgroup-scope
//! fragments, `Tiling::warps`), `extension` (the burn backend ops and the launch); the tilings
//! and the functions on burn tensors are here.

mod decode;
mod extension;
mod kernel;
mod warps;

pub(crate) use decode::{fp4_value, scale_value};
pub use extension::GroupedBackend;
pub(crate) use kernel::expert_of_tile;

use crate::bf16_nearest::to_nearest_bf16;
use burn::tensor::{Int, IntDType, Tensor};

use crate::tile_order::TileOrder;

/// Tile shape and decoding scheme of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Rows per tile (the tiles `tile_starts` counts).
    pub m: usize,
    /// Output columns per tile.
    pub n: usize,
    /// K step: a multiple of 32 (whole MXFP4 blocks).
    pub k: usize,
    /// FP4 values from a 16-entry table in shared memory instead of arithmetic.
    pub table: bool,
    /// The launch first decodes every expert's weights to bf16 in global memory (one extra
    /// launch, a scratch buffer of E x N x K bf16, freed with the launch), and the product
    /// stages them like its input rows instead of decoding each step's words in the workgroup.
    /// Pays where each weight tile serves many row tiles (scoring); the weights at rest stay
    /// MXFP4.
    pub decoded: bool,
    /// With `decoded`: each subgroup multiplies its own block of the tile as 16 x 16 x 16
    /// fragments (`warps.rs`), loading the decoded rows of K as column-major fragments, instead
    /// of one workgroup-scope matrix per tile. Where N is not whole fragments the launch takes
    /// the workgroup-scope kernel ([`Tiling::warp_block`]). The experts turned K-major first
    /// (row-major B, as the dense GEMM stages its rhs) scored 1% less, the turn costing more
    /// than the decoding (docs/benchmarks.md, twenty-third and twenty-fourth rounds).
    pub warps: bool,
    /// With `warps`: the fused epilogues (SwiGLU, scaled) read each subgroup's fragments
    /// through shared memory, instead of the products stored to global memory and read back
    /// (which for scoring's gate_up is 1.5 GB written and read per layer). The launch then
    /// allocates no [P, N] f32 products.
    pub fragment_epilogues: bool,
    /// With `warps`: gate_up reads its rows from the tokens' rows through the sorting's index
    /// (`grouped_mxfp4_swiglu_gathered`), instead of from rows gathered by a launch before.
    pub gathered: bool,
    /// Which tiles the workgroups take first (`tile_order`).
    pub order: TileOrder,
}

impl Tiling {
    /// One number per tiling (how burn-fusion tells launches apart).
    pub fn code(&self) -> u64 {
        self.m as u64
            | (self.n as u64) << 16
            | (self.k as u64) << 32
            | (self.table as u64) << 48
            | (self.order.columns_first() as u64) << 49
            | (self.decoded as u64) << 50
            | (self.warps as u64) << 51
            | (self.fragment_epilogues as u64) << 52
            | (self.gathered as u64) << 53
    }

    /// This tiling as a launch of a product with K columns takes it: a K step that divides K
    /// (else 32, one MXFP4 block: every K is whole blocks).
    pub fn for_product(self, k: usize) -> Tiling {
        match k.is_multiple_of(self.k) {
            true => self,
            false => Tiling { k: 32, ..self },
        }
    }

    /// Whether both stages, the `m x k` rows and the `n x k` weights, split into whole 16-byte
    /// words over the kernel's [`UNITS`] invocations, as the kernel loads them.
    pub fn stages_split_into_words(&self) -> bool {
        use crate::staged_tiles::whole_words_per_unit;
        whole_words_per_unit(self.m, self.k, UNITS) && whole_words_per_unit(self.n, self.k, UNITS)
    }

    /// Whether a launch of an N-wide product with this tiling reads its rows through an index
    /// (`gathered`, on the subgroup-scope kernel).
    pub fn gathers_rows(&self, n: usize) -> bool {
        self.gathered && self.warp_block(n).is_some()
    }

    /// Each subgroup's block (rows, columns) when the subgroup-scope kernel takes an N-wide
    /// product with this tiling (`warps` with the weights decoded first, N and the tile in
    /// whole fragments), else `None` (the workgroup-scope kernel, weights as rows of K).
    pub fn warp_block(&self, n: usize) -> Option<(usize, usize)> {
        use crate::coopmat_warps::{FRAGMENT, warp_tile};
        let whole = n.is_multiple_of(FRAGMENT) && self.k.is_multiple_of(FRAGMENT);
        match self.warps && self.decoded && whole {
            true => warp_tile(self.m, self.n, UNITS),
            false => None,
        }
    }
}

/// Tiles of 64 rows: little padding when experts have a few hundred rows each.
pub const SMALL_TILES: Tiling = Tiling {
    m: 64,
    n: 128,
    k: 32,
    table: true,
    decoded: false,
    warps: false,
    fragment_epilogues: false,
    gathered: false,
    order: TileOrder::ColumnsFirst,
};

/// Tiles of 128 x 320 for scoring's thousands of rows per expert: the weights decoded to bf16
/// before the product (`decoded`), each subgroup multiplying its own 64 x 80 block (`warps`),
/// the epilogues read from the fragments (`fragment_epilogues`), gate_up's rows read through the
/// sorting's index (`gathered`), column tiles first. 320 columns are whole tiles at gate_up's
/// 5760 and down's 2880, where 256 leaves down's last column tile a quarter full. Each choice won
/// a same-call comparison (docs/benchmarks.md, nineteenth to twenty-fifth rounds); the last two,
/// on an H200: rows read through the index, scoring 24,121 and 24,132 tok/s against 23,680 and
/// 23,626; 320 columns against 256, 25,684 and 25,646 against 24,219 and 24,215 (gate_up 192.6
/// against 177.5 TF/s; 192 columns: 167.8).
pub const LARGE_TILES: Tiling = Tiling {
    m: 128,
    n: 320,
    k: 32,
    table: true,
    decoded: true,
    warps: true,
    fragment_epilogues: true,
    gathered: true,
    order: TileOrder::ColumnsFirst,
};

static LARGE: std::sync::Mutex<Tiling> = std::sync::Mutex::new(LARGE_TILES);

/// Sets the tiling later launches take for large tiles (benchmarks compare several). Panics
/// unless it has [`LARGE_TILES`]' rows: the routing counts its tiles in those.
pub fn set_large_tiles(tiling: Tiling) {
    assert_eq!(
        tiling.m, LARGE_TILES.m,
        "large grouped tiles must have {} rows",
        LARGE_TILES.m
    );
    *LARGE.lock().expect("large tiles lock") = tiling;
}

/// The tiling of large tiles: [`LARGE_TILES`] unless [`set_large_tiles`] chose another.
pub fn large_tiles() -> Tiling {
    *LARGE.lock().expect("large tiles lock")
}

/// Invocations per workgroup.
pub const UNITS: u32 = 256;

/// MXFP4 expert weights as the kernels read them: `words` [E, N, K / 8] and `scales` [E, S]
/// (32-bit ints).
#[derive(Clone)]
pub struct PackedWeights {
    pub words: Tensor<3, Int>,
    pub scales: Tensor<2, Int>,
}

/// Rows sorted by expert: `offsets` and `tile_starts` [E + 1] (32-bit; `tile_starts` counts
/// tiles of `tiling.m` rows), and the tiling.
#[derive(Clone)]
pub struct ExpertTiles {
    pub offsets: Tensor<1, Int>,
    pub tile_starts: Tensor<1, Int>,
    pub tiling: Tiling,
}

/// The kernel through burn tensors: `a` [P, K] is rounded to bf16 -> [P, N].
pub fn grouped_mxfp4_matmul(a: Tensor<2>, weights: PackedWeights, tiles: ExpertTiles) -> Tensor<2> {
    let a = to_nearest_bf16(a);
    Tensor::from_dispatch(
        <burn::backend::Dispatch as GroupedBackend>::grouped_mxfp4_matmul(
            a.into_dispatch(),
            weights.words.into_dispatch(),
            weights.scales.into_dispatch(),
            tiles.offsets.into_dispatch(),
            tiles.tile_starts.into_dispatch(),
            tiles.tiling,
        ),
    )
}

/// Every expert of `weights` decoded to bf16, [E, N, K]: what a launch with `Tiling::decoded`
/// reads (checked and timed by `bench kernel-check`), in one buffer, so at most 2 GiB on wgpu
/// (the launches themselves decode 1 GiB of experts at a time).
pub fn decoded_expert_weights(weights: PackedWeights) -> Tensor<3> {
    Tensor::from_dispatch(
        <burn::backend::Dispatch as GroupedBackend>::decoded_mxfp4_experts(
            weights.words.into_dispatch(),
            weights.scales.into_dispatch(),
        ),
    )
}

/// gate_up with `bias` [E, N] and the clamped SwiGLU fused: `a` [P, K] -> [P, N / 2] bf16.
pub fn grouped_mxfp4_swiglu(
    a: Tensor<2>,
    weights: PackedWeights,
    tiles: ExpertTiles,
    bias: Tensor<2>,
    limit: f32,
    alpha: f32,
) -> Tensor<2> {
    let a = to_nearest_bf16(a);
    Tensor::from_dispatch(
        <burn::backend::Dispatch as GroupedBackend>::grouped_mxfp4_swiglu(
            a.into_dispatch(),
            weights.words.into_dispatch(),
            weights.scales.into_dispatch(),
            tiles.offsets.into_dispatch(),
            tiles.tile_starts.into_dispatch(),
            bias.into_dispatch(),
            tiles.tiling,
            limit,
            alpha,
        ),
    )
}

/// As [`grouped_mxfp4_swiglu`] on the rows `tokens.select(0, rows_of)`: `tokens` [T, K] (rounded
/// to bf16), `rows_of` [P] the token of each sorted row -> [P, N / 2] bf16. Tilings that gather
/// ([`Tiling::gathers_rows`]) read the rows in the kernel; the others take them gathered first.
#[allow(clippy::too_many_arguments)]
pub fn grouped_mxfp4_swiglu_gathered(
    tokens: Tensor<2>,
    rows_of: Tensor<1, Int>,
    weights: PackedWeights,
    tiles: ExpertTiles,
    bias: Tensor<2>,
    limit: f32,
    alpha: f32,
) -> Tensor<2> {
    let tokens = to_nearest_bf16(tokens);
    let n = weights.words.dims()[1];
    if !tiles.tiling.gathers_rows(n) {
        let rows = tokens.select(0, rows_of);
        return grouped_mxfp4_swiglu(rows, weights, tiles, bias, limit, alpha);
    }
    Tensor::from_dispatch(
        <burn::backend::Dispatch as GroupedBackend>::grouped_mxfp4_swiglu_gathered(
            tokens.into_dispatch(),
            rows_of.cast(IntDType::I32).into_dispatch(),
            weights.words.into_dispatch(),
            weights.scales.into_dispatch(),
            tiles.offsets.into_dispatch(),
            tiles.tile_starts.into_dispatch(),
            bias.into_dispatch(),
            tiles.tiling,
            limit,
            alpha,
        ),
    )
}

/// down with `bias` [E, N] and each row's weight `row_weights` [P] fused, each sorted row
/// written to its pair's row `pair_of_row` [P]: `a` [P, K] -> [P, N] in pair order.
pub fn grouped_mxfp4_scaled(
    a: Tensor<2>,
    weights: PackedWeights,
    tiles: ExpertTiles,
    bias: Tensor<2>,
    row_weights: Tensor<1>,
    pair_of_row: Tensor<1, Int>,
) -> Tensor<2> {
    let a = to_nearest_bf16(a);
    Tensor::from_dispatch(
        <burn::backend::Dispatch as GroupedBackend>::grouped_mxfp4_scaled(
            a.into_dispatch(),
            weights.words.into_dispatch(),
            weights.scales.into_dispatch(),
            tiles.offsets.into_dispatch(),
            tiles.tile_starts.into_dispatch(),
            bias.into_dispatch(),
            row_weights.into_dispatch(),
            pair_of_row.cast(IntDType::I32).into_dispatch(),
            tiles.tiling,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_tiles_take_subgroup_fragments_on_gpt_oss_experts_and_fall_back_elsewhere() {
        // gpt-oss's gate_up (N = 5760) and down (N = 2880): 64 x 80 blocks per subgroup.
        assert_eq!(LARGE_TILES.warp_block(5760), Some((64, 80)));
        assert_eq!(LARGE_TILES.warp_block(2880), Some((64, 80)));
        // N not whole fragments: the workgroup-scope kernel.
        assert_eq!(LARGE_TILES.warp_block(200), None);
        assert_eq!(SMALL_TILES.warp_block(5760), None);
        // Nor without the weights decoded first (the fragments read them decoded).
        let packed = Tiling {
            decoded: false,
            ..LARGE_TILES
        };
        assert_eq!(packed.warp_block(5760), None);
    }

    #[test]
    fn the_model_tilings_stages_split_into_whole_words_and_a_160_wide_one_does_not() {
        assert!(LARGE_TILES.stages_split_into_words());
        assert!(SMALL_TILES.stages_split_into_words());
        // 160 x 32 values are 640 words, not a multiple of 256 invocations.
        let uneven = Tiling {
            n: 160,
            ..LARGE_TILES
        };
        assert!(!uneven.stages_split_into_words());
    }

    #[test]
    fn a_launch_takes_a_k_step_that_divides_k() {
        // gpt-oss's K keeps the tiling.
        assert_eq!(LARGE_TILES.for_product(2880), LARGE_TILES);
        // A K step of 64 on K = 2880 + 32: one MXFP4 block per step.
        let step_64 = Tiling {
            k: 64,
            ..LARGE_TILES
        };
        assert_eq!(step_64.for_product(2912).k, 32);
        assert_eq!(step_64.for_product(2944).k, 64);
    }
}
