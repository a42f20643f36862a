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

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{empty_f32, grid_over_rows, same_dtype};
use crate::rms_norm_rows::inverse_rms;

/// Invocations per workgroup (Vulkan's usual maximum).
pub const ROUTER_UNITS: u32 = 1024;
/// Most experts a layer may have (one invocation per expert at least).
pub const MAX_EXPERTS: usize = ROUTER_UNITS as usize;
/// Most experts per token.
pub const MAX_TOP_K: usize = 8;
/// Consecutive experts each invocation computes the logits of.
const EXPERTS_PER_UNIT: u32 = 4;
/// Hidden units whose weights each invocation loads before using any.
const ROUTER_UNROLL: u32 = 8;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn router_top_k_kernel(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    rows: u32,
    hidden: u32,
    experts: u32,
    #[comptime] top_k: usize,
) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    route_row(
        x,
        row * hidden,
        w,
        bias,
        out,
        row * 2 * top_k as u32,
        hidden,
        experts,
        top_k,
    );
}

/// The residual add, the post-attention RMSNorm and the router of one row in one workgroup:
/// `out` holds the normed rows [rows, hidden], then the sums `x + delta` [rows, hidden], then
/// the routing tables [rows, 2 top_k]. The normed row stays in shared memory for the router.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn add_norm_router_kernel(
    x: &[f32],
    delta: &[f32],
    norm_weight: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    rows: u32,
    experts: u32,
    eps: f32,
    #[comptime] hidden: usize,
    #[comptime] top_k: usize,
) {
    let row = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if row >= rows {
        terminate!();
    }
    let width = hidden as u32;
    let base = row * width;
    let sums = rows * width;
    let mut normed = Shared::<[f32]>::new_slice(hidden);
    let mut plane_totals = Shared::<[f32]>::new_slice(ROUTER_UNITS as usize);
    // At most FUSED_NORM_PASSES values per invocation, all loaded before any is used.
    let mut values = Array::<f32>::new(FUSED_NORM_PASSES);
    let mut weights = Array::<f32>::new(FUSED_NORM_PASSES);
    #[unroll]
    for p in 0..FUSED_NORM_PASSES {
        let i = UNIT_POS + p as u32 * ROUTER_UNITS;
        let mut v = 0.0f32;
        let mut weight = 0.0f32;
        if i < width {
            v = x[(base + i) as usize] + delta[(base + i) as usize];
            weight = norm_weight[i as usize];
        }
        values[p] = v;
        weights[p] = weight;
    }
    let mut squares = 0.0f32;
    #[unroll]
    for p in 0..FUSED_NORM_PASSES {
        let i = UNIT_POS + p as u32 * ROUTER_UNITS;
        if i < width {
            out[(sums + base + i) as usize] = values[p];
            squares += values[p] * values[p];
        }
    }
    // The sum of squares: per plane, then over the planes.
    let plane_total = plane_sum(squares);
    if UNIT_POS_PLANE == 0 {
        plane_totals[(UNIT_POS / PLANE_DIM) as usize] = plane_total;
    }
    sync_cube();
    let mut total = 0.0f32;
    for p in 0..ROUTER_UNITS / PLANE_DIM {
        total += plane_totals[p as usize];
    }
    let inv_rms = inverse_rms(total, width, eps);
    #[unroll]
    for p in 0..FUSED_NORM_PASSES {
        let i = UNIT_POS + p as u32 * ROUTER_UNITS;
        if i < width {
            let v = values[p] * inv_rms * weights[p];
            normed[i as usize] = v;
            out[(base + i) as usize] = v;
        }
    }
    sync_cube();
    route_row(
        &normed,
        0,
        w,
        bias,
        out,
        2 * sums + row * 2 * top_k as u32,
        width,
        experts,
        top_k,
    );
}

