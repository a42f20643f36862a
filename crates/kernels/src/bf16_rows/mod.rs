//! Few-row products with bf16 weights (decoding): `x` [m, k] times `w` [k, n] for small m,
//! without tensor cores, the weights streamed once per [`ROWS`] rows.
//!
//! A workgroup of [`UNITS`] invocations takes `groups` x 8 output columns (each invocation
//! eight columns, read as one 16-byte load of eight bf16, so n must be a multiple of 8) and
//! one chunk of [`ROWS`] rows; its invocations split K into `UNITS / groups` slices, each
//! issuing `unroll` row loads ([`RowsTiling`], [`default_tiling`]) before using any (a batch-1
//! projection is bound by memory latency: one 4-byte load in flight per invocation ran at a
//! tenth of the memory bandwidth). With a norm, the three-product kernel RMS-normalises its
//! input rows first (the decode step's input norm, [`rms_norm_bf16_rows_three`]).
//! The slices' sums are added in shared memory and the bias in the same kernel: no partial
//! products and no second kernel. [`add_norm_router`] follows the product with a decoding
//! layer's residual add, post-attention norm and MoE router in the same launch. The tensor-core GEMM computes 128-row tiles: at one row it
//! leaves most of the GPU idle.

use crate::bf16_nearest::to_nearest_bf16;
use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::empty_f32;
use crate::workgroup_reduce;
pub(crate) use kernels::{EightBf16, bf16_pair};
use kernels::{bf16_rows_kernel, bf16_rows_three_kernel};
pub use tiling::{DEFAULT_TILING, RowsTiling, default_tiling};
use tiling::{chosen_three_tiling, chosen_tiling, column_blocks, grid};

pub mod add_norm_router;
mod kernels;
mod tiling;

/// Most rows per workgroup (fewer when m is smaller).
pub const ROWS: usize = 8;
/// Invocations per workgroup (a whole workgroup adds a row's squares for the fused norm).
const UNITS: u32 = 256;
const _: () = assert!(UNITS == workgroup_reduce::UNITS);
/// Columns per invocation: one 16-byte load of eight bf16.
const LANE_COLUMNS: u32 = 8;

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait RowsBackend: burn::backend::Backend {
    /// `x` [m, k] f32 (rounded to bf16) times `w` [k, n] bf16, accumulated in f32, plus `bias`
    /// [n] when `has_bias` (otherwise `bias` is any f32 tensor, unread) -> [m, n].
    #[fusion(dtype = accumulator_dtype(x), shape = product_shape(x, w))]
    fn bf16_rows_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        has_bias: bool,
        groups: u32,
        unroll: u32,
    ) -> FloatTensor<Self>;

    /// `x` [m, k] (RMS-normed with `norm_weight` [k] and `eps` first when `has_norm`;
    /// otherwise `norm_weight` is any f32 tensor, unread) times `w0`, `w1`, `w2` [k, n_i] (+
    /// `b0`, `b1`, `b2` when `has_bias`) side by side -> [m, n0 + n1 + n2], in one launch
    /// ([`supports_three`]).
    #[fusion(dtype = accumulator_dtype(x), shape = Shape::from(vec![x[0], w0[1] + w1[1] + w2[1]]))]
    #[allow(clippy::too_many_arguments)]
    fn bf16_rows_three(
        x: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f32,
        has_norm: bool,
        w0: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        b0: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        b2: FloatTensor<Self>,
        has_bias: bool,
        groups: u32,
        unroll: u32,
    ) -> FloatTensor<Self>;
}

fn accumulator_dtype(_input: DType) -> DType {
    DType::F32
}

fn product_shape(x: &Shape, w: &Shape) -> Shape {
    Shape::from(vec![x[0], w[1]])
}

