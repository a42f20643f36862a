//! Grouped-query attention with biases, half-split RoPE, sliding windows and sinks (spec 4.4).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

use super::cache::LayerKv;
use super::rope::apply_rotary;

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
        let group = nh / nkv;
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2);
        let q = heads(self.q_proj.forward(x.clone()), nh);
        let k = heads(self.k_proj.forward(x.clone()), nkv);
        let v = heads(self.v_proj.forward(x), nkv);
        let (cos, sin) = cos_sin;
        let q = apply_rotary(q, cos, sin);
        let k = apply_rotary(k, cos, sin);
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        let s = k.dims()[2];

        // Query head h uses kv head h / group: view queries as [B, nkv, group*T, d].
        let q = q.reshape([b, nkv, group * t, d]);
        let scale = (d as f64).powf(-0.5);
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(scale)
            .reshape([b, nh, t, s])
            .mask_fill(blocked.clone().expand([b, nh, t, s]), f32::NEG_INFINITY);
        let sinks = self
            .sinks
            .val()
            .reshape([1, nh, 1, 1])
            .expand([b, nh, t, 1]);
        let probs = softmax(Tensor::cat(vec![scores, sinks], 3), 3).narrow(3, 0, s);
        let out = probs
            .reshape([b, nkv, group * t, s])
            .matmul(v)
            .reshape([b, nh, t, d])
            .swap_dims(1, 2)
            .reshape([b, t, nh * d]);
        self.o_proj.forward(out)
    }
}
