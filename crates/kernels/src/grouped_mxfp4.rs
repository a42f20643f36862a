//! Grouped MoE matmul with MXFP4 weights decoded inside the kernel.
//!
//! Rows of `a` [P, K] are sorted by expert: expert e owns rows `offsets[e]..offsets[e + 1]`.
//! Each workgroup computes one `tm x tn` tile of `out = a_e x W_e^T` for one expert, with W_e
//! [N, K] read from the checkpoint's MXFP4 words (8 nibbles per u32, low nibble first) and
//! scale bytes (packed four to a u32) and decoded to bf16 in shared memory one K step (whole
//! 32-wide blocks) at a time; the products run on the tensor cores (workgroup-scope cooperative
//! matrices). Pipelined tilings keep two shared stages: the next step's words are loaded
//! before this step's products and decoded after them (one synchronisation per step instead of
//! two; loading them early without the second stage measured slower: 56 against 61-64 TF/s).
//! Which expert and row tile a workgroup takes comes from `tile_starts` (prefix sums of
//! ceil(count / tm)), computed on the device: no host round trip. The grid is sized for the
//! worst case (ceil(P / tm) + E tiles); workgroups past the last tile exit at once.
//!
//! Epilogues (issue 7's "gate_up with bias, clamp and SwiGLU fused; down with the gate weight
//! fused"): a workgroup-scope accumulator can only be stored whole, and a 256 x 128 f32 tile
//! does not fit in shared memory, so the tile is stored to the output, a storage barrier makes
//! it visible to the whole workgroup, and the invocations read it back (from cache) to add the
//! expert's bias and write either the clamped SwiGLU [P, N / 2] or the product times each
//! row's gate weight, in the same launch.

use crate::launch::empty_f32;
use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

/// Tile shape and decoding scheme of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Rows per tile (the tiles `tile_starts` counts).
    pub m: usize,
    /// Output columns per tile.
    pub n: usize,
    /// K step: a multiple of 32 (whole MXFP4 blocks).
    pub k: usize,
    /// Two shared stages: the next step's words are loaded before this step's products and
    /// decoded after them (one synchronisation per step instead of two).
    pub pipelined: bool,
    /// FP4 values from a 16-entry table in shared memory instead of arithmetic.
    pub table: bool,
}

impl Tiling {
    /// One number per tiling (how burn-fusion tells launches apart).
    pub fn code(&self) -> u64 {
        self.m as u64
            | (self.n as u64) << 16
            | (self.k as u64) << 32
            | (self.pipelined as u64) << 48
            | (self.table as u64) << 49
    }
}

/// Tiles of 64 rows: little padding when experts have a few hundred rows each.
pub const SMALL_TILES: Tiling = Tiling {
    m: 64,
    n: 128,
    k: 32,
    pipelined: false,
    table: true,
};

/// Tiles of 256 rows, pipelined: each decoded weight tile serves four times the rows
/// (scoring's thousands of rows per expert: 90 against 64 TF/s, docs/benchmarks.md).
pub const LARGE_TILES: Tiling = Tiling {
    m: 256,
    n: 128,
    k: 32,
    pipelined: true,
    table: true,
};

/// Invocations per workgroup.
pub const UNITS: u32 = 256;

/// What the kernel does with a tile's products after storing them (comptime codes).
const EPILOGUE_NONE: u32 = 0;
const EPILOGUE_SWIGLU: u32 = 1;
const EPILOGUE_SCALED: u32 = 2;

/// The E2M1 value of a 4-bit code (sign in bit 3).
#[cube]
pub(crate) fn fp4_value(code: u32) -> f32 {
    let magnitude = code & 7;
    let exponent = magnitude >> 1;
    let mantissa = f32::cast_from(magnitude & 1);
    let subnormal = mantissa * 0.5;
    let normal = (1.0 + 0.5 * mantissa) * f32::cast_from(1u32 << exponent) * 0.5;
    let value = select(exponent == 0, subnormal, normal);
    select(code >= 8, -value, value)
}

