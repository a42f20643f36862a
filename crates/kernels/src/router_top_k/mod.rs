//! The MoE router in one kernel (spec 4.6): logits = x W + b, the k largest, softmax over them.
//!
//! burn runs this as about ten kernels (matmul, bias, top-k, the softmax's reductions). The
//! result is one f32 routing table per token, [ids as floats | gates] ([n, 2k]; expert ids are
//! small integers, exact in f32), which the experts kernels (`experts_pairs`) read directly.
//!
//! A workgroup of [`ROUTER_UNITS`] invocations takes one token: invocation u adds the products
//! for four consecutive experts over every (1024 / (E / 4))-th hidden unit, eight hidden units'
//! weights loaded before any is used (consecutive invocations read consecutive weights of a
//! row of W [H, E]); the slices are added in shared memory; the first plane then picks the k
//! largest (lowest id first among equal logits) with subgroup maxima and their softmax. At
//! batch 1 the whole router is one workgroup, so the number of dependent loads is its latency:
//! the first version (256 invocations, one product per step) took 250 us per layer, one expert
//! per invocation with four products per step about 20 us. Logits over eight workgroups
//! without the choice took about 11 us less, and the choice cost as much again wherever it was
//! put (in the experts kernels, or in the last workgroup to finish; docs/benchmarks.md, tenth
//! round). The choice's k rounds of plane reductions are not that cost: choosing by each
//! expert's rank in one pass moved batch-1 decoding by under 2% (fifteenth round, reverted).
//! Nor are the weights' bytes or the workgroup's shape: bf16 weights (half the bytes) made both
//! kernels slower, and 256 to 1,024 invocations with 4 to 16 loads in flight time the same
//! (sixteenth round).
//!
//! [`add_norm_router`] runs the decoder layer's residual add and post-attention RMSNorm in the
//! same workgroup first (the normed row kept in shared memory): one launch instead of two per
//! decoding layer, where a launch costs 7-12 us of host encoding even when replayed. Its
//! packed output is padded so that every part is a view ([`routing_rows`]); unpadded, two of
//! its parts were copied in launches of their own at an odd batch, the 7 us the fused kernel
//! cost above the router alone (seventeenth round). At one token a decode step takes
//! `bf16_rows::add_norm_router` instead, which also runs the attention's output projection and
//! spreads the logits over that product's workgroups.
//!
//! Files: `kernels` (the two kernels and the choice they share); the launches, the routing
//! table's layout and the functions on burn tensors are here.

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{empty_f32, grid_over_rows, same_dtype};

mod kernels;

pub(crate) use kernels::top_k_softmax;
use kernels::{add_norm_router_kernel, router_top_k_kernel};

/// Invocations per workgroup (Vulkan's usual maximum).
pub const ROUTER_UNITS: u32 = 1024;
/// Most experts a layer may have (one invocation per expert at least).
pub const MAX_EXPERTS: usize = ROUTER_UNITS as usize;
/// Most experts per token.
pub const MAX_TOP_K: usize = 8;

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait RouterBackend: burn::backend::Backend {
    /// `x` [n, H], `w` [H, E], `bias` [E] (all f32) -> routing table [n, 2 * top_k].
    #[fusion(dtype = same_dtype(x), shape = Shape::from(vec![x[0], 2 * top_k]))]
    fn router_top_k(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        top_k: usize,
    ) -> FloatTensor<Self>;

    /// `x` and `delta` [n, H], the norm's `norm_weight` [H], router `w` [H, E] and `bias` [E]
    /// (all f32) -> flat: the norm of `x + delta` [n, H], `x + delta` [n, H], the routing
    /// table of the norm [m, 2 * top_k] with m = [`routing_rows`]`(n, top_k)` (rows past n
    /// unwritten).
    #[fusion(dtype = same_dtype(x), shape = Shape::from(vec![2 * x[0] * x[1] + routing_rows(x[0], *top_k) * 2 * top_k]))]
    #[allow(clippy::too_many_arguments)]
    fn add_norm_router(
        x: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f32,
        top_k: usize,
    ) -> FloatTensor<Self>;
}

impl RouterBackend for CubeBackend {
    fn router_top_k(x: CubeTensor, w: CubeTensor, bias: CubeTensor, top_k: usize) -> CubeTensor {
        let [x, w, bias] = [x, w, bias].map(into_contiguous);
        let [rows, hidden] = [x.meta.shape()[0], x.meta.shape()[1]];
        let experts = w.meta.shape()[1];
        assert!(
            supports(experts, top_k),
            "router_top_k: {experts} experts, top {top_k}"
        );
        let out = empty_f32(&x, vec![rows, 2 * top_k]);
        router_top_k_kernel::launch(
            &x.client.clone(),
            grid_over_rows(rows),
            CubeDim::new_1d(ROUTER_UNITS),
            x.into_buffer_arg(),
            w.into_buffer_arg(),
            bias.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            rows as u32,
            hidden as u32,
            experts as u32,
            top_k,
        );
        out
    }

