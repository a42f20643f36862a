//! Attention for many queries (scoring, prefill) in one kernel on the tensor cores: scores,
//! key ranges, sink, softmax and the weighted values (spec 4.4), flash-style.
//!
//! burn runs it as two f32 matmuls (no tensor cores in f32 on Vulkan) around a chain of
//! elementwise passes over [B, heads, T, S] scores. A workgroup of [`UNITS`] invocations takes
//! [`QUERIES`] queries of one (row, head) and walks the union of their visible keys
//! (`ranges`, as [`crate::attention_rows`] reads them) in blocks of [`KEYS`]. The workgroup
//! shares only the block's keys and values, staged in shared memory (`staged_tiles`: 16-byte
//! words, the next block's loaded into registers while this one is computed); each subgroup of
//! [`PLANE`] invocations owns [`FRAGMENT`] queries and goes through a block on its own, in
//! subgroup-scope 16 x 16 x 16 fragments (bf16 inputs, f32 products):
//! 1. its queries' scores `q k^T` as four fragments (q's fragments loaded once, before the
//!    blocks), stored into its own rows of shared memory;
//! 2. two invocations per query mask the scores by the query's range and update a running
//!    softmax started from the sink's logit (each keeping its own partial sum and half of the
//!    output row: columns `2 c + half`), writing the probabilities, rounded to bf16, into the
//!    subgroup's own rows;
//! 3. the probabilities times the block's values as four fragments, stored into the same rows
//!    and added to the output after rescaling.
//!
//! The output is written rounded to bf16 (to nearest even): what the output projection, a
//! tensor-core product, would round it to anyway. That saves the projection a rounding pass and
//! the kernel half its writes (at scoring's 8 x 2048, 0.8 GB of traffic a layer).
//!
//! A subgroup skips the blocks none of its queries sees (sliding windows, the causal diagonal).
//! One workgroup-scope matrix per product instead, which the workgroup waits for together
//! (four barriers per block), ran 1.6x slower at scoring's size and scored 7% fewer tokens/s
//! (docs/benchmarks.md, twenty-fourth round).
//!
//! Heads of 64 dimensions only ([`supports`]); everything else takes burn's ops.

use crate::bf16_nearest::{nearest_bf16, nearest_bf16_unless_nan, to_nearest_bf16};
use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use crate::bf16_rows::EightBf16;
use crate::coopmat_warps::{FRAGMENT, PLANE, fragment, zeroed_accumulator};
use crate::launch::{bf16_dtype, empty_of};
use crate::staged_tiles::{load_tile_words, staged_row_words, store_tile_words};

/// Keys per block.
pub const KEYS: usize = 64;
/// The one head size the kernel takes.
pub const HEAD_DIM: usize = 64;
/// Subgroups per workgroup.
const PLANES: u32 = 4;
/// Invocations per workgroup.
const UNITS: u32 = PLANES * PLANE;
/// Queries per workgroup: one fragment's rows per subgroup.
pub const QUERIES: usize = PLANES as usize * FRAGMENT;
/// Fragments across a block's keys (the scores) or across a head's dimensions (the output).
const ACROSS: usize = KEYS / FRAGMENT;
const _: () = assert!(KEYS == HEAD_DIM);
/// Invocations per query, and the score columns (or output dimensions) each one owns.
const PER_QUERY: u32 = PLANE / FRAGMENT as u32;
const COLUMNS: usize = KEYS / PER_QUERY as usize;
/// f32 values per row of a subgroup's staged scores and products: whole 16-byte words, padded
/// so that the rows 8 apart are the only ones on the same banks.
const SCORE_STRIDE: usize = KEYS + 4;
/// bf16 values per row of a subgroup's staged probabilities (whole 16-byte words, padded).
const PROB_STRIDE: usize = KEYS + 8;
/// Below every score: marks a masked key.
const MASKED: f32 = -3.0e38;

/// This invocation's words of the [`KEYS`] key and value rows from `first` (rows of one kv
/// head; zeros from row `end`, past the head's last key).
#[cube]
fn load_block_words(
    k: &[EightBf16],
    v: &[EightBf16],
    keys: &mut Array<EightBf16>,
    values: &mut Array<EightBf16>,
    first: u32,
    end: u32,
) {
    let d = HEAD_DIM as u32;
    load_tile_words(k, keys, first, end, 0, d, d, KEYS, HEAD_DIM, UNITS);
    load_tile_words(v, values, first, end, 0, d, d, KEYS, HEAD_DIM, UNITS);
}