/// 2^(code - 127) for a UE8M0 scale byte (code 0 is the subnormal 2^-127).
#[cube]
pub(crate) fn scale_value(code: u32) -> f32 {
    let bits = select(code == 0, 0x0040_0000u32, code << 23);
    f32::reinterpret(bits)
}

/// Where this invocation's `i`-th word of a `tn x tk` stage comes from: (local weight row,
/// word within the row's `tk / 8` words of the step).
#[cube]
fn stage_word_position(i: u32, #[comptime] tk: usize) -> (u32, u32) {
    let w = UNIT_POS + i * UNITS;
    let words_per_step = (tk / 8) as u32;
    (w / words_per_step, w % words_per_step)
}

/// Loads this invocation's words and scale bytes of step `k_begin` (zeros past row `n`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_stage_words(
    words: &[u32],
    scales: &[u32],
    loaded: &mut Array<u32>,
    scale_codes: &mut Array<u32>,
    expert_words: u32,
    expert_scales: u32,
    col_begin: u32,
    k_begin: u32,
    n: u32,
    k: u32,
    #[comptime] tn: usize,
    #[comptime] tk: usize,
) {
    let per_unit = tn * tk / 8 / UNITS as usize;
    #[unroll]
    for i in 0..per_unit {
        let (local_row, part) = stage_word_position(i as u32, tk);
        let row = col_begin + local_row;
        let mut word = 0u32;
        let mut code = 0u32;
        if row < n {
            word = words[(expert_words + row * (k / 8) + k_begin / 8 + part) as usize];
            let block = row * (k / 32) + (k_begin + part * 8) / 32;
            code = (scales[(expert_scales + block / 4) as usize] >> ((block % 4) * 8)) & 0xFF;
        }
        loaded[i] = word;
        scale_codes[i] = code;
    }
}