    fn add_norm_router(
        x: CubeTensor,
        delta: CubeTensor,
        norm_weight: CubeTensor,
        w: CubeTensor,
        bias: CubeTensor,
        eps: f32,
        top_k: usize,
    ) -> CubeTensor {
        let [x, delta, norm_weight, w, bias] =
            [x, delta, norm_weight, w, bias].map(into_contiguous);
        let [rows, hidden] = [x.meta.shape()[0], x.meta.shape()[1]];
        let experts = w.meta.shape()[1];
        assert!(
            supports(experts, top_k) && supports_fused_norm(hidden),
            "add_norm_router: {hidden} wide, {experts} experts, top {top_k}"
        );
        assert_eq!(
            delta.meta.shape(),
            x.meta.shape(),
            "add_norm_router: shapes"
        );
        let out = empty_f32(
            &x,
            vec![2 * rows * hidden + routing_rows(rows, top_k) * 2 * top_k],
        );
        add_norm_router_kernel::launch(
            &x.client.clone(),
            grid_over_rows(rows),
            CubeDim::new_1d(ROUTER_UNITS),
            x.into_buffer_arg(),
            delta.into_buffer_arg(),
            norm_weight.into_buffer_arg(),
            w.into_buffer_arg(),
            bias.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            rows as u32,
            experts as u32,
            eps,
            hidden,
            top_k,
        );
        out
    }
}

/// Bytes every part of [`add_norm_router`]'s packed output is sized to a multiple of, where the
/// row width allows: burn takes a part as a view of the buffer only when its start and the bytes
/// after its end are multiples of the device's offset alignment (64 on NVIDIA's Vulkan driver,
/// at most 256 under wgpu), and copies it in a launch of its own otherwise.
pub const PART_ALIGN_BYTES: usize = 256;

