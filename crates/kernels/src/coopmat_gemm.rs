//! bf16 GEMM on the tensor cores through workgroup-scope cooperative matrices.
//!
//! burn's own matmul on Vulkan uses subgroup-scope 16x16x16 cooperative matrices and reaches
//! about 18% of torch's bf16 rate on an H100 (docs/benchmarks.md). The NVIDIA driver also offers
//! workgroup-scope matrices up to 1024 on a side (`VK_NV_cooperative_matrix2`); the driver then
//! plans the tile itself. This kernel gives each workgroup one `TILE_M x TILE_N` output tile and
//! walks K in steps of `TILE_K`. With `Scheme::Staged` the invocations copy each step's input
//! tiles into shared memory (`staged_tiles`), loading the next step's into registers while the
//! tensor cores multiply, and the matrices are loaded from there: 208-260 TF/s on an H100
//! against 128-152 when the matrices are loaded straight from global memory by tensor
//! addressing (`Scheme::Direct`, bounds handled by the driver; the fallback for shapes the
//! staged scheme cannot take). `Scheme::Warps` stages the same way and then has each subgroup
//! multiply its own block of the tile (`crate::coopmat_warps`): 5-10% over `Staged`. The
//! default, `Scheme::Specialized`, feeds the same subgroups through a ring of stages filled by
//! producer subgroups of their own, with no barrier per K step (`crate::coopmat_specialized`):
//! 3-12% over `Warps`. [`coopmat_gemm_plus_bias`] adds a bias to every row; the fragment
//! kernels start their accumulators at it, so no launch of its own adds it (docs/benchmarks.md,
//! twenty-seventh round).

use crate::bf16_nearest::to_nearest_bf16;
use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::bf16_rows::EightBf16;
use crate::coopmat_specialized;
use crate::coopmat_warps;
use crate::launch::empty_f32;
use crate::staged_tiles::{
    load_tile_words, staged_row_words, store_tile_words, whole_words_per_unit,
};
use crate::tile_order::{TileOrder, tile_origin};

/// Output tile of one workgroup (m, n), the K step, invocations per workgroup (one of the
/// driver's `units_per_block` for bf16: 32, 64, 128, 256), how the tiles reach the matrices and
/// in which order the workgroups take the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub units: u32,
    pub scheme: Scheme,
    /// `None`: chosen by the weights' size ([`TileOrder::for_weights`]).
    pub order: Option<TileOrder>,
}

/// How a K step's input tiles reach the cooperative matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Loaded from global memory by tensor addressing, then multiplied.
    Direct,
    /// Copied by the invocations into shared memory in 16-byte words (the next step's words
    /// loaded into registers during this step's product), then loaded from there.
    Staged,
    /// Staged as `Staged`, then multiplied by each subgroup on its own block of the tile in
    /// subgroup-scope 16 x 16 x 16 fragments (`crate::coopmat_warps`).
    Warps,
    /// `Warps`' fragments fed by `producers` subgroups of their own through a ring of `stages`
    /// shared stages, with counters instead of barriers (`crate::coopmat_specialized`);
    /// `units` counts the consumers only.
    Specialized {
        producers: u32,
        stages: u32,
        variant: crate::coopmat_specialized::Variant,
    },
    /// Not a product: `Warps`' K loop with its inputs staged once and its fragments fed as
    /// `crate::coopmat_ceiling` says (a benchmark of what bounds `Warps`).
    Ceiling(crate::coopmat_ceiling::Feed),
}

/// 128 x 256 x 16 in subgroup-scope fragments fed by four producer subgroups through three
/// stages (`Scheme::Specialized`), falling back to staged and then direct loads where the shape
/// asks for it ([`launched_tiling`]). History, all on one H200 or H100 unless said:
/// - staged, 208 TF/s on scoring's projection shapes against 128-134 loaded by tensor
///   addressing (docs/benchmarks.md, eighteenth round);
/// - column tiles first where the weights fit in the L2 cache: 220 against 203-209 TF/s on the
///   q and o projections, while an lm_head piece keeps row tiles first (nineteenth round);
/// - `Warps` over staged, same tiles: 263-267 against 243-252 TF/s at 8192^3 (twenty-second);
/// - `Warps` with K steps of 48: 294.0 against 267.2 TF/s at 8192^3 (twenty-sixth);
/// - `Specialized` over `Warps` 128 x 256 x 48, same call, twice (twenty-ninth): 302.6/301.7
///   against 293.0/293.1 TF/s at 8192^3, 273-274 against 256 at the q projection, 267-269
///   against 246-248 at the o projection (252 for the 320-wide warps tiles that it had), 194
///   against 174 at k and v, 274-276 against 267-268 on an lm_head piece. Scoring a 20b:
///   +1.2% (three rounds each). More producers spill registers (five: 74 TF/s); more stages
///   do not fit the driver's 48 KB.
pub const DEFAULT_TILING: Tiling = Tiling {
    m: 128,
    n: 256,
    k: 16,
    units: 256,
    scheme: Scheme::Specialized {
        producers: 4,
        stages: 3,
        variant: crate::coopmat_specialized::Variant::Product,
    },
    order: None,
};