/// Decodes loaded words into `stage` ([tn][tk] bf16 from `offset`: element (kk, col) of B =
/// W^T at col * tk + kk, column-major B).
#[cube]
fn decode_stage_words(
    loaded: &Array<u32>,
    scale_codes: &Array<u32>,
    table: &[f32],
    stage: &mut [bf16],
    offset: usize,
    #[comptime] tn: usize,
    #[comptime] tk: usize,
    #[comptime] use_table: bool,
) {
    let per_unit = tn * tk / 8 / UNITS as usize;
    #[unroll]
    for i in 0..per_unit {
        let (local_row, part) = stage_word_position(i as u32, tk);
        let base = offset + (local_row * tk as u32 + part * 8) as usize;
        let scale = scale_value(scale_codes[i]);
        let word = loaded[i];
        #[unroll]
        for q in 0..8u32 {
            let code = (word >> (q * 4)) & 0xF;
            let value = if comptime![use_table] {
                table[code as usize]
            } else {
                fp4_value(code)
            };
            stage[base + q as usize] = bf16::cast_from(value * scale);
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn grouped_mxfp4_kernel(
    a: &[bf16],
    words: &[u32],
    scales: &[u32],
    offsets: &[u32],
    tile_starts: &[u32],
    out: &mut [f32],
    bias: &[f32],
    row_weights: &[f32],
    activation: &mut [f32],
    n: u32,
    k: u32,
    scale_words_per_expert: u32,
    num_experts: u32,
    limit: f32,
    alpha: f32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] scheme: (bool, bool),
    #[comptime] epilogue: u32,
) {
    let (tm, tn, tk) = tile;
    let (pipelined, use_table) = scheme;
    let tile_id = CUBE_POS_X;
    let mut expert = num_experts;
    for e in 0..num_experts {
        if tile_id >= tile_starts[e as usize] && tile_id < tile_starts[e as usize + 1] {
            expert = e;
        }
    }
    if expert == num_experts {
        terminate!();
    }
    let row_begin = offsets[expert as usize] + (tile_id - tile_starts[expert as usize]) * tm as u32;
    let row_end = offsets[expert as usize + 1];
    let col_begin = CUBE_POS_Y * tn as u32;
    let a_view = TensorView::new(a, seq![row_end, k]).finish();
    let out_view = TensorView::new(&*out, seq![row_end, n]).finish();

    let stages = comptime![if pipelined { 2usize } else { 1usize }];
    let stage_size = tn * tk;
    let mut stage_b = Shared::<[bf16]>::new_aligned_slice(stages * stage_size, 16usize);
    let mut table = Shared::<[f32]>::new_slice(16usize);
    if UNIT_POS < 16 {
        table[UNIT_POS as usize] = fp4_value(UNIT_POS);
    }
    let per_unit = tn * tk / 8 / UNITS as usize;
    let mut loaded = Array::<u32>::new(per_unit);
    let mut scale_codes = Array::<u32>::new(per_unit);
    let mut a_mat = unsafe {
        cmma::Matrix::<bf16, cmma::Cube>::uninitialized(
            cmma::MatrixIdent::A,
            tm,
            tn,
            tk,
            cmma::MatrixLayout::Undefined,
        )
    };
    let mut b_mat = unsafe {
        cmma::Matrix::<bf16, cmma::Cube>::uninitialized(
            cmma::MatrixIdent::B,
            tm,
            tn,
            tk,
            cmma::MatrixLayout::ColMajor,
        )
    };
    let acc = cmma::Matrix::<f32, cmma::Cube>::from_value(
        cmma::MatrixIdent::Accumulator,
        tm,
        tn,
        tk,
        cmma::MatrixLayout::Undefined,
        0.0,
    );
    let expert_words = expert * n * (k / 8);
    let expert_scales = expert * scale_words_per_expert;
    let steps = k / tk as u32;
    if comptime![pipelined] {
        load_stage_words(
            words,
            scales,
            &mut loaded,
            &mut scale_codes,
            expert_words,
            expert_scales,
            col_begin,
            0,
            n,
            k,
            tn,
            tk,
        );
        sync_cube();
        decode_stage_words(
            &loaded,
            &scale_codes,
            &table,
            &mut stage_b,
            0,
            tn,
            tk,
            use_table,
        );
        sync_cube();
        for step in 0..steps {
            let current = (step % 2) as usize * stage_size;
            let next = ((step + 1) % 2) as usize * stage_size;
            let has_next = step + 1 < steps;
            if has_next {
                load_stage_words(
                    words,
                    scales,
                    &mut loaded,
                    &mut scale_codes,
                    expert_words,
                    expert_scales,
                    col_begin,
                    (step + 1) * tk as u32,
                    n,
                    k,
                    tn,
                    tk,
                );
            }
            let a_tile = a_view.slice(
                seq![row_begin, step * tk as u32],
                seq![tm as u32, tk as u32],
            );
            cmma::load_tensor(&mut a_mat, &a_tile);
            cmma::load(
                &mut b_mat,
                &stage_b[current..current + stage_size],
                tk as u32,
            );
            cmma::execute(&a_mat, &b_mat, &acc, &acc);
            if has_next {
                decode_stage_words(
                    &loaded,
                    &scale_codes,
                    &table,
                    &mut stage_b,
                    next,
                    tn,
                    tk,
                    use_table,
                );
            }
            sync_cube();
        }
    } else {
        sync_cube();
        for step in 0..steps {
            load_stage_words(
                words,
                scales,
                &mut loaded,
                &mut scale_codes,
                expert_words,
                expert_scales,
                col_begin,
                step * tk as u32,
                n,
                k,
                tn,
                tk,
            );
            decode_stage_words(
                &loaded,
                &scale_codes,
                &table,
                &mut stage_b,
                0,
                tn,
                tk,
                use_table,
            );
            sync_cube();
            let a_tile = a_view.slice(
                seq![row_begin, step * tk as u32],
                seq![tm as u32, tk as u32],
            );
            cmma::load_tensor(&mut a_mat, &a_tile);
            cmma::load(&mut b_mat, &stage_b[0..stage_size], tk as u32);
            cmma::execute(&a_mat, &b_mat, &acc, &acc);
            sync_cube();
        }
    }
    let mut out_tile = out_view.slice(seq![row_begin, col_begin], seq![tm as u32, tn as u32]);
    cmma::store_tensor(&mut out_tile, &acc);
    if comptime![epilogue != EPILOGUE_NONE] {
        // The tile's products are read back by other invocations than the ones that stored
        // them: a barrier over storage memory.
        sync_storage();
        let rows = min(row_end - row_begin, tm as u32);
        if comptime![epilogue == EPILOGUE_SWIGLU] {
            swiglu_epilogue(
                out, bias, activation, expert, row_begin, rows, col_begin, n, limit, alpha, tm, tn,
            );
        } else {
            scaled_epilogue(
                out,
                bias,
                row_weights,
                expert,
                row_begin,
                rows,
                col_begin,
                n,
                tm,
                tn,
            );
        }
    }
}

/// The product [P, N] of gate (even columns) and up (odd columns) units plus the expert's
/// bias, to the clamped SwiGLU [P, N / 2] (spec 3.4): min(gate, limit) * sigmoid(alpha *
/// min(gate, limit)) * (clamp(up, -limit, limit) + 1), for this tile's rows and columns.
#[cube]
#[allow(clippy::too_many_arguments)]
fn swiglu_epilogue(
    product: &mut [f32],
    bias: &[f32],
    activation: &mut [f32],
    expert: u32,
    row_begin: u32,
    rows: u32,
    col_begin: u32,
    n: u32,
    limit: f32,
    alpha: f32,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
) {
    let units = (tn / 2) as u32;
    let mut e = UNIT_POS;
    while e < (tm * tn / 2) as u32 {
        let r = e / units;
        let col = col_begin + 2 * (e % units);
        if r < rows && col < n {
            let at = (row_begin + r) * n + col;
            let gate = min(
                product[at as usize] + bias[(expert * n + col) as usize],
                limit,
            );
            let up = product[at as usize + 1] + bias[(expert * n + col + 1) as usize];
            let up = clamp(up, -limit, limit);
            let glu = gate / (1.0 + (-(gate * alpha)).exp());
            activation[((row_begin + r) * (n / 2) + col / 2) as usize] = glu * (up + 1.0);
        }
        e += UNITS;
    }
}

/// The product [P, N] plus the expert's bias, times each row's weight (its gate), in place.
#[cube]
#[allow(clippy::too_many_arguments)]
fn scaled_epilogue(
    product: &mut [f32],
    bias: &[f32],
    row_weights: &[f32],
    expert: u32,
    row_begin: u32,
    rows: u32,
    col_begin: u32,
    n: u32,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
) {
    let mut e = UNIT_POS;
    while e < (tm * tn) as u32 {
        let r = e / tn as u32;
        let col = col_begin + e % tn as u32;
        if r < rows && col < n {
            let at = ((row_begin + r) * n + col) as usize;
            product[at] = (product[at] + bias[(expert * n + col) as usize])
                * row_weights[(row_begin + r) as usize];
        }
        e += UNITS;
    }
}

/// GPU extension ops for the grouped MoE; only the CubeCL backend implements them.
#[backend_extension(Cube, Fusion)]
pub trait GroupedBackend: burn::backend::Backend {
    /// `a` [P, K] bf16 rows sorted by expert, `words` [E, N, K / 8] and `scales` [E, S] the
    /// packed MXFP4 weights, `offsets` and `tile_starts` [E + 1] (counting tiles of
    /// `tiling.m` rows) -> [P, N] f32.
    #[fusion(dtype = accumulator_dtype(a), shape = product_shape(a, words))]
    fn grouped_mxfp4_matmul(
        a: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        offsets: IntTensor<Self>,
        tile_starts: IntTensor<Self>,
        #[fusion(scalar = tiling.code())] tiling: Tiling,
    ) -> FloatTensor<Self>;

    /// As `grouped_mxfp4_matmul` for gate_up, with each expert's `bias` [E, N] and the clamped
    /// SwiGLU in the same launch -> [P, N / 2] f32.
    #[fusion(dtype = accumulator_dtype(a), shape = swiglu_shape(a, words))]
    #[allow(clippy::too_many_arguments)]
    fn grouped_mxfp4_swiglu(
        a: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        offsets: IntTensor<Self>,
        tile_starts: IntTensor<Self>,
        bias: FloatTensor<Self>,
        #[fusion(scalar = tiling.code())] tiling: Tiling,
        limit: f32,
        alpha: f32,
    ) -> FloatTensor<Self>;

    /// As `grouped_mxfp4_matmul` for down, with each expert's `bias` [E, N] added and each row
    /// multiplied by its weight `row_weights` [P] in the same launch -> [P, N] f32.
    #[fusion(dtype = accumulator_dtype(a), shape = product_shape(a, words))]
    #[allow(clippy::too_many_arguments)]
    fn grouped_mxfp4_scaled(
        a: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: IntTensor<Self>,
        offsets: IntTensor<Self>,
        tile_starts: IntTensor<Self>,
        bias: FloatTensor<Self>,
        row_weights: FloatTensor<Self>,
        #[fusion(scalar = tiling.code())] tiling: Tiling,
    ) -> FloatTensor<Self>;
}

fn accumulator_dtype(_input: DType) -> DType {
    DType::F32
}

fn product_shape(a: &Shape, words: &Shape) -> Shape {
    Shape::from(vec![a[0], words[1]])
}

fn swiglu_shape(a: &Shape, words: &Shape) -> Shape {
    Shape::from(vec![a[0], words[1] / 2])
}

/// The packed weights and the sorting of one grouped product, as the kernel reads them.
struct GroupedInputs {
    a: CubeTensor,
    words: CubeTensor,
    scales: CubeTensor,
    offsets: CubeTensor,
    tile_starts: CubeTensor,
}

/// The epilogue's inputs: each expert's bias, row weights (scaled), SwiGLU's limit and alpha.
struct EpilogueInputs {
    code: u32,
    bias: Option<CubeTensor>,
    row_weights: Option<CubeTensor>,
    limit: f32,
    alpha: f32,
}

const NO_EPILOGUE: EpilogueInputs = EpilogueInputs {
    code: EPILOGUE_NONE,
    bias: None,
    row_weights: None,
    limit: 0.0,
    alpha: 0.0,
};

/// Launches the kernel; returns the products [P, N] (after the epilogue when scaled) and,
/// with SwiGLU, the activations [P, N / 2].
fn launch_grouped(
    inputs: GroupedInputs,
    tiling: Tiling,
    epilogue: EpilogueInputs,
) -> (CubeTensor, CubeTensor) {
    let GroupedInputs {
        a,
        words,
        scales,
        offsets,
        tile_starts,
    } = inputs;
    let [a, words, scales, offsets, tile_starts] =
        [a, words, scales, offsets, tile_starts].map(into_contiguous);
    let (p, k) = (a.meta.shape()[0], a.meta.shape()[1]);
    let (experts, n) = (words.meta.shape()[0], words.meta.shape()[1]);
    let scale_words = scales.meta.shape()[1];
    let client = a.client.clone();
    let out = empty_f32(&a, vec![p, n]);
    let activation = if epilogue.code == EPILOGUE_SWIGLU {
        empty_f32(&a, vec![p, n / 2])
    } else {
        empty_f32(&a, vec![1])
    };
    let unused = || empty_f32(&out, vec![1]);
    let bias = epilogue.bias.map(into_contiguous).unwrap_or_else(unused);
    let row_weights = epilogue
        .row_weights
        .map(into_contiguous)
        .unwrap_or_else(unused);
    let mut t = tiling;
    if !k.is_multiple_of(t.k) {
        // Every K is a multiple of one MXFP4 block; a longer step must divide it.
        t.k = 32;
    }
    assert!(
        (t.n * t.k / 8).is_multiple_of(UNITS as usize),
        "grouped MXFP4 kernel: a {} x {} stage must be a multiple of {} words",
        t.n,
        t.k,
        UNITS * 8
    );
    let tiles = p.div_ceil(t.m) + experts;
    grouped_mxfp4_kernel::launch(
        &client,
        CubeCount::Static(tiles as u32, n.div_ceil(t.n) as u32, 1),
        CubeDim::new_1d(UNITS),
        a.into_buffer_arg(),
        words.into_buffer_arg(),
        scales.into_buffer_arg(),
        offsets.into_buffer_arg(),
        tile_starts.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        bias.into_buffer_arg(),
        row_weights.into_buffer_arg(),
        activation.clone().into_buffer_arg(),
        n as u32,
        k as u32,
        scale_words as u32,
        experts as u32,
        epilogue.limit,
        epilogue.alpha,
        (t.m, t.n, t.k),
        (t.pipelined, t.table),
        epilogue.code,
    );
    (out, activation)
}

impl GroupedBackend for CubeBackend {
    fn grouped_mxfp4_matmul(
        a: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        tile_starts: CubeTensor,
        tiling: Tiling,
    ) -> CubeTensor {
        let inputs = GroupedInputs {
            a,
            words,
            scales,
            offsets,
            tile_starts,
        };
        launch_grouped(inputs, tiling, NO_EPILOGUE).0
    }

    fn grouped_mxfp4_swiglu(
        a: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        tile_starts: CubeTensor,
        bias: CubeTensor,
        tiling: Tiling,
        limit: f32,
        alpha: f32,
    ) -> CubeTensor {
        let inputs = GroupedInputs {
            a,
            words,
            scales,
            offsets,
            tile_starts,
        };
        let epilogue = EpilogueInputs {
            code: EPILOGUE_SWIGLU,
            bias: Some(bias),
            limit,
            alpha,
            ..NO_EPILOGUE
        };
        launch_grouped(inputs, tiling, epilogue).1
    }

    fn grouped_mxfp4_scaled(
        a: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        offsets: CubeTensor,
        tile_starts: CubeTensor,
        bias: CubeTensor,
        row_weights: CubeTensor,
        tiling: Tiling,
    ) -> CubeTensor {
        let inputs = GroupedInputs {
            a,
            words,
            scales,
            offsets,
            tile_starts,
        };
        let epilogue = EpilogueInputs {
            code: EPILOGUE_SCALED,
            bias: Some(bias),
            row_weights: Some(row_weights),
            ..NO_EPILOGUE
        };
        launch_grouped(inputs, tiling, epilogue).0
    }
}

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

/// The kernel through burn tensors: `a` [P, K] is cast to bf16 -> [P, N].
pub fn grouped_mxfp4_matmul(a: Tensor<2>, weights: PackedWeights, tiles: ExpertTiles) -> Tensor<2> {
    let a = a.cast(DType::BF16);
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

/// gate_up with `bias` [E, N] and the clamped SwiGLU fused: `a` [P, K] -> [P, N / 2].
pub fn grouped_mxfp4_swiglu(
    a: Tensor<2>,
    weights: PackedWeights,
    tiles: ExpertTiles,
    bias: Tensor<2>,
    limit: f32,
    alpha: f32,
) -> Tensor<2> {
    let a = a.cast(DType::BF16);
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

/// down with `bias` [E, N] and each row's weight `row_weights` [P] fused: `a` [P, K] -> [P, N].
pub fn grouped_mxfp4_scaled(
    a: Tensor<2>,
    weights: PackedWeights,
    tiles: ExpertTiles,
    bias: Tensor<2>,
    row_weights: Tensor<1>,
) -> Tensor<2> {
    let a = a.cast(DType::BF16);
    Tensor::from_dispatch(
        <burn::backend::Dispatch as GroupedBackend>::grouped_mxfp4_scaled(
            a.into_dispatch(),
            weights.words.into_dispatch(),
            weights.scales.into_dispatch(),
            tiles.offsets.into_dispatch(),
            tiles.tile_starts.into_dispatch(),
            bias.into_dispatch(),
            row_weights.into_dispatch(),
            tiles.tiling,
        ),
    )
}
