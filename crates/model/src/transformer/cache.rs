//! KV cache for generation (spec 4.8): post-RoPE keys and values per layer. Full layers keep
//! every slot; sliding layers keep only the `window - 1` latest, which with the next token make
//! the `window` keys a query may see.

use burn::tensor::Tensor;

use crate::config::{GptOssConfig, LayerType};

/// Keys and values of one layer, [B, kv_heads, S, head_dim], for slots start..start+S.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    pub keys: Option<Tensor<4>>,
    pub values: Option<Tensor<4>>,
    pub start: usize,
    /// How many slots to keep after each step (`None`: all).
    pub keep: Option<usize>,
}

impl LayerKv {
    /// Where the cached keys start once `next` slots have been seen.
    pub fn start_after(keep: Option<usize>, next: usize) -> usize {
        keep.map_or(0, |k| next.saturating_sub(k))
    }

    /// Appends this step's keys/values and returns everything a query of this step may see.
    pub fn append(&mut self, keys: Tensor<4>, values: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k_all, v_all) = match (self.keys.take(), self.values.take()) {
            (Some(k), Some(v)) => (
                Tensor::cat(vec![k, keys], 2),
                Tensor::cat(vec![v, values], 2),
            ),
            _ => (keys, values),
        };
        let total = k_all.dims()[2];
        let end = self.start + total;
        let kept_start = Self::start_after(self.keep, end);
        let drop = kept_start - self.start;
        if total > drop {
            self.keys = Some(k_all.clone().narrow(2, drop, total - drop));
            self.values = Some(v_all.clone().narrow(2, drop, total - drop));
        }
        self.start = kept_start;
        (k_all, v_all)
    }
}

/// The whole model's cache plus the batch layout it was filled with.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// Left padding of each row, fixed by the first call.
    pub pads: Vec<usize>,
    /// Slots filled so far.
    pub next_slot: usize,
}

impl KvCache {
    pub fn new(config: &GptOssConfig, pads: Vec<usize>) -> Self {
        let layers = config
            .layer_types
            .iter()
            .map(|t| LayerKv {
                keep: match t {
                    LayerType::Sliding => Some(config.sliding_window.saturating_sub(1)),
                    LayerType::Full => None,
                },
                ..Default::default()
            })
            .collect();
        Self {
            layers,
            pads,
            next_slot: 0,
        }
    }

    /// Slots currently held by layer `i` (sliding layers hold at most window - 1).
    pub fn held_slots(&self, layer: usize) -> usize {
        self.layers[layer].keys.as_ref().map_or(0, |k| k.dims()[2])
    }
}
