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
//! products and no second kernel. The tensor-core GEMM computes 128-row tiles: at one row it
//! leaves most of the GPU idle.

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::launch::empty_f32;
use crate::rms_norm_rows::row_inverse_rms;
use crate::workgroup_reduce;

/// Most rows per workgroup (fewer when m is smaller).
pub const ROWS: usize = 8;
/// Invocations per workgroup (a whole workgroup adds a row's squares for the fused norm).
const UNITS: u32 = 256;
const _: () = assert!(UNITS == workgroup_reduce::UNITS);
/// Columns per invocation: one 16-byte load of eight bf16.
const LANE_COLUMNS: u32 = 8;
/// How a product splits its work: column groups of eight per workgroup and weight rows each
/// invocation loads before using any (either 0: [`default_tiling`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsTiling {
    pub groups: u32,
    pub unroll: u32,
}

/// The tiling the model takes: both chosen by [`default_tiling`].
pub const DEFAULT_TILING: RowsTiling = RowsTiling {
    groups: 0,
    unroll: 0,
};
/// Workgroups below which the wider column groups leave the GPU short of work (two per H100
/// multiprocessor).
const TARGET_WORKGROUPS: usize = 264;
/// Workgroups of eight column groups from which a one-row product takes that width.
const WIDE_WORKGROUPS: usize = 1024;

/// Eight bf16 weights of one row: four little-endian u32 words.
type EightBf16 = Vector<u32, Const<4>>;

/// The two bf16 halves of a little-endian u32 as f32 (low half first).
#[cube]
fn bf16_pair(word: u32) -> (f32, f32) {
    (
        f32::reinterpret(word << 16),
        f32::reinterpret(word & 0xFFFF_0000),
    )
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn bf16_rows_kernel(
    x: &[f32],
    w: &[EightBf16],
    bias: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] rows: usize,
    #[comptime] groups: u32,
    #[comptime] unroll: u32,
    #[comptime] has_bias: bool,
) {
    let mut work = RowsWorkspace::new(rows);
    // No norm: the bias stands in for the unread norm weight.
    rows_times_weight(
        x, bias, &mut work, w, bias, out, m, n, k, CUBE_POS_X, n, 0, rows, groups, unroll,
        has_bias, false,
    );
}

/// Three products of the same `x` side by side in one launch (the attention's q, k and v
/// projections): workgroups take their columns from `w0`, then `w1`, then `w2` (each
/// segment's column count a multiple of `groups * 8`, so no workgroup straddles two), and
/// the output is [m, n0 + n1 + n2]. With `has_norm` the rows of `x` are RMS-normed with
/// `norm_weight` and `eps` first (the decoder layer's input norm, in the same launch).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn bf16_rows_three_kernel(
    x: &[f32],
    norm_weight: &[f32],
    eps: f32,
    w0: &[EightBf16],
    w1: &[EightBf16],
    w2: &[EightBf16],
    b0: &[f32],
    b1: &[f32],
    b2: &[f32],
    out: &mut [f32],
    m: u32,
    n0: u32,
    n1: u32,
    n2: u32,
    k: u32,
    #[comptime] rows: usize,
    #[comptime] groups: u32,
    #[comptime] unroll: u32,
    #[comptime] has_bias: bool,
    #[comptime] has_norm: bool,
) {
    let mut work = RowsWorkspace::new(rows);
    if has_norm {
        fill_inverse_rms(x, m, k, eps, &mut work.inv_rms, rows);
    }
    let width = n0 + n1 + n2;
    let blocks0 = n0 / (groups * LANE_COLUMNS);
    let blocks1 = n1 / (groups * LANE_COLUMNS);
    if CUBE_POS_X < blocks0 {
        rows_times_weight(
            x,
            norm_weight,
            &mut work,
            w0,
            b0,
            out,
            m,
            n0,
            k,
            CUBE_POS_X,
            width,
            0,
            rows,
            groups,
            unroll,
            has_bias,
            has_norm,
        );
    } else if CUBE_POS_X < blocks0 + blocks1 {
        rows_times_weight(
            x,
            norm_weight,
            &mut work,
            w1,
            b1,
            out,
            m,
            n1,
            k,
            CUBE_POS_X - blocks0,
            width,
            n0,
            rows,
            groups,
            unroll,
            has_bias,
            has_norm,
        );
    } else {
        rows_times_weight(
            x,
            norm_weight,
            &mut work,
            w2,
            b2,
            out,
            m,
            n2,
            k,
            CUBE_POS_X - blocks0 - blocks1,
            width,
            n0 + n1,
            rows,
            groups,
            unroll,
            has_bias,
            has_norm,
        );
    }
}

