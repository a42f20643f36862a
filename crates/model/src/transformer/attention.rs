//! Grouped-query attention with biases, half-split RoPE, sliding windows and sinks (spec 4.4).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;
use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;

use gpt_oss_kernels::{AttentionKernel, attention_rows, attention_tiles, bf16_rows, rotary_rows};

use super::attention_chunks::AttentionChunks;
use super::cache::{FixedKv, LayerKv};
use super::mask::KeyMask;
use super::norm::RmsNorm;
use super::project::{FEW_ROWS, is_tensor_core_product, linear, on_kernel_path};
use super::rope::apply_rotary;
use super::step::AtSlot;

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

/// The GPU kernel for `queries` queries per row with heads of `head_dim`, if one takes them:
/// decoding's `attention_rows` (one kernel instead of about twelve) for a few queries, writing
/// bf16 where `bf16_out` says the output projection reads bf16, `attention_tiles` (one
/// tensor-core kernel instead of f32 matmuls around passes over the scores, always writing
/// bf16) for scoring and prefill.
fn gpu_attention_kernel(
    queries: usize,
    head_dim: usize,
    bf16_out: bool,
) -> Option<AttentionKernel> {
    if attends_in_rows(queries, head_dim) {
        match bf16_out {
            true => Some(attention_rows::attention_rows_bf16),
            false => Some(attention_rows::attention_rows),
        }
    } else if attends_in_tiles(queries, head_dim) {
        Some(attention_tiles::attention_tiles)
    } else {
        None
    }
}

/// Whether the GPU attends `queries` queries per row with heads of `head_dim` in
/// `attention_rows`.
fn attends_in_rows(queries: usize, head_dim: usize) -> bool {
    queries <= attention_rows::MAX_QUERIES && attention_rows::supports(head_dim)
}

/// Whether the GPU attends `queries` queries per row with heads of `head_dim` in
/// `attention_tiles`, which reads q, k and v rounded to bf16.
fn attends_in_tiles(queries: usize, head_dim: usize) -> bool {
    !attends_in_rows(queries, head_dim) && attention_tiles::supports(head_dim)
}

/// Which of q and k the rotation writes in bf16 (rounded to nearest), on the kernel path:
/// those only the tensor-core attention reads, which would round them anyway.
#[derive(Debug, Clone, Copy, Default)]
struct RotatedBf16 {
    q: bool,
    k: bool,
}

