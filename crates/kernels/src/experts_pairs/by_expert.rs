//! The per-pair path's experts taken expert by expert (`by_expert_kernels.rs`): the same
//! inputs and results as [`super::pairs_gate_up`] and [`super::pairs_down`], with each weight
//! decoded once per chunk of the pairs routed to its expert instead of once per pair. Three
//! launches where the per-pair kernels take two: the down products are written per pair, then
//! each token's k of them are added up.

use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use super::by_expert_kernels::{experts_down_kernel, experts_gate_up_kernel, sum_ranks_kernel};
use super::{BLOCK, LANES, MAX_LISTED, SHARED_INPUT_BYTES, blocks_per_lane, row_bytes};
use crate::launch::{empty_f32, same_dtype};

/// A by-expert kernel's workgroup: `planes` planes of [`LANES`] invocations (at least
/// `MAX_LISTED / 32`: one invocation per pair lists the expert's pairs), each plane taking
/// `columns_per_plane` output columns, and input rows multiplied `chunk_rows` at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertShape {
    pub columns_per_plane: u32,
    pub planes: u32,
    pub chunk_rows: u32,
}

impl ExpertShape {
    /// Whether the kernels take this workgroup: 4 to 32 planes, 1 to 8 columns per plane
    /// (each column's weight rows held in registers), 1 to 8 rows per chunk (each row's sums
    /// held in registers).
    pub fn is_supported(self) -> bool {
        (MAX_LISTED as u32 / LANES..=32).contains(&self.planes)
            && (1..=8).contains(&self.columns_per_plane)
            && (1..=8).contains(&self.chunk_rows)
    }

    /// Output columns one workgroup takes.
    fn columns(self) -> usize {
        (self.planes * self.columns_per_plane) as usize
    }
}

/// The workgroup the model takes for `experts_gate_up`: sixteen planes of two columns, four
/// rows per chunk, the weights loaded after listing the pairs. `bench kernel-check
/// --decode-timings --only by_expert` (H200, 2026-11-29, microseconds per launch in replayed
/// graphs) at 32 tokens: 514 / 502 / 498 against 627 / 624 for the per-pair kernel, 567-580
/// for two rows per chunk, 694 for eight planes of four; at 24 tokens 417 against 476 per pair
/// (455 for two rows); at 16 tokens 322 against 323 per pair; below, the per-pair kernels are
/// faster (4 tokens: 120-141 against 90). Loading the weights before listing the pairs (so that
/// their latencies overlap) changed nothing at 32 tokens and lost below: not kept. With the
/// block scale in the rows' fused adds (forty-third round): 496 / 393 / 306 us at 32 / 24 / 16
/// tokens, against 510-512 / 408-416 / 319-323 before; eight planes of two rows now tie it at
/// 16 tokens (305) and lose at 32 (533).
pub const BY_EXPERT_GATE_UP_SHAPE: ExpertShape = ExpertShape {
    columns_per_plane: 2,
    planes: 16,
    chunk_rows: 4,
};

/// The workgroup the model takes for `experts_down`: as [`BY_EXPERT_GATE_UP_SHAPE`] with two
/// rows per chunk. The same timings: 289 us at 32 tokens against 317 for four rows and 353 per
/// pair; 240 against 262 and 272 at 24 tokens; 175 against 207 and 188 at 16 tokens. With the
/// block scale in the rows' fused adds (forty-third round): 268 / 219 / 154 us at 32 / 24 / 16
/// tokens, against 300-304 / 238-241 / 171-176 before.
pub const BY_EXPERT_DOWN_SHAPE: ExpertShape = ExpertShape {
    chunk_rows: 2,
    ..BY_EXPERT_GATE_UP_SHAPE
};

/// Whether the by-expert kernels take `hidden` and `inter` widths, `pairs` pairs and `shape`:
/// MXFP4 blocks of 32 along K, at most [`MAX_LISTED`] pairs, `chunk_rows` input rows within
/// the shared memory a workgroup may take.
pub fn supports_by_expert(hidden: usize, inter: usize, pairs: usize, shape: ExpertShape) -> bool {
    let chunk = shape.chunk_rows as usize;
    hidden.is_multiple_of(32)
        && inter.is_multiple_of(32)
        && pairs <= MAX_LISTED
        && shape.is_supported()
        && chunk * row_bytes(hidden.max(inter)) <= SHARED_INPUT_BYTES
}

/// GPU extension ops; only the CubeCL backend implements them.
#[backend_extension(Cube, Fusion)]
pub trait ByExpertBackend: burn::backend::Backend {
    /// As `pairs_gate_up`: `x` [n, H], `routing` [m, 2k] (m >= n), gate_up `words` [E, 2I, H /
    /// 8] and `scales`, `bias` [E, 2I] -> [n * k, I].
    #[fusion(dtype = same_dtype(x), shape = Shape::from(vec![x[0] * routing[1] / 2, words[1] / 2]))]
    #[allow(clippy::too_many_arguments)]
    fn experts_gate_up(
        x: FloatTensor<Self>,
        routing: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        bias: FloatTensor<Self>,
        limit: f32,
        alpha: f32,
        columns_per_plane: u32,
        planes: u32,
        chunk_rows: u32,
    ) -> FloatTensor<Self>;

