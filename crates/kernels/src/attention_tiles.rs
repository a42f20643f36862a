//! Attention for many queries (scoring, prefill) in one kernel on the tensor cores: scores,
//! key ranges, sink, softmax and the weighted values (spec 4.4), flash-style.
//!
//! burn runs it as two f32 matmuls (no tensor cores in f32 on Vulkan) around a chain of
//! elementwise passes over [B, heads, T, S] scores. A workgroup of [`UNITS`] invocations takes
//! [`QUERIES`] queries of one (row, head) and walks the union of their visible keys
//! (`ranges`, as [`crate::attention_rows`] reads them) in blocks of [`KEYS`]:
//! 1. the block's keys and values are staged in shared memory (`staged_tiles`: 16-byte words,
//!    the next block's loaded into registers while this one is computed) and the scores `q k^T`
//!    come from the tensor cores (bf16 inputs, f32 products; workgroup-scope cooperative
//!    matrices);
//! 2. four invocations per query mask the scores by the query's range and update a running
//!    softmax started from the sink's logit (maximum shared by plane shuffles, each
//!    invocation keeping its own partial sum and its quarter of the output row);
//! 3. the probabilities, rounded to bf16, times the block's values on the tensor cores, added
//!    to the output after rescaling.
//!
//! Heads of 64 dimensions only ([`supports`]); everything else takes burn's ops.

use burn::backend::{
    Dispatch, backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::bf16_rows::EightBf16;
use crate::launch::empty_f32;
use crate::staged_tiles::{load_tile_words, staged_row_words, store_tile_words};

/// Queries per workgroup.
pub const QUERIES: usize = 64;
/// Keys per block.
pub const KEYS: usize = 64;
/// The one head size the kernel takes.
pub const HEAD_DIM: usize = 64;
/// Invocations per workgroup: four per query.
const UNITS: u32 = 256;
/// Invocations per query, and the score columns (or output dimensions) each one owns.
const PER_QUERY: u32 = 4;
const COLUMNS: u32 = KEYS as u32 / PER_QUERY;
// One matrix shape serves both products (q k^T: QUERIES x KEYS over HEAD_DIM; p v: QUERIES x
// HEAD_DIM over KEYS), and each invocation owns the same columns of scores and of outputs.
const _: () = assert!(KEYS == HEAD_DIM);
/// Below every score: marks a masked key.
const MASKED: f32 = -3.0e38;

/// A [`QUERIES`] x [`KEYS`] (or x [`HEAD_DIM`]) tensor-core matrix of the given role.
#[cube]
fn tile_matrix<E: Scalar>(
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] layout: cmma::MatrixLayout,
) -> cmma::Matrix<E, cmma::Cube> {
    unsafe { cmma::Matrix::<E, cmma::Cube>::uninitialized(ident, QUERIES, KEYS, HEAD_DIM, layout) }
}

/// This invocation's words of the [`KEYS`] key and value rows from `first` (rows of one kv
/// head; zeros from row `end`, past the head's last key).
#[cube]
pub(crate) fn load_block_words(
    k: &[EightBf16],
    v: &[EightBf16],
    keys: &mut Array<EightBf16>,
    values: &mut Array<EightBf16>,
    first: u32,
    end: u32,
    #[comptime] units: u32,
) {
    let d = HEAD_DIM as u32;
    load_tile_words(k, keys, first, end, 0, d, d, KEYS, HEAD_DIM, units);
    load_tile_words(v, values, first, end, 0, d, d, KEYS, HEAD_DIM, units);
}

/// The keys an invocation's query sees (`lo..hi`), the union of its subgroup's queries' keys
/// (`plane_lo..plane_hi`; `keys..0` when they see none), and the union over the workgroup's
/// subgroups (`first..end`): the blocks the workgroup walks.
#[derive(CubeType)]
pub(crate) struct KeySpans {
    pub lo: u32,
    pub hi: u32,
    pub plane_lo: u32,
    pub plane_hi: u32,
    pub first: u32,
    pub end: u32,
}

