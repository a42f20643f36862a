//! Cached calibration activations for search-based strategies: per layer, for a sample of
//! tokens, the router logits and every expert's output. `trace` writes them; strategies read
//! them through this trait only.

use crate::Result;

/// One layer's cached activations.
#[derive(Debug, Clone)]
pub struct LayerActivations {
    pub tokens: usize,
    pub experts: usize,
    pub hidden: usize,
    /// [tokens, experts]
    pub router_logits: Vec<f32>,
    /// [tokens, experts, hidden]: each expert's output on each token, before the gate weight.
    pub expert_outputs: Vec<f32>,
}

pub trait ActivationCache: Sync {
    fn layer(&self, layer: usize) -> Result<LayerActivations>;
}