    /// As `pairs_down`: `act` [n * k, I], `routing` [m, 2k], down `words` [E, H, I / 8] and
    /// `scales`, `bias` [E, H] -> [n, H], plus `residual` [n, H] when `has_residual`.
    #[fusion(dtype = same_dtype(act), shape = Shape::from(vec![act[0] / (routing[1] / 2), words[1]]))]
    #[allow(clippy::too_many_arguments)]
    fn experts_down(
        act: FloatTensor<Self>,
        routing: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        has_residual: bool,
        columns_per_plane: u32,
        planes: u32,
        chunk_rows: u32,
    ) -> FloatTensor<Self>;
}

impl ByExpertBackend for CubeBackend {
    fn experts_gate_up(
        x: CubeTensor,
        routing: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        bias: CubeTensor,
        limit: f32,
        alpha: f32,
        columns_per_plane: u32,
        planes: u32,
        chunk_rows: u32,
    ) -> CubeTensor {
        let [x, routing, words, scales, bias] =
            [x, routing, words, scales, bias].map(into_contiguous);
        let [tokens, hidden] = [x.meta.shape()[0], x.meta.shape()[1]];
        let top_k = routing.meta.shape()[1] / 2;
        let [experts, width] = [words.meta.shape()[0], words.meta.shape()[1]];
        let inter = width / 2;
        let shape = ExpertShape {
            columns_per_plane,
            planes,
            chunk_rows,
        };
        assert!(
            routing.meta.shape()[0] >= tokens
                && supports_by_expert(hidden, inter, tokens * top_k, shape),
            "experts_gate_up: {tokens} tokens of {hidden} by {inter}, {top_k} experts each, {shape:?}"
        );
        let scale_words = scales.meta.shape()[1];
        let out = empty_f32(&x, vec![tokens * top_k, inter]);
        let blocks_per_row = hidden / BLOCK as usize;
        // Safety: every index is in bounds for the shapes checked above (rows past the end
        // read row 0, blocks past the row are not read, listed pairs are below `pairs`).
        unsafe {
            experts_gate_up_kernel::launch_unchecked(
                &x.client.clone(),
                CubeCount::Static(experts as u32, inter.div_ceil(shape.columns()) as u32, 1),
                CubeDim::new_2d(LANES, planes),
                x.into_buffer_arg(),
                routing.into_buffer_arg(),
                words.into_buffer_arg(),
                scales.into_buffer_arg(),
                bias.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                blocks_per_row as u32,
                inter as u32,
                scale_words as u32,
                top_k as u32,
                (tokens * top_k) as u32,
                limit,
                alpha,
                blocks_per_lane(blocks_per_row),
                columns_per_plane as usize,
                chunk_rows as usize,
            )
        };
        out
    }

    fn experts_down(
        act: CubeTensor,
        routing: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        bias: CubeTensor,
        residual: CubeTensor,
        has_residual: bool,
        columns_per_plane: u32,
        planes: u32,
        chunk_rows: u32,
    ) -> CubeTensor {
        let [act, routing, words, scales, bias, residual] =
            [act, routing, words, scales, bias, residual].map(into_contiguous);
        let inter = act.meta.shape()[1];
        let top_k = routing.meta.shape()[1] / 2;
        let pairs = act.meta.shape()[0];
        let tokens = pairs / top_k;
        let [experts, hidden] = [words.meta.shape()[0], words.meta.shape()[1]];
        let shape = ExpertShape {
            columns_per_plane,
            planes,
            chunk_rows,
        };
        assert!(
            routing.meta.shape()[0] >= tokens && supports_by_expert(hidden, inter, pairs, shape),
            "experts_down: {tokens} tokens of {inter} by {hidden}, {top_k} experts each, {shape:?}"
        );
        let scale_words = scales.meta.shape()[1];
        let pair_out = empty_f32(&act, vec![pairs, hidden]);
        let out = empty_f32(&act, vec![tokens, hidden]);
        let blocks_per_row = inter / BLOCK as usize;
        let client = act.client.clone();
        // Safety: as for `experts_gate_up`; every pair is some expert's, so each row of
        // `pair_out` is written before `sum_ranks_kernel` reads it.
        unsafe {
            experts_down_kernel::launch_unchecked(
                &client,
                CubeCount::Static(experts as u32, hidden.div_ceil(shape.columns()) as u32, 1),
                CubeDim::new_2d(LANES, planes),
                act.into_buffer_arg(),
                routing.clone().into_buffer_arg(),
                words.into_buffer_arg(),
                scales.into_buffer_arg(),
                bias.into_buffer_arg(),
                pair_out.clone().into_buffer_arg(),
                blocks_per_row as u32,
                hidden as u32,
                scale_words as u32,
                top_k as u32,
                pairs as u32,
                blocks_per_lane(blocks_per_row),
                columns_per_plane as usize,
                chunk_rows as usize,
            );
            let values = tokens * hidden;
            sum_ranks_kernel::launch_unchecked(
                &client,
                CubeCount::Static(values.div_ceil(SUM_UNITS as usize) as u32, 1, 1),
                CubeDim::new_1d(SUM_UNITS),
                pair_out.into_buffer_arg(),
                residual.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                hidden as u32,
                values as u32,
                top_k,
                has_residual,
            )
        };
        out
    }
}

