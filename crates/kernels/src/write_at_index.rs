//! Writes one slice of a tensor in place at an index held on the device.
//!
//! A decode step captured once and replayed (`burn::tensor::capture`) must find everything that
//! changes from step to step in device buffers: the slot a step's keys and values go to in the
//! KV cache, the step's token, its place in the output history. burn's `slice_assign` takes its
//! offsets from the host (they would be frozen into the captured launch); this kernel reads the
//! index from a one-element tensor, so a replay writes where the device state says.
//!
//! `dst` is seen as [outer, len, inner] around `axis`, `src` as [outer, inner] (its size along
//! `axis` is 1), and `dst[o, index, i] = src[o, i]`. The op returns `dst` itself: its buffer is
//! written, no copy is made (the caller keeps using the returned tensor as the state).

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{around_axis, grid_over_rows, same_dtype, same_shape};

/// Invocations per workgroup.
const UNITS: u32 = 256;

#[cube(launch)]
fn write_at_index_kernel(
    dst: &mut [f32],
    src: &[f32],
    index: &[f32],
    elements: u32,
    len: u32,
    inner: u32,
) {
    let e = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * UNITS + UNIT_POS;
    let slot = u32::cast_from(index[0]);
    if e < elements && slot < len {
        let outer = e / inner;
        let i = e % inner;
        dst[((outer * len + slot) * inner + i) as usize] = src[e as usize];
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait WriteAtIndexBackend: burn::backend::Backend {
    /// `dst` (f32, contiguous) with `src` written at `index[0]` along `axis`; returns `dst`'s
    /// own buffer.
    #[fusion(dtype = same_dtype(dst), shape = same_shape(dst))]
    fn write_at_index(
        dst: FloatTensor<Self>,
        src: FloatTensor<Self>,
        index: FloatTensor<Self>,
        axis: usize,
    ) -> FloatTensor<Self>;
}

impl WriteAtIndexBackend for CubeBackend {
    fn write_at_index(
        dst: CubeTensor,
        src: CubeTensor,
        index: CubeTensor,
        axis: usize,
    ) -> CubeTensor {
        assert!(
            dst.is_contiguous(),
            "write_at_index: the destination must be contiguous (it is written in place)"
        );
        assert_eq!(dst.dtype, DType::F32, "write_at_index: f32 tensors only");
        let [src, index] = [src, index].map(into_contiguous);
        let (outer, len, inner) = around_axis(dst.meta.shape(), axis);
        let elements = outer * inner;
        assert_eq!(
            src.meta.shape().iter().product::<usize>(),
            elements,
            "write_at_index: src must be dst's shape with size 1 along axis {axis}"
        );
        write_at_index_kernel::launch(
            &dst.client.clone(),
            grid_over_rows(elements.div_ceil(UNITS as usize)),
            CubeDim::new_1d(UNITS),
            dst.clone().into_buffer_arg(),
            src.into_buffer_arg(),
            index.into_buffer_arg(),
            elements as u32,
            len as u32,
            inner as u32,
        );
        dst
    }
}

/// `dst` with `src` written at position `index[0]` (a one-element f32 tensor holding an
/// integer) along `axis`, in place: the returned tensor shares `dst`'s buffer. `src` has
/// `dst`'s shape with size 1 along `axis`; an index past the end writes nothing. GPU only; see
/// [`reference_write_at_index`].
pub fn write_at_index<const D: usize>(
    dst: Tensor<D>,
    src: Tensor<D>,
    index: Tensor<1>,
    axis: usize,
) -> Tensor<D> {
    Tensor::from_dispatch(
        <burn::backend::Dispatch as WriteAtIndexBackend>::write_at_index(
            dst.into_dispatch(),
            src.cast(DType::F32).into_dispatch(),
            index.cast(DType::F32).into_dispatch(),
            axis,
        ),
    )
}

/// What `write_at_index` computes, with burn's ops (the index is read back to the host).
pub fn reference_write_at_index<const D: usize>(
    dst: Tensor<D>,
    src: Tensor<D>,
    index: Tensor<1>,
    axis: usize,
) -> Tensor<D> {
    let slot = index.into_scalar::<f32>() as usize;
    if slot >= dst.dims()[axis] {
        return dst;
    }
    let ranges: [std::ops::Range<usize>; D] = std::array::from_fn(|d| {
        if d == axis {
            slot..slot + 1
        } else {
            0..dst.dims()[d]
        }
    });
    dst.slice_assign(ranges, src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles() {
        let compiled = compile_kernel!(
            write_at_index_kernel::WriteAtIndexKernel,
            CubeDim::new_1d(UNITS),
            [b b b s s s],
        );
        assert_eq!(compiled, Ok(()));
    }
}
