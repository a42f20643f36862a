//! The MoE experts for a few tokens, straight from the router's table (`router_top_k`): no sort.
//!
//! The grouped path sorts (token, rank) pairs by expert (about 25 burn kernels per layer) so
//! that an expert's weights are read once for all its tokens. At batch-1 decoding each token
//! has its own k experts and the sort buys nothing: here each workgroup reads its pair's expert
//! id from the routing table. Two kernels per layer:
//! - [`pairs_gate_up`]: gate_up product, bias, clamp and SwiGLU fused -> [pairs, I];
//! - [`pairs_down`]: down product and bias for each of a token's k pairs, weighted by the gates
//!   and summed, plus the decoder layer's residual when given -> [tokens, H].
//!
//! Weights stay MXFP4 (decoded in the kernel through a 16-entry table in shared memory);
//! activations are rounded to bf16 before the products, as the grouped kernels round them, and
//! sit in shared memory as pairs of bf16. A workgroup has `planes` planes of [`LANES`]
//! invocations; each plane takes `columns_per_plane` output columns at each of `turns` turns
//! (the next turn's weight loads issued before this turn's products; the input rows staged
//! once for all turns: [`PlaneShape`]). Along K, invocation `lane`
//! owns MXFP4 blocks `lane`, `lane + 32`, ... and reads each block's 16 bytes of weights as one
//! four-word load, every weight load of the workgroup's rows (for `pairs_down`, of all k
//! experts) issued before any is used: decoding is bound by memory latency. Each block's 32
//! inputs are read from shared memory once into registers and used for all of the plane's
//! rows (shared-memory reads, not the weights, limited the first version). The plane's partial
//! sums are added with a subgroup sum.
//!
//! [`experts_gate_up`] and [`experts_down`] (`by_expert.rs`) take the same inputs expert by
//! expert, each weight decoded once per chunk of its pairs (four for gate_up, two for down):
//! faster from 16 tokens.

use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{empty_f32, same_dtype};
use kernels::{pairs_down_kernel, pairs_gate_up_kernel};

pub use by_expert::{
    BY_EXPERT_DOWN_SHAPE, BY_EXPERT_GATE_UP_SHAPE, ExpertShape, experts_down, experts_gate_up,
    supports_by_expert,
};

mod by_expert;
mod by_expert_kernels;
mod kernels;
mod lanes;

const LANES: u32 = 32;
/// A per-pair kernel's workgroup: `planes` planes of [`LANES`] invocations, each plane taking
/// `columns_per_plane` output columns at each of `turns` turns (the next turn's weights loaded
/// during this turn's products).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneShape {
    pub columns_per_plane: u32,
    pub planes: u32,
    pub turns: u32,
}

impl PlaneShape {
    /// Whether the kernels take this workgroup: 1 to 32 planes (at most 1024 invocations) of
    /// 1 to 8 columns each (each column's weight rows are held in registers), 1 to 16 turns
    /// (each unrolled in the kernel's code).
    pub fn is_supported(self) -> bool {
        (1..=32).contains(&self.planes)
            && (1..=8).contains(&self.columns_per_plane)
            && (1..=16).contains(&self.turns)
    }

    /// Output columns one workgroup takes over all its turns.
    fn columns(self) -> usize {
        (self.planes * self.columns_per_plane * self.turns) as usize
    }
}

/// The workgroup of [`pairs_gate_up`] the model takes (for any number of tokens): eight planes,
/// one turn. `bench kernel-check --decode-timings` (H100, 2026-11-27, clocks warm, two calls;
/// microseconds per launch): at one token 35.1 / 36.5 against 36.1-41.1 for eight planes of two
/// turns and sixteen of one or two; at 8 tokens 160.8 against 173-193, at 32 tokens 591.0
/// against 610-678.
pub const GATE_UP_SHAPE: PlaneShape = PlaneShape {
    columns_per_plane: GATE_UP_COLUMNS_PER_PLANE,
    planes: 8,
    turns: 1,
};

