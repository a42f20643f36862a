//! bf16 GEMM on the tensor cores through workgroup-scope cooperative matrices.
//!
//! burn's own matmul on Vulkan uses subgroup-scope 16x16x16 cooperative matrices and reaches
//! about 18% of torch's bf16 rate on an H100 (docs/benchmarks.md). The NVIDIA driver also offers
//! workgroup-scope matrices up to 1024 on a side (`VK_NV_cooperative_matrix2`); the driver then
//! plans the tile itself. This kernel gives each workgroup one `TILE_M x TILE_N` output tile and
//! walks K in steps of `TILE_K`, loading through tensor addressing (bounds handled by the driver).

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::launch::empty_f32;

/// Output tile of one workgroup (m, n), the K step, and invocations per workgroup (one of the
/// driver's `units_per_block` for bf16: 32, 64, 128, 256).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub units: u32,
}

/// 128 x 256: 128-145 TF/s on scoring's projection and lm_head shapes against 89-111 for
/// 128 x 128 (docs/benchmarks.md, sixth round).
pub const DEFAULT_TILING: Tiling = Tiling {
    m: 128,
    n: 256,
    k: 32,
    units: 256,
};

static TILING: std::sync::Mutex<Tiling> = std::sync::Mutex::new(DEFAULT_TILING);

/// Sets the tiling later launches use (benchmarks compare several).
pub fn set_tiling(tiling: Tiling) {
    *TILING.lock().expect("tiling lock") = tiling;
}

fn tiling() -> Tiling {
    *TILING.lock().expect("tiling lock")
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
) {
    let (tm, tn, tk) = tile;
    let lhs = TensorView::new(lhs, seq![m, k]).finish();
    let rhs = TensorView::new(rhs, seq![k, n]).finish();
    let out = TensorView::new(&*out, seq![m, n]).finish();
    let row = CUBE_POS_X * tm as u32;
    let col = CUBE_POS_Y * tn as u32;

    let mut a = unsafe {
        cmma::Matrix::<bf16, cmma::Cube>::uninitialized(
            cmma::MatrixIdent::A,
            tm,
            tn,
            tk,
            cmma::MatrixLayout::Undefined,
        )
    };
    let mut b = unsafe {
        cmma::Matrix::<bf16, cmma::Cube>::uninitialized(
            cmma::MatrixIdent::B,
            tm,
            tn,
            tk,
            cmma::MatrixLayout::Undefined,
        )
    };
    let c = cmma::Matrix::<f32, cmma::Cube>::from_value(
        cmma::MatrixIdent::Accumulator,
        tm,
        tn,
        tk,
        cmma::MatrixLayout::Undefined,
        0.0,
    );
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

/// GPU extension ops; only the CubeCL backend (wgpu/Vulkan) implements them.
#[backend_extension(Cube, Fusion)]
pub trait KernelBackend: burn::backend::Backend {
    /// `lhs` [m, k] bf16 times `rhs` [k, n] bf16, accumulated and returned in f32.
    #[fusion(dtype = accumulator_dtype(lhs), shape = product_shape(lhs, rhs))]
    fn coopmat_gemm(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
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
        let lhs = into_contiguous(lhs);
        let rhs = into_contiguous(rhs);
        let [m, k] = [lhs.meta.shape()[0], lhs.meta.shape()[1]];
        let n = rhs.meta.shape()[1];
        let client = lhs.client.clone();
        let out = empty_f32(&lhs, vec![m, n]);
        let t = tiling();
        let cubes = CubeCount::Static(m.div_ceil(t.m) as u32, n.div_ceil(t.n) as u32, 1);
        coopmat_gemm_kernel::launch(
            &client,
            cubes,
            CubeDim::new_1d(t.units),
            lhs.into_buffer_arg(),
            rhs.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            m as u32,
            n as u32,
            k as u32,
            (t.m, t.n, t.k),
        );
        out
    }
}

/// `lhs` [m, k] x `rhs` [k, n] on the tensor cores: inputs are cast to bf16, the result is f32.
/// Only on a wgpu/Vulkan device whose driver offers workgroup-scope bf16 cooperative matrices.
pub fn coopmat_gemm(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    let lhs = lhs.cast(DType::BF16);
    let rhs = rhs.cast(DType::BF16);
    Tensor::from_dispatch(<burn::backend::Dispatch as KernelBackend>::coopmat_gemm(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

/// What `coopmat_gemm` computes, with burn's own ops: bf16 inputs, f32 product.
pub fn reference_gemm(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    let lhs = lhs.cast(DType::BF16).cast(DType::F32);
    let rhs = rhs.cast(DType::BF16).cast(DType::F32);
    lhs.matmul(rhs)
}