#[cube]
impl KeySpans {
    /// The spans of `query` (none past the row's `queries`) of `row`, from `ranges` (lo, hi per
    /// row and query), over `keys` keys, in a workgroup of `units` invocations.
    pub fn new(
        ranges: &[u32],
        row: u32,
        queries: u32,
        query: u32,
        keys: u32,
        #[comptime] units: u32,
    ) -> KeySpans {
        let mut lo = 0u32;
        let mut hi = 0u32;
        if query < queries {
            let at = (row * queries + query) * 2;
            lo = ranges[at as usize];
            hi = ranges[at as usize + 1];
        }
        let visible = lo < hi;
        let plane_lo = plane_min(select(visible, lo, keys));
        let plane_hi = plane_max(select(visible, hi, 0u32));
        let mut plane_spans = Shared::<[u32]>::new_slice(2 * units as usize);
        let mut span = Shared::<[u32]>::new_slice(2usize);
        if UNIT_POS_PLANE == 0 {
            let plane = UNIT_POS / PLANE_DIM;
            plane_spans[(2 * plane) as usize] = plane_lo;
            plane_spans[(2 * plane + 1) as usize] = plane_hi;
        }
        sync_cube();
        if UNIT_POS == 0 {
            let mut first = keys;
            let mut end = 0u32;
            for plane in 0..units / PLANE_DIM {
                first = min(first, plane_spans[(2 * plane) as usize]);
                end = max(end, plane_spans[(2 * plane + 1) as usize]);
            }
            span[0] = first;
            span[1] = end;
        }
        sync_cube();
        KeySpans {
            lo,
            hi,
            plane_lo,
            plane_hi,
            first: span[0],
            end: span[1],
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_tiles_kernel(
    q: &[bf16],
    k: &[EightBf16],
    v: &[EightBf16],
    sinks: &[f32],
    ranges: &[u32],
    out: &mut [f32],
    heads: u32,
    kv_heads: u32,
    queries: u32,
    keys: u32,
    scale: f32,
) {
    let d = HEAD_DIM as u32;
    let first_query = CUBE_POS_X * QUERIES as u32;
    let head = CUBE_POS_Y;
    let row = CUBE_POS_Z;
    let kv_head = head / (heads / kv_heads);
    let unit = UNIT_POS;
    let local = unit / PER_QUERY;
    let quarter = unit % PER_QUERY;
    let query = first_query + local;

    // A block's keys and values, rows padded as `staged_tiles` pads them.
    let stride = comptime![staged_row_words(HEAD_DIM)];
    let mut key_stage = Shared::<[EightBf16]>::new_slice(KEYS * stride);
    let mut value_stage = Shared::<[EightBf16]>::new_slice(KEYS * stride);
    let mut next_keys = Array::<EightBf16>::new(KEYS * HEAD_DIM / 8 / UNITS as usize);
    let mut next_values = Array::<EightBf16>::new(KEYS * HEAD_DIM / 8 / UNITS as usize);
    let mut products = Shared::<[f32]>::new_aligned_slice(QUERIES * KEYS, 16usize);
    let mut probs = Shared::<[bf16]>::new_aligned_slice(QUERIES * KEYS, 16usize);

    // Each query's visible keys (read by its four invocations); the block walks their union.
    let spans = KeySpans::new(ranges, row, queries, query, keys, UNITS);
    let (my_lo, my_hi) = (spans.lo, spans.hi);

    // The view ends at this head's last query: rows past it read zeros.
    let q_view = TensorView::new(q, seq![(row * heads + head + 1) * queries, d]).finish();
    let q_rows = (row * heads + head) * queries + first_query;
    let kv_rows = (row * kv_heads + kv_head) * keys;
    let mut q_mat = tile_matrix::<bf16>(cmma::MatrixIdent::A, cmma::MatrixLayout::Undefined);
    cmma::load_tensor(
        &mut q_mat,
        &q_view.slice(seq![q_rows, 0], seq![QUERIES as u32, d]),
    );
    let mut k_mat = tile_matrix::<bf16>(cmma::MatrixIdent::B, cmma::MatrixLayout::ColMajor);
    let mut p_mat = tile_matrix::<bf16>(cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor);
    let mut v_mat = tile_matrix::<bf16>(cmma::MatrixIdent::B, cmma::MatrixLayout::RowMajor);
    let mut acc = tile_matrix::<f32>(
        cmma::MatrixIdent::Accumulator,
        cmma::MatrixLayout::Undefined,
    );

    // The sink is one more logit: start from it (its exp(0) = 1 counted once, by quarter 0).
    let mut running_max = sinks[head as usize];
    let mut running_sum = select(quarter == 0, 1.0f32, 0.0f32);
    let mut output = Array::<f32>::new(COLUMNS as usize);
    let mut scores = Array::<f32>::new(COLUMNS as usize);
    #[unroll]
    for j in 0..COLUMNS as usize {
        output[j] = 0.0;
    }
    let column0 = quarter * COLUMNS;
    let kv_end = kv_rows + keys;
    let mut start = spans.first;
    // The first block's keys and values in registers; each block then stages them and loads
    // the next block's while this one is computed.
    load_block_words(
        k,
        v,
        &mut next_keys,
        &mut next_values,
        kv_rows + start,
        kv_end,
        UNITS,
    );
    while start < spans.end {
        // The previous block's matrices and products have been read (its last barrier).
        store_tile_words(&next_keys, &mut key_stage, KEYS, HEAD_DIM, UNITS);
        store_tile_words(&next_values, &mut value_stage, KEYS, HEAD_DIM, UNITS);
        sync_cube();
        if start + (KEYS as u32) < spans.end {
            let next = kv_rows + start + KEYS as u32;
            load_block_words(k, v, &mut next_keys, &mut next_values, next, kv_end, UNITS);
        }
        // Staged key rows are column-major B = K^T: (dim, key) at key * stride + dim; strides
        // in u32 words (the loads divide them by an EightBf16's four words).
        cmma::fill(&mut acc, 0.0f32);
        cmma::load(
            &mut k_mat,
            &key_stage[0..KEYS * stride],
            (stride * 4) as u32,
        );
        cmma::execute(&q_mat, &k_mat, &acc, &acc);
        cmma::store(
            &mut products[0..QUERIES * KEYS],
            &acc,
            KEYS as u32,
            cmma::MatrixLayout::RowMajor,
        );
        sync_cube();

        let mut local_max = f32::new(MASKED);
        #[unroll]
        for j in 0..COLUMNS as usize {
            let key = start + column0 + j as u32;
            let score = products[(local * KEYS as u32 + column0) as usize + j] * scale;
            let visible = key >= my_lo && key < my_hi;
            scores[j] = select(visible, score, MASKED);
            local_max = max(local_max, scores[j]);
        }
        // A query's four invocations are neighbouring lanes of one plane.
        let pair_max = max(local_max, plane_shuffle_xor(local_max, 1));
        let block_max = max(pair_max, plane_shuffle_xor(pair_max, 2));
        let new_max = max(running_max, block_max);
        let rescale = (running_max - new_max).exp();
        let mut block_sum = 0.0f32;
        #[unroll]
        for j in 0..COLUMNS as usize {
            let p = select(scores[j] > MASKED, (scores[j] - new_max).exp(), 0.0f32);
            block_sum += p;
            probs[(local * KEYS as u32 + column0) as usize + j] = bf16::cast_from(p);
        }
        running_sum = running_sum * rescale + block_sum;
        running_max = new_max;
        #[unroll]
        for j in 0..COLUMNS as usize {
            output[j] *= rescale;
        }
        sync_cube();

        cmma::fill(&mut acc, 0.0f32);
        cmma::load(&mut p_mat, &probs[0..QUERIES * KEYS], KEYS as u32);
        cmma::load(
            &mut v_mat,
            &value_stage[0..KEYS * stride],
            (stride * 4) as u32,
        );
        cmma::execute(&p_mat, &v_mat, &acc, &acc);
        cmma::store(
            &mut products[0..QUERIES * HEAD_DIM],
            &acc,
            d,
            cmma::MatrixLayout::RowMajor,
        );
        sync_cube();
        #[unroll]
        for j in 0..COLUMNS as usize {
            output[j] += products[(local * d + column0) as usize + j];
        }
        start += KEYS as u32;
    }
    let pair_sum = running_sum + plane_shuffle_xor(running_sum, 1);
    let total = pair_sum + plane_shuffle_xor(pair_sum, 2);
    if query < queries {
        let out_base = ((row * queries + query) * heads + head) * d + column0;
        #[unroll]
        for j in 0..COLUMNS as usize {
            out[out_base as usize + j] = output[j] / total;
        }
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait AttentionTilesBackend: burn::backend::Backend {
    /// `q` [B, heads, T, 64] bf16, `k` and `v` [B, kv_heads, S, 64] bf16, `sinks` [heads] f32,
    /// `ranges` [B * T * 2] (visible keys lo..hi per row and query, 32-bit) -> [B, T, heads,
    /// 64] f32.
    #[fusion(dtype = output_dtype(q), shape = Shape::from(vec![q[0], q[2], q[1], q[3]]))]
    fn attention_tiles(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        sinks: FloatTensor<Self>,
        ranges: IntTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// As `attention_tiles`, each subgroup on its own 16 queries (`attention_warps`).
    #[fusion(dtype = output_dtype(q), shape = Shape::from(vec![q[0], q[2], q[1], q[3]]))]
    fn attention_warps(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        sinks: FloatTensor<Self>,
        ranges: IntTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
}

fn output_dtype(_q: DType) -> DType {
    DType::F32
}

impl AttentionTilesBackend for CubeBackend {
    fn attention_tiles(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        sinks: CubeTensor,
        ranges: CubeTensor,
        scale: f32,
    ) -> CubeTensor {
        launch_attention(q, k, v, sinks, ranges, scale, false)
    }

    fn attention_warps(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        sinks: CubeTensor,
        ranges: CubeTensor,
        scale: f32,
    ) -> CubeTensor {
        launch_attention(q, k, v, sinks, ranges, scale, true)
    }
}

/// Launches `attention_tiles_kernel`, or with `warps` `attention_warps_kernel`, on contiguous
/// inputs -> [B, T, heads, 64] f32.
fn launch_attention(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    sinks: CubeTensor,
    ranges: CubeTensor,
    scale: f32,
    warps: bool,
) -> CubeTensor {
    let [q, k, v, sinks, ranges] = [q, k, v, sinks, ranges].map(into_contiguous);
    let [b, heads, t, d] = [0, 1, 2, 3].map(|i| q.meta.shape()[i]);
    let [kv_heads, keys] = [k.meta.shape()[1], k.meta.shape()[2]];
    assert!(
        supports(d),
        "attention_tiles: head_dim {d} (only {HEAD_DIM})"
    );
    let out = empty_f32(&q, vec![b, t, heads, d]);
    let client = q.client.clone();
    // The two kernels take the same arguments over a grid of query blocks x heads x rows.
    macro_rules! launch {
        ($kernel:ident, $queries:expr, $units:expr) => {
            $kernel::launch(
                &client,
                CubeCount::Static(t.div_ceil($queries) as u32, heads as u32, b as u32),
                CubeDim::new_1d($units),
                q.into_buffer_arg(),
                k.into_buffer_arg(),
                v.into_buffer_arg(),
                sinks.into_buffer_arg(),
                ranges.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                heads as u32,
                kv_heads as u32,
                t as u32,
                keys as u32,
                scale,
            )
        };
    }
    use crate::attention_warps::attention_warps_kernel;
    match warps {
        true => launch!(
            attention_warps_kernel,
            crate::attention_warps::QUERIES,
            crate::attention_warps::UNITS
        ),
        false => launch!(attention_tiles_kernel, QUERIES, UNITS),
    }
    out
}

/// Whether the kernel takes heads of `head_dim`.
pub fn supports(head_dim: usize) -> bool {
    head_dim == HEAD_DIM
}

/// Attention of queries `q` [B, heads, T, 64] over keys and values [B, kv_heads, S, 64] (query
/// head h reads kv head h / (heads / kv_heads)), each query seeing the keys
/// `ranges[(b * T + i) * 2]..ranges[(b * T + i) * 2 + 1]` (32-bit ints), with one sink logit per
/// head in the softmax -> [B, T, heads, 64]. q, k and v are rounded to bf16, and so are the
/// probabilities before they weight the values; GPU only.
pub fn attention_tiles(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    sinks: Tensor<1>,
    ranges: Tensor<1, Int>,
    scale: f32,
) -> Tensor<4> {
    let op = <Dispatch as AttentionTilesBackend>::attention_tiles;
    dispatch_attention(op, q, k, v, sinks, ranges, scale)
}

/// As [`attention_tiles`], each subgroup of the kernel on its own 16 queries
/// ([`crate::attention_warps`]); GPU only.
pub fn attention_warps(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    sinks: Tensor<1>,
    ranges: Tensor<1, Int>,
    scale: f32,
) -> Tensor<4> {
    let op = <Dispatch as AttentionTilesBackend>::attention_warps;
    dispatch_attention(op, q, k, v, sinks, ranges, scale)
}

/// One of the extension's attention ops on burn tensors (q, k and v cast to bf16).
type AttentionOp = fn(
    FloatTensor<Dispatch>,
    FloatTensor<Dispatch>,
    FloatTensor<Dispatch>,
    FloatTensor<Dispatch>,
    IntTensor<Dispatch>,
    f32,
) -> FloatTensor<Dispatch>;

fn dispatch_attention(
    op: AttentionOp,
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    sinks: Tensor<1>,
    ranges: Tensor<1, Int>,
    scale: f32,
) -> Tensor<4> {
    let [q, k, v] = [q, k, v].map(|x| x.cast(DType::BF16).into_dispatch());
    Tensor::from_dispatch(op(
        q,
        k,
        v,
        sinks.into_dispatch(),
        ranges.into_dispatch(),
        scale,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_kernel_compiles() {
        let compiled = compile_kernel!(
            attention_tiles_kernel::AttentionTilesKernel,
            CubeDim::new_1d(UNITS),
            [b b b b b b s s s s s],
        );
        assert_eq!(compiled, Ok(()));
    }
}
