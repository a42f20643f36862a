//! Hooks the rest of the workbench needs on the MoE router.
//!
//! - [`RoutingObserver`] receives, per layer, the top-k expert ids and gate weights of every
//!   token (and, when it asks, the full router logits and each selected expert's output norm,
//!   for REAP saliency). Tracing builds on it.
//! - [`ExpertMask`] forbids chosen experts per layer: their router logits become -inf before
//!   top-k, so a pruned selection can be evaluated on the full model without writing files.
//!
//! With no observer and no mask the forward pass does no extra work.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{ModelError, Result};

/// Which optional quantities an observer wants (each costs a device read per layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObserverNeeds {
    pub router_logits: bool,
    /// Also each selected expert's largest absolute output element.
    pub expert_output_norms: bool,
    /// The MoE block's input (after post_attention_layernorm), for activation caches.
    pub moe_inputs: bool,
    /// The L2 norm of every token's residual stream after each layer (hidden-state norms).
    pub residual_norms: bool,
}

impl ObserverNeeds {
    /// Whether a layer's routing may reach the observer after the whole pass: not when it
    /// wants the MoE inputs (a [tokens, hidden] tensor per layer would be held until the end)
    /// or residual norms (delivered between layers, in order with the routing).
    pub fn can_wait(&self) -> bool {
        !self.moe_inputs && !self.residual_norms
    }
}

/// The routing of one layer for every token of one forward call.
///
/// Tokens are numbered row-major over the batch: token n is row n / seq_len, slot n % seq_len of
/// this call. Arrays of length tokens * top_k are ordered by token, then by rank (highest gate
/// first).
#[derive(Debug)]
pub struct LayerRouting<'a> {
    pub layer: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub top_k: usize,
    pub num_experts: usize,
    /// Selected expert per (token, rank).
    pub expert_ids: &'a [u32],
    /// Softmax over the selected logits, per (token, rank).
    pub gate_weights: &'a [f32],
    /// Router logits [tokens, num_experts] after masking, when asked for.
    pub router_logits: Option<&'a [f32]>,
    /// L2 norm of each selected expert's output (before the gate weight), when asked for.
    pub expert_output_norms: Option<&'a [f32]>,
    /// Largest absolute element of each selected expert's output, with the norms.
    pub expert_output_max_abs: Option<&'a [f32]>,
    /// The MoE input [tokens, hidden], when asked for.
    pub moe_input: Option<&'a [f32]>,
}

/// Receives each MoE layer's routing during a forward pass.
pub trait RoutingObserver {
    fn needs(&self) -> ObserverNeeds {
        ObserverNeeds::default()
    }
    fn observe(&mut self, routing: &LayerRouting<'_>);
    /// With `needs().residual_norms`: after layer `layer`, the L2 norm of each token's hidden
    /// state (row-major over the batch, padding slots included, like [`LayerRouting`]).
    fn observe_residual_norms(&mut self, _layer: usize, _norms: &[f32]) {}
}

/// Experts forbidden per layer. `forbidden[layer][expert]` true means never routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertMask {
    forbidden: Vec<Vec<bool>>,
}

impl ExpertMask {
    /// A mask that keeps exactly `kept[layer]` (original expert indices) in each layer.
    pub fn keep_only(
        kept: &[Vec<usize>],
        num_layers: usize,
        num_experts: usize,
        top_k: usize,
    ) -> Result<Self> {
        if kept.len() != num_layers {
            return Err(ModelError::Invalid(format!(
                "expert mask has {} layers, the model {num_layers}",
                kept.len()
            )));
        }
        let mut forbidden = vec![vec![true; num_experts]; num_layers];
        for (layer, experts) in kept.iter().enumerate() {
            for &e in experts {
                if e >= num_experts {
                    return Err(ModelError::Invalid(format!(
                        "layer {layer}: expert {e} out of range (the model has {num_experts})"
                    )));
                }
                if !forbidden[layer][e] {
                    return Err(ModelError::Invalid(format!(
                        "layer {layer}: expert {e} named twice"
                    )));
                }
                forbidden[layer][e] = false;
            }
            if experts.len() < top_k {
                return Err(ModelError::Invalid(format!(
                    "layer {layer}: keeps {} experts, fewer than top-k = {top_k}",
                    experts.len()
                )));
            }
        }
        Ok(Self { forbidden })
    }

    /// Additive router bias for one layer: 0 for allowed experts, -inf for forbidden ones;
    /// `None` when the layer forbids nothing.
    pub fn router_bias(&self, layer: usize) -> Option<Vec<f32>> {
        let row = self.forbidden.get(layer)?;
        row.iter().any(|&f| f).then(|| {
            row.iter()
                .map(|&f| if f { f32::NEG_INFINITY } else { 0.0 })
                .collect()
        })
    }

    /// [`Self::router_bias`] as a tensor on `device`.
    pub fn router_bias_on(&self, layer: usize, device: &Device) -> Option<Tensor<1>> {
        self.router_bias(layer).map(|bias| {
            let n = bias.len();
            Tensor::from_data(TensorData::new(bias, [n]), device)
        })
    }

    pub fn is_forbidden(&self, layer: usize, expert: usize) -> bool {
        self.forbidden[layer][expert]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_only_rejects_duplicates_out_of_range_and_too_few() {
        assert!(ExpertMask::keep_only(&[vec![0, 1]], 1, 4, 2).is_ok());
        let e = |kept: Vec<usize>| {
            ExpertMask::keep_only(&[kept], 1, 4, 2)
                .unwrap_err()
                .to_string()
        };
        assert!(e(vec![0, 0, 1]).contains("named twice"));
        assert!(e(vec![0, 9]).contains("out of range"));
        assert!(e(vec![3]).contains("fewer than top-k"));
    }

    #[test]
    fn router_bias_is_minus_infinity_for_removed_experts() {
        let m = ExpertMask::keep_only(&[vec![1, 2], vec![0, 1, 2]], 2, 3, 2).unwrap();
        assert_eq!(m.router_bias(0).unwrap(), vec![f32::NEG_INFINITY, 0.0, 0.0]);
        assert!(m.router_bias(1).is_none());
    }
}