/// The workgroup of [`pairs_down`] the model takes for `tokens` tokens: sixteen planes, of two
/// turns from [`MANY_TOKENS`] and of one turn below (the measurement of [`GATE_UP_SHAPE`]: at 32
/// tokens 355 us against 496 for eight planes of one turn and 403 for sixteen of one; at 8
/// tokens 110 against 145 and 119).
pub fn down_shape(tokens: usize) -> PlaneShape {
    let turns = if tokens >= MANY_TOKENS { 2 } else { 1 };
    PlaneShape {
        columns_per_plane: DOWN_COLUMNS_PER_PLANE,
        planes: 16,
        turns,
    }
}

/// Tokens from which [`down_shape`] takes two turns. H200, forty-fifth round. `bench
/// kernel-check --decode-timings`, us per launch at 1 / 2 / 3 / 4 / 6 tokens: eight planes of
/// one turn 36.5 / 69.9 / 88.4 / 114.9 / 163.6, sixteen of one 32.7 / 40.1 / 61.4 / 73.2 /
/// 103.0, sixteen of two 26.6 / 42.7 / 61.3 / 64.6 / 93.1. On a random 20b, sixteen planes of two
/// turns decoded batch 3, 4 and 6 7-13% faster per step than eight of one, and batch 1 9-12%
/// slower, although its launch alone was faster: at one token two turns make 90 workgroups
/// (2,880 columns in 32 a workgroup) on 132 multiprocessors, and a decoding layer's chained
/// launches (`--only layer_chain`) took 161 us against 139. Sixteen planes of one turn (180
/// workgroups at one token) took the chained layer in 126-132 us against 140-142 for eight
/// planes, and decoded batch 2 at 430 tok/s per step against 385; batch 1 was not decoded with
/// it.
pub const MANY_TOKENS: usize = 3;
/// Output columns per plane of `pairs_gate_up` (two weight rows each: gate and up). `bench
/// kernel-check --decode-timings` on an H100 at 20b's shapes, 1 / 2 / 4: 36 / 116 / 152 us
/// at one token, 592 / 595 / 708 us at 32 (eighth round, before the timings warmed the GPU's
/// clocks: the one-token figures of 2 and 4 may be the clocks', not the registers').
const GATE_UP_COLUMNS_PER_PLANE: u32 = 1;
/// Output columns per plane of `pairs_down` (k weight rows each, one per expert); the same
/// measurement: 32 / 95 / 143 us at one token, 493 / 430 / 774 us at 32.
const DOWN_COLUMNS_PER_PLANE: u32 = 1;
/// Inputs per MXFP4 block: four u32 words of eight 4-bit codes, and one scale byte.
const BLOCK: u32 = 32;
/// Four-word vectors (eight bf16 inputs each) per block of inputs in shared memory: four, plus
/// one of padding so that the eight invocations of a quarter plane read different banks.
const BLOCK_VECTORS: u32 = 5;
/// Shared memory one workgroup may take for its input rows (Vulkan's guaranteed minimum is
/// 16 KiB; every desktop GPU offers 48 KiB).
const SHARED_INPUT_BYTES: usize = 48 * 1024 - 1024;
/// Most pairs the by-expert kernels list per launch (one invocation each): 32 tokens at k = 4,
/// the model's per-pair path's most.
const MAX_LISTED: usize = 128;

/// Four consecutive u32 words: one MXFP4 block of weights, or eight bf16 inputs.
type Words = Vector<u32, Const<4>>;
type Four = Vector<f32, Const<4>>;