/// 32 x 64 x 64 in subgroup-scope fragments with four subgroups (`Scheme::Warps`): the tiling
/// of products of at most 32 rows where it takes the shape whole ([`tiling_for`]). The default's
/// 128 x 256 tiles give such a product one workgroup per 256 columns, 16 for the o projection on
/// 132 multiprocessors. On an H200, queued launches with the bias (docs/benchmarks.md,
/// fortieth round), us against the default: 64 against 112 at 32 x 2880 x 4096 (q), 78 against
/// 140 at 32 x 4096 x 2880 (o), 232 against 275 on an lm_head piece of 32 rows.
pub const FEW_ROWS_TILING: Tiling = Tiling {
    m: 32,
    n: 64,
    k: 64,
    units: 128,
    scheme: Scheme::Warps,
    order: None,
};

/// Whether an `m x k` by `k x n` product takes [`FEW_ROWS_TILING`] whole: at most its 32 rows,
/// rows and columns of whole fragments (no fallback kernel).
pub fn takes_few_rows_tiling(m: usize, n: usize, k: usize) -> bool {
    let t = FEW_ROWS_TILING;
    m <= t.m && coopmat_warps::takes(m, n, k, (t.m, t.n, t.k), t.units)
}

/// The tiling of an `m x k` by `k x n` product when [`set_tiling`] chose none:
/// [`FEW_ROWS_TILING`] where it takes the shape whole, else [`DEFAULT_TILING`].
pub fn tiling_for(m: usize, n: usize, k: usize) -> Tiling {
    match takes_few_rows_tiling(m, n, k) {
        true => FEW_ROWS_TILING,
        false => DEFAULT_TILING,
    }
}

/// A tiling every launch takes instead of [`tiling_for`]'s (benchmarks compare several).
static CHOSEN: std::sync::Mutex<Option<Tiling>> = std::sync::Mutex::new(None);

/// Sets the tiling later launches use, whatever their shape.
pub fn set_tiling(tiling: Tiling) {
    *CHOSEN.lock().expect("tiling lock") = Some(tiling);
}

/// The tiling of an `m x k` by `k x n` product: the one [`set_tiling`] chose, else
/// [`tiling_for`]'s.
fn chosen_tiling(m: usize, n: usize, k: usize) -> Tiling {
    CHOSEN
        .lock()
        .expect("tiling lock")
        .unwrap_or_else(|| tiling_for(m, n, k))
}

#[cube(launch)]
fn coopmat_gemm_kernel(
    lhs: &[bf16],
    rhs: &[bf16],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] columns_first: bool,
) {
    let (tm, tn, tk) = tile;
    let lhs = TensorView::new(lhs, seq![m, k]).finish();
    let rhs = TensorView::new(rhs, seq![k, n]).finish();
    let out = TensorView::new(&*out, seq![m, n]).finish();
    let (row, col) = tile_origin(tm, tn, columns_first);

    let mut a = input_matrix(cmma::MatrixIdent::A, tile, cmma::MatrixLayout::Undefined);
    let mut b = input_matrix(cmma::MatrixIdent::B, tile, cmma::MatrixLayout::Undefined);
    let c = zero_accumulator(tile);
    for k_offs in range_stepped(0, k, tk as u32) {
        let a_tile = lhs.slice(seq![row, k_offs], seq![tm as u32, tk as u32]);
        let b_tile = rhs.slice(seq![k_offs, col], seq![tk as u32, tn as u32]);
        cmma::load_tensor(&mut a, &a_tile);
        cmma::load_tensor(&mut b, &b_tile);
        cmma::execute(&a, &b, &c, &c);
    }
    let mut out_tile = out.slice(seq![row, col], seq![tm as u32, tn as u32]);
    cmma::store_tensor(&mut out_tile, &c);
}

