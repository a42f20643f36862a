//! Cached calibration activations (for search-based selection): per layer, for the first
//! tokens of the calibration data, the router logits and every expert's output, one safetensors
//! file per layer.

use std::path::{Path, PathBuf};

use gpt_oss_model::checkpoint::{PlannedTensor, write_safetensors};
use gpt_oss_select::{ActivationCache, LayerActivations, SelectError};
use safetensors::{Dtype, SafeTensors};

use crate::{Result, TraceError};

pub fn layer_path(dir: &Path, layer: usize) -> PathBuf {
    dir.join("activations")
        .join(format!("layer-{layer:03}.safetensors"))
}

/// Writes one layer's activations.
pub fn write_layer(dir: &Path, layer: usize, acts: &LayerActivations) -> Result<()> {
    let path = layer_path(dir, layer);
    let folder = path.parent().expect("a folder");
    let tmp = folder.join(format!(".layer-{layer:03}.partial"));
    std::fs::create_dir_all(&tmp).map_err(|e| TraceError::file(&tmp, e))?;
    let tensors = vec![
        PlannedTensor {
            name: "router_logits".into(),
            dtype: Dtype::F32,
            shape: vec![acts.tokens, acts.experts],
        },
        PlannedTensor {
            name: "expert_outputs".into(),
            dtype: Dtype::F32,
            shape: vec![acts.tokens, acts.experts, acts.hidden],
        },
    ];
    write_safetensors(&tmp, &tensors, u64::MAX, |t| {
        let values = if t.name == "router_logits" {
            &acts.router_logits
        } else {
            &acts.expert_outputs
        };
        Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    })?;
    std::fs::rename(tmp.join("model.safetensors"), &path)
        .map_err(|e| TraceError::file(&path, e))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Reads cached activations from a trace folder.
pub struct ActivationFiles {
    pub dir: PathBuf,
}

impl ActivationCache for ActivationFiles {
    fn layer(&self, layer: usize) -> gpt_oss_select::Result<LayerActivations> {
        let path = layer_path(&self.dir, layer);
        let err = |m: String| SelectError::File {
            path: path.clone(),
            message: m,
        };
        let bytes = std::fs::read(&path)
            .map_err(|e| err(format!("{e} (trace with --cache-activations)")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        let floats = |name: &str| -> gpt_oss_select::Result<(Vec<usize>, Vec<f32>)> {
            let t = st.tensor(name).map_err(|e| err(e.to_string()))?;
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let (logit_shape, router_logits) = floats("router_logits")?;
        let (out_shape, expert_outputs) = floats("expert_outputs")?;
        if out_shape.len() != 3 || logit_shape != out_shape[..2] {
            return Err(err(format!(
                "shapes {logit_shape:?} and {out_shape:?} disagree"
            )));
        }
        Ok(LayerActivations {
            tokens: out_shape[0],
            experts: out_shape[1],
            hidden: out_shape[2],
            router_logits,
            expert_outputs,
        })
    }
}
