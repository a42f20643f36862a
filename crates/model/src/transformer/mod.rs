//! The gpt-oss decoder in burn (spec section 4): one implementation for every backend.

pub mod attention;
mod attention_chunks;
pub mod cache;
pub mod experts;
pub mod export;
pub mod init;
pub mod load;
pub mod mask;
pub mod moe;
pub mod moe_grouped;
pub mod moe_pairs;
pub mod norm;
pub mod project;
pub mod rope;
pub mod step;
pub mod vocab;

use gpt_oss_kernels::bf16_nearest::to_nearest_bf16;
use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::{GptOssConfig, LayerType};
use crate::routing::{ExpertMask, RoutingObserver};
use attention::Attention;
use cache::{KvCache, LayerKv};
use mask::{KeyMask, SlotRange};
use moe::{Moe, RoutingHooks, RoutingReport, send_reports};
use norm::RmsNorm;
use rope::RotaryTable;
use vocab::{Embedding, LmHead};

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Moe,
    /// `Some(window)` on sliding layers.
    pub sliding_window: Option<usize>,
}

impl DecoderLayer {
    /// The layer's second half on the residual stream `x` [B, T, H] and the attention's output:
    /// their sum goes through the post-attention norm and the MoE block, which adds the sum back
    /// (`hooks.residual` is set here). Both residual adds ride along with kernels on the GPU path:
    /// the norm's and the MoE block's last.
    pub fn moe_after_attention(
        &self,
        x: Tensor<3>,
        attn_out: Tensor<3>,
        hooks: RoutingHooks<'_, '_>,
    ) -> moe::MoeOutput {
        let [b, t, h] = x.dims();
        if hooks.observer.is_none()
            && !hooks.balance_loss
            && let Some(weights) =
                moe_pairs::fused_norm_pair_weights(&self.mlp, &self.post_attention_layernorm, b * t)
        {
            // Decoding: the add, the norm and the router in one launch.
            let hidden = moe_pairs::add_norm_moe_by_pairs(
                &self.mlp,
                weights,
                &self.post_attention_layernorm,
                (x.reshape([b * t, h]), attn_out.reshape([b * t, h])),
                hooks.router_bias,
            );
            return moe::MoeOutput {
                hidden: hidden.reshape([b, t, h]),
                balance_loss: None,
            };
        }
        let (after_attn, moe_in) = self
            .post_attention_layernorm
            .forward_after_residual(x, attn_out);
        let hooks = RoutingHooks {
            residual: Some(after_attn),
            ..hooks
        };
        self.mlp.forward(moe_in, hooks)
    }

    /// The layer after its heads' outputs `attended` [B, T, heads * head_dim]
    /// (`Attention::attend_heads` or `attend_step`) on the residual stream `x` [B, T, H]. Without an
    /// observer or a balance loss, on the per-pair path, the output projection, the residual add,
    /// the norm and the router are one launch, which counts its workgroups' arrivals in
    /// `arrivals` (`zero_arrival_counts` for at least these tokens, left zero; the launch
    /// checks their number); elsewhere the projection, then [`Self::moe_after_attention`].
    pub fn moe_after_attended(
        &self,
        x: Tensor<3>,
        attended: Tensor<3>,
        hooks: RoutingHooks<'_, '_>,
        arrivals: Option<&Tensor<1, Int>>,
    ) -> moe::MoeOutput {
        let [b, t, h] = x.dims();
        let tokens = b * t;
        if hooks.observer.is_none()
            && !hooks.balance_loss
            && let Some(arrivals) = arrivals
            && let Some(weights) = moe_pairs::o_fused_pair_weights(
                &self.mlp,
                &self.self_attn.o_proj,
                &self.post_attention_layernorm,
                tokens,
            )
        {
            let width = attended.dims()[2];
            let hidden = moe_pairs::o_add_norm_moe_by_pairs(
                &self.mlp,
                weights,
                &self.self_attn.o_proj,
                &self.post_attention_layernorm,
                (x.reshape([tokens, h]), attended.reshape([tokens, width])),
                hooks.router_bias,
                arrivals.clone(),
            );
            return moe::MoeOutput {
                hidden: hidden.reshape([b, t, h]),
                balance_loss: None,
            };
        }
        let attn_out = self.self_attn.project_out(attended);
        self.moe_after_attention(x, attn_out, hooks)
    }
}