/// What a product's workgroup keeps beside its registers: the shared memory of the sums over
/// K slices and each row's 1 / rms (for the fused norm). Made once per kernel, so that the
/// three-product kernel's three inlined products share it.
#[derive(CubeType)]
struct RowsWorkspace {
    partial: Shared<[f32]>,
    part_sums: Shared<[f32]>,
    inv_rms: Array<f32>,
}

#[cube]
impl RowsWorkspace {
    fn new(#[comptime] rows: usize) -> RowsWorkspace {
        let mut inv_rms = Array::<f32>::new(rows);
        #[unroll]
        for r in 0..rows {
            inv_rms[r] = 1.0;
        }
        RowsWorkspace {
            partial: Shared::<[f32]>::new_slice((UNITS * LANE_COLUMNS) as usize),
            part_sums: Shared::<[f32]>::new_slice(UNITS as usize),
            inv_rms,
        }
    }
}

/// Each of the workgroup's rows' 1 / rms into `inv_rms`, the whole workgroup adding its
/// squares as `rms_norm_rows` does. Synchronises the workgroup.
#[cube]
fn fill_inverse_rms(
    x: &[f32],
    m: u32,
    k: u32,
    eps: f32,
    inv_rms: &mut Array<f32>,
    #[comptime] rows: usize,
) {
    let row_begin = CUBE_POS_Y * rows as u32;
    let row_count = min(m - row_begin, rows as u32);
    #[unroll]
    for r in 0..rows {
        // The same for the whole workgroup, so its synchronisations are reached by all or none.
        if (r as u32) < row_count {
            inv_rms[r] = row_inverse_rms(x, (row_begin + r as u32) * k, k, eps);
        }
    }
}

