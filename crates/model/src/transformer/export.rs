//! Writing a [`GptOss`] as a Hugging Face checkpoint (config.json + safetensors), with experts
//! MXFP4-encoded (spec 3.6, as the release) or dense. Used to ship oss-nano and for training
//! checkpoints; pruning copies bytes from the source instead and does not come here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use safetensors::Dtype;

use super::GptOss;
use super::load::transpose;
use crate::checkpoint::inventory::layer_prefix;
use crate::checkpoint::mxfp4;
use crate::checkpoint::writer::write_json;
use crate::checkpoint::{
    ExpertFormat, PlannedTensor, StagedDir, StoredAs, expected_tensors, write_safetensors,
};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub experts: ExpertFormat,
    /// BF16 (as the release) or F32.
    pub float_dtype: Dtype,
    pub max_shard_bytes: u64,
    pub force: bool,
}

/// Host copy of a tensor's values.
fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("f32 parameters")
}

impl GptOss {
    /// Every tensor's values by Hugging Face name, in the checkpoint's layout ([out, in] for
    /// linear weights; [E, in, out] for dense experts, [E, out, in] for MXFP4 encoding).
    fn hf_values(&self, format: ExpertFormat) -> HashMap<String, Vec<f32>> {
        let mut v = HashMap::new();
        let linear_t = |w: Tensor<2>| {
            let [i, o] = w.dims();
            transpose(&host(w), i, o)
        };
        let embed: Vec<f32> = self
            .embed_tokens
            .pieces
            .iter()
            .flat_map(|p| host(p.val()))
            .collect();
        v.insert("model.embed_tokens.weight".to_string(), embed);
        let head: Vec<f32> = self
            .lm_head
            .pieces
            .iter()
            .flat_map(|p| linear_t(p.val()))
            .collect();
        if !self.config.tie_word_embeddings {
            v.insert("lm_head.weight".to_string(), head);
        }
        v.insert(
            "model.norm.weight".to_string(),
            host(self.norm.weight.val()),
        );
        for (l, layer) in self.layers.iter().enumerate() {
            let p = layer_prefix(l);
            v.insert(
                format!("{p}input_layernorm.weight"),
                host(layer.input_layernorm.weight.val()),
            );
            v.insert(
                format!("{p}post_attention_layernorm.weight"),
                host(layer.post_attention_layernorm.weight.val()),
            );
            let a = &layer.self_attn;
            for (name, lin) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
                ("o_proj", &a.o_proj),
            ] {
                v.insert(
                    format!("{p}self_attn.{name}.weight"),
                    linear_t(lin.weight.val()),
                );
                let bias = lin.bias.as_ref().expect("attention has biases");
                v.insert(format!("{p}self_attn.{name}.bias"), host(bias.val()));
            }
            v.insert(format!("{p}self_attn.sinks"), host(a.sinks.val()));
            let router = &layer.mlp.router;
            v.insert(
                format!("{p}mlp.router.weight"),
                linear_t(router.weight.val()),
            );
            v.insert(
                format!("{p}mlp.router.bias"),
                host(router.bias.as_ref().expect("router bias").val()),
            );
            let x = &layer.mlp.experts;
            let x_prefix = format!("{p}mlp.experts.");
            v.insert(
                format!("{x_prefix}gate_up_proj_bias"),
                host(x.gate_up_bias.val()),
            );
            v.insert(format!("{x_prefix}down_proj_bias"), host(x.down_bias.val()));
            for (name, m) in [("gate_up_proj", &x.gate_up), ("down_proj", &x.down)] {
                let mut all = vec![];
                for e in 0..m.num_experts() {
                    let w = m.expert(e); // [in, out]
                    match format {
                        ExpertFormat::Dense => all.extend(host(w)),
                        ExpertFormat::Mxfp4 => all.extend(linear_t(w)),
                    }
                }
                v.insert(format!("{x_prefix}{name}"), all);
            }
        }
        v
    }

    /// Writes this model into `out` (a new folder, or replaced with `force`) and returns it.
    /// `extra_files` (e.g. tokenizer.json) are copied in.
    pub fn save_checkpoint(
        &self,
        out: &Path,
        options: &ExportOptions,
        extra_files: &[&Path],
    ) -> Result<PathBuf> {
        let mut config = self.config.clone();
        config.mxfp4_experts = options.experts == ExpertFormat::Mxfp4;
        let staged = StagedDir::create(out, options.force, &[])?;
        write_json(&staged.path().join("config.json"), &config.to_hf_json())?;
        for f in extra_files {
            let name = f.file_name().expect("a file name");
            std::fs::copy(f, staged.path().join(name)).map_err(|e| crate::ModelError::Io {
                path: f.to_path_buf(),
                error: e,
            })?;
        }
        let specs = expected_tensors(&config, options.experts);
        let mut values = self.hf_values(options.experts);
        let mut encoded: HashMap<String, (Vec<u8>, Vec<u8>)> = HashMap::new();
        let planned: Vec<PlannedTensor> = specs
            .iter()
            .map(|s| PlannedTensor {
                name: s.name.clone(),
                dtype: if s.stored_as == StoredAs::Mxfp4Bytes {
                    Dtype::U8
                } else {
                    options.float_dtype
                },
                shape: s.shape.clone(),
            })
            .collect();
        write_safetensors(staged.path(), &planned, options.max_shard_bytes, |t| {
            if t.dtype == Dtype::U8 {
                // `{base}_blocks` / `{base}_scales` come from one encoding of `{base}`.
                let (base, is_blocks) = match t.name.strip_suffix("_blocks") {
                    Some(b) => (b.to_string(), true),
                    None => (
                        t.name
                            .strip_suffix("_scales")
                            .expect("MXFP4 tensor")
                            .to_string(),
                        false,
                    ),
                };
                if !encoded.contains_key(&base) {
                    let cols = t.shape[2] * mxfp4::BLOCK;
                    let dense = values.remove(&base).expect("expert values");
                    encoded.insert(base.clone(), mxfp4::encode_rows(&dense, cols));
                }
                let (blocks, scales) = &encoded[&base];
                return Ok(if is_blocks {
                    blocks.clone()
                } else {
                    scales.clone()
                });
            }
            let vals = values
                .remove(&t.name)
                .expect("every float tensor has values");
            Ok(match t.dtype {
                Dtype::BF16 => vals
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
            })
        })?;
        staged.commit()
    }
}