/// gpt-oss: embedding, decoder layers, final norm, untied lm_head.
#[derive(Module, Debug)]
pub struct GptOss {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// [H, vocab], no bias.
    pub lm_head: LmHead,
    #[module(skip)]
    pub config: GptOssConfig,
    #[module(skip)]
    pub rope: RotaryTable,
}

/// Optional hooks for one forward call.
#[derive(Default)]
pub struct ForwardOptions<'a, 'o> {
    pub observer: Option<&'a mut (dyn RoutingObserver + 'o)>,
    pub mask: Option<&'a ExpertMask>,
}

/// Layers' routing still on the device, for the observer of the forward call that made it.
#[must_use = "the observer gets the routing only when it is sent"]
pub struct PendingRouting<'a, 'o> {
    observer: Option<&'a mut (dyn RoutingObserver + 'o)>,
    reports: Vec<RoutingReport>,
}

impl PendingRouting<'_, '_> {
    /// Reads the routing (one wait for the device) and hands it to the observer.
    pub fn send(self) {
        if let Some(observer) = self.observer {
            send_reports(self.reports, observer);
        }
    }
}

/// A batch of token rows, left-padded to one length.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// [B, T] row-major; padding slots hold `pad_token`.
    pub ids: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
    /// Padding slots at the start of each row.
    pub pads: Vec<usize>,
}

impl TokenBatch {
    /// Left-pads `rows` to the longest one.
    pub fn left_padded(rows: &[Vec<u32>], pad_token: u32) -> Self {
        let seq_len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * seq_len);
        let mut pads = Vec::with_capacity(rows.len());
        for row in rows {
            let pad = seq_len - row.len();
            ids.extend(std::iter::repeat_n(pad_token, pad));
            ids.extend_from_slice(row);
            pads.push(pad);
        }
        Self {
            ids,
            batch: rows.len(),
            seq_len,
            pads,
        }
    }

    /// One new token per row (a decode step).
    pub fn step(tokens: &[u32]) -> Self {
        Self {
            ids: tokens.to_vec(),
            batch: tokens.len(),
            seq_len: 1,
            pads: vec![0; tokens.len()],
        }
    }

    pub fn to_tensor(&self, device: &burn::tensor::Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = self.ids.iter().map(|&t| t as i64).collect();
        Tensor::from_data(TensorData::new(ids, [self.batch, self.seq_len]), device)
    }
}

/// Rows from which an uncaptured forward hands each layer's launches to the device as soon as
/// they are queued (`Device::flush`), rather than when cubecl's queue of
/// `CUBECL_WGPU_MAX_TASKS` launches fills: the device then starts on the first layer while the
/// host queues the rest. Measured on an H200 with a random 20b (docs/benchmarks.md,
/// forty-fourth round): from 32 rows the prefill takes 2-4 ms less (batch 32: 60.5-61.7 ->
/// 57.8-58.4 ms; batch 64: 92-95 -> 90) and steps run one forward call each 7-18% faster. A
/// flush is a blocking round trip through burn-fusion and cubecl; one-row steps flushing every
/// layer slowed down (57.6-77.4 -> 42.3 tok/s), and the 16-row prefill gained in one call and
/// lost in the next, so smaller forwards keep cubecl's queue.
pub const SUBMIT_PER_LAYER_FROM_ROWS: usize = 32;

/// Whether a forward of `rows` rows flushes the device after each layer.
fn submits_per_layer(rows: usize) -> bool {
    rows >= SUBMIT_PER_LAYER_FROM_ROWS
}