/// Invocations per workgroup of `sum_ranks_kernel`.
const SUM_UNITS: u32 = 256;

/// As [`super::pairs_gate_up`], expert by expert, workgroups of `shape`
/// ([`BY_EXPERT_GATE_UP_SHAPE`] unless measuring another). GPU only.
#[allow(clippy::too_many_arguments)]
pub fn experts_gate_up(
    x: Tensor<2>,
    routing: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    bias: Tensor<2>,
    limit: f32,
    alpha: f32,
    shape: ExpertShape,
) -> Tensor<2> {
    Tensor::from_dispatch(
        <burn::backend::Dispatch as ByExpertBackend>::experts_gate_up(
            x.into_dispatch(),
            routing.into_dispatch(),
            words.into_dispatch(),
            scales.into_dispatch(),
            bias.into_dispatch(),
            limit,
            alpha,
            shape.columns_per_plane,
            shape.planes,
            shape.chunk_rows,
        ),
    )
}

/// As [`super::pairs_down`], expert by expert, workgroups of `shape`
/// ([`BY_EXPERT_DOWN_SHAPE`] unless measuring another). GPU only.
pub fn experts_down(
    act: Tensor<2>,
    routing: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    bias: Tensor<2>,
    residual: Option<Tensor<2>>,
    shape: ExpertShape,
) -> Tensor<2> {
    let has_residual = residual.is_some();
    // Without a residual the kernel reads none: pass the bias as the unread buffer.
    let residual = residual.unwrap_or_else(|| bias.clone());
    Tensor::from_dispatch(<burn::backend::Dispatch as ByExpertBackend>::experts_down(
        act.into_dispatch(),
        routing.into_dispatch(),
        words.into_dispatch(),
        scales.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
        has_residual,
        shape.columns_per_plane,
        shape.planes,
        shape.chunk_rows,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernels_compile_for_the_model_shapes() {
        // 20b's 2880-wide rows: 90 blocks of 32 inputs.
        let blocks = blocks_per_lane(2880 / BLOCK as usize);
        let shape = BY_EXPERT_GATE_UP_SHAPE;
        let gate_up = compile_kernel!(
            experts_gate_up_kernel::ExpertsGateUpKernel,
            CubeDim::new_2d(LANES, shape.planes),
            [b b b b b b s s s s s s s],
            blocks,
            shape.columns_per_plane as usize,
            shape.chunk_rows as usize,
        );
        assert_eq!(gate_up, Ok(()));
        let shape = BY_EXPERT_DOWN_SHAPE;
        let down = compile_kernel!(
            experts_down_kernel::ExpertsDownKernel,
            CubeDim::new_2d(LANES, shape.planes),
            [b b b b b b s s s s s],
            blocks,
            shape.columns_per_plane as usize,
            shape.chunk_rows as usize,
        );
        assert_eq!(down, Ok(()));
        for has_residual in [true, false] {
            let sum = compile_kernel!(
                sum_ranks_kernel::SumRanksKernel,
                CubeDim::new_1d(SUM_UNITS),
                [b b b s s],
                4,
                has_residual,
            );
            assert_eq!(sum, Ok(()), "residual {has_residual}");
        }
    }

    /// The model's workgroups and widths are supported; fewer planes than listing takes, more
    /// pairs than it lists, or chunks past the shared memory are not.
    #[test]
    fn supports_the_model_shapes_and_refuses_what_does_not_fit() {
        let shape = BY_EXPERT_GATE_UP_SHAPE;
        assert!(supports_by_expert(2880, 2880, MAX_LISTED, shape));
        assert!(!supports_by_expert(2880, 2880, MAX_LISTED + 1, shape));
        assert!(!supports_by_expert(2880, 2880 + 16, 4, shape));
        let three_planes = ExpertShape { planes: 3, ..shape };
        assert!(!supports_by_expert(2880, 2880, 4, three_planes));
        let eight_rows = ExpertShape {
            chunk_rows: 8,
            ..BY_EXPERT_GATE_UP_SHAPE
        };
        // Eight 2880-wide rows take 61,440 bytes of shared memory.
        assert!(!supports_by_expert(2880, 2880, 4, eight_rows));
        assert!(supports_by_expert(64, 96, 4, eight_rows));
    }
}
