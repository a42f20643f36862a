//! Spec 8.2's size formula from a checkpoint's own tensors: the bytes of a variant that keeps k
//! experts in every layer are the non-expert bytes plus k times one expert (with its router row)
//! across all layers.

use std::collections::BTreeMap;
use std::path::Path;

use gpt_oss_model::GptOssConfig;
use gpt_oss_model::checkpoint::{Checkpoint, Component, expected_tensors};
use gpt_oss_model::transformer::load::check_inventory;

use crate::Result;

/// A checkpoint's tensor bytes, split the way pruning changes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSize {
    pub num_experts: usize,
    /// Tensor bytes per component name (embeddings, attention, norms, router, experts, lm_head).
    pub by_component: BTreeMap<&'static str, u64>,
    pub total: u64,
    /// Everything but experts and router.
    pub non_expert: u64,
    /// One expert and its router row, across all layers.
    pub per_expert: u64,
}

impl CheckpointSize {
    /// Tensor bytes of the variant keeping `k` experts per layer.
    pub fn with_experts(&self, k: usize) -> u64 {
        self.non_expert + k as u64 * self.per_expert
    }
}

/// Measures `dir` (checks its inventory against config.json first).
pub fn checkpoint_size(dir: &Path) -> Result<CheckpointSize> {
    let config = GptOssConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    let format = check_inventory(&config, &ckpt)?;
    let mut by_component: BTreeMap<&'static str, u64> = BTreeMap::new();
    for spec in expected_tensors(&config, format) {
        *by_component.entry(spec.component.name()).or_default() +=
            ckpt.tensor(&spec.name)?.bytes.len() as u64;
    }
    let total = ckpt.total_tensor_bytes();
    let expert_and_router = by_component
        .get(Component::Experts.name())
        .copied()
        .unwrap_or(0)
        + by_component
            .get(Component::Router.name())
            .copied()
            .unwrap_or(0);
    Ok(CheckpointSize {
        num_experts: config.num_experts,
        by_component,
        total,
        non_expert: total - expert_and_router,
        per_expert: expert_and_router / config.num_experts as u64,
    })
}
