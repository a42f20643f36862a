//! A decoding layer's attention output projection, its residual add, the post-attention
//! RMSNorm and the MoE router in one launch ([`bf16_rows_add_norm_router`]): what
//! `bf16_rows_matmul` and `router_top_k::add_norm_router` did in two.
//!
//! The product's workgroups each hold some columns of the sum `x + attended o + bias`. The
//! router's logits of the norm are linear in the sum times the norm's weight, scaled by the
//! row's 1 / rms, so each workgroup adds its columns' share of every logit and of the squares
//! (the router's weights spread over the product's workgroups instead of one workgroup's
//! loads). Each workgroup publishes its shares, releases them at device scope and counts its
//! arrival on an atomic per chunk of rows; the last to arrive acquires the others' shares, adds
//! them, picks the k largest logits and their softmax (`router_top_k`'s code), writes the normed
//! rows and sets the count back to zero for the next launch. Nothing spins: the workgroups that
//! are not last end.

use crate::bf16_nearest::to_nearest_bf16;
use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Device, Int, IntDType, Shape, Tensor, TensorData};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use super::kernels::{EightBf16, RowsWorkspace, rows_times_weight};
use super::tiling::{DEFAULT_TILING, RowsTiling, chosen_tiling, column_blocks, grid};
use super::{LANE_COLUMNS, ROWS, UNITS};
use crate::launch::{empty_f32, same_dtype};
use crate::rms_norm_rows::inverse_rms;
use crate::router_top_k::{MAX_TOP_K, routing_rows, split_sum_norm_routing, top_k_softmax};

/// Most experts the kernel takes: the last workgroup adds each logit's and the squares' shares
/// with at least one of its 256 invocations per value.
pub const MAX_EXPERTS: usize = UNITS as usize - 1;
/// Shares each invocation of the last workgroup loads before adding any.
const SHARE_UNROLL: u32 = 4;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn bf16_rows_add_norm_router_kernel(
    attended: &[f32],
    w: &[EightBf16],
    o_bias: &[f32],
    x: &[f32],
    norm_weight: &[f32],
    router_w: &[f32],
    router_bias: &[f32],
    shares: &mut [f32],
    arrivals: &mut [Atomic<u32>],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    experts: u32,
    eps: f32,
    #[comptime] rows: usize,
    #[comptime] groups: u32,
    #[comptime] unroll: u32,
    #[comptime] top_k: usize,
) {
    let unit = UNIT_POS;
    let columns = comptime!(groups * LANE_COLUMNS);
    let block = CUBE_POS_X;
    let blocks = CUBE_COUNT_X;
    let first_col = block * columns;
    let row_begin = CUBE_POS_Y * rows as u32;
    let row_count = min(m - row_begin, rows as u32);
    let sums = m * n;
    // Shares per row and workgroup: each expert's logit, then the squares.
    let values = experts + 1;

    // The product plus its bias, written where the sums go (out[m n..2 m n]).
    let mut work = RowsWorkspace::new(rows);
    rows_times_weight(
        attended, o_bias, &mut work, w, o_bias, out, m, n, k, block, n, sums, rows, groups, unroll,
        true, false,
    );

    // The sums' columns times the norm's weight, and their squares, kept in shared memory.
    let mut weighted = Shared::<[f32]>::new_slice(rows * columns as usize);
    let mut squares = Shared::<[f32]>::new_slice(rows * columns as usize);
    add_residual_to_columns(
        out,
        x,
        norm_weight,
        &mut weighted,
        &mut squares,
        sums,
        n,
        first_col,
        row_begin,
        row_count,
        rows,
        columns,
    );
    sync_cube();
    write_router_shares(
        &weighted, &squares, router_w, shares, n, first_col, experts, row_begin, row_count, block,
        blocks, rows, columns,
    );

    let mut arrived = Shared::<u32>::new();
    // Release: the shares and sums this workgroup wrote are visible to whichever is last.
    sync_storage();
    if unit == 0 {
        *arrived = arrivals[CUBE_POS_Y as usize].fetch_add(1u32);
    }
    // Acquire: what the workgroups that arrived before published is visible here.
    sync_storage();
    if *arrived != blocks - 1 {
        terminate!();
    }
    if unit == 0 {
        arrivals[CUBE_POS_Y as usize].store(0u32);
    }

    let mut parts_sums = Shared::<[f32]>::new_slice(UNITS as usize);
    let mut totals = Shared::<[f32]>::new_slice(UNITS as usize);
    let mut logits = Shared::<[f32]>::new_slice(UNITS as usize);
    for r in 0..row_count {
        let row = row_begin + r;
        add_row_shares(shares, &mut parts_sums, &mut totals, row, blocks, values);
        sync_cube();
        let inv_rms = inverse_rms(totals[experts as usize], n, eps);
        if unit < experts {
            logits[unit as usize] = totals[unit as usize] * inv_rms + router_bias[unit as usize];
        }
        sync_cube();
        if unit < PLANE_DIM {
            top_k_softmax(
                &logits,
                out,
                2 * sums + row * 2 * top_k as u32,
                experts,
                top_k,
            );
        }
        // The normed row, as `add_norm_router` writes it.
        let mut i = unit;
        while i < n {
            let at = row * n + i;
            out[at as usize] = out[(sums + at) as usize] * inv_rms * norm_weight[i as usize];
            i += UNITS;
        }
        sync_cube();
    }
}