#[cube(launch_unchecked)]
fn coopmat_gemm_staged_kernel(
    lhs: &[EightBf16],
    rhs: &[EightBf16],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] columns_first: bool,
    #[comptime] units: u32,
) {
    let (tm, tn, tk) = tile;
    let out = TensorView::new(&*out, seq![m, n]).finish();
    let (row, col) = tile_origin(tm, tn, columns_first);
    let a_stride = comptime![staged_row_words(tk)];
    let b_stride = comptime![staged_row_words(tn)];
    let mut stage_a = Shared::<[EightBf16]>::new_slice(tm * a_stride);
    let mut stage_b = Shared::<[EightBf16]>::new_slice(tk * b_stride);
    let mut next_a = Array::<EightBf16>::new(tm * tk / 8 / units as usize);
    let mut next_b = Array::<EightBf16>::new(tk * tn / 8 / units as usize);
    let mut a = input_matrix(cmma::MatrixIdent::A, tile, cmma::MatrixLayout::RowMajor);
    let mut b = input_matrix(cmma::MatrixIdent::B, tile, cmma::MatrixLayout::RowMajor);
    let c = zero_accumulator(tile);
    let steps = k / tk as u32;
    load_tile_words(lhs, &mut next_a, row, m, 0, k, k, tm, tk, units);
    load_tile_words(rhs, &mut next_b, 0, k, col, n, n, tk, tn, units);
    for step in 0..steps {
        // The previous step's matrices have been loaded from the stage before it is rewritten.
        sync_cube();
        store_tile_words(&next_a, &mut stage_a, tm, tk, units);
        store_tile_words(&next_b, &mut stage_b, tk, tn, units);
        sync_cube();
        if step + 1 < steps {
            let k_next = (step + 1) * tk as u32;
            load_tile_words(lhs, &mut next_a, row, m, k_next, k, k, tm, tk, units);
            load_tile_words(rhs, &mut next_b, k_next, k, col, n, n, tk, tn, units);
        }
        // Strides in u32 words (the loads divide them by an EightBf16's four words).
        cmma::load(&mut a, &stage_a[0..tm * a_stride], (a_stride * 4) as u32);
        cmma::load(&mut b, &stage_b[0..tk * b_stride], (b_stride * 4) as u32);
        cmma::execute(&a, &b, &c, &c);
    }
    let mut out_tile = out.slice(seq![row, col], seq![tm as u32, tn as u32]);
    cmma::store_tensor(&mut out_tile, &c);
}

/// An uninitialised workgroup-scope bf16 input matrix of the tile.
#[cube]
pub(crate) fn input_matrix(
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] layout: cmma::MatrixLayout,
) -> cmma::Matrix<bf16, cmma::Cube> {
    let (tm, tn, tk) = tile;
    unsafe { cmma::Matrix::<bf16, cmma::Cube>::uninitialized(ident, tm, tn, tk, layout) }
}

/// The tile's f32 accumulator, zeroed.
#[cube]
pub(crate) fn zero_accumulator(
    #[comptime] tile: (usize, usize, usize),
) -> cmma::Matrix<f32, cmma::Cube> {
    let (tm, tn, tk) = tile;
    cmma::Matrix::<f32, cmma::Cube>::from_value(
        cmma::MatrixIdent::Accumulator,
        tm,
        tn,
        tk,
        cmma::MatrixLayout::Undefined,
        0.0,
    )
}

