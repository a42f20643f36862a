//! Host-side pieces every kernel launch repeats: the output buffer and grids over many rows.

use burn::tensor::{DType, Shape};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Most workgroups along one grid dimension (Vulkan's limit).
pub const MAX_GRID_X: usize = 65535;

/// Most bytes the project puts in one device buffer. wgpu binds at most 2^31 - 1 bytes per
/// storage buffer on Vulkan, and cubecl refuses a larger allocation ("can't allocate buffer of
/// size ..."), so what could pass it goes in pieces of at most this: the vocabulary matrices
/// in f32 (2.3 GB for gpt-oss, `gpt_oss_model::transformer::vocab`) and the grouped kernel's
/// decoded experts (4.25 GB for 120b's gate_up, `grouped_mxfp4`).
pub const MAX_BUFFER_BYTES: usize = 1 << 30;

/// An uninitialised contiguous f32 tensor of `shape` on `like`'s device.
pub fn empty_f32(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    empty_of(like, shape, DType::F32)
}

/// An uninitialised contiguous tensor of `shape` and `dtype` on `like`'s device.
pub fn empty_of(like: &CubeTensor, shape: Vec<usize>, dtype: DType) -> CubeTensor {
    let client = like.client.clone();
    let elements: usize = shape.iter().product();
    CubeTensor::new_contiguous(
        client.clone(),
        like.device.clone(),
        Shape::from(shape),
        client.empty(elements * dtype.size()),
        dtype,
    )
}

/// One workgroup per row for `rows` rows, over two grid dimensions past [`MAX_GRID_X`]; the
/// kernel's row is `CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X` and rows past the end must exit.
pub fn grid_over_rows(rows: usize) -> CubeCount {
    CubeCount::Static(
        rows.clamp(1, MAX_GRID_X) as u32,
        rows.div_ceil(MAX_GRID_X).max(1) as u32,
        1,
    )
}

/// (outer, len, inner) of `dims` around `axis`: the sizes before it multiplied, its own, and
/// the sizes after it multiplied.
pub fn around_axis(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

/// Panics unless the KV caches `keys` and `values` can be written in place by `op`: contiguous
/// f32 of one shape (a launch writes a step's key and value into the caller's own buffers).
pub fn assert_caches_writable(op: &str, keys: &CubeTensor, values: &CubeTensor) {
    for (name, cache) in [("keys", keys), ("values", values)] {
        assert!(
            cache.is_contiguous() && cache.dtype == DType::F32,
            "{op}: {name} must be contiguous f32 (written in place)"
        );
    }
    assert_eq!(
        keys.meta.shape(),
        values.meta.shape(),
        "{op}: the caches' shapes"
    );
}

/// A backend-extension op's output type when it is its input's (`#[fusion(dtype = ...)]`).
pub fn same_dtype(input: DType) -> DType {
    input
}

/// A backend-extension op's output type when it writes bf16 whatever it reads.
pub fn bf16_dtype(_input: DType) -> DType {
    DType::BF16
}

/// A backend-extension op's output shape when it is its input's (`#[fusion(shape = ...)]`).
pub fn same_shape(x: &Shape) -> Shape {
    x.clone()
}