/// Rows of the routing table [`add_norm_router`] returns for `rows` tokens: `rows` rounded up so
/// that the table's bytes are a multiple of [`PART_ALIGN_BYTES`] (8 rows for top 4). The rows
/// past `rows` are never written; the experts kernels read the first `rows`.
pub fn routing_rows(rows: usize, top_k: usize) -> usize {
    let row_bytes = 2 * top_k * std::mem::size_of::<f32>();
    let per_part = PART_ALIGN_BYTES / gcd(PART_ALIGN_BYTES, row_bytes);
    rows.div_ceil(per_part) * per_part
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Most hidden units [`add_norm_router`] keeps in shared memory (16 KiB of f32, beside the
/// router's 24 KiB of partial sums, shares and logits: 48 KiB in all at most).
pub const MAX_FUSED_NORM_WIDTH: usize = 4096;
/// Values of a row each invocation of [`add_norm_router`] holds (the widest row over the
/// workgroup).
const FUSED_NORM_PASSES: usize = MAX_FUSED_NORM_WIDTH / ROUTER_UNITS as usize;

/// Whether [`add_norm_router`] takes rows `hidden` wide.
pub fn supports_fused_norm(hidden: usize) -> bool {
    (1..=MAX_FUSED_NORM_WIDTH).contains(&hidden)
}

/// Whether the kernel takes a router over `experts` experts choosing `top_k` of them.
pub fn supports(experts: usize, top_k: usize) -> bool {
    (1..=MAX_EXPERTS).contains(&experts) && (1..=MAX_TOP_K.min(experts)).contains(&top_k)
}

/// The routing table [n, 2 * top_k] of tokens `x` [n, H] for router weights `w` [H, E] and
/// `bias` [E]: the chosen ids (as floats, largest logit first) then their softmax gates. GPU
/// only; see [`supports`].
pub fn router_top_k(x: Tensor<2>, w: Tensor<2>, bias: Tensor<1>, top_k: usize) -> Tensor<2> {
    Tensor::from_dispatch(<burn::backend::Dispatch as RouterBackend>::router_top_k(
        x.into_dispatch(),
        w.into_dispatch(),
        bias.into_dispatch(),
        top_k,
    ))
}

/// The decoder layer's residual add, post-attention norm and router in one kernel: (`x +
/// delta`, its RMSNorm with `norm_weight` and `eps`, the routing table of the norm [m, 2 *
/// top_k] with m = [`routing_rows`]`(n, top_k)`, for router weights `w` [H, E] and `bias` [E]),
/// for `x`, `delta` [n, H] f32. The table's rows past n are padding, never written. With them
/// every part of the kernel's one output is a view when H is a multiple of 64 (see
/// [`PART_ALIGN_BYTES`]). Without them, at an odd n, the norm's and the sum's ends fell 32
/// bytes off a 64-byte alignment, and each was copied in a launch of its own. GPU only; see
/// [`supports`] and [`supports_fused_norm`].
#[allow(clippy::too_many_arguments)]
pub fn add_norm_router(
    x: Tensor<2>,
    delta: Tensor<2>,
    norm_weight: Tensor<1>,
    eps: f64,
    w: Tensor<2>,
    bias: Tensor<1>,
    top_k: usize,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let [n, h] = x.dims();
    let flat: Tensor<1> =
        Tensor::from_dispatch(<burn::backend::Dispatch as RouterBackend>::add_norm_router(
            x.cast(DType::F32).into_dispatch(),
            delta.cast(DType::F32).into_dispatch(),
            norm_weight.into_dispatch(),
            w.into_dispatch(),
            bias.into_dispatch(),
            eps as f32,
            top_k,
        ));
    split_sum_norm_routing(flat, [n, h], top_k)
}

/// (the sum [n, h], its norm [n, h], the routing table [`routing_rows`]`(n, top_k)`, 2 top_k])
/// of a packed output laid out as [`add_norm_router`]'s: the norm, the sum, the table. Each part
/// is a view ([`PART_ALIGN_BYTES`]).
pub(crate) fn split_sum_norm_routing(
    flat: Tensor<1>,
    [n, h]: [usize; 2],
    top_k: usize,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let part = |start: usize, len: usize, width: usize| {
        flat.clone().narrow(0, start, len).reshape([n, width])
    };
    let table_rows = routing_rows(n, top_k);
    (
        part(n * h, n * h, h),
        part(0, n * h, h),
        flat.narrow(0, 2 * n * h, table_rows * 2 * top_k)
            .reshape([table_rows, 2 * top_k]),
    )
}

/// What `router_top_k` computes, with burn's ops.
pub fn reference_router_top_k(
    x: Tensor<2>,
    w: Tensor<2>,
    bias: Tensor<1>,
    top_k: usize,
) -> Tensor<2> {
    let logits = x.matmul(w) + bias.unsqueeze::<2>();
    let (top, ids): (Tensor<2>, Tensor<2, Int>) = logits.topk_with_indices(top_k, 1);
    let gates = burn::tensor::activation::softmax(top, 1);
    Tensor::cat(vec![ids.float(), gates], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn both_router_kernels_compile_for_top_4() {
        let top_k = compile_kernel!(
            router_top_k_kernel::RouterTopKKernel,
            CubeDim::new_1d(ROUTER_UNITS),
            [b b b b s s s],
            4,
        );
        assert_eq!(top_k, Ok(()));
        let add_norm = compile_kernel!(
            add_norm_router_kernel::AddNormRouterKernel,
            CubeDim::new_1d(ROUTER_UNITS),
            [b b b b b b s s s],
            2880,
            4,
        );
        assert_eq!(add_norm, Ok(()));
    }

    /// The padded routing table covers every row and is the shortest that ends on a part
    /// boundary.
    #[test]
    fn routing_rows_pad_the_table_to_whole_parts() {
        for top_k in 1..=MAX_TOP_K {
            let row_bytes = 2 * top_k * 4;
            for rows in 1..40 {
                let padded = routing_rows(rows, top_k);
                assert!(padded >= rows, "top {top_k}, {rows} rows: {padded}");
                assert_eq!(
                    padded * row_bytes % PART_ALIGN_BYTES,
                    0,
                    "top {top_k}, {rows}"
                );
                assert!(
                    (rows..padded).all(|fewer| fewer * row_bytes % PART_ALIGN_BYTES != 0),
                    "top {top_k}, {rows} rows: {padded} is not the least"
                );
            }
        }
        assert_eq!(routing_rows(1, 4), 8);
        assert_eq!(routing_rows(9, 4), 16);
        assert_eq!(routing_rows(1, 2), 16);
    }

    /// The packed output splits as the kernels write it: the norm first, then the sum, then
    /// the padded table (each value here is its own index).
    #[test]
    fn split_sum_norm_routing_takes_norm_then_sum_then_table() {
        let device = burn::tensor::Device::flex();
        let [n, h, top_k] = [3, 4, 2];
        let table_rows = routing_rows(n, top_k);
        let len = 2 * n * h + table_rows * 2 * top_k;
        let flat = Tensor::<1>::from_data(
            burn::tensor::TensorData::new((0..len).map(|i| i as f32).collect::<Vec<_>>(), [len]),
            &device,
        );
        let (sum, normed, table) = split_sum_norm_routing(flat, [n, h], top_k);
        let values = |t: Tensor<2>| t.try_into_vec_as::<f32>().unwrap();
        let from = |start: usize, count: usize| {
            (start..start + count).map(|i| i as f32).collect::<Vec<_>>()
        };
        assert_eq!(normed.dims(), [n, h]);
        assert_eq!(values(normed), from(0, n * h));
        assert_eq!(sum.dims(), [n, h]);
        assert_eq!(values(sum), from(n * h, n * h));
        assert_eq!(table.dims(), [table_rows, 2 * top_k]);
        assert_eq!(values(table), from(2 * n * h, table_rows * 2 * top_k));
    }
}
