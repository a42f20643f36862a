//! What happens to each source tensor: copied as is, or sliced along the expert dimension.

use gpt_oss_model::GptOssConfig;
use gpt_oss_model::checkpoint::Checkpoint;
use gpt_oss_model::checkpoint::inventory::layer_prefix;

use crate::{PruneError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bytes copied unchanged.
    Copy,
    /// Dimension 0 (experts, or router rows/entries) restricted to these indices, in order.
    SliceExperts(Vec<usize>),
}

#[derive(Debug, Clone)]
pub struct PlannedOutput {
    pub name: String,
    pub action: Action,
    pub dtype: safetensors::Dtype,
    /// Output shape.
    pub shape: Vec<usize>,
}

/// One entry per source tensor, in the source's order.
#[derive(Debug, Clone)]
pub struct PrunePlan {
    pub outputs: Vec<PlannedOutput>,
    pub kept_per_layer: usize,
}

/// The layer an expert-indexed tensor belongs to (`mlp.experts.*` and `mlp.router.*`).
fn expert_layer(name: &str, layers: usize) -> Option<usize> {
    (0..layers).find(|&l| {
        let p = layer_prefix(l);
        name.starts_with(&format!("{p}mlp.experts."))
            || name.starts_with(&format!("{p}mlp.router."))
    })
}

/// Checks `kept` against the model and plans every tensor.
pub fn plan_prune(
    config: &GptOssConfig,
    ckpt: &Checkpoint,
    kept: &[Vec<usize>],
) -> Result<PrunePlan> {
    let bad = |m: String| PruneError::Selection(m);
    if kept.len() != config.num_hidden_layers {
        return Err(bad(format!(
            "{} layers selected, the model has {}",
            kept.len(),
            config.num_hidden_layers
        )));
    }
    for (l, experts) in kept.iter().enumerate() {
        let mut seen = vec![false; config.num_experts];
        for &e in experts {
            if e >= config.num_experts {
                return Err(bad(format!(
                    "layer {l}: expert {e} out of range (the model has {})",
                    config.num_experts
                )));
            }
            if std::mem::replace(&mut seen[e], true) {
                return Err(bad(format!("layer {l}: expert {e} named twice")));
            }
        }
        if experts.len() < config.experts_per_token {
            return Err(bad(format!(
                "layer {l} keeps {} experts, fewer than num_experts_per_tok = {}",
                experts.len(),
                config.experts_per_token
            )));
        }
    }
    let kept_per_layer = kept[0].len();
    if let Some((l, k)) = kept
        .iter()
        .enumerate()
        .find(|(_, k)| k.len() != kept_per_layer)
    {
        return Err(bad(format!(
            "layer {l} keeps {} experts, layer 0 keeps {kept_per_layer}: config.json has one num_local_experts, \
             so a written checkpoint keeps the same number in every layer (evaluate non-uniform selections with the mask)",
            k.len()
        )));
    }
    let outputs = ckpt
        .names()
        .map(|name| {
            let t = ckpt.tensor(name)?;
            let (action, shape) = match expert_layer(name, config.num_hidden_layers) {
                Some(l) => {
                    if t.shape.first() != Some(&config.num_experts) {
                        return Err(PruneError::Inventory(format!(
                            "`{name}` does not have {} experts in dimension 0",
                            config.num_experts
                        )));
                    }
                    let mut shape = t.shape.to_vec();
                    shape[0] = kept_per_layer;
                    (Action::SliceExperts(kept[l].clone()), shape)
                }
                None => (Action::Copy, t.shape.to_vec()),
            };
            Ok(PlannedOutput {
                name: name.to_string(),
                action,
                dtype: t.dtype,
                shape,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PrunePlan {
        outputs,
        kept_per_layer,
    })
}
