//! The router's logits for many tokens (scoring, prefill): `x W + b` for `x` [n, H], `W` [H, E]
//! and `b` [E], all f32, in one launch.
//!
//! burn's f32 matmul takes 484 us per layer for scoring's [16,384 x 2,880] x [2,880 x 32] on an
//! H100 (about 6 TF/s; reading the rows once takes about 65 us), and the bias is a launch of
//! its own. [`router_top_k`](crate::router_top_k) serves few tokens with one workgroup per token,
//! each reading the whole of W; for thousands of tokens that is W read thousands of times.
//! Here a workgroup takes [`ROWS`] tokens and walks H in chunks of [`CHUNK`]: each chunk's rows
//! of `x` and of `W` are staged in shared memory (the next chunk's loaded into registers while
//! this one is multiplied), and each of a token's eight invocations adds the products of an
//! eighth of the experts. Each logit is one invocation's running sum over H in order (f32, the
//! same products as burn's; only the order of the additions differs).

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{empty_f32, grid_over_rows, same_dtype};

/// Tokens per workgroup.
pub const ROWS: u32 = 32;
/// Hidden units per staged chunk.
pub const CHUNK: u32 = 32;
/// Invocations per workgroup.
const UNITS: u32 = 256;
/// Invocations per token; each adds the products of `experts / UNITS_PER_ROW` experts.
const UNITS_PER_ROW: u32 = UNITS / ROWS;
/// Most experts (an invocation's sums stay in registers).
pub const MAX_EXPERTS: usize = 128;

/// Whether the kernel takes a router over `experts` experts.
pub fn supports(experts: usize) -> bool {
    experts <= MAX_EXPERTS && experts.is_multiple_of(UNITS_PER_ROW as usize)
}

/// Most experts for which the kernel was measured faster than burn's matmul plus the bias
/// (`bench kernel-check --only router_logits`, H100, docs/benchmarks.md twenty-first round):
/// at 32 experts 0.55 against 4.17 ms for 16,384 tokens; at 128 (120b's router) 5.2 against
/// 3.5 ms for 4,096 tokens, each token's eight invocations summing 16 experts over H.
pub const FASTER_UP_TO_EXPERTS: usize = 32;

/// Whether to take the kernel for a router over `experts` experts: it takes them and was
/// measured faster than burn's ops there.
pub fn pays_for(experts: usize) -> bool {
    supports(experts) && experts <= FASTER_UP_TO_EXPERTS
}

/// A workgroup's tokens: rows `first..end` of `x`, each `hidden` values long.
#[derive(CubeType)]
struct TokenRows {
    first: u32,
    end: u32,
    hidden: u32,
}

/// This invocation's share of one chunk in registers: of `x`'s [`ROWS`] x [`CHUNK`] values and
/// of `W`'s [`CHUNK`] x experts.
#[derive(CubeType)]
struct ChunkShare {
    x: Array<f32>,
    w: Array<f32>,
}

/// Loads this invocation's share of chunk `k_begin` into `share`: zeros past the last token
/// and past H.
#[cube]
fn load_chunk(
    x: &[f32],
    w: &[f32],
    share: &mut ChunkShare,
    tokens: &TokenRows,
    k_begin: u32,
    #[comptime] experts: usize,
) {
    let hidden = tokens.hidden;
    #[unroll]
    for i in 0..(ROWS * CHUNK / UNITS) as usize {
        let v = UNIT_POS + i as u32 * UNITS;
        let (row, k) = (tokens.first + v / CHUNK, k_begin + v % CHUNK);
        let mut value = 0.0f32;
        if row < tokens.end && k < hidden {
            value = x[(row * hidden + k) as usize];
        }
        share.x[i] = value;
    }
    let e = experts as u32;
    #[unroll]
    for i in 0..comptime![CHUNK as usize * experts / UNITS as usize] {
        let v = UNIT_POS + i as u32 * UNITS;
        let k = k_begin + v / e;
        let mut value = 0.0f32;
        if k < hidden {
            value = w[(k * e + v % e) as usize];
        }
        share.w[i] = value;
    }
}

