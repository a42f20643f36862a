//! Grouped-query attention with biases, half-split RoPE, sliding windows and sinks (spec 4.4).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

use super::cache::LayerKv;
use super::project::linear;
use super::rope::apply_rotary;

/// Largest attention-score block computed at once, in bytes.
pub const MAX_SCORE_BYTES: usize = 1 << 30;

#[derive(Module, Debug)]
pub struct Attention {
    /// Weights are [in, out] (the checkpoint's [out, in] transposed at load).
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// One learned logit per query head, appended to every score row (not scaled, not masked).
    pub sinks: Param<Tensor<1>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `x` is [B, T, H]; `blocked` is [B, 1, T, S] over the S keys this call sees (cached ones
    /// first). Returns [B, T, H].
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos_sin: &(Tensor<4>, Tensor<4>),
        blocked: &Tensor<4, Bool>,
        cache: Option<&mut LayerKv>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2);
        let q = heads(linear(&self.q_proj, x.clone()), nh);
        let k = heads(linear(&self.k_proj, x.clone()), nkv);
        let v = heads(linear(&self.v_proj, x), nkv);
        let (cos, sin) = cos_sin;
        let q = apply_rotary(q, cos, sin);
        let k = apply_rotary(k, cos, sin);
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        let out = self
            .attend_in_chunks(q, k, v, blocked.clone(), MAX_SCORE_BYTES)
            .swap_dims(1, 2)
            .reshape([b, t, nh * d]);
        linear(&self.o_proj, out)
    }

    /// [`Self::attend`] a chunk of queries at a time, so that no chunk's scores [B, nh, chunk,
    /// S] take more than `max_score_bytes` (wgpu cannot allocate one buffer of 8 x 64 x 2048 x
    /// 2048 f32).
    fn attend_in_chunks(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        blocked: Tensor<4, Bool>,
        max_score_bytes: usize,
    ) -> Tensor<4> {
        let [b, nh, t, _] = q.dims();
        let s = k.dims()[2];
        let chunk = (max_score_bytes / (b * nh * s * 4)).clamp(1, t);
        if chunk == t {
            return self.attend(q, k, v, blocked);
        }
        let pieces: Vec<Tensor<4>> = (0..t)
            .step_by(chunk)
            .map(|start| {
                let len = chunk.min(t - start);
                self.attend(
                    q.clone().narrow(2, start, len),
                    k.clone(),
                    v.clone(),
                    blocked.clone().narrow(2, start, len),
                )
            })
            .collect();
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
        let scale = (d as f64).powf(-0.5);
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
        let probs = softmax(Tensor::cat(vec![scores, sinks], 3), 3).narrow(3, 0, s);
        probs
            .reshape([b, nkv, group * t, s])
            .matmul(v)
            .reshape([b, nh, t, d])
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::transformer::mask::{SlotRange, blocked_keys};
    use crate::{ExpertResidency, LoadOptions, load_model};

    #[test]
    fn query_chunks_give_the_unchunked_result() {
        let device = Device::flex();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tools/reference/out/tiny-dense");
        let options = LoadOptions {
            experts: ExpertResidency::Decoded,
        };
        let model = load_model(&dir, &device, options).unwrap();
        let attention = &model.layers[0].self_attn;
        let (b, t) = (2, 23);
        let (nh, nkv, d) = (
            attention.num_heads,
            attention.num_kv_heads,
            attention.head_dim,
        );
        let random = |heads| Tensor::<4>::random([b, heads, t, d], Distribution::Default, &device);
        let (q, k, v) = (random(nh), random(nkv), random(nkv));
        let range = SlotRange { start: 0, len: t };
        let blocked = blocked_keys(&[0, 5], range, range, Some(8), &device);
        let whole = attention.attend_in_chunks(
            q.clone(),
            k.clone(),
            v.clone(),
            blocked.clone(),
            usize::MAX,
        );
        // Five queries per chunk: 23 = 5 + 5 + 5 + 5 + 3.
        let five = b * nh * t * 4 * 5;
        let chunked = attention.attend_in_chunks(q, k, v, blocked, five);
        let diff: f32 = (whole - chunked).abs().max().into_scalar();
        assert!(diff < 1e-6, "chunked attention differs by {diff}");
    }
}