/// Adds the residual `x` to the workgroup's columns of the sums (at `out[sums..]`, written by
/// the same invocations: their own writes, in order) and keeps each column's sum times the
/// norm's weight in `weighted` and its square in `squares` ([rows, columns], shared; zeros past
/// the rows and columns).
#[cube]
#[allow(clippy::too_many_arguments)]
fn add_residual_to_columns(
    out: &mut [f32],
    x: &[f32],
    norm_weight: &[f32],
    weighted: &mut [f32],
    squares: &mut [f32],
    sums: u32,
    n: u32,
    first_col: u32,
    row_begin: u32,
    row_count: u32,
    #[comptime] rows: usize,
    #[comptime] columns: u32,
) {
    let unit = UNIT_POS;
    let col = first_col + unit;
    #[unroll]
    for r in 0..rows {
        let mut scaled = 0.0f32;
        let mut square = 0.0f32;
        if unit < columns && col < n && (r as u32) < row_count {
            let at = (row_begin + r as u32) * n + col;
            let sum = out[(sums + at) as usize] + x[at as usize];
            out[(sums + at) as usize] = sum;
            scaled = sum * norm_weight[col as usize];
            square = sum * sum;
        }
        if unit < columns {
            weighted[r * columns as usize + unit as usize] = scaled;
            squares[r * columns as usize + unit as usize] = square;
        }
    }
}

/// Writes the workgroup's shares for each of its rows at `shares[((row * blocks + block) *
/// (experts + 1))..]`: each expert's logit over the workgroup's columns (the router's weight
/// rows of those columns, all loaded before any is used), then the squares' sum.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_router_shares(
    weighted: &[f32],
    squares: &[f32],
    router_w: &[f32],
    shares: &mut [f32],
    n: u32,
    first_col: u32,
    experts: u32,
    row_begin: u32,
    row_count: u32,
    block: u32,
    blocks: u32,
    #[comptime] rows: usize,
    #[comptime] columns: u32,
) {
    let unit = UNIT_POS;
    let values = experts + 1;
    #[unroll]
    for r in 0..rows {
        if (r as u32) < row_count {
            let at = ((row_begin + r as u32) * blocks + block) * values;
            let mut e = unit;
            while e < experts {
                let mut ws = Array::<f32>::new(columns as usize);
                #[unroll]
                for c in 0..columns as usize {
                    let mut wv = 0.0f32;
                    if first_col + (c as u32) < n {
                        wv = router_w[((first_col + c as u32) * experts + e) as usize];
                    }
                    ws[c] = wv;
                }
                let mut logit = 0.0f32;
                #[unroll]
                for c in 0..columns as usize {
                    logit += weighted[r * columns as usize + c] * ws[c];
                }
                shares[(at + e) as usize] = logit;
                e += UNITS;
            }
            if unit == UNITS - 1 {
                let mut total = 0.0f32;
                #[unroll]
                for c in 0..columns as usize {
                    total += squares[r * columns as usize + c];
                }
                shares[(at + experts) as usize] = total;
            }
        }
    }
}