#[cube(launch)]
fn router_logits_kernel(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    out: &mut [f32],
    rows: u32,
    hidden: u32,
    #[comptime] experts: usize,
) {
    let first_row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * ROWS;
    if first_row >= rows {
        terminate!();
    }
    let per_unit = comptime![experts / UNITS_PER_ROW as usize];
    // Staged x rows padded by one value, so the eight rows a plane reads start on different
    // banks.
    let x_stride = CHUNK + 1;
    let mut xs = Shared::<[f32]>::new_slice(comptime![(ROWS * (CHUNK + 1)) as usize]);
    let mut ws = Shared::<[f32]>::new_slice(comptime![CHUNK as usize * experts]);
    let mut next = ChunkShare {
        x: Array::<f32>::new((ROWS * CHUNK / UNITS) as usize),
        w: Array::<f32>::new(comptime![CHUNK as usize * experts / UNITS as usize]),
    };
    let tokens = TokenRows {
        first: first_row,
        end: rows,
        hidden,
    };
    let mut sums = Array::<f32>::new(per_unit);
    #[unroll]
    for j in 0..per_unit {
        sums[j] = 0.0;
    }
    let (row_here, first_expert) = (
        UNIT_POS / UNITS_PER_ROW,
        (UNIT_POS % UNITS_PER_ROW) * per_unit as u32,
    );
    let chunks = hidden.div_ceil(CHUNK);
    load_chunk(x, w, &mut next, &tokens, 0, experts);
    for chunk in 0..chunks {
        // Every invocation has read the previous chunk before it is overwritten.
        sync_cube();
        #[unroll]
        for i in 0..(ROWS * CHUNK / UNITS) as usize {
            let v = UNIT_POS + i as u32 * UNITS;
            xs[((v / CHUNK) * x_stride + v % CHUNK) as usize] = next.x[i];
        }
        #[unroll]
        for i in 0..comptime![CHUNK as usize * experts / UNITS as usize] {
            ws[(UNIT_POS + i as u32 * UNITS) as usize] = next.w[i];
        }
        sync_cube();
        if chunk + 1 < chunks {
            let k_next = (chunk + 1) * CHUNK;
            load_chunk(x, w, &mut next, &tokens, k_next, experts);
        }
        for kk in 0..CHUNK {
            let value = xs[(row_here * x_stride + kk) as usize];
            let w_row = kk * experts as u32 + first_expert;
            #[unroll]
            for j in 0..per_unit {
                sums[j] += value * ws[(w_row + j as u32) as usize];
            }
        }
    }
    let row = first_row + row_here;
    if row < rows {
        #[unroll]
        for j in 0..per_unit {
            let e = first_expert + j as u32;
            out[(row * experts as u32 + e) as usize] = sums[j] + bias[e as usize];
        }
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait RouterLogitsBackend: burn::backend::Backend {
    /// `x` [n, H], `w` [H, E], `bias` [E] (all f32) -> logits [n, E].
    #[fusion(dtype = same_dtype(x), shape = Shape::from(vec![x[0], w[1]]))]
    fn router_logits(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl RouterLogitsBackend for CubeBackend {
    fn router_logits(x: CubeTensor, w: CubeTensor, bias: CubeTensor) -> CubeTensor {
        let [x, w, bias] = [x, w, bias].map(into_contiguous);
        let [rows, hidden] = [x.meta.shape()[0], x.meta.shape()[1]];
        let experts = w.meta.shape()[1];
        assert!(supports(experts), "router_logits: {experts} experts");
        assert_eq!(w.meta.shape()[0], hidden, "router_logits: shapes");
        let out = empty_f32(&x, vec![rows, experts]);
        router_logits_kernel::launch(
            &x.client.clone(),
            grid_over_rows(rows.div_ceil(ROWS as usize)),
            CubeDim::new_1d(UNITS),
            x.into_buffer_arg(),
            w.into_buffer_arg(),
            bias.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            rows as u32,
            hidden as u32,
            experts,
        );
        out
    }
}

/// The router's logits `x` [n, H] times `w` [H, E] plus `bias` [E] -> [n, E], f32. GPU only;
/// see [`supports`].
pub fn router_logits(x: Tensor<2>, w: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
    Tensor::from_dispatch(
        <burn::backend::Dispatch as RouterLogitsBackend>::router_logits(
            x.into_dispatch(),
            w.into_dispatch(),
            bias.into_dispatch(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles_for_routers_of_8_to_128_experts() {
        for experts in [8, 32, 128] {
            let compiled = compile_kernel!(
                router_logits_kernel::RouterLogitsKernel,
                CubeDim::new_1d(UNITS),
                [b b b b s s],
                experts,
            );
            assert_eq!(compiled, Ok(()), "{experts} experts");
        }
    }

    #[test]
    fn routers_of_whole_eighths_up_to_128_experts_are_supported() {
        for experts in [8, 32, 128] {
            assert!(supports(experts), "{experts}");
        }
        for experts in [4, 12, 136, 1000] {
            assert!(!supports(experts), "{experts}");
        }
    }

    #[test]
    fn the_model_takes_the_kernel_only_where_it_was_measured_faster() {
        assert!(pays_for(32), "20b's router");
        assert!(pays_for(8));
        assert!(!pays_for(128), "120b's router: burn's matmul was faster");
        assert!(!pays_for(12), "not supported");
    }
}
