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
//! twenty-seventh round). Which tiling a product runs with is [`crate::coopmat_tiling`]'s rule.

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
use crate::staged_tiles::{load_tile_words, staged_row_words, store_tile_words};
use crate::tile_order::{TileOrder, tile_origin};

use crate::coopmat_tiling::chosen_tiling;
pub use crate::coopmat_tiling::{
    DEFAULT_TILING, FEW_ROWS_TILING, Scheme, Tiling, launched_tiling, set_tiling,
    takes_few_rows_tiling, tiling_for,
};

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
    use crate::coopmat_tiling::FALLBACK_K;
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
}
