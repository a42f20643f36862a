//! Writes a tensor into a range of another tensor's buffer, in place, at an offset the host
//! gives.
//!
//! A captured decode step replays against the buffers it was recorded with. The next generation
//! of the same shape refreshes those buffers (its prefill's keys and values, its first tokens,
//! the slot, the tables of its padding) with this write instead of making new tensors, and
//! replays the same graph: no new capture per generation.
//!
//! `dst` is seen as [outer, len, inner] around `axis`, `src` as [outer, n, inner] (its size along
//! `axis` is n, the other sizes `dst`'s), and `dst[o, start + j, i] = src[o, j, i]`. The ops
//! return `dst` itself: its buffer is written, no copy is made. Elements of four bytes (f32,
//! i32) are copied as words, so the float and the int op share one kernel.

use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Int, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{around_axis, grid_over_rows, same_dtype, same_shape};

/// Invocations per workgroup.
const UNITS: u32 = 256;

#[cube(launch)]
fn write_in_place_kernel(
    dst: &mut [u32],
    src: &[u32],
    elements: u32,
    src_len: u32,
    dst_len: u32,
    start: u32,
    inner: u32,
) {
    let e = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * UNITS + UNIT_POS;
    if e < elements {
        let i = e % inner;
        let j = (e / inner) % src_len;
        let o = e / (inner * src_len);
        dst[((o * dst_len + start + j) * inner + i) as usize] = src[e as usize];
    }
}

/// GPU extension ops; only the CubeCL backend implements them.
#[backend_extension(Cube, Fusion)]
pub trait WriteInPlaceBackend: burn::backend::Backend {
    /// `dst` (f32, contiguous) with `src` written from `start` along `axis`; returns `dst`'s
    /// own buffer.
    #[fusion(dtype = same_dtype(dst), shape = same_shape(dst))]
    fn write_in_place(
        dst: FloatTensor<Self>,
        src: FloatTensor<Self>,
        axis: usize,
        start: usize,
    ) -> FloatTensor<Self>;

    /// The same for 32-bit integer tensors.
    #[fusion(dtype = same_dtype(dst), shape = same_shape(dst))]
    fn write_in_place_int(
        dst: IntTensor<Self>,
        src: IntTensor<Self>,
        axis: usize,
        start: usize,
    ) -> IntTensor<Self>;
}

impl WriteInPlaceBackend for CubeBackend {
    fn write_in_place(dst: CubeTensor, src: CubeTensor, axis: usize, start: usize) -> CubeTensor {
        launch_write(dst, src, axis, start)
    }

    fn write_in_place_int(
        dst: CubeTensor,
        src: CubeTensor,
        axis: usize,
        start: usize,
    ) -> CubeTensor {
        launch_write(dst, src, axis, start)
    }
}

/// Launches the word copy of `src` into `dst` from `start` along `axis`; returns `dst`.
fn launch_write(dst: CubeTensor, src: CubeTensor, axis: usize, start: usize) -> CubeTensor {
    let op = "write_in_place";
    assert!(
        dst.is_contiguous(),
        "{op}: the destination must be contiguous (it is written in place)"
    );
    assert_eq!(dst.dtype, src.dtype, "{op}: src and dst differ in type");
    assert_eq!(dst.dtype.size(), 4, "{op}: 4-byte elements only");
    let src = into_contiguous(src);
    let (dims, from) = (dst.meta.shape().to_vec(), src.meta.shape().to_vec());
    let n = from[axis];
    let same_elsewhere =
        dims.len() == from.len() && (0..dims.len()).all(|d| d == axis || dims[d] == from[d]);
    assert!(
        same_elsewhere && start + n <= dims[axis],
        "{op}: src {from:?} does not fit dst {dims:?} from {start} along axis {axis}"
    );
    let (_, dst_len, inner) = around_axis(&dims, axis);
    let elements: usize = from.iter().product();
    if elements == 0 {
        return dst;
    }
    write_in_place_kernel::launch(
        &dst.client.clone(),
        grid_over_rows(elements.div_ceil(UNITS as usize)),
        CubeDim::new_1d(UNITS),
        dst.clone().into_buffer_arg(),
        src.into_buffer_arg(),
        elements as u32,
        n as u32,
        dst_len as u32,
        start as u32,
        inner as u32,
    );
    dst
}

/// `dst` (f32) with `src` written from `start` along `axis`, in place: the returned tensor
/// shares `dst`'s buffer. `src` has `dst`'s shape except along `axis`. GPU only; see
/// [`reference_write_in_place`].
pub fn write_in_place<const D: usize>(
    dst: Tensor<D>,
    src: Tensor<D>,
    axis: usize,
    start: usize,
) -> Tensor<D> {
    Tensor::from_dispatch(
        <burn::backend::Dispatch as WriteInPlaceBackend>::write_in_place(
            dst.into_dispatch(),
            src.cast(DType::F32).into_dispatch(),
            axis,
            start,
        ),
    )
}

/// [`write_in_place`] for 32-bit integer tensors (`src` and `dst` of one integer type).
pub fn write_in_place_int<const D: usize>(
    dst: Tensor<D, Int>,
    src: Tensor<D, Int>,
    axis: usize,
    start: usize,
) -> Tensor<D, Int> {
    Tensor::from_dispatch(
        <burn::backend::Dispatch as WriteInPlaceBackend>::write_in_place_int(
            dst.into_dispatch(),
            src.into_dispatch(),
            axis,
            start,
        ),
    )
}

/// What the write computes, with burn's slice assignment (a new tensor, not in place).
pub fn reference_write_in_place<const D: usize, K>(
    dst: Tensor<D, K>,
    src: Tensor<D, K>,
    axis: usize,
    start: usize,
) -> Tensor<D, K>
where
    K: burn::tensor::kind::Basic,
{
    let ranges: [std::ops::Range<usize>; D] = std::array::from_fn(|d| {
        if d == axis {
            start..start + src.dims()[axis]
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
            write_in_place_kernel::WriteInPlaceKernel,
            CubeDim::new_1d(UNITS),
            [b b s s s s s],
        );
        assert_eq!(compiled, Ok(()));
    }
}