/// Row `row`'s `values` shares added over the `blocks` workgroups into `totals[..values]`
/// (shared): `parts` invocations per value add a share of the workgroups each (several loads in
/// flight) into `parts_sums`, then one invocation per value adds the parts. Synchronises the
/// workgroup between the two. `shares` is only read (`&mut` as the kernel holds it).
#[cube]
fn add_row_shares(
    shares: &mut [f32],
    parts_sums: &mut [f32],
    totals: &mut [f32],
    row: u32,
    blocks: u32,
    values: u32,
) {
    let unit = UNIT_POS;
    let parts = UNITS / values;
    let value = unit % values;
    let part = unit / values;
    if part < parts {
        let mut acc = 0.0f32;
        let mut b = part;
        while b < blocks {
            let mut loaded = Array::<f32>::new(SHARE_UNROLL as usize);
            #[unroll]
            for i in 0..SHARE_UNROLL as usize {
                let from = b + i as u32 * parts;
                let mut v = 0.0f32;
                if from < blocks {
                    v = shares[((row * blocks + from) * values + value) as usize];
                }
                loaded[i] = v;
            }
            #[unroll]
            for i in 0..SHARE_UNROLL as usize {
                acc += loaded[i];
            }
            b += SHARE_UNROLL * parts;
        }
        parts_sums[(part * values + value) as usize] = acc;
    }
    sync_cube();
    if unit < values {
        let mut total = 0.0f32;
        for p in 0..parts {
            total += parts_sums[(p * values + unit) as usize];
        }
        totals[unit as usize] = total;
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait AddNormRouterBackend: burn::backend::Backend {
    /// `attended` [m, k] times `w` [k, n] bf16 plus `o_bias` [n] and `x` [m, n], then the norm
    /// with `norm_weight` [n] and the router `router_w` [n, E], `router_bias` [E]; `arrivals`
    /// [at least m / ROWS rounded up] u32 counts, zero (and left zero) -> flat as
    /// `router_top_k::add_norm_router`'s.
    #[fusion(dtype = same_dtype(attended), shape = Shape::from(vec![2 * attended[0] * w[1] + routing_rows(attended[0], *top_k) * 2 * top_k]))]
    #[allow(clippy::too_many_arguments)]
    fn bf16_rows_add_norm_router(
        attended: FloatTensor<Self>,
        w: FloatTensor<Self>,
        o_bias: FloatTensor<Self>,
        x: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        router_w: FloatTensor<Self>,
        router_bias: FloatTensor<Self>,
        arrivals: IntTensor<Self>,
        eps: f32,
        top_k: usize,
    ) -> FloatTensor<Self>;
}

impl AddNormRouterBackend for CubeBackend {
    fn bf16_rows_add_norm_router(
        attended: CubeTensor,
        w: CubeTensor,
        o_bias: CubeTensor,
        x: CubeTensor,
        norm_weight: CubeTensor,
        router_w: CubeTensor,
        router_bias: CubeTensor,
        arrivals: CubeTensor,
        eps: f32,
        top_k: usize,
    ) -> CubeTensor {
        let [attended, w, o_bias, x, norm_weight, router_w, router_bias] =
            [attended, w, o_bias, x, norm_weight, router_w, router_bias].map(into_contiguous);
        let [m, k] = [attended.meta.shape()[0], attended.meta.shape()[1]];
        let n = w.meta.shape()[1];
        let experts = router_w.meta.shape()[1];
        assert!(
            supports(n, experts, top_k),
            "bf16_rows_add_norm_router: {n} wide, {experts} experts, top {top_k}"
        );
        assert_eq!(
            w.meta.shape()[0],
            k,
            "bf16_rows_add_norm_router: w is not [{k}, n]"
        );
        assert_eq!(
            x.meta.shape()[..],
            [m, n],
            "bf16_rows_add_norm_router: x is not [{m}, {n}]"
        );
        assert_eq!(
            router_w.meta.shape()[0],
            n,
            "bf16_rows_add_norm_router: the router's rows"
        );
        // The counts are written in place: they must be the caller's own buffer.
        assert!(
            arrivals.is_contiguous() && arrivals.dtype.size() == 4,
            "bf16_rows_add_norm_router: arrivals must be contiguous 32-bit counts"
        );
        assert!(
            x.client.properties().features.device_memory_scope,
            "bf16_rows_add_norm_router: the device cannot publish one workgroup's writes to another"
        );
        let RowsTiling { groups, unroll } = chosen_tiling(DEFAULT_TILING, m, n, &[]);
        let blocks = column_blocks(n, groups);
        let (rows, cubes) = grid(m, blocks);
        let chunks = m.div_ceil(rows);
        assert!(
            arrivals.meta.shape().iter().product::<usize>() >= chunks,
            "bf16_rows_add_norm_router: {chunks} arrival counts needed"
        );
        let client = x.client.clone();
        let shares = empty_f32(&x, vec![m * blocks * (experts + 1)]);
        let out = empty_f32(&x, vec![2 * m * n + routing_rows(m, top_k) * 2 * top_k]);
        // Safety: reads are guarded by the row, K and column bounds checked above; the shares
        // are indexed by row, workgroup and value within their m * blocks * (E + 1).
        unsafe {
            bf16_rows_add_norm_router_kernel::launch_unchecked(
                &client,
                cubes,
                CubeDim::new_1d(UNITS),
                attended.into_buffer_arg(),
                w.into_buffer_arg(),
                o_bias.into_buffer_arg(),
                x.into_buffer_arg(),
                norm_weight.into_buffer_arg(),
                router_w.into_buffer_arg(),
                router_bias.into_buffer_arg(),
                shares.into_buffer_arg(),
                arrivals.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                m as u32,
                n as u32,
                k as u32,
                experts as u32,
                eps,
                rows,
                groups,
                unroll,
                top_k,
            )
        };
        out
    }
}

/// Whether [`bf16_rows_add_norm_router`] takes `n` hidden units (a multiple of 8, as
/// `bf16_rows_matmul`), `experts` experts and `top_k` of them per token.
pub fn supports(n: usize, experts: usize, top_k: usize) -> bool {
    super::supports(n)
        && (1..=MAX_EXPERTS).contains(&experts)
        && (1..=MAX_TOP_K.min(experts)).contains(&top_k)
}

/// Arrival counts [`bf16_rows_add_norm_router`] needs for `m` rows (one per chunk of rows).
pub fn arrival_counts(m: usize) -> usize {
    m.div_ceil(ROWS)
}

/// [`arrival_counts`]`(m)` zero counts on `device` (32-bit): the launch's workgroups count their
/// arrivals and the last sets them back to zero, so one set serves every launch that runs after
/// another (the layers of a pass or a decode step).
pub fn zero_arrival_counts(m: usize, device: &Device) -> Tensor<1, Int> {
    let counts = arrival_counts(m);
    Tensor::<1, Int>::from_data(TensorData::new(vec![0i32; counts], [counts]), device)
        .cast(IntDType::I32)
}

/// The decoder layer after attention up to the experts, in one launch: `attended` [n, k] times
/// the output projection `o` [k, H] (bf16) plus `o_bias`, plus the residual `x` [n, H]; then the
/// post-attention RMSNorm (`norm_weight` [H], `eps`) and the router (`router_w` [H, E],
/// `router_bias` [E], `top_k`). Returns (the sum, its norm, the routing table) as
/// `router_top_k::add_norm_router` does (the table's rows past n are padding). `arrivals`
/// [`arrival_counts`]`(n)` or more u32 counts, zero: the caller's own, written in place and left
/// zero. GPU only, on a device with device-scope memory synchronisation; see [`supports`].
#[allow(clippy::too_many_arguments)]
pub fn bf16_rows_add_norm_router(
    attended: Tensor<2>,
    (o, o_bias): (Tensor<2>, Tensor<1>),
    x: Tensor<2>,
    (norm_weight, eps): (Tensor<1>, f64),
    (router_w, router_bias): (Tensor<2>, Tensor<1>),
    top_k: usize,
    arrivals: Tensor<1, Int>,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let [n, h] = x.dims();
    let flat: Tensor<1> = Tensor::from_dispatch(
        <burn::backend::Dispatch as AddNormRouterBackend>::bf16_rows_add_norm_router(
            attended.cast(DType::F32).into_dispatch(),
            to_nearest_bf16(o).into_dispatch(),
            o_bias.into_dispatch(),
            x.cast(DType::F32).into_dispatch(),
            norm_weight.into_dispatch(),
            router_w.into_dispatch(),
            router_bias.into_dispatch(),
            arrivals.into_dispatch(),
            eps as f32,
            top_k,
        ),
    );
    split_sum_norm_routing(flat, [n, h], top_k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles_for_one_row_and_many() {
        for m in [1, 32] {
            let RowsTiling { groups, unroll } = chosen_tiling(DEFAULT_TILING, m, 2880, &[]);
            let (rows, _) = grid(m, column_blocks(2880, groups));
            let compiled = compile_kernel!(
                bf16_rows_add_norm_router_kernel::Bf16RowsAddNormRouterKernel,
                CubeDim::new_1d(UNITS),
                [b b b b b b b b b b s s s s s],
                rows,
                groups,
                unroll,
                4,
            );
            assert_eq!(compiled, Ok(()), "{m} rows");
        }
    }

    /// gpt-oss's widths and expert counts (32 and 128, top 4) are taken; more experts than the
    /// last workgroup's invocations, a top-k past the router's or a width off eight are not.
    #[test]
    fn supports_gpt_oss_routers_and_refuses_the_rest() {
        assert!(supports(2880, 32, 4) && supports(2880, 128, 4) && supports(64, 8, 4));
        assert!(!supports(2880, MAX_EXPERTS + 1, 4));
        assert!(!supports(2880, 32, MAX_TOP_K + 1));
        assert!(!supports(2880, 4, 5));
        assert!(!supports(2884, 32, 4));
        assert_eq!(arrival_counts(1), 1);
        assert_eq!(arrival_counts(ROWS), 1);
        assert_eq!(arrival_counts(ROWS + 1), 2);
    }
}