impl RowsBackend for CubeBackend {
    fn bf16_rows_matmul(
        x: CubeTensor,
        w: CubeTensor,
        bias: CubeTensor,
        has_bias: bool,
        groups: u32,
        unroll: u32,
    ) -> CubeTensor {
        let [x, w, bias] = [x, w, bias].map(into_contiguous);
        let [m, k] = [x.meta.shape()[0], x.meta.shape()[1]];
        let n = w.meta.shape()[1];
        assert!(supports(n), "bf16_rows: n = {n} is not a multiple of 8");
        assert_eq!(
            w.meta.shape()[0],
            k,
            "bf16_rows: x is [{m}, {k}], w is not [{k}, n]"
        );
        let RowsTiling { groups, unroll } = chosen_tiling(RowsTiling { groups, unroll }, m, n, &[]);
        let (rows, cubes) = grid(m, column_blocks(n, groups));
        let client = x.client.clone();
        let out = empty_f32(&x, vec![m, n]);
        // Safety: reads are guarded by the row, K and column bounds checked above.
        unsafe {
            bf16_rows_kernel::launch_unchecked(
                &client,
                cubes,
                CubeDim::new_1d(UNITS),
                x.into_buffer_arg(),
                w.into_buffer_arg(),
                bias.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                m as u32,
                n as u32,
                k as u32,
                rows,
                groups,
                unroll,
                has_bias,
            )
        };
        out
    }

    fn bf16_rows_three(
        x: CubeTensor,
        norm_weight: CubeTensor,
        eps: f32,
        has_norm: bool,
        w0: CubeTensor,
        w1: CubeTensor,
        w2: CubeTensor,
        b0: CubeTensor,
        b1: CubeTensor,
        b2: CubeTensor,
        has_bias: bool,
        groups: u32,
        unroll: u32,
    ) -> CubeTensor {
        let [x, norm_weight, w0, w1, w2, b0, b1, b2] =
            [x, norm_weight, w0, w1, w2, b0, b1, b2].map(into_contiguous);
        let [m, k] = [x.meta.shape()[0], x.meta.shape()[1]];
        assert!(
            !has_norm || norm_weight.meta.shape()[..] == [k],
            "bf16_rows_three: the norm's weight is not [{k}]"
        );
        let [n0, n1, n2] = [&w0, &w1, &w2].map(|w| w.meta.shape()[1]);
        assert!(
            supports_three(n0, n1, n2),
            "bf16_rows_three: widths {n0}, {n1}, {n2}"
        );
        for w in [&w0, &w1, &w2] {
            assert_eq!(w.meta.shape()[0], k, "bf16_rows_three: x is [{m}, {k}]");
        }
        let RowsTiling { groups, unroll } =
            chosen_three_tiling(RowsTiling { groups, unroll }, m, [n0, n1, n2]);
        let blocks = [n0, n1, n2].map(|n| column_blocks(n, groups));
        let (rows, cubes) = grid(m, blocks.iter().sum());
        let client = x.client.clone();
        let out = empty_f32(&x, vec![m, n0 + n1 + n2]);
        // Safety: as for `bf16_rows_matmul`; no workgroup straddles two segments
        // (`supports_three`).
        unsafe {
            bf16_rows_three_kernel::launch_unchecked(
                &client,
                cubes,
                CubeDim::new_1d(UNITS),
                x.into_buffer_arg(),
                norm_weight.into_buffer_arg(),
                eps,
                w0.into_buffer_arg(),
                w1.into_buffer_arg(),
                w2.into_buffer_arg(),
                b0.into_buffer_arg(),
                b1.into_buffer_arg(),
                b2.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                m as u32,
                n0 as u32,
                n1 as u32,
                n2 as u32,
                k as u32,
                rows,
                groups,
                unroll,
                has_bias,
                has_norm,
            )
        };
        out
    }
}

/// Whether a product of `m` rows should take its input norm in the same launch
/// ([`rms_norm_bf16_rows_three`]): at one row it saves a launch (q/k/v 26.6 us, the norm 12.7,
/// both fused 25.1 on an H100), while at 32 rows every workgroup's eight norms cost more than
/// the launch (348 us fused against 121 + 13).
pub fn fuses_input_norm(m: usize) -> bool {
    m == 1
}

/// Whether [`bf16_rows_three`] takes products of these widths: each a multiple of 8, the
/// first two of 32 (whole workgroups of either column-group width).
pub fn supports_three(n0: usize, n1: usize, n2: usize) -> bool {
    n0.is_multiple_of(32) && n1.is_multiple_of(32) && supports(n2)
}

/// Whether the kernel takes products with `n` output columns (rows of `w` are read eight bf16
/// at a time).
pub fn supports(n: usize) -> bool {
    n.is_multiple_of(LANE_COLUMNS as usize)
}