/// The keys an invocation's query sees (`lo..hi`), the union of its subgroup's queries' keys
/// (`plane_lo..plane_hi`; `keys..0` when they see none), and the union over the workgroup's
/// subgroups (`first..end`): the blocks the workgroup walks.
#[derive(CubeType)]
struct KeySpans {
    lo: u32,
    hi: u32,
    plane_lo: u32,
    plane_hi: u32,
    first: u32,
    end: u32,
}

#[cube]
impl KeySpans {
    /// The spans of `query` (none past the row's `queries`) of `row`, from `ranges` (lo, hi per
    /// row and query), over `keys` keys, in a workgroup of [`UNITS`] invocations.
    fn new(ranges: &[u32], row: u32, queries: u32, query: u32, keys: u32) -> KeySpans {
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
        let mut plane_spans = Shared::<[u32]>::new_slice(2 * UNITS as usize);
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
            for plane in 0..UNITS / PLANE_DIM {
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
    q: &[EightBf16],
    k: &[EightBf16],
    v: &[EightBf16],
    sinks: &[f32],
    ranges: &[u32],
    out: &mut [bf16],
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
    let plane = UNIT_POS / PLANE;
    let lane = UNIT_POS % PLANE;
    // The subgroup's query of this invocation (its fragment row) and which columns it owns.
    let local = lane % FRAGMENT as u32;
    let half = lane / FRAGMENT as u32;
    let query = first_query + plane * FRAGMENT as u32 + local;

    let spans = KeySpans::new(ranges, row, queries, query, keys);
    let (my_lo, my_hi) = (spans.lo, spans.hi);

    let stride = comptime![staged_row_words(HEAD_DIM)];
    let mut key_stage = Shared::<[EightBf16]>::new_slice(KEYS * stride);
    let mut value_stage = Shared::<[EightBf16]>::new_slice(KEYS * stride);
    let mut next_keys = Array::<EightBf16>::new(KEYS * HEAD_DIM / 8 / UNITS as usize);
    let mut next_values = Array::<EightBf16>::new(KEYS * HEAD_DIM / 8 / UNITS as usize);
    let mut staged = Shared::<[f32]>::new_aligned_slice(QUERIES * SCORE_STRIDE, 16usize);
    let mut probs = Shared::<[bf16]>::new_aligned_slice(QUERIES * PROB_STRIDE, 16usize);
    let own_scores = (plane * FRAGMENT as u32) as usize * SCORE_STRIDE;
    let own_probs = (plane * FRAGMENT as u32) as usize * PROB_STRIDE;

    // The workgroup's queries go through the key stage once; each subgroup keeps its rows as
    // four A fragments (16 queries x 16 dimensions each).
    let q_rows = (row * heads + head) * queries;
    let mut q_words = Array::<EightBf16>::new(QUERIES * HEAD_DIM / 8 / UNITS as usize);
    load_tile_words(
        q,
        &mut q_words,
        q_rows + first_query,
        q_rows + queries,
        0,
        d,
        d,
        QUERIES,
        HEAD_DIM,
        UNITS,
    );
    store_tile_words(&q_words, &mut key_stage, QUERIES, HEAD_DIM, UNITS);
    sync_cube();
    let span = comptime![15 * stride + FRAGMENT / 8];
    let mut q_fragments = Sequence::<cmma::Matrix<bf16>>::new();
    #[unroll]
    for dd in 0..ACROSS {
        let mut fragment = fragment(cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor);
        let first = (plane * FRAGMENT as u32) as usize * stride + dd * FRAGMENT / 8;
        cmma::load(
            &mut fragment,
            &key_stage[first..first + span],
            (stride * 4) as u32,
        );
        q_fragments.push(fragment);
    }
    let mut keys_t = Sequence::<cmma::Matrix<bf16>>::new();
    let mut values = Sequence::<cmma::Matrix<bf16>>::new();
    let mut products = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..ACROSS {
        keys_t.push(fragment(cmma::MatrixIdent::B, cmma::MatrixLayout::ColMajor));
        values.push(fragment(cmma::MatrixIdent::B, cmma::MatrixLayout::RowMajor));
        products.push(zeroed_accumulator());
    }
    let mut p_fragment = fragment(cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor);

    // The sink is one more logit: start from it (its exp(0) = 1 counted once, by half 0).
    let mut running_max = sinks[head as usize];
    let mut running_sum = select(half == 0, 1.0f32, 0.0f32);
    let mut output = Array::<f32>::new(COLUMNS);
    let mut scores = Array::<f32>::new(COLUMNS);
    #[unroll]
    for c in 0..COLUMNS {
        output[c] = 0.0;
    }
    let my_row = own_scores + local as usize * SCORE_STRIDE + half as usize;
    let my_probs = own_probs + local as usize * PROB_STRIDE + half as usize;
    let kv_rows = (row * kv_heads + kv_head) * keys;
    let kv_end = kv_rows + keys;
    let mut start = spans.first;
    load_block_words(
        k,
        v,
        &mut next_keys,
        &mut next_values,
        kv_rows + start,
        kv_end,
    );
    while start < spans.end {
        // Every subgroup has loaded its fragments of the previous block (and of the queries).
        sync_cube();
        store_tile_words(&next_keys, &mut key_stage, KEYS, HEAD_DIM, UNITS);
        store_tile_words(&next_values, &mut value_stage, KEYS, HEAD_DIM, UNITS);
        sync_cube();
        if start + (KEYS as u32) < spans.end {
            let next = kv_rows + start + KEYS as u32;
            load_block_words(k, v, &mut next_keys, &mut next_values, next, kv_end);
        }
        if start < spans.plane_hi && start + (KEYS as u32) > spans.plane_lo {
            // Scores: staged key rows are column-major B = K^T, (dim, key) at key * stride + dim.
            #[unroll]
            for j in 0..ACROSS {
                cmma::fill(products.index_mut(j), 0.0f32);
            }
            #[unroll]
            for dd in 0..ACROSS {
                #[unroll]
                for j in 0..ACROSS {
                    let first = j * FRAGMENT * stride + dd * FRAGMENT / 8;
                    cmma::load(
                        keys_t.index_mut(j),
                        &key_stage[first..first + span],
                        (stride * 4) as u32,
                    );
                }
                #[unroll]
                for j in 0..ACROSS {
                    let c = products.index(j);
                    cmma::execute(q_fragments.index(dd), keys_t.index(j), c, c);
                }
            }
            stage_products(&products, &mut staged, own_scores);

            let mut local_max = f32::new(MASKED);
            #[unroll]
            for c in 0..COLUMNS {
                let key = start + (2 * c) as u32 + half;
                let score = staged[my_row + 2 * c] * scale;
                let seen = key >= my_lo && key < my_hi;
                scores[c] = select(seen, score, MASKED);
                local_max = max(local_max, scores[c]);
            }
            // A query's two invocations are lanes `local` and `local + 16` of one subgroup.
            let block_max = max(local_max, plane_shuffle_xor(local_max, FRAGMENT as u32));
            let new_max = max(running_max, block_max);
            let rescale = (running_max - new_max).exp();
            let mut block_sum = 0.0f32;
            #[unroll]
            for c in 0..COLUMNS {
                let p = select(scores[c] > MASKED, (scores[c] - new_max).exp(), 0.0f32);
                block_sum += p;
                // A NaN here reaches the output through the unrounded sum.
                probs[my_probs + 2 * c] = nearest_bf16_unless_nan(p);
                output[c] *= rescale;
            }
            running_sum = running_sum * rescale + block_sum;
            running_max = new_max;
            sync_plane();

            // Probabilities (A, 16 queries x 16 keys at a time) times values (row-major B).
            #[unroll]
            for j in 0..ACROSS {
                cmma::fill(products.index_mut(j), 0.0f32);
            }
            #[unroll]
            for kk in 0..ACROSS {
                let first_p = own_probs + kk * FRAGMENT;
                cmma::load(
                    &mut p_fragment,
                    &probs[first_p..first_p + 15 * PROB_STRIDE + FRAGMENT],
                    PROB_STRIDE as u32,
                );
                #[unroll]
                for j in 0..ACROSS {
                    let first = kk * FRAGMENT * stride + j * FRAGMENT / 8;
                    cmma::load(
                        values.index_mut(j),
                        &value_stage[first..first + span],
                        (stride * 4) as u32,
                    );
                }
                #[unroll]
                for j in 0..ACROSS {
                    let c = products.index(j);
                    cmma::execute(&p_fragment, values.index(j), c, c);
                }
            }
            stage_products(&products, &mut staged, own_scores);
            #[unroll]
            for c in 0..COLUMNS {
                output[c] += staged[my_row + 2 * c];
            }
        }
        start += KEYS as u32;
    }
    let total = running_sum + plane_shuffle_xor(running_sum, FRAGMENT as u32);
    if query < queries {
        let out_base = ((row * queries + query) * heads + head) * d + half;
        #[unroll]
        for c in 0..COLUMNS {
            out[(out_base + 2 * c as u32) as usize] = nearest_bf16(output[c] / total);
        }
    }
}

/// Stores the subgroup's four 16 x 16 products side by side into its rows of `staged` (from
/// `own`, [`SCORE_STRIDE`] apart), where its invocations may read them: waits for the
/// subgroup's reads of what it staged before, and makes the stores visible.
#[cube]
fn stage_products(products: &Sequence<cmma::Matrix<f32>>, staged: &mut [f32], own: usize) {
    let span = comptime![15 * SCORE_STRIDE + FRAGMENT];
    sync_plane();
    #[unroll]
    for j in 0..ACROSS {
        let first = own + j * FRAGMENT;
        cmma::store(
            &mut staged[first..first + span],
            products.index(j),
            SCORE_STRIDE as u32,
            cmma::MatrixLayout::RowMajor,
        );
    }
    sync_plane();
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait AttentionTilesBackend: burn::backend::Backend {
    /// `q` [B, heads, T, 64] bf16, `k` and `v` [B, kv_heads, S, 64] bf16, `sinks` [heads] f32,
    /// `ranges` [B * T * 2] (visible keys lo..hi per row and query, 32-bit) -> [B, T, heads,
    /// 64] bf16 (rounded to nearest even).
    #[fusion(dtype = bf16_dtype(q), shape = Shape::from(vec![q[0], q[2], q[1], q[3]]))]
    fn attention_tiles(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        sinks: FloatTensor<Self>,
        ranges: IntTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;
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
        let [q, k, v, sinks, ranges] = [q, k, v, sinks, ranges].map(into_contiguous);
        let [b, heads, t, d] = [0, 1, 2, 3].map(|i| q.meta.shape()[i]);
        let [kv_heads, keys] = [k.meta.shape()[1], k.meta.shape()[2]];
        assert!(
            supports(d),
            "attention_tiles: head_dim {d} (only {HEAD_DIM})"
        );
        let out = empty_of(&q, vec![b, t, heads, d], DType::BF16);
        attention_tiles_kernel::launch(
            &q.client.clone(),
            CubeCount::Static(t.div_ceil(QUERIES) as u32, heads as u32, b as u32),
            CubeDim::new_1d(UNITS),
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
        );
        out
    }
}

/// Whether the kernel takes heads of `head_dim`.
pub fn supports(head_dim: usize) -> bool {
    head_dim == HEAD_DIM
}

/// Attention of queries `q` [B, heads, T, 64] over keys and values [B, kv_heads, S, 64] (query
/// head h reads kv head h / (heads / kv_heads)), each query seeing the keys
/// `ranges[(b * T + i) * 2]..ranges[(b * T + i) * 2 + 1]` (32-bit ints), with one sink logit per
/// head in the softmax -> [B, T, heads, 64] in bf16. q, k and v are rounded to bf16, and so are
/// the probabilities before they weight the values and the output (each to nearest even); GPU
/// only.
pub fn attention_tiles(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    sinks: Tensor<1>,
    ranges: Tensor<1, Int>,
    scale: f32,
) -> Tensor<4> {
    let [q, k, v] = [q, k, v].map(to_nearest_bf16);
    Tensor::from_dispatch(
        <burn::backend::Dispatch as AttentionTilesBackend>::attention_tiles(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            sinks.into_dispatch(),
            ranges.into_dispatch(),
            scale,
        ),
    )
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