impl GptOss {
    /// Stores the attention projections, the embedding and lm_head in bf16 (router, norms,
    /// biases and sinks stay f32): products with them then run on the tensor cores
    /// ([`project`]), GPU only. Weights memory drops to about the checkpoint's bytes. The norms
    /// switch to their GPU kernel too.
    pub fn store_weights_bf16(self) -> Self {
        let to_bf16 = |p: burn::module::Param<Tensor<2>>| p.map(to_nearest_bf16);
        let GptOss {
            mut embed_tokens,
            layers,
            mut norm,
            mut lm_head,
            config,
            rope,
        } = self;
        embed_tokens.pieces = embed_tokens.pieces.into_iter().map(to_bf16).collect();
        lm_head.pieces = lm_head.pieces.into_iter().map(to_bf16).collect();
        norm.on_kernel_path = true;
        let layers = layers
            .into_iter()
            .map(|mut layer| {
                layer.input_layernorm.on_kernel_path = true;
                layer.post_attention_layernorm.on_kernel_path = true;
                let a = layer.self_attn;
                layer.self_attn = attention::Attention {
                    q_proj: project::to_bf16(a.q_proj),
                    k_proj: project::to_bf16(a.k_proj),
                    v_proj: project::to_bf16(a.v_proj),
                    o_proj: project::to_bf16(a.o_proj),
                    ..a
                };
                layer
            })
            .collect();
        GptOss {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config,
            rope,
        }
    }

    /// Runs every MoE layer's experts through `path`.
    pub fn set_expert_path(&mut self, path: moe_grouped::ExpertPath) {
        for layer in &mut self.layers {
            layer.mlp.path = path;
        }
    }

    pub fn device(&self) -> burn::tensor::Device {
        self.embed_tokens.pieces[0].device()
    }

    /// Final-norm hidden states [B, T, H]. With a cache, `batch` continues the cached rows
    /// (its own `pads` are ignored: the cache keeps those of the first call).
    pub fn forward_hidden(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache>,
        options: ForwardOptions<'_, '_>,
    ) -> Tensor<3> {
        let (hidden, routing) = self.forward_hidden_routing_later(batch, cache, options);
        routing.send();
        hidden
    }

    /// [`Self::forward_hidden`] with the routing the observer may wait for
    /// ([`crate::routing::ObserverNeeds::can_wait`]) not yet read: queue more work on the hidden
    /// states first (the lm_head), then [`PendingRouting::send`], so that the device does not
    /// idle while the host reads the routing.
    pub fn forward_hidden_routing_later<'a, 'o>(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache>,
        options: ForwardOptions<'a, 'o>,
    ) -> (Tensor<3>, PendingRouting<'a, 'o>) {
        self.run(batch, cache, options, None)
    }

    /// Logits [B, T, vocab] and the load-balancing loss averaged over layers, for training.
    pub fn forward_train(&self, batch: &TokenBatch) -> (Tensor<3>, Tensor<1>) {
        let mut losses = vec![];
        let (hidden, _) = self.run(batch, None, ForwardOptions::default(), Some(&mut losses));
        (self.lm_head.forward(hidden), Tensor::cat(losses, 0).mean())
    }

