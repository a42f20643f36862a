//! Half-split RoPE (spec 4.5) in one kernel, also moving heads in front of positions:
//! [B, T, heads, d] (the projection's output) -> [B, heads, T, d] (what attention reads).
//!
//! burn runs the rotation as about eight kernels per tensor (four products, a sum, a
//! difference, and the concatenation as two slice assignments); decoding is bound by kernels
//! per token, and every layer rotates queries and keys. One invocation per rotated pair
//! (i, i + d/2), with cos and sin shaped [B, 1, T, d/2] as `RotaryTable::cos_sin` makes them.
//! Given the fused q | k | v projection (`bf16_rows_three`), the same launch rotates q and k
//! and moves v, writing three contiguous sections ([`rotary_qkv_rows`]).

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::bf16_nearest::nearest_as;
use crate::launch::{
    assert_caches_writable, bf16_dtype, empty_f32, empty_of, grid_over_rows, same_dtype,
};
use crate::workgroup_reduce::UNITS;
use half::bf16;

/// RoPE's rotation (spec 4.3) of the pair (`a`, `b`) = (x[j], x[j + d/2]) by the angle whose
/// cosine and sine are `c` and `s`: the new x[j]. [`rotated_second`] gives the new x[j + d/2].
#[cube]
pub(crate) fn rotated_first(a: f32, b: f32, c: f32, s: f32) -> f32 {
    a * c - b * s
}

/// The new x[j + d/2] of the pair [`rotated_first`] rotates.
#[cube]
pub(crate) fn rotated_second(a: f32, b: f32, c: f32, s: f32) -> f32 {
    b * c + a * s
}

/// Writes f32, or bf16 rounded to nearest where `O` is bf16 (for rows only the tensor-core
/// attention reads, which would round them anyway).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rotary_rows_kernel<O: Float>(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    out: &mut [O],
    pairs: u32,
    batch: u32,
    positions: u32,
    half: u32,
    q_heads: u32,
    kv_heads: u32,
) {
    let id = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * UNITS + UNIT_POS;
    if id >= pairs {
        terminate!();
    }
    let heads = q_heads + 2 * kv_heads;
    // id = ((row * positions + position) * heads + head) * half + j
    let j = id % half;
    let head = (id / half) % heads;
    let row_position = id / (half * heads);
    let row = row_position / positions;
    let position = row_position % positions;
    let width = 2 * half;
    let x_base = (row_position * heads + head) * width;
    let a = x[(x_base + j) as usize];
    let b = x[(x_base + half + j) as usize];
    let c = cos[(row_position * half + j) as usize];
    let s = sin[(row_position * half + j) as usize];
    // Output sections [B, q_heads, T, d], [B, kv_heads, T, d] (rotated), [B, kv_heads, T, d]
    // (copied).
    let section_size = batch * positions * width;
    let mut section_base = 0u32;
    let mut section_heads = q_heads;
    let mut local = head;
    if head >= q_heads + kv_heads {
        section_base = section_size * (q_heads + kv_heads);
        section_heads = kv_heads;
        local = head - q_heads - kv_heads;
    } else if head >= q_heads {
        section_base = section_size * q_heads;
        section_heads = kv_heads;
        local = head - q_heads;
    }
    let out_base = section_base + ((row * section_heads + local) * positions + position) * width;
    let mut first = a;
    let mut second = b;
    if head < q_heads + kv_heads {
        first = rotated_first(a, b, c, s);
        second = rotated_second(a, b, c, s);
    }
    out[(out_base + j) as usize] = nearest_as::<O>(first);
    out[(out_base + half + j) as usize] = nearest_as::<O>(second);
}