/// GPU extension ops; only the CubeCL backend (wgpu/Vulkan) implements them.
#[backend_extension(Cube, Fusion)]
pub trait KernelBackend: burn::backend::Backend {
    /// `lhs` [m, k] bf16 times `rhs` [k, n] bf16, accumulated and returned in f32.
    #[fusion(dtype = accumulator_dtype(lhs), shape = product_shape(lhs, rhs))]
    fn coopmat_gemm(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;

    /// As `coopmat_gemm`, plus `bias` [n] f32 added to every row: by the subgroup-scope kernels
    /// themselves (their accumulators start at the bias), by a separate add where a fallback runs.
    #[fusion(dtype = accumulator_dtype(lhs), shape = product_shape(lhs, rhs))]
    fn coopmat_gemm_plus_bias(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The products' dtype: f32 whatever the inputs.
fn accumulator_dtype(_input: DType) -> DType {
    DType::F32
}

/// [m, k] x [k, n] -> [m, n].
fn product_shape(lhs: &Shape, rhs: &Shape) -> Shape {
    Shape::from(vec![lhs[0], rhs[1]])
}

impl KernelBackend for CubeBackend {
    fn coopmat_gemm(lhs: CubeTensor, rhs: CubeTensor) -> CubeTensor {
        launch_coopmat_gemm(lhs, rhs, None)
    }

    fn coopmat_gemm_plus_bias(lhs: CubeTensor, rhs: CubeTensor, bias: CubeTensor) -> CubeTensor {
        launch_coopmat_gemm(lhs, rhs, Some(bias))
    }
}

/// `lhs` [m, k] x `rhs` [k, n] (bf16) on the tiling [`chosen_tiling`] gives, plus `bias` [n] (f32)
/// when given -> [m, n] f32.
fn launch_coopmat_gemm(lhs: CubeTensor, rhs: CubeTensor, bias: Option<CubeTensor>) -> CubeTensor {
    let lhs = into_contiguous(lhs);
    let rhs = into_contiguous(rhs);
    let [m, k] = [lhs.meta.shape()[0], lhs.meta.shape()[1]];
    let n = rhs.meta.shape()[1];
    let client = lhs.client.clone();
    if let Some(bias) = &bias {
        // The warps kernel reads it unchecked.
        assert_eq!(
            bias.meta.shape().as_slice(),
            [n],
            "coopmat_gemm: bias of {n} values"
        );
    }
    let out = empty_f32(&lhs, vec![m, n]);
    let t = launched_tiling(chosen_tiling(m, n, k), m, n as u32, k as u32);
    let order = t
        .order
        .unwrap_or_else(|| TileOrder::for_weights(k * n * DType::BF16.size()));
    let cubes = order.cube_count(m.div_ceil(t.m), n.div_ceil(t.n));
    let columns_first = order.columns_first();
    let dim = match t.scheme {
        Scheme::Specialized { producers, .. } => {
            CubeDim::new_1d(coopmat_specialized::workgroup_units(t.units, producers))
        }
        _ => CubeDim::new_1d(t.units),
    };
    let tile = (t.m, t.n, t.k);
    // Only the fragment kernels add the bias themselves. Without one it reads none, and one value
    // stands in for the buffer (as for the grouped kernel's unused epilogue inputs).
    let with_bias =
        bias.is_some() && matches!(t.scheme, Scheme::Warps | Scheme::Specialized { .. });
    let bias_arg = || match &bias {
        Some(bias) if with_bias => into_contiguous(bias.clone()),
        _ => empty_f32(&out, vec![1]),
    };
    // The fragment kernels' block per subgroup.
    let warp = || coopmat_warps::warp_tile(t.m, t.n, t.units).expect("checked by takes");
    let (lhs, rhs, out_arg) = (
        lhs.into_buffer_arg(),
        rhs.into_buffer_arg(),
        out.clone().into_buffer_arg(),
    );
    let (m, n, k) = (m as u32, n as u32, k as u32);
    // Every kernel takes these arguments, the others theirs after them (the generated launch
    // functions take each argument separately).
    macro_rules! launch_gemm {
        ($launch:path $(, $more:expr)*) => {
            $launch(
                &client, cubes, dim, lhs, rhs, out_arg, m, n, k, tile, columns_first
                $(, $more)*
            )
        };
    }
    match t.scheme {
        Scheme::Direct => launch_gemm!(coopmat_gemm_kernel::launch),
        // Safety: reads are guarded by the row and column bounds; K is whole steps and
        // rows are whole 16-byte words (`staged_or_fallback`).
        Scheme::Staged => unsafe {
            launch_gemm!(coopmat_gemm_staged_kernel::launch_unchecked, t.units)
        },
        // Safety: as staged, and every fragment lies inside the output or outside it
        // (`coopmat_warps::takes`); the bias has n values (`coopmat_gemm_plus_bias`).
        Scheme::Warps => unsafe {
            launch_gemm!(
                coopmat_warps::coopmat_gemm_warps_kernel::launch_unchecked,
                bias_arg().into_buffer_arg(),
                with_bias,
                warp(),
                t.units
            )
        },
        // Safety: as warps (`coopmat_specialized::takes`).
        Scheme::Specialized {
            producers,
            stages,
            variant,
        } => unsafe {
            let feed_only = variant == crate::coopmat_specialized::Variant::FeedOnly;
            launch_gemm!(
                coopmat_specialized::coopmat_gemm_specialized_kernel::launch_unchecked,
                bias_arg().into_buffer_arg(),
                with_bias,
                warp(),
                t.units,
                producers,
                stages,
                feed_only
            )
        },
        // Safety: as warps.
        Scheme::Ceiling(feed) => unsafe {
            launch_gemm!(
                crate::coopmat_ceiling::coopmat_ceiling_kernel::launch_unchecked,
                warp(),
                feed.code(),
                t.units
            )
        },
    }
    match bias {
        // A fallback ran: the bias as a row, added to every row of the product.
        Some(bias) if !with_bias => {
            let row = burn_cubecl::ops::reshape(bias, Shape::from(vec![1, n as usize]));
            burn_cubecl::ops::numeric::add(out, row)
        }
        _ => out,
    }
}

/// The K step of the staged and direct kernels where they stand in for `Warps`: the step their
/// workgroup-scope matrices run with (the driver's granularity is 16 to 32).
const FALLBACK_K: usize = 32;

/// The tiling a launch with tiling `t` runs for an `m x k` by `k x n` product: `t` where its
/// kernel takes the shape; for `Warps` (or `Ceiling`) that cannot, `Staged` with K steps of
/// [`FALLBACK_K`] where that one can; else `Direct`.
pub fn launched_tiling(t: Tiling, m: usize, n: u32, k: u32) -> Tiling {
    match t.scheme {
        Scheme::Warps | Scheme::Ceiling(_)
            if coopmat_warps::takes(m, n as usize, k as usize, (t.m, t.n, t.k), t.units) =>
        {
            t
        }
        Scheme::Specialized { producers, .. }
            if coopmat_specialized::takes(
                m,
                n as usize,
                k as usize,
                (t.m, t.n, t.k),
                t.units,
                producers,
            ) =>
        {
            t
        }
        Scheme::Warps | Scheme::Ceiling(_) | Scheme::Specialized { .. } => staged_or_fallback(
            Tiling {
                scheme: Scheme::Staged,
                k: FALLBACK_K,
                ..t
            },
            n,
            k,
        ),
        _ => staged_or_fallback(t, n, k),
    }
}

/// The tiling, as `Direct` where `Staged` cannot take the shape: K must be whole steps, rows
/// whole 16-byte words, and the tile whole words per invocation.
fn staged_or_fallback(t: Tiling, n: u32, k: u32) -> Tiling {
    let fits = (k as usize).is_multiple_of(t.k)
        && n.is_multiple_of(8)
        && whole_words_per_unit(t.m, t.k, t.units)
        && whole_words_per_unit(t.k, t.n, t.units);
    match t.scheme {
        Scheme::Staged if !fits => Tiling {
            scheme: Scheme::Direct,
            ..t
        },
        _ => t,
    }
}

/// `lhs` [m, k] x `rhs` [k, n] on the tensor cores: inputs are rounded to bf16, the result is f32.
/// Only on a wgpu/Vulkan device whose driver offers workgroup-scope bf16 cooperative matrices.
pub fn coopmat_gemm(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    coopmat_gemm_plus_bias(lhs, rhs, None)
}

/// [`coopmat_gemm`] plus `bias` [n] (f32) added to every row when given (as
/// `bf16_rows::bf16_rows_matmul` takes it): the subgroup-scope kernels start their accumulators
/// at the bias, so the product needs no pass of its own to add it.
pub fn coopmat_gemm_plus_bias(
    lhs: Tensor<2>,
    rhs: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<2> {
    let lhs = to_nearest_bf16(lhs).into_dispatch();
    let rhs = to_nearest_bf16(rhs).into_dispatch();
    Tensor::from_dispatch(match bias {
        Some(bias) => <burn::backend::Dispatch as KernelBackend>::coopmat_gemm_plus_bias(
            lhs,
            rhs,
            bias.cast(DType::F32).into_dispatch(),
        ),
        None => <burn::backend::Dispatch as KernelBackend>::coopmat_gemm(lhs, rhs),
    })
}

/// What `coopmat_gemm` computes, with burn's own ops: bf16 inputs, f32 product.
pub fn reference_gemm(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    let lhs = to_nearest_bf16(lhs).cast(DType::F32);
    let rhs = to_nearest_bf16(rhs).cast(DType::F32);
    lhs.matmul(rhs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_direct_and_staged_kernels_compile_for_the_default_tile_as_a_fallback() {
        let t = DEFAULT_TILING;
        let tile = (t.m, t.n, FALLBACK_K);
        for columns_first in [false, true] {
            let direct = compile_kernel!(
                coopmat_gemm_kernel::CoopmatGemmKernel,
                CubeDim::new_1d(t.units),
                [b b b s s s],
                tile,
                columns_first,
            );
            assert_eq!(direct, Ok(()));
            let staged = compile_kernel!(
                coopmat_gemm_staged_kernel::CoopmatGemmStagedKernel,
                CubeDim::new_1d(t.units),
                [b b b s s s],
                tile,
                columns_first,
                t.units,
            );
            assert_eq!(staged, Ok(()));
        }
    }

    const STAGED: Tiling = Tiling {
        scheme: Scheme::Staged,
        k: 32,
        ..DEFAULT_TILING
    };

    /// The scheme of [`launched_tiling`]'s tiling.
    fn scheme_for(t: Tiling, m: usize, n: u32, k: u32) -> Scheme {
        launched_tiling(t, m, n, k).scheme
    }

    #[test]
    fn staged_gemm_takes_whole_steps_and_words_and_falls_back_otherwise() {
        // Scoring's projection and lm_head shapes are staged.
        for (n, k) in [(5120, 2880), (2880, 4096), (93184, 2880)] {
            assert_eq!(staged_or_fallback(STAGED, n, k).scheme, Scheme::Staged);
        }
        // K not whole steps of 32, or rows not whole 16-byte words: loaded directly.
        assert_eq!(
            staged_or_fallback(STAGED, 5120, 2888).scheme,
            Scheme::Direct
        );
        assert_eq!(
            staged_or_fallback(STAGED, 5124, 2880).scheme,
            Scheme::Direct
        );
        // A tile that does not split into whole words per invocation.
        let uneven = Tiling {
            m: 16,
            units: 256,
            ..STAGED
        };
        assert_eq!(
            staged_or_fallback(uneven, 5120, 2880).scheme,
            Scheme::Direct
        );
        // The direct scheme stays direct.
        let direct = Tiling {
            scheme: Scheme::Direct,
            ..STAGED
        };
        assert_eq!(
            staged_or_fallback(direct, 5120, 2880).scheme,
            Scheme::Direct
        );
    }

    #[test]
    fn fragment_kernels_run_where_they_take_the_shape_and_fall_back_to_staged() {
        let warps = Tiling {
            k: 48,
            scheme: Scheme::Warps,
            ..DEFAULT_TILING
        };
        for t in [DEFAULT_TILING, warps] {
            assert_eq!(launched_tiling(t, 8192, 8192, 8192), t);
            // Scoring's projections: q, k and v, o, an lm_head piece.
            for (m, n, k) in [(16384, 4096, 2880), (16384, 512, 2880), (16384, 2880, 4096)] {
                assert_eq!(launched_tiling(t, m, n, k), t, "{m} {n} {k}");
            }
            assert_eq!(launched_tiling(t, 2048, 93_184, 2880), t);
            // Rows not whole fragments: the staged kernel (it bounds every row), with its own K
            // step.
            let staged = launched_tiling(t, 16383, 2880, 4096);
            assert_eq!((staged.scheme, staged.k), (Scheme::Staged, FALLBACK_K));
            // Nor whole K steps (nor words): loaded directly.
            assert_eq!(scheme_for(t, 16384, 2880, 4100), Scheme::Direct);
        }
        // The other schemes are unchanged.
        assert_eq!(scheme_for(STAGED, 17, 5120, 2880), Scheme::Staged);
    }

    #[test]
    fn products_of_up_to_32_rows_take_the_few_rows_tiling_where_it_takes_them_whole() {
        // A 16-token prefill and a batch-32 decode step: q, k and v, o, the lm_head's pieces.
        for m in [16, 32] {
            for (n, k) in [
                (4096, 2880),
                (512, 2880),
                (2880, 4096),
                (93_184, 2880),
                (14_720, 2880),
            ] {
                assert_eq!(tiling_for(m, n, k), FEW_ROWS_TILING, "{m} {n} {k}");
                assert_eq!(
                    launched_tiling(tiling_for(m, n, k), m, n as u32, k as u32),
                    FEW_ROWS_TILING
                );
            }
        }
        // Rows not whole fragments, more than 32 rows, columns not whole fragments, K not whole
        // 16-byte words: the default, as before.
        for (m, n, k) in [
            (20, 4096, 2880),
            (48, 4096, 2880),
            (33, 4096, 2880),
            (32, 200, 2880),
        ] {
            assert_eq!(tiling_for(m, n, k), DEFAULT_TILING, "{m} {n} {k}");
        }
        assert_eq!(tiling_for(32, 4096, 2884), DEFAULT_TILING);
        assert_eq!(tiling_for(16384, 4096, 2880), DEFAULT_TILING);
    }
}