impl Attention {
    /// `x` is [B, T, H]; `mask` covers the S keys this call sees (cached ones first).
    /// Returns [B, T, H].
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos_sin: &(Tensor<4>, Tensor<4>),
        mask: &KeyMask,
        cache: Option<&mut LayerKv>,
    ) -> Tensor<3> {
        self.project_out(self.attend_heads(x, cos_sin, mask, cache))
    }

    /// [`Self::forward`] before the output projection: the heads' outputs [B, T, heads *
    /// head_dim] ([`Self::project_out`] applies it; a decoder layer may run it in the
    /// router's launch instead).
    pub fn attend_heads(
        &self,
        x: Tensor<3>,
        cos_sin: &(Tensor<4>, Tensor<4>),
        mask: &KeyMask,
        cache: Option<&mut LayerKv>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, _, d) = self.head_counts();
        let kernels = on_kernel_path(&self.q_proj.weight.val());
        // Attention in tiles reads q and k in bf16: the rotation writes them so, k only where
        // no cache keeps it in f32.
        let tiles = kernels && attends_in_tiles(t, d);
        let rotated_bf16 = RotatedBf16 {
            q: tiles,
            k: tiles && cache.is_none(),
        };
        let (q, k, v) = self.project_qkv(x, cos_sin, rotated_bf16);
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        if let Some(kernel) = kernels
            .then(|| gpu_attention_kernel(t, d, self.projects_out_of_bf16(b * t)))
            .flatten()
        {
            let out = kernel(
                q,
                k,
                v,
                self.sinks.val(),
                mask.key_ranges(),
                self.score_scale() as f32,
            );
            return out.reshape([b, t, nh * d]);
        }
        self.attend_in_chunks(q, k, v, mask, AttentionChunks::default())
            .swap_dims(1, 2)
            .reshape([b, t, nh * d])
    }

    /// A decode step whose changing inputs all live on the device (a captured, replayed step):
    /// the residual stream `x` [B, T, H], normed by `norm` first (the layer's input norm; on
    /// the kernel path in the q/k/v product's launch); the step's keys and values are written
    /// into `kv` at the step's slot (buffer index = slot); RoPE's angles and the visible buffer
    /// indices of this layer's `window` come from `at`. On the kernel path at one position
    /// RoPE, the cache writes and attention are one launch (`attention_rows::attention_step`),
    /// which picks the slot's rows of the step's tables itself. Returns the heads' outputs
    /// before the output projection, [B, T, heads * head_dim] ([`Self::project_out`] applies
    /// it; a decoding layer may instead run it in the router's launch).
    pub fn attend_step(
        &self,
        x: Tensor<3>,
        norm: &RmsNorm,
        at: &AtSlot<'_>,
        window: Option<usize>,
        kv: &mut FixedKv,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, d) = self.head_counts();
        let kernels = on_kernel_path(&self.q_proj.weight.val());
        let (sinks, scale) = (self.sinks.val(), self.score_scale() as f32);
        let slot = at.slot.clone();
        let one_launch = kernels && t == 1 && self.projects_in_one_launch(b);
        let out = if one_launch && attention_rows::supports(d) {
            // One launch rotates q and k, writes k and v into the caches and attends.
            attention_rows::attention_step(
                self.qkv_in_one_launch(x, Some(norm)),
                at.rope_tables(),
                (&kv.keys, &kv.values),
                slot,
                sinks,
                at.key_range_table(window),
                scale,
                self.projects_out_of_bf16(b),
            )
        } else {
            let cos_sin = at.cos_sin();
            let q = if one_launch {
                // One launch rotates q and k and writes k and v into the caches.
                rotary_rows::rotary_qkv_into_cache(
                    self.qkv_in_one_launch(x, Some(norm)),
                    cos_sin.clone(),
                    (&kv.keys, &kv.values),
                    slot,
                    nh,
                    nkv,
                )
            } else {
                let normed = self.normed_input(norm, x);
                let (q, k, v) = self.project_qkv(normed, cos_sin, RotatedBf16::default());
                kv.write(k, v, slot, kernels);
                q
            };
            let (k, v) = (kv.keys.clone(), kv.values.clone());
            let key_ranges = at.key_ranges(window);
            if kernels && attention_rows::supports(d) {
                attention_rows::attention_rows(q, k, v, sinks, key_ranges, scale)
            } else {
                attention_rows::reference_attention_rows(q, k, v, sinks, key_ranges, scale)
            }
        };
        out.reshape([b, t, nh * d])
    }

    /// The output projection of the heads' outputs `attended` [B, T, heads * head_dim] ->
    /// [B, T, H].
    pub fn project_out(&self, attended: Tensor<3>) -> Tensor<3> {
        linear(&self.o_proj, attended)
    }

    /// Whether the output projection of `rows` rows is a tensor-core product (`linear` past
    /// the few-rows kernel), which reads its input rounded to bf16: the attention kernels then
    /// write bf16 themselves, and no rounding launch runs between them.
    fn projects_out_of_bf16(&self, rows: usize) -> bool {
        is_tensor_core_product(rows, &self.o_proj.weight.val(), FEW_ROWS)
    }

    /// `norm` (the layer's input norm) of `x` [B, T, H], as q, k and v's products read it: in
    /// bf16, written by the norm's own launch, where they are tensor-core products (which round
    /// their input to bf16 anyway); in f32 elsewhere.
    pub fn normed_input(&self, norm: &RmsNorm, x: Tensor<3>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        match self.projects_bf16_rows(b * t) {
            true => norm.forward_rounded_to_bf16(x),
            false => norm.forward(x),
        }
    }

    /// Whether q, k and v of `rows` rows are tensor-core products, which read their input
    /// rounded to bf16 (the kernel path past a few rows).
    fn projects_bf16_rows(&self, rows: usize) -> bool {
        on_kernel_path(&self.q_proj.weight.val()) && rows > FEW_ROWS
    }

    /// `x` [B, T, H] -> (q [B, heads, T, d], k and v [B, kv_heads, T, d]), q and k rotated
    /// (written in bf16 where `rotated_bf16` says so, on the kernel path past a few rows).
    fn project_qkv(
        &self,
        x: Tensor<3>,
        cos_sin: &(Tensor<4>, Tensor<4>),
        rotated_bf16: RotatedBf16,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = x.dims();
        let (nh, nkv, d) = self.head_counts();
        let kernels = on_kernel_path(&self.q_proj.weight.val());
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2);
        let (cos, sin) = cos_sin;
        // [B, T, n * d] -> rotated [B, n, T, d]: one kernel on the GPU path, which may write
        // bf16.
        let rotated = |y: Tensor<3>, n: usize, to_bf16: bool| {
            let rotary = match to_bf16 {
                true => rotary_rows::rotary_rows_bf16,
                false => rotary_rows::rotary_rows,
            };
            if kernels {
                rotary(y.reshape([b, t, n, d]), cos.clone(), sin.clone())
            } else {
                apply_rotary(heads(y, n), cos, sin)
            }
        };
        if kernels && self.projects_in_one_launch(b * t) {
            // Decoding: q, k and v in one product and one rotation kernel (not three and two).
            rotary_rows::rotary_qkv_rows(
                self.qkv_in_one_launch(x, None),
                cos.clone(),
                sin.clone(),
                nh,
                nkv,
            )
        } else {
            // The tensor-core products take bf16 rows: round them once for all three (each
            // product would round its own copy; rounding bf16 rows, such as the input norm's
            // from `Self::normed_input`, returns them as they are).
            let x = match self.projects_bf16_rows(b * t) {
                true => to_nearest_bf16(x),
                false => x,
            };
            (
                rotated(linear(&self.q_proj, x.clone()), nh, rotated_bf16.q),
                rotated(linear(&self.k_proj, x.clone()), nkv, rotated_bf16.k),
                heads(linear(&self.v_proj, x), nkv),
            )
        }
    }

    /// `x` [B, T, H] (normed by `norm` first when given) -> q | k | v [B, T, heads + 2
    /// kv_heads, d], unrotated, in one launch (`bf16_rows_three`; only where
    /// [`Self::projects_in_one_launch`]). The norm runs in the same launch on the kernel path
    /// where `bf16_rows::fuses_input_norm` says it pays.
    fn qkv_in_one_launch(&self, x: Tensor<3>, norm: Option<&RmsNorm>) -> Tensor<4> {
        let [b, t, h] = x.dims();
        let (nh, nkv, d) = self.head_counts();
        let weights = [&self.q_proj, &self.k_proj, &self.v_proj].map(|l| l.weight.val());
        let rows = x.reshape([b * t, h]);
        let qkv = match norm {
            Some(norm) if norm.on_kernel_path && bf16_rows::fuses_input_norm(b * t) => {
                bf16_rows::rms_norm_bf16_rows_three(
                    rows,
                    (norm.weight.val(), norm.eps),
                    weights,
                    self.qkv_biases(),
                )
            }
            Some(norm) => {
                bf16_rows::bf16_rows_three(norm.forward(rows), weights, self.qkv_biases())
            }
            None => bf16_rows::bf16_rows_three(rows, weights, self.qkv_biases()),
        };
        qkv.reshape([b, t, nh + 2 * nkv, d])
    }

    /// (query heads, key/value heads, head dimension).
    pub fn head_counts(&self) -> (usize, usize, usize) {
        (self.num_heads, self.num_kv_heads, self.head_dim)
    }

    /// Whether the kernel path projects `rows` rows to q, k and v in one launch
    /// (`bf16_rows_three`): few rows, widths the kernel takes, all three biased or none.
    fn projects_in_one_launch(&self, rows: usize) -> bool {
        let biased = [&self.q_proj, &self.k_proj, &self.v_proj].map(|l| l.bias.is_some());
        let d = self.head_dim;
        rows <= FEW_ROWS
            && (biased == [true; 3] || biased == [false; 3])
            && bf16_rows::supports_three(
                self.num_heads * d,
                self.num_kv_heads * d,
                self.num_kv_heads * d,
            )
    }

    /// The q, k and v biases when all three have one.
    fn qkv_biases(&self) -> Option<[Tensor<1>; 3]> {
        match (&self.q_proj.bias, &self.k_proj.bias, &self.v_proj.bias) {
            (Some(q), Some(k), Some(v)) => Some([q.val(), k.val(), v.val()]),
            _ => None,
        }
    }

    /// Scores are q . k / sqrt(head_dim).
    pub(super) fn score_scale(&self) -> f64 {
        (self.head_dim as f64).powf(-0.5)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::transformer::mask::SlotRange;
    use crate::{ExpertResidency, LoadOptions, load_model};

    fn tiny_dense(device: &Device) -> crate::GptOss {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tools/reference/out/tiny-dense");
        let options = LoadOptions {
            experts: ExpertResidency::Decoded,
            ..Default::default()
        };
        load_model(&dir, device, options).unwrap()
    }

    /// Attention writes bf16 exactly where the output projection is a tensor-core product:
    /// bf16 weights past the few-rows kernel (16 and 32 rows in the few-rows tiling, past 32
    /// rows the default one), never with f32 weights.
    #[test]
    fn attention_writes_bf16_where_the_output_projection_takes_the_tensor_cores() {
        let device = Device::flex();
        let mut attention = tiny_dense(&device).layers[0].self_attn.clone();
        // oss-nano's output projection: [128, 128], which the few-rows tiling takes whole.
        let weight = Tensor::<2>::zeros([128, 128], &device);
        attention.o_proj.weight = Param::from_tensor(weight.clone());
        for rows in [1, 16, 20, 32, 33, 2048] {
            assert!(
                !attention.projects_out_of_bf16(rows),
                "f32 weights, {rows} rows"
            );
        }
        attention.o_proj.weight = Param::from_tensor(to_nearest_bf16(weight));
        for (rows, bf16) in [
            (1, false),
            (8, false),
            (16, true),
            (20, false),
            (32, true),
            (33, true),
            (2048, true),
        ] {
            assert_eq!(attention.projects_out_of_bf16(rows), bf16, "{rows} rows");
        }
    }

    #[test]
    fn query_chunks_give_the_unchunked_result() {
        let device = Device::flex();
        let model = tiny_dense(&device);
        let attention = &model.layers[0].self_attn;
        let (b, t) = (2, 23);
        let (nh, nkv, d) = attention.head_counts();
        let random = |heads| Tensor::<4>::random([b, heads, t, d], Distribution::Default, &device);
        let (q, k, v) = (random(nh), random(nkv), random(nkv));
        let range = SlotRange { start: 0, len: t };
        for window in [Some(8), None] {
            let mask = KeyMask::new(&[0, 5], range, range, window, &device);
            let whole = attention.attend_in_chunks(
                q.clone(),
                k.clone(),
                v.clone(),
                &mask,
                AttentionChunks {
                    max_score_bytes: usize::MAX,
                    max_queries: usize::MAX,
                    key_block: usize::MAX,
                },
            );
            // Five queries per chunk (23 = 5 + 5 + 5 + 5 + 3), by bytes or by count, each
            // against only the keys it may see, in blocks of 1 or 4.
            let five = b * nh * t * 4 * 5;
            for (max_score_bytes, max_queries, key_block) in [
                (five, usize::MAX, 1),
                (usize::MAX, 5, 4),
                (usize::MAX, 5, 1),
            ] {
                let chunks = AttentionChunks {
                    max_score_bytes,
                    max_queries,
                    key_block,
                };
                let chunked =
                    attention.attend_in_chunks(q.clone(), k.clone(), v.clone(), &mask, chunks);
                let diff: f32 = (whole.clone() - chunked).abs().max().into_scalar();
                assert!(
                    diff < 1e-6,
                    "{window:?} {chunks:?}: chunked attention differs by {diff}"
                );
            }
        }
    }

    /// The reference of the attention kernels (`attention_rows` and `attention_tiles`: burn
    /// ops over the mask's key ranges, what `bench kernel-check` compares them with) is the
    /// model's attention: a decode-like step of three queries over cached keys and a prefill of
    /// 40 queries, with left padding and with and without a window.
    #[test]
    fn attention_kernels_reference_is_the_model_attention() {
        let device = Device::flex();
        let model = tiny_dense(&device);
        let attention = &model.layers[0].self_attn;
        let (nh, nkv, d) = attention.head_counts();
        let pads = [0, 5];
        let b = pads.len();
        let decode = (
            SlotRange { start: 14, len: 3 },
            SlotRange { start: 2, len: 15 },
        );
        let prefill = (
            SlotRange { start: 0, len: 40 },
            SlotRange { start: 0, len: 40 },
        );
        for ((queries, keys), window) in [
            (decode, Some(4)),
            (decode, None),
            (prefill, Some(8)),
            (prefill, None),
        ] {
            let q = Tensor::<4>::random([b, nh, queries.len, d], Distribution::Default, &device);
            let k = Tensor::<4>::random([b, nkv, keys.len, d], Distribution::Default, &device);
            let v = Tensor::<4>::random([b, nkv, keys.len, d], Distribution::Default, &device);
            let mask = KeyMask::new(&pads, queries, keys, window, &device);
            let model_out = attention
                .attend_in_chunks(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    &mask,
                    AttentionChunks::default(),
                )
                .swap_dims(1, 2);
            let reference = attention_rows::reference_attention_rows(
                q.clone(),
                k.clone(),
                v.clone(),
                attention.sinks.val(),
                mask.key_ranges(),
                (d as f32).powf(-0.5),
            );
            let diff: f32 = (model_out - reference).abs().max().into_scalar();
            assert!(
                diff < 1e-5,
                "{} queries, window {window:?}: reference differs by {diff}",
                queries.len
            );
        }
    }

    /// The one-launch q/k/v path's reference (the three weights side by side, then
    /// `reference_rotary_qkv_rows` on the fused heads) is the model's separate projections and
    /// rotations.
    #[test]
    fn fused_qkv_reference_is_the_model_projection() {
        let device = Device::flex();
        let model = tiny_dense(&device);
        let attention = &model.layers[0].self_attn;
        let (nh, nkv, d) = attention.head_counts();
        let (b, t) = (2, 3);
        let hidden = attention.q_proj.weight.dims()[0];
        let x = Tensor::<3>::random([b, t, hidden], Distribution::Default, &device);
        let positions: Vec<usize> = (0..b * t).map(|i| 7 + i % t).collect();
        let (cos, sin) = model.rope.cos_sin(&positions, b, &device);
        let layers = [&attention.q_proj, &attention.k_proj, &attention.v_proj];
        let fused_weight = Tensor::cat(layers.map(|l| l.weight.val()).to_vec(), 1);
        let fused_bias = Tensor::cat(
            layers
                .map(|l| l.bias.as_ref().expect("biased").val())
                .to_vec(),
            0,
        );
        let y = x.clone().reshape([b * t, hidden]).matmul(fused_weight) + fused_bias.unsqueeze();
        let fused = gpt_oss_kernels::rotary_rows::reference_rotary_qkv_rows(
            y.reshape([b, t, nh + 2 * nkv, d]),
            cos.clone(),
            sin.clone(),
            nh,
            nkv,
        );
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2);
        let separate = (
            apply_rotary(heads(attention.q_proj.forward(x.clone()), nh), &cos, &sin),
            apply_rotary(heads(attention.k_proj.forward(x.clone()), nkv), &cos, &sin),
            heads(attention.v_proj.forward(x), nkv),
        );
        for (name, ours, model) in [
            ("q", fused.0, separate.0),
            ("k", fused.1, separate.1),
            ("v", fused.2, separate.2),
        ] {
            assert_eq!(ours.dims(), model.dims(), "{name}");
            let diff: f32 = (ours - model).abs().max().into_scalar();
            assert!(diff < 1e-5, "{name}: fused reference differs by {diff}");
        }
    }
}