/// GPU extension ops; only the CubeCL backend implements them.
#[backend_extension(Cube, Fusion)]
pub trait PairsBackend: burn::backend::Backend {
    /// `x` [n, H], `routing` [m, 2k] with m >= n (`router_top_k`; rows past n unread), gate_up
    /// `words` [E, 2I, H / 8] and `scales`, `bias` [E, 2I] -> SwiGLU activations [n * k, I]
    /// (pair order: token-major).
    #[fusion(dtype = same_dtype(x), shape = Shape::from(vec![x[0] * routing[1] / 2, words[1] / 2]))]
    #[allow(clippy::too_many_arguments)]
    fn pairs_gate_up(
        x: FloatTensor<Self>,
        routing: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        bias: FloatTensor<Self>,
        limit: f32,
        alpha: f32,
        columns_per_plane: u32,
        planes: u32,
        turns: u32,
    ) -> FloatTensor<Self>;

    /// `act` [n * k, I], `routing` [m, 2k] with m >= n, down `words` [E, H, I / 8] and
    /// `scales`, `bias` [E, H] -> the gate-weighted sum of each token's k expert outputs [n,
    /// H], plus `residual` [n, H] when `has_residual` (otherwise `residual` is any f32 tensor,
    /// unread).
    #[fusion(dtype = same_dtype(act), shape = Shape::from(vec![act[0] / (routing[1] / 2), words[1]]))]
    #[allow(clippy::too_many_arguments)]
    fn pairs_down(
        act: FloatTensor<Self>,
        routing: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        has_residual: bool,
        columns_per_plane: u32,
        planes: u32,
        turns: u32,
    ) -> FloatTensor<Self>;
}

impl PairsBackend for CubeBackend {
    fn pairs_gate_up(
        x: CubeTensor,
        routing: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        bias: CubeTensor,
        limit: f32,
        alpha: f32,
        columns_per_plane: u32,
        planes: u32,
        turns: u32,
    ) -> CubeTensor {
        let [x, routing, words, scales, bias] =
            [x, routing, words, scales, bias].map(into_contiguous);
        let [tokens, hidden] = [x.meta.shape()[0], x.meta.shape()[1]];
        let top_k = routing.meta.shape()[1] / 2;
        assert!(
            routing.meta.shape()[0] >= tokens,
            "pairs_gate_up: a routing table for every token"
        );
        let inter = words.meta.shape()[1] / 2;
        let scale_words = scales.meta.shape()[1];
        assert!(
            supports(hidden, inter, top_k),
            "pairs_gate_up: widths {hidden}, {inter}, {top_k} experts per token"
        );
        let shape = PlaneShape {
            columns_per_plane,
            planes,
            turns,
        };
        assert!(
            shape.is_supported(),
            "pairs_gate_up: {shape:?} not supported"
        );
        let out = empty_f32(&x, vec![tokens * top_k, inter]);
        let blocks_per_row = hidden / BLOCK as usize;
        // Safety: every index is in bounds for the shapes checked above (rows past the end
        // read row 0, blocks past the row are not read).
        unsafe {
            pairs_gate_up_kernel::launch_unchecked(
                &x.client.clone(),
                CubeCount::Static(
                    (tokens * top_k) as u32,
                    inter.div_ceil(shape.columns()) as u32,
                    1,
                ),
                CubeDim::new_2d(LANES, shape.planes),
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
                limit,
                alpha,
                blocks_per_lane(blocks_per_row),
                shape.columns_per_plane as usize,
                shape.turns as usize,
            )
        };
        out
    }