/// One row's routing written at `out[out_base..]` (ids as floats, then gates) from the row of
/// `hidden` values at `x[x_row..]`: the logits over the workgroup's [`ROUTER_UNITS`]
/// invocations, then the k largest and their softmax by the first plane.
///
/// Invocation u takes experts 4q..4q + 4 (q = u % quads) over every `slices`-th hidden unit,
/// [`ROUTER_UNROLL`] hidden units' weights loaded before any is used: at batch 1 the router is
/// one workgroup, so the number of dependent loads in a row is its latency (one product per
/// step took 250 us, four products per step about 20 us).
#[cube]
#[allow(clippy::too_many_arguments)]
fn route_row(
    x: &[f32],
    x_row: u32,
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    out_base: u32,
    hidden: u32,
    experts: u32,
    #[comptime] top_k: usize,
) {
    let unit = UNIT_POS;
    let quads = experts.div_ceil(EXPERTS_PER_UNIT);
    // Experts padded to whole quads: the stride of the partial sums.
    let padded = quads * EXPERTS_PER_UNIT;
    let slices = ROUTER_UNITS / quads;
    let quad = unit % quads;
    let slice = unit / quads;
    let first = quad * EXPERTS_PER_UNIT;
    let mut acc = Array::<f32>::new(EXPERTS_PER_UNIT as usize);
    #[unroll]
    for j in 0..EXPERTS_PER_UNIT as usize {
        acc[j] = 0.0;
    }
    if slice < slices {
        let mut h = slice;
        while h < hidden {
            let mut xs = Array::<f32>::new(ROUTER_UNROLL as usize);
            let mut ws = Array::<f32>::new((ROUTER_UNROLL * EXPERTS_PER_UNIT) as usize);
            #[unroll]
            for r in 0..ROUTER_UNROLL as usize {
                let row = h + r as u32 * slices;
                let mut xv = 0.0f32;
                if row < hidden {
                    xv = x[(x_row + row) as usize];
                }
                xs[r] = xv;
                #[unroll]
                for j in 0..EXPERTS_PER_UNIT as usize {
                    let e = first + j as u32;
                    let mut wv = 0.0f32;
                    if row < hidden && e < experts {
                        wv = w[(row * experts + e) as usize];
                    }
                    ws[r * EXPERTS_PER_UNIT as usize + j] = wv;
                }
            }
            #[unroll]
            for r in 0..ROUTER_UNROLL as usize {
                #[unroll]
                for j in 0..EXPERTS_PER_UNIT as usize {
                    acc[j] += xs[r] * ws[r * EXPERTS_PER_UNIT as usize + j];
                }
            }
            h += ROUTER_UNROLL * slices;
        }
    }
    // Slice s's sums at s * padded + expert; `parts` invocations per expert add a share of the
    // slices each, then one invocation per expert adds the shares and the bias.
    let mut partial = Shared::<[f32]>::new_slice((ROUTER_UNITS * EXPERTS_PER_UNIT) as usize);
    let mut shares = Shared::<[f32]>::new_slice(ROUTER_UNITS as usize);
    let mut logits = Shared::<[f32]>::new_slice(MAX_EXPERTS);
    if slice < slices {
        #[unroll]
        for j in 0..EXPERTS_PER_UNIT as usize {
            partial[(slice * padded + first + j as u32) as usize] = acc[j];
        }
    }
    sync_cube();
    let parts = ROUTER_UNITS / padded;
    let expert = unit % padded;
    let part = unit / padded;
    if part < parts {
        let mut share = 0.0f32;
        let mut s = part;
        while s < slices {
            share += partial[(s * padded + expert) as usize];
            s += parts;
        }
        shares[(part * padded + expert) as usize] = share;
    }
    sync_cube();
    if unit < experts {
        let mut total = bias[unit as usize];
        for p in 0..parts {
            total += shares[(p * padded + unit) as usize];
        }
        logits[unit as usize] = total;
    }
    sync_cube();
    if unit < PLANE_DIM {
        top_k_softmax(&logits, out, out_base, experts, top_k);
    }
}

/// The k largest of `logits[..experts]` (lowest id first among equal values) and their
/// softmax, written at `out[out_base..]` (ids as floats, then gates) by lane 0; run by one
/// whole plane, each lane scanning every `PLANE_DIM`-th expert.
#[cube]
pub(crate) fn top_k_softmax(
    logits: &[f32],
    out: &mut [f32],
    out_base: u32,
    experts: u32,
    #[comptime] top_k: usize,
) {
    let lane = UNIT_POS_PLANE;
    let mut chosen = Array::<u32>::new(top_k);
    let mut values = Array::<f32>::new(top_k);
    #[unroll]
    for j in 0..top_k {
        // This lane's best expert not chosen yet (`experts` when it has none).
        let mut best = experts;
        let mut best_value = f32::new(f32::NEG_INFINITY);
        let mut e = lane;
        while e < experts {
            let mut taken = false;
            #[unroll]
            for i in 0..j {
                if chosen[i] == e {
                    taken = true;
                }
            }
            let value = logits[e as usize];
            if !taken && (best == experts || value > best_value) {
                best = e;
                best_value = value;
            }
            e += PLANE_DIM;
        }
        let top = plane_max(best_value);
        let winner = plane_min(select(best < experts && best_value == top, best, experts));
        chosen[j] = winner;
        values[j] = top;
    }
    if lane == 0 {
        // values[0] is the largest: softmax without overflow.
        let largest = values[0];
        let mut sum = 0.0f32;
        #[unroll]
        for j in 0..top_k {
            values[j] = (values[j] - largest).exp();
            sum += values[j];
        }
        #[unroll]
        for j in 0..top_k {
            out[(out_base + j as u32) as usize] = f32::cast_from(chosen[j]);
            out[(out_base + top_k as u32 + j as u32) as usize] = values[j] / sum;
        }
    }
}

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