/// `x` [m, k] x `w` [k, n] (+ `bias` [n]) with the inputs rounded to bf16 (as `coopmat_gemm`
/// rounds them), result f32. GPU only; meant for m up to a few times [`ROWS`]; n must be a
/// multiple of 8 ([`supports`]).
pub fn bf16_rows_matmul(x: Tensor<2>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    bf16_rows_matmul_tiled(x, w, bias, DEFAULT_TILING)
}

/// [`bf16_rows_matmul`] with another [`RowsTiling`] (measuring; a non-zero `groups` must tile
/// n).
pub fn bf16_rows_matmul_tiled(
    x: Tensor<2>,
    w: Tensor<2>,
    bias: Option<Tensor<1>>,
    tiling: RowsTiling,
) -> Tensor<2> {
    let [m, _] = x.dims();
    let x = x.cast(DType::F32);
    let w = to_nearest_bf16(w);
    let has_bias = bias.is_some();
    // Without a bias the kernel reads none: pass x as the unread buffer.
    let bias = bias.unwrap_or_else(|| x.clone().reshape([m * x.dims()[1]]));
    Tensor::from_dispatch(<burn::backend::Dispatch as RowsBackend>::bf16_rows_matmul(
        x.into_dispatch(),
        w.into_dispatch(),
        bias.into_dispatch(),
        has_bias,
        tiling.groups,
        tiling.unroll,
    ))
}

/// `x` [m, k] times three bf16 weights [k, n_i] (+ their biases) side by side in one launch ->
/// [m, n0 + n1 + n2] f32, inputs rounded to bf16 as in [`bf16_rows_matmul`]. GPU only; the
/// widths must pass [`supports_three`].
pub fn bf16_rows_three(
    x: Tensor<2>,
    weights: [Tensor<2>; 3],
    biases: Option<[Tensor<1>; 3]>,
) -> Tensor<2> {
    launch_three(x, None, weights, biases, DEFAULT_TILING)
}

/// [`bf16_rows_three`] with another [`RowsTiling`] (measuring; a non-zero `groups` must tile
/// the first two widths).
pub fn bf16_rows_three_tiled(
    x: Tensor<2>,
    weights: [Tensor<2>; 3],
    biases: Option<[Tensor<1>; 3]>,
    tiling: RowsTiling,
) -> Tensor<2> {
    launch_three(x, None, weights, biases, tiling)
}

/// [`bf16_rows_three`] of the RMSNorm of `x`'s rows with `norm` (weight [k], eps) in the same
/// launch: the decoder layer's input norm and its q, k and v projections. The products see
/// the values `rms_norm_rows` would have written (the same sums in the same order). GPU only.
pub fn rms_norm_bf16_rows_three(
    x: Tensor<2>,
    norm: (Tensor<1>, f64),
    weights: [Tensor<2>; 3],
    biases: Option<[Tensor<1>; 3]>,
) -> Tensor<2> {
    launch_three(x, Some(norm), weights, biases, DEFAULT_TILING)
}

/// The `bf16_rows_three` op, normed first when `norm` is given.
fn launch_three(
    x: Tensor<2>,
    norm: Option<(Tensor<1>, f64)>,
    weights: [Tensor<2>; 3],
    biases: Option<[Tensor<1>; 3]>,
    tiling: RowsTiling,
) -> Tensor<2> {
    let [m, k] = x.dims();
    let x = x.cast(DType::F32);
    let has_norm = norm.is_some();
    // Without a norm the kernel reads no norm weight: pass x as the unread buffer.
    let (norm_weight, eps) = norm.unwrap_or_else(|| (x.clone().reshape([m * k]), 0.0));
    let [w0, w1, w2] = weights.map(|w| to_nearest_bf16(w).into_dispatch());
    let has_bias = biases.is_some();
    // Without biases the kernel reads none: pass x as the unread buffers.
    let [b0, b1, b2] = biases
        .unwrap_or_else(|| std::array::from_fn(|_| x.clone().reshape([m * k])))
        .map(|b| b.into_dispatch());
    Tensor::from_dispatch(<burn::backend::Dispatch as RowsBackend>::bf16_rows_three(
        x.into_dispatch(),
        norm_weight.cast(DType::F32).into_dispatch(),
        eps as f32,
        has_norm,
        w0,
        w1,
        w2,
        b0,
        b1,
        b2,
        has_bias,
        tiling.groups,
        tiling.unroll,
    ))
}