    fn pairs_down(
        act: CubeTensor,
        routing: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        bias: CubeTensor,
        residual: CubeTensor,
        has_residual: bool,
        columns_per_plane: u32,
        planes: u32,
        turns: u32,
    ) -> CubeTensor {
        let [act, routing, words, scales, bias, residual] =
            [act, routing, words, scales, bias, residual].map(into_contiguous);
        let inter = act.meta.shape()[1];
        let top_k = routing.meta.shape()[1] / 2;
        let tokens = act.meta.shape()[0] / top_k;
        assert!(
            routing.meta.shape()[0] >= tokens,
            "pairs_down: a routing table for every token"
        );
        let hidden = words.meta.shape()[1];
        let scale_words = scales.meta.shape()[1];
        assert!(
            supports(hidden, inter, top_k),
            "pairs_down: widths {hidden}, {inter}, {top_k} experts per token"
        );
        let shape = PlaneShape {
            columns_per_plane,
            planes,
            turns,
        };
        assert!(shape.is_supported(), "pairs_down: {shape:?} not supported");
        let out = empty_f32(&act, vec![tokens, hidden]);
        let blocks_per_row = inter / BLOCK as usize;
        // Safety: as for `pairs_gate_up`.
        unsafe {
            pairs_down_kernel::launch_unchecked(
                &act.client.clone(),
                CubeCount::Static(tokens as u32, hidden.div_ceil(shape.columns()) as u32, 1),
                CubeDim::new_2d(LANES, shape.planes),
                act.into_buffer_arg(),
                routing.into_buffer_arg(),
                words.into_buffer_arg(),
                scales.into_buffer_arg(),
                bias.into_buffer_arg(),
                residual.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                blocks_per_row as u32,
                hidden as u32,
                scale_words as u32,
                top_k,
                blocks_per_lane(blocks_per_row),
                shape.columns_per_plane as usize,
                shape.turns as usize,
                has_residual,
            )
        };
        out
    }
}

/// SwiGLU activations [n * k, I] of every (token, rank) pair: `x` [n, H] f32, `routing` [m, 2k]
/// (m >= n) from `router_top_k` or `add_norm_router`, the gate_up MXFP4 `words` [E, 2I, H / 8]
/// (int, 32-bit) and `scales`, `bias` [E, 2I], workgroups of `shape` ([`GATE_UP_SHAPE`] unless
/// measuring another). GPU only.
#[allow(clippy::too_many_arguments)]
pub fn pairs_gate_up(
    x: Tensor<2>,
    routing: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    bias: Tensor<2>,
    limit: f32,
    alpha: f32,
    shape: PlaneShape,
) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as PairsBackend>::pairs_gate_up(
        x.into_dispatch(),
        routing.into_dispatch(),
        words.into_dispatch(),
        scales.into_dispatch(),
        bias.into_dispatch(),
        limit,
        alpha,
        shape.columns_per_plane,
        shape.planes,
        shape.turns,
    ))
}

/// Each token's gate-weighted sum of its k experts' down products [n, H], plus `residual`
/// [n, H] when given (the decoder layer's residual stream, in the same launch): `act` [n * k,
/// I] from [`pairs_gate_up`], `routing` [m, 2k] (m >= n), the down MXFP4 `words` [E, H, I / 8] and
/// `scales`, `bias` [E, H], workgroups of `shape` ([`down_shape`] unless measuring another).
/// GPU only.
pub fn pairs_down(
    act: Tensor<2>,
    routing: Tensor<2>,
    words: Tensor<3, Int>,
    scales: Tensor<2, Int>,
    bias: Tensor<2>,
    residual: Option<Tensor<2>>,
    shape: PlaneShape,
) -> Tensor<2> {
    let has_residual = residual.is_some();
    // Without a residual the kernel reads none: pass the bias as the unread buffer.
    let residual = residual.unwrap_or_else(|| bias.clone());
    Tensor::from_dispatch(<burn::backend::Dispatch as PairsBackend>::pairs_down(
        act.into_dispatch(),
        routing.into_dispatch(),
        words.into_dispatch(),
        scales.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
        has_residual,
        shape.columns_per_plane,
        shape.planes,
        shape.turns,
    ))
}

/// MXFP4 blocks each invocation of a plane owns along a row of `blocks_per_row` blocks.
fn blocks_per_lane(blocks_per_row: usize) -> usize {
    blocks_per_row.div_ceil(LANES as usize)
}

/// Shared-memory bytes of one input row `width` wide (bf16, padded per block).
fn row_bytes(width: usize) -> usize {
    blocks_per_lane(width / BLOCK as usize) * (LANES * BLOCK_VECTORS) as usize * 16
}

