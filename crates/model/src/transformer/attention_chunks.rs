//! Attention through burn's ops (the CPU reference, and the GPU where no attention kernel
//! takes the shape), a chunk of queries at a time against only the keys each chunk may see.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

use super::attention::Attention;
use super::cache::KEY_BLOCK;
use super::mask::KeyMask;
use super::project::on_kernel_path;

/// How attention splits its work: queries in chunks, each against only the keys it may see.
#[derive(Debug, Clone, Copy)]
pub struct AttentionChunks {
    /// Largest score block [B, heads, chunk, keys] computed at once, in bytes.
    pub max_score_bytes: usize,
    /// Most queries per chunk: smaller chunks skip more future (and out-of-window) keys.
    pub max_queries: usize,
    /// Key ranges are widened to multiples of this (shapes repeat across decode steps).
    pub key_block: usize,
}

impl Default for AttentionChunks {
    fn default() -> Self {
        Self {
            max_score_bytes: 1 << 30,
            max_queries: 256,
            key_block: KEY_BLOCK,
        }
    }
}

impl Attention {
    /// [`Self::attend`] a chunk of queries at a time against the keys it may see (wgpu cannot
    /// allocate one buffer of 8 x 64 x 2048 x 2048 f32 scores, and most of them are masked).
    pub(super) fn attend_in_chunks(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: &KeyMask,
        chunks: AttentionChunks,
    ) -> Tensor<4> {
        let [b, nh, t, _] = q.dims();
        let s = k.dims()[2];
        let rows_per_chunk = (chunks.max_score_bytes / (b * nh * s * 4))
            .min(chunks.max_queries)
            .clamp(1, t);
        let part = |x: &Tensor<4>, range: &std::ops::Range<usize>| {
            if range.len() == x.dims()[2] {
                x.clone()
            } else {
                x.clone().narrow(2, range.start, range.len())
            }
        };
        let mut pieces: Vec<Tensor<4>> = (0..t)
            .step_by(rows_per_chunk)
            .map(|start| {
                let rows = start..(start + rows_per_chunk).min(t);
                let keys = mask.visible_keys(rows.clone(), chunks.key_block);
                let blocked = mask.part(rows.clone(), keys.clone());
                self.attend(part(&q, &rows), part(&k, &keys), part(&v, &keys), blocked)
            })
            .collect();
        if pieces.len() == 1 {
            return pieces.remove(0);
        }
        Tensor::cat(pieces, 2)
    }

    /// Queries `q` [B, nh, T, d] against keys and values [B, nkv, S, d] -> [B, nh, T, d].
    fn attend(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        blocked: Tensor<4, Bool>,
    ) -> Tensor<4> {
        let [b, nh, t, d] = q.dims();
        let nkv = self.num_kv_heads;
        let group = nh / nkv;
        let s = k.dims()[2];
        // Query head h uses kv head h / group: view queries as [B, nkv, group*T, d].
        let q = q.reshape([b, nkv, group * t, d]);
        let scale = self.score_scale();
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(scale)
            .reshape([b, nh, t, s])
            .mask_fill(blocked.expand([b, nh, t, s]), f32::NEG_INFINITY);
        let sinks = self
            .sinks
            .val()
            .reshape([1, nh, 1, 1])
            .expand([b, nh, t, 1]);
        let logits = Tensor::cat(vec![scores, sinks], 3);
        let probs = if on_kernel_path(&self.q_proj.weight.val()) {
            // GPU path: burn fuses softmax into a kernel with one invocation per row, slow
            // for decoding's few rows; the row logsumexp kernel has a workgroup per row.
            let normaliser = gpt_oss_kernels::logsumexp_rows::logsumexp_rows(
                logits.clone().reshape([b * nh * t, s + 1]),
            );
            (logits - normaliser.reshape([b, nh, t, 1])).exp()
        } else {
            softmax(logits, 3)
        };
        let probs = probs.narrow(3, 0, s);
        probs
            .reshape([b, nkv, group * t, s])
            .matmul(v)
            .reshape([b, nh, t, d])
    }
}