/// Workgroup `block_x`'s columns of `x` [m, k] (each row RMS-normed first when `has_norm`:
/// times `work.inv_rms` and `norm_weight` [k]) times `w` [k, n] (+ `bias`), written to
/// columns `out_offset..` of `out` [m, out_width].
#[cube]
#[allow(clippy::too_many_arguments)]
fn rows_times_weight(
    x: &[f32],
    norm_weight: &[f32],
    work: &mut RowsWorkspace,
    w: &[EightBf16],
    bias: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    block_x: u32,
    out_width: u32,
    out_offset: u32,
    #[comptime] rows: usize,
    #[comptime] groups: u32,
    #[comptime] unroll: u32,
    #[comptime] has_bias: bool,
    #[comptime] has_norm: bool,
) {
    let unit = UNIT_POS;
    let group = unit % groups;
    let slice = unit / groups;
    let slices = UNITS / groups;
    let vectors_per_row = n / LANE_COLUMNS;
    let vector = block_x * groups + group;
    let row_begin = CUBE_POS_Y * rows as u32;
    let row_count = min(m - row_begin, rows as u32);
    let per_slice = k.div_ceil(slices);
    let k_begin = min(k, slice * per_slice);
    let k_end = min(k, k_begin + per_slice);
    let mut acc = Array::<f32>::new(rows * LANE_COLUMNS as usize);
    #[unroll]
    for i in 0..rows * LANE_COLUMNS as usize {
        acc[i] = 0.0;
    }
    if vector < vectors_per_row {
        let mut kk = k_begin;
        while kk < k_end {
            // Every load of the chunk (weights and inputs) before any use: they are in flight
            // together. Past K the weights read as zero and the inputs are not read.
            let mut loaded = Array::<EightBf16>::new(unroll as usize);
            let mut inputs = Array::<f32>::new(unroll as usize * rows);
            #[unroll]
            for u in 0..unroll as usize {
                let row_k = kk + u as u32;
                let mut eight = EightBf16::new(0u32);
                if row_k < k_end {
                    eight = w[(row_k * vectors_per_row + vector) as usize];
                }
                loaded[u] = eight;
                #[unroll]
                for r in 0..rows {
                    let mut input = 0.0f32;
                    if (r as u32) < row_count && row_k < k_end {
                        input = x[((row_begin + r as u32) * k + row_k) as usize];
                        if has_norm {
                            // The norm's own expression, so the product sees its values.
                            input = input * work.inv_rms[r] * norm_weight[row_k as usize];
                        }
                    }
                    inputs[u * rows + r] = input;
                }
            }
            #[unroll]
            for u in 0..unroll as usize {
                let mut weights = Array::<f32>::new(LANE_COLUMNS as usize);
                #[unroll]
                for q in 0..(LANE_COLUMNS / 2) as usize {
                    let (low, high) = bf16_pair(loaded[u].extract(q));
                    weights[2 * q] = low;
                    weights[2 * q + 1] = high;
                }
                #[unroll]
                for r in 0..rows {
                    // Rounded to bf16 as the tensor-core GEMM rounds its inputs.
                    let xv = f32::cast_from(bf16::cast_from(inputs[u * rows + r]));
                    #[unroll]
                    for c in 0..LANE_COLUMNS as usize {
                        acc[r * LANE_COLUMNS as usize + c] += xv * weights[c];
                    }
                }
            }
            kk += unroll;
        }
    }
    // Per row: every invocation stores its eight column sums; then `parts` invocations per
    // column add a share of the slices each, and one invocation per column adds the parts.
    let columns = groups * LANE_COLUMNS;
    #[unroll]
    for r in 0..rows {
        // The same for the whole workgroup, so its synchronisations are reached by all or none.
        if (r as u32) < row_count {
            sum_row_over_slices(
                &acc,
                &mut work.partial,
                &mut work.part_sums,
                bias,
                out,
                r,
                row_begin + r as u32,
                n,
                block_x * columns,
                out_width,
                out_offset,
                columns,
                slices,
                has_bias,
            );
        }
    }
}

/// Adds row `r`'s column sums over the workgroup's K slices (`acc` holds this invocation's
/// eight) and the bias for its columns `first_col..` of `n`, and writes them to output row
/// `out_row` (of `out_width`, from column `out_offset`). Synchronises the workgroup.
#[cube]
#[allow(clippy::too_many_arguments)]
fn sum_row_over_slices(
    acc: &Array<f32>,
    partial: &mut [f32],
    part_sums: &mut [f32],
    bias: &[f32],
    out: &mut [f32],
    #[comptime] r: usize,
    out_row: u32,
    n: u32,
    first_col: u32,
    out_width: u32,
    out_offset: u32,
    columns: u32,
    slices: u32,
    #[comptime] has_bias: bool,
) {
    let unit = UNIT_POS;
    let parts = UNITS / columns;
    let column = unit % columns;
    let part = unit / columns;
    #[unroll]
    for c in 0..LANE_COLUMNS as usize {
        partial[(unit * LANE_COLUMNS) as usize + c] = acc[r * LANE_COLUMNS as usize + c];
    }
    sync_cube();
    // Slice s's sum for `column` is at s * columns + column (unit = s * groups + group).
    let mut share = 0.0f32;
    let mut s = part;
    while s < slices {
        share += partial[(s * columns + column) as usize];
        s += parts;
    }
    part_sums[unit as usize] = share;
    sync_cube();
    let col = first_col + unit;
    if unit < columns && col < n {
        let mut total = 0.0f32;
        for p in 0..parts {
            total += part_sums[(p * columns + unit) as usize];
        }
        if has_bias {
            total += bias[col as usize];
        }
        out[(out_row * out_width + out_offset + col) as usize] = total;
    }
    sync_cube();
}

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