/// Whether the kernels take `hidden` and `inter` widths with `top_k` experts per token: MXFP4
/// blocks of 32 along K, and the down kernel's k input rows (bf16, padded per block) within
/// the shared memory a workgroup may take.
pub fn supports(hidden: usize, inter: usize, top_k: usize) -> bool {
    hidden.is_multiple_of(32)
        && inter.is_multiple_of(32)
        && top_k * row_bytes(inter) <= SHARED_INPUT_BYTES
        && row_bytes(hidden) <= SHARED_INPUT_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernels_compile_for_the_model_shapes() {
        // 20b's 2880-wide rows: 90 blocks of 32 inputs.
        let blocks = blocks_per_lane(2880 / BLOCK as usize);
        let shape = GATE_UP_SHAPE;
        let gate_up = compile_kernel!(
            pairs_gate_up_kernel::PairsGateUpKernel,
            CubeDim::new_2d(LANES, shape.planes),
            [b b b b b b s s s s s s],
            blocks,
            shape.columns_per_plane as usize,
            shape.turns as usize,
        );
        assert_eq!(gate_up, Ok(()));
        for (tokens, has_residual) in [(1, true), (MANY_TOKENS, true), (1, false)] {
            let shape = down_shape(tokens);
            let down = compile_kernel!(
                pairs_down_kernel::PairsDownKernel,
                CubeDim::new_2d(LANES, shape.planes),
                [b b b b b b b s s s],
                4,
                blocks,
                shape.columns_per_plane as usize,
                shape.turns as usize,
                has_residual,
            );
            assert_eq!(down, Ok(()), "{tokens} tokens, residual {has_residual}");
        }
    }

    /// gpt-oss-20b and -120b (2880 wide, four experts per token) fit; a row of 16,384 inputs
    /// per expert at k = 4 does not, nor widths off the 32-input blocks.
    #[test]
    fn supports_gpt_oss_widths_and_refuses_what_does_not_fit() {
        assert!(supports(2880, 2880, 4));
        assert!(supports(64, 96, 4));
        assert!(!supports(2880, 16384, 4));
        assert!(!supports(2880, 2880 + 16, 4));
        assert!(!supports(65536, 2880, 1));
    }

    /// The model's workgroups are supported; no planes, more than 1024 invocations, more
    /// columns than registers hold or turns outside 1-16 are not.
    #[test]
    fn supported_plane_shapes_fit_a_workgroup() {
        let shape = |columns_per_plane, planes, turns| PlaneShape {
            columns_per_plane,
            planes,
            turns,
        };
        assert!(GATE_UP_SHAPE.is_supported());
        for tokens in [1, MANY_TOKENS - 1, MANY_TOKENS, 32] {
            assert!(down_shape(tokens).is_supported());
        }
        assert!(shape(1, 32, 1).is_supported() && shape(8, 1, 16).is_supported());
        for refused in [
            shape(1, 0, 1),
            shape(1, 33, 1),
            shape(0, 8, 1),
            shape(9, 8, 1),
            shape(1, 8, 0),
            shape(1, 8, 17),
        ] {
            assert!(!refused.is_supported(), "{refused:?}");
        }
    }

    /// `pairs_down` takes sixteen planes of one turn below `MANY_TOKENS` tokens, sixteen of two
    /// from there (the measured choice).
    #[test]
    fn down_shape_takes_two_turns_from_many_tokens() {
        let one_turn = PlaneShape {
            columns_per_plane: DOWN_COLUMNS_PER_PLANE,
            planes: 16,
            turns: 1,
        };
        let two_turns = PlaneShape {
            turns: 2,
            ..one_turn
        };
        assert_eq!(down_shape(1), one_turn);
        assert_eq!(down_shape(MANY_TOKENS - 1), one_turn);
        assert_eq!(down_shape(MANY_TOKENS), two_turns);
        assert_eq!(down_shape(32), two_turns);
    }
}