    fn run<'a, 'o>(
        &self,
        batch: &TokenBatch,
        mut cache: Option<&mut KvCache>,
        options: ForwardOptions<'a, 'o>,
        mut balance_losses: Option<&mut Vec<Tensor<1>>>,
    ) -> (Tensor<3>, PendingRouting<'a, 'o>) {
        let device = self.device();
        let (b, t) = (batch.batch, batch.seq_len);
        let (q_start, pads) = match cache.as_deref() {
            Some(c) if c.next_slot > 0 => (c.next_slot, c.pads.clone()),
            _ => (0, batch.pads.clone()),
        };
        if let Some(c) = cache.as_deref_mut()
            && c.next_slot == 0
        {
            c.pads = batch.pads.clone();
        }
        let positions: Vec<usize> = pads
            .iter()
            .flat_map(|&pad| (q_start..q_start + t).map(move |s| s.saturating_sub(pad)))
            .collect();
        let cos_sin = self.rope.cos_sin(&positions, b, &device);

        let hidden_size = self.config.hidden_size;
        let mut x = self
            .embed_tokens
            .forward(&batch.ids, &device)
            .reshape([b, t, hidden_size]);

        let queries = SlotRange {
            start: q_start,
            len: t,
        };
        let mut masks: HashMap<(usize, usize, Option<usize>), KeyMask> = HashMap::new();
        let ForwardOptions { mut observer, mask } = options;
        let mut deferred_routing = Vec::new();
        // The layers run one after another, so they share one set of arrival counts (made only
        // where the launch that counts can run).
        let arrivals = self
            .on_kernel_path()
            .then(|| moe_pairs::arrival_counts_for(b * t, &device))
            .flatten();
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache: Option<&mut LayerKv> = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let keys = match &layer_cache {
                Some(c) => c.slots_after_append(t),
                None => queries,
            };
            let window = layer.sliding_window;
            let key_mask = masks
                .entry((keys.start, keys.len, window))
                .or_insert_with(|| KeyMask::new(&pads, queries, keys, window, &device))
                .clone();

            let attn_in = layer
                .self_attn
                .normed_input(&layer.input_layernorm, x.clone());
            let attended = layer
                .self_attn
                .attend_heads(attn_in, &cos_sin, &key_mask, layer_cache);
            let hooks = RoutingHooks {
                layer: i,
                router_bias: mask
                    .and_then(|m| m.router_bias_on(i, &device))
                    .map(|extra| layer.mlp.router_bias_plus(extra)),
                observer: observer.as_deref_mut(),
                balance_loss: balance_losses.is_some(),
                residual: None,
                deferred: Some(&mut deferred_routing),
            };
            let moe = layer.moe_after_attended(x, attended, hooks, arrivals.as_ref());
            x = moe.hidden;
            if let Some(o) = observer.as_deref_mut()
                && o.needs().residual_norms
            {
                let norms = x
                    .clone()
                    .square()
                    .sum_dim(2)
                    .sqrt()
                    .try_into_vec_as::<f32>()
                    .expect("f32 norms");
                o.observe_residual_norms(i, &norms);
            }
            if let (Some(losses), Some(loss)) = (balance_losses.as_deref_mut(), moe.balance_loss) {
                losses.push(loss);
            }
            if submits_per_layer(b * t) {
                // A device that fails here fails the next read too, which reports it.
                let _ = device.flush();
            }
        }
        if let Some(c) = cache {
            c.next_slot = q_start + t;
        }
        let routing = PendingRouting {
            observer,
            reports: deferred_routing,
        };
        (self.norm.forward(x), routing)
    }

    /// Logits [B, T, vocab] (use [`crate::scoring`] for long inputs: it never holds them all).
    pub fn forward(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache>,
        options: ForwardOptions<'_, '_>,
    ) -> Tensor<3> {
        let hidden = self.forward_hidden(batch, cache, options);
        self.lm_head.forward(hidden)
    }

    /// Logits [B, positions.len(), vocab] at `positions` (of the batch's own tokens) of every
    /// row. The lm_head runs on those positions only, and [B, T, vocab] is never made (at
    /// gpt-oss's 201,088 tokens a 2,048-token prompt's logits alone would be 1.6 GB per row).
    pub fn forward_positions(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache>,
        options: ForwardOptions<'_, '_>,
        positions: std::ops::Range<usize>,
    ) -> Tensor<3> {
        let hidden = self.forward_hidden(batch, cache, options);
        self.lm_head
            .forward(hidden.narrow(1, positions.start, positions.len()))
    }

    /// Logits [B, vocab] of each row's last position ([`Self::forward_positions`]): what
    /// generation reads.
    pub fn forward_last(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache>,
        options: ForwardOptions<'_, '_>,
    ) -> Tensor<2> {
        let t = batch.seq_len;
        let logits = self.forward_positions(batch, cache, options, t - 1..t);
        let [b, _, vocab] = logits.dims();
        logits.reshape([b, vocab])
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.config, vec![], cache::KEY_BLOCK)
    }

    pub fn layer_type(&self, layer: usize) -> LayerType {
        self.config.layer_types[layer]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only forwards of 32 rows and more flush after each layer (the measured choice).
    #[test]
    fn only_forwards_of_32_rows_and_more_submit_per_layer() {
        for rows in [1, 16, SUBMIT_PER_LAYER_FROM_ROWS - 1] {
            assert!(!submits_per_layer(rows), "{rows} rows");
        }
        for rows in [SUBMIT_PER_LAYER_FROM_ROWS, 64, 8 * 2048] {
            assert!(submits_per_layer(rows), "{rows} rows");
        }
    }
}