/// One decode position per row: q rotated into `q_out` [B, q_heads, 1, d], k rotated and v
/// moved straight into the caches `keys` and `values` [B, kv_heads, capacity, d] at slot
/// `slot[0]` (nothing written there when the slot is past the end): the RoPE kernel and the two
/// cache writes of a decode step in one launch.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rotary_qkv_into_cache_kernel(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    q_out: &mut [f32],
    keys: &mut [f32],
    values: &mut [f32],
    slot: &[f32],
    pairs: u32,
    half: u32,
    q_heads: u32,
    kv_heads: u32,
    capacity: u32,
) {
    let id = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * UNITS + UNIT_POS;
    if id >= pairs {
        terminate!();
    }
    let heads = q_heads + 2 * kv_heads;
    // id = (row * heads + head) * half + j
    let j = id % half;
    let head = (id / half) % heads;
    let row = id / (half * heads);
    let width = 2 * half;
    let x_base = (row * heads + head) * width;
    let a = x[(x_base + j) as usize];
    let b = x[(x_base + half + j) as usize];
    let c = cos[(row * half + j) as usize];
    let s = sin[(row * half + j) as usize];
    let at = u32::cast_from(slot[0]);
    if head < q_heads {
        let base = (row * q_heads + head) * width;
        q_out[(base + j) as usize] = rotated_first(a, b, c, s);
        q_out[(base + half + j) as usize] = rotated_second(a, b, c, s);
    } else if at < capacity {
        if head < q_heads + kv_heads {
            let base = ((row * kv_heads + head - q_heads) * capacity + at) * width;
            keys[(base + j) as usize] = rotated_first(a, b, c, s);
            keys[(base + half + j) as usize] = rotated_second(a, b, c, s);
        } else {
            let base = ((row * kv_heads + head - q_heads - kv_heads) * capacity + at) * width;
            values[(base + j) as usize] = a;
            values[(base + half + j) as usize] = b;
        }
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait RotaryBackend: burn::backend::Backend {
    /// `x` [B, T, q_heads + 2 kv_heads, d], `cos` and `sin` [B, 1, T, d / 2] -> the flat
    /// sections [B, q_heads, T, d] and [B, kv_heads, T, d] (both rotated), then [B, kv_heads, T,
    /// d] (moved, not rotated).
    #[fusion(dtype = same_dtype(x), shape = Shape::from(vec![x[0] * x[1] * x[2] * x[3]]))]
    fn rotary_rows(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        q_heads: usize,
        kv_heads: usize,
    ) -> FloatTensor<Self>;

    /// As `rotary_rows`, the sections written in bf16 (rounded to nearest even).
    #[fusion(dtype = bf16_dtype(x), shape = Shape::from(vec![x[0] * x[1] * x[2] * x[3]]))]
    fn rotary_rows_bf16(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        q_heads: usize,
        kv_heads: usize,
    ) -> FloatTensor<Self>;

    /// `x` [B, 1, q_heads + 2 kv_heads, d], `cos` and `sin` [B, 1, 1, d / 2] -> q [B * q_heads
    /// * d] rotated; k rotated and v written in place into `keys` and `values` [B, kv_heads,
    /// capacity, d] (f32, contiguous) at slot `slot[0]`.
    #[fusion(dtype = same_dtype(x), shape = Shape::from(vec![x[0] * (x[2] - 2 * keys[1]) * x[3]]))]
    #[allow(clippy::too_many_arguments)]
    fn rotary_qkv_into_cache(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        slot: FloatTensor<Self>,
        q_heads: usize,
        kv_heads: usize,
    ) -> FloatTensor<Self>;
}

/// The rotary kernel writing `dtype` (f32 or bf16): see [`RotaryBackend::rotary_rows`].
fn launch_rotary_rows(
    [x, cos, sin]: [CubeTensor; 3],
    q_heads: usize,
    kv_heads: usize,
    dtype: DType,
) -> CubeTensor {
    let [x, cos, sin] = [x, cos, sin].map(into_contiguous);
    let [b, t, heads, d] = [0, 1, 2, 3].map(|i| x.meta.shape()[i]);
    assert_eq!(heads, q_heads + 2 * kv_heads, "rotary_rows: head counts");
    let pairs = b * t * heads * d / 2;
    let out = empty_of(&x, vec![b * t * heads * d], dtype);
    let launch = match dtype {
        DType::BF16 => rotary_rows_kernel::launch::<bf16>,
        _ => rotary_rows_kernel::launch::<f32>,
    };
    launch(
        &x.client.clone(),
        grid_over_rows(pairs.div_ceil(UNITS as usize)),
        CubeDim::new_1d(UNITS),
        x.into_buffer_arg(),
        cos.into_buffer_arg(),
        sin.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        pairs as u32,
        b as u32,
        t as u32,
        (d / 2) as u32,
        q_heads as u32,
        kv_heads as u32,
    );
    out
}

impl RotaryBackend for CubeBackend {
    fn rotary_rows(
        x: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        q_heads: usize,
        kv_heads: usize,
    ) -> CubeTensor {
        launch_rotary_rows([x, cos, sin], q_heads, kv_heads, DType::F32)
    }

    fn rotary_rows_bf16(
        x: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        q_heads: usize,
        kv_heads: usize,
    ) -> CubeTensor {
        launch_rotary_rows([x, cos, sin], q_heads, kv_heads, DType::BF16)
    }

    fn rotary_qkv_into_cache(
        x: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        keys: CubeTensor,
        values: CubeTensor,
        slot: CubeTensor,
        q_heads: usize,
        kv_heads: usize,
    ) -> CubeTensor {
        assert_caches_writable("rotary_qkv_into_cache", &keys, &values);
        let [x, cos, sin, slot] = [x, cos, sin, slot].map(into_contiguous);
        let [b, t, heads, d] = [0, 1, 2, 3].map(|i| x.meta.shape()[i]);
        let [_, cache_heads, capacity, cache_d] = [0, 1, 2, 3].map(|i| keys.meta.shape()[i]);
        assert!(
            t == 1 && heads == q_heads + 2 * kv_heads && cache_heads == kv_heads && cache_d == d,
            "rotary_qkv_into_cache: one position of q_heads + 2 kv_heads heads, caches of \
             kv_heads heads of the same width"
        );
        let pairs = b * heads * d / 2;
        let q = empty_f32(&x, vec![b * q_heads * d]);
        rotary_qkv_into_cache_kernel::launch(
            &x.client.clone(),
            grid_over_rows(pairs.div_ceil(UNITS as usize)),
            CubeDim::new_1d(UNITS),
            x.into_buffer_arg(),
            cos.into_buffer_arg(),
            sin.into_buffer_arg(),
            q.clone().into_buffer_arg(),
            keys.into_buffer_arg(),
            values.into_buffer_arg(),
            slot.into_buffer_arg(),
            pairs as u32,
            (d / 2) as u32,
            q_heads as u32,
            kv_heads as u32,
            capacity as u32,
        );
        q
    }
}

/// `x` [B, T, heads, d] rotated by `cos`, `sin` [B, 1, T, d / 2] (half-split pairs (i, i + d/2))
/// -> [B, heads, T, d]. f32, GPU only.
pub fn rotary_rows(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [b, t, heads, d] = x.dims();
    rotated_sections(x, cos, sin, heads, 0).reshape([b, heads, t, d])
}

/// [`rotary_rows`] written in bf16, each value rounded to nearest even: for rows only the
/// tensor-core attention reads (`attention_tiles`, which rounds them to bf16 anyway). GPU only.
pub fn rotary_rows_bf16(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [b, t, heads, d] = x.dims();
    let flat: Tensor<1> = Tensor::from_dispatch(
        <burn::backend::Dispatch as RotaryBackend>::rotary_rows_bf16(
            x.into_dispatch(),
            cos.into_dispatch(),
            sin.into_dispatch(),
            heads,
            0,
        ),
    );
    flat.reshape([b, heads, t, d])
}

/// The kernel's flat output (see [`RotaryBackend::rotary_rows`]).
fn rotated_sections(
    x: Tensor<4>,
    cos: Tensor<4>,
    sin: Tensor<4>,
    q_heads: usize,
    kv_heads: usize,
) -> Tensor<1> {
    Tensor::from_dispatch(<burn::backend::Dispatch as RotaryBackend>::rotary_rows(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        q_heads,
        kv_heads,
    ))
}

/// The fused q | k | v projection `x` [B, T, q_heads + 2 kv_heads, d] -> (q [B, q_heads, T,
/// d], k [B, kv_heads, T, d]) rotated and v [B, kv_heads, T, d], each contiguous, in one
/// kernel. f32, GPU only.
pub fn rotary_qkv_rows(
    x: Tensor<4>,
    cos: Tensor<4>,
    sin: Tensor<4>,
    q_heads: usize,
    kv_heads: usize,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [b, t, _, d] = x.dims();
    let flat = rotated_sections(x, cos, sin, q_heads, kv_heads);
    let section = |start_heads: usize, heads: usize| {
        flat.clone()
            .narrow(0, start_heads * b * t * d, heads * b * t * d)
            .reshape([b, heads, t, d])
    };
    (
        section(0, q_heads),
        section(q_heads, kv_heads),
        section(q_heads + kv_heads, kv_heads),
    )
}

/// A decode step's fused q | k | v projection `x` [B, 1, q_heads + 2 kv_heads, d] -> q [B,
/// q_heads, 1, d] rotated, with k rotated and v written into `keys` and `values` [B, kv_heads,
/// capacity, d] at slot `slot[0]` in place (their buffers are written; the caller keeps using
/// its tensors), in one kernel: [`rotary_qkv_rows`] plus two `write_at_index`. f32, GPU only.
pub fn rotary_qkv_into_cache(
    x: Tensor<4>,
    cos_sin: (Tensor<4>, Tensor<4>),
    (keys, values): (&Tensor<4>, &Tensor<4>),
    slot: Tensor<1>,
    q_heads: usize,
    kv_heads: usize,
) -> Tensor<4> {
    let [b, _, _, d] = x.dims();
    let (cos, sin) = cos_sin;
    let q = Tensor::<1>::from_dispatch(
        <burn::backend::Dispatch as RotaryBackend>::rotary_qkv_into_cache(
            x.into_dispatch(),
            cos.into_dispatch(),
            sin.into_dispatch(),
            keys.clone().into_dispatch(),
            values.clone().into_dispatch(),
            slot.cast(DType::F32).into_dispatch(),
            q_heads,
            kv_heads,
        ),
    );
    q.reshape([b, q_heads, 1, d])
}

/// What `rotary_qkv_rows` computes, with burn's ops.
pub fn reference_rotary_qkv_rows(
    x: Tensor<4>,
    cos: Tensor<4>,
    sin: Tensor<4>,
    q_heads: usize,
    kv_heads: usize,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let q = reference_rotary_rows(x.clone().narrow(2, 0, q_heads), cos.clone(), sin.clone());
    let k = reference_rotary_rows(x.clone().narrow(2, q_heads, kv_heads), cos, sin);
    let v = x.narrow(2, q_heads + kv_heads, kv_heads).swap_dims(1, 2);
    (q, k, v)
}

/// What `rotary_rows` computes, with burn's ops.
pub fn reference_rotary_rows(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let x = x.swap_dims(1, 2);
    let half = x.dims()[3] / 2;
    let a = x.clone().narrow(3, 0, half);
    let b = x.narrow(3, half, half);
    let first = a.clone() * cos.clone() - b.clone() * sin.clone();
    let second = b * cos + a * sin;
    Tensor::cat(vec![first, second], 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    /// The rows kernel writing f32 and writing bf16.
    type RowsToF32 = rotary_rows_kernel::RotaryRowsKernel<f32>;
    type RowsToBf16 = rotary_rows_kernel::RotaryRowsKernel<bf16>;

    #[test]
    fn both_kernels_compile() {
        let rows = compile_kernel!(RowsToF32, CubeDim::new_1d(UNITS), [b b b b s s s s s s]);
        assert_eq!(rows, Ok(()));
        let rows = compile_kernel!(RowsToBf16, CubeDim::new_1d(UNITS), [b b b b s s s s s s]);
        assert_eq!(rows, Ok(()));
        let into_cache = compile_kernel!(
            rotary_qkv_into_cache_kernel::RotaryQkvIntoCacheKernel,
            CubeDim::new_1d(UNITS),
            [b b b b b b b s s s s s],
        );
        assert_eq!(into_cache, Ok(()));
    }
}