/// The tiling for an `m`-row product with `n` output columns (`bench kernel-check
/// --decode-timings --rows-tilings`, H100, 2026-11-27, one call, microseconds per launch at
/// one row, model's previous choice first): at one row, four column groups (q/k/v 26.6 ->
/// 21.7, o 25.1 -> 21.7; 64-byte runs of a weight row per K slice although fewer
/// workgroups), and for very wide products (an lm_head piece of 93,184 columns) eight groups
/// with sixteen rows in flight (247 -> 202, 2.65 TB/s); more rows keep the earlier rule, four
/// groups where that still gives [`TARGET_WORKGROUPS`], else two (not measured again).
pub fn default_tiling(m: usize, n: usize) -> RowsTiling {
    let vectors = n / LANE_COLUMNS as usize;
    let (groups, unroll) = match m {
        1 if vectors.div_ceil(8) >= WIDE_WORKGROUPS => (8, 16),
        1 => (4, 8),
        _ if vectors.div_ceil(4) >= TARGET_WORKGROUPS => (4, 8),
        _ => (2, 8),
    };
    RowsTiling { groups, unroll }
}

/// `tiling`'s groups and unroll where given (non-zero; every width in `whole` a multiple of
/// the groups' columns), else [`default_tiling`]'s for an `m`-row product over `n` columns.
fn chosen_tiling(tiling: RowsTiling, m: usize, n: usize, whole: &[usize]) -> RowsTiling {
    let default = default_tiling(m, n);
    let groups = if tiling.groups == 0 {
        default.groups
    } else {
        tiling.groups
    };
    let unroll = if tiling.unroll == 0 {
        default.unroll
    } else {
        tiling.unroll
    };
    let columns = (groups * LANE_COLUMNS) as usize;
    assert!(
        whole.iter().all(|w| w.is_multiple_of(columns)),
        "bf16_rows: {groups} column groups do not tile widths {whole:?}"
    );
    RowsTiling { groups, unroll }
}

/// Workgroups across `n` output columns, `groups` column groups of eight each.
fn column_blocks(n: usize, groups: u32) -> usize {
    (n / LANE_COLUMNS as usize).div_ceil(groups as usize)
}

/// Rows per workgroup for an `m`-row product (fewer rows compile to fewer registers: a batch-1
/// step has one) and the grid of `column_blocks` workgroups across by row chunks down.
fn grid(m: usize, column_blocks: usize) -> (usize, CubeCount) {
    let rows = m.next_power_of_two().min(ROWS);
    let cubes = CubeCount::Static(column_blocks as u32, m.div_ceil(rows) as u32, 1);
    (rows, cubes)
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
        // At most four groups by default: `supports_three` promises whole workgroups of 32
        // columns per segment, not more.
        let default = default_tiling(m, n0 + n1 + n2);
        let capped = match default.groups > 4 && groups == 0 {
            true => RowsTiling {
                groups: 4,
                unroll: 8,
            },
            false => RowsTiling { groups, unroll },
        };
        let RowsTiling { groups, unroll } = chosen_tiling(capped, m, n0 + n1 + n2, &[n0, n1]);
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
    let w = w.cast(DType::BF16);
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
    let [w0, w1, w2] = weights.map(|w| w.cast(DType::BF16).into_dispatch());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One row: four groups for the attention's widths, eight with sixteen rows in flight for
    /// an lm_head piece; more rows keep the width rule; explicit tilings win and must tile.
    #[test]
    fn default_tiling_follows_the_measured_choices() {
        let tiling = |groups, unroll| RowsTiling { groups, unroll };
        assert_eq!(default_tiling(1, 5120), tiling(4, 8));
        assert_eq!(default_tiling(1, 2880), tiling(4, 8));
        assert_eq!(default_tiling(1, 93_184), tiling(8, 16));
        assert_eq!(default_tiling(32, 5120), tiling(2, 8));
        assert_eq!(default_tiling(32, 93_184), tiling(4, 8));
        assert_eq!(
            chosen_tiling(tiling(2, 0), 1, 5120, &[4096, 512]),
            tiling(2, 8)
        );
        assert_eq!(
            chosen_tiling(DEFAULT_TILING, 1, 5120, &[4096, 512]),
            tiling(4, 8)
        );
        let refused = std::panic::catch_unwind(|| chosen_tiling(tiling(8, 8), 1, 96, &[32, 32]));
        assert!(refused.is_err());
    }
}
