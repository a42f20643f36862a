//! The tensors a gpt-oss checkpoint must hold, by Hugging Face name, with the shapes config.json
//! implies (spec 2.2). One list serves the loader (nothing missing, nothing unexpected), the
//! random-checkpoint writer and the pruned-checkpoint writer.

use safetensors::Dtype;

use crate::config::GptOssConfig;

/// How the expert projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertFormat {
    /// `*_blocks` [E, out, in/32, 16] + `*_scales` [E, out, in/32], U8 (the release).
    Mxfp4,
    /// `gate_up_proj` [E, in, out] and `down_proj` [E, in, out] as transformers saves them.
    Dense,
}

/// What part of the model a tensor belongs to (for byte accounting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Embeddings,
    Attention,
    Norms,
    Router,
    Experts,
    LmHead,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Embeddings => "embeddings",
            Component::Attention => "attention",
            Component::Norms => "norms",
            Component::Router => "router",
            Component::Experts => "experts",
            Component::LmHead => "lm_head",
        }
    }
}

/// Whether a tensor holds floats (any of BF16/F16/F32 accepted) or MXFP4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredAs {
    Float,
    Mxfp4Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub stored_as: StoredAs,
    pub component: Component,
    /// The layer it belongs to, for per-layer tensors.
    pub layer: Option<usize>,
}

impl TensorSpec {
    /// Bytes when floats are stored as `float_dtype`.
    pub fn bytes(&self, float_dtype: Dtype) -> u64 {
        let n: u64 = self.shape.iter().map(|&d| d as u64).product();
        match self.stored_as {
            StoredAs::Mxfp4Bytes => n,
            StoredAs::Float => n * (float_dtype.bitsize() / 8) as u64,
        }
    }
}

pub fn layer_prefix(layer: usize) -> String {
    format!("model.layers.{layer}.")
}

/// Every tensor of a checkpoint with `config` and `format`, in the order a writer should use.
pub fn expected_tensors(config: &GptOssConfig, format: ExpertFormat) -> Vec<TensorSpec> {
    let h = config.hidden_size;
    let i = config.intermediate_size;
    let e = config.num_experts;
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let mut out = vec![];
    let mut push = |name: String, shape: Vec<usize>, stored_as, component, layer| {
        out.push(TensorSpec {
            name,
            shape,
            stored_as,
            component,
            layer,
        })
    };
    use Component::*;
    use StoredAs::*;
    push(
        "model.embed_tokens.weight".into(),
        vec![config.vocab_size, h],
        Float,
        Embeddings,
        None,
    );
    for l in 0..config.num_hidden_layers {
        let p = layer_prefix(l);
        let at = Some(l);
        push(
            format!("{p}input_layernorm.weight"),
            vec![h],
            Float,
            Norms,
            at,
        );
        push(
            format!("{p}self_attn.q_proj.weight"),
            vec![q, h],
            Float,
            Attention,
            at,
        );
        push(
            format!("{p}self_attn.q_proj.bias"),
            vec![q],
            Float,
            Attention,
            at,
        );
        push(
            format!("{p}self_attn.k_proj.weight"),
            vec![kv, h],
            Float,
            Attention,
            at,
        );
        push(
            format!("{p}self_attn.k_proj.bias"),
            vec![kv],
            Float,
            Attention,
            at,
        );
        push(
            format!("{p}self_attn.v_proj.weight"),
            vec![kv, h],
            Float,
            Attention,
            at,
        );
        push(
            format!("{p}self_attn.v_proj.bias"),
            vec![kv],
            Float,
            Attention,
            at,
        );
        push(
            format!("{p}self_attn.o_proj.weight"),
            vec![h, q],
            Float,
            Attention,
            at,
        );
        push(
            format!("{p}self_attn.o_proj.bias"),
            vec![h],
            Float,
            Attention,
            at,
        );
        push(
            format!("{p}self_attn.sinks"),
            vec![config.num_attention_heads],
            Float,
            Attention,
            at,
        );
        push(
            format!("{p}post_attention_layernorm.weight"),
            vec![h],
            Float,
            Norms,
            at,
        );
        push(
            format!("{p}mlp.router.weight"),
            vec![e, h],
            Float,
            Router,
            at,
        );
        push(format!("{p}mlp.router.bias"), vec![e], Float, Router, at);
        let x = format!("{p}mlp.experts.");
        match format {
            ExpertFormat::Mxfp4 => {
                push(
                    format!("{x}gate_up_proj_blocks"),
                    vec![e, 2 * i, h / 32, 16],
                    Mxfp4Bytes,
                    Experts,
                    at,
                );
                push(
                    format!("{x}gate_up_proj_scales"),
                    vec![e, 2 * i, h / 32],
                    Mxfp4Bytes,
                    Experts,
                    at,
                );
                push(
                    format!("{x}gate_up_proj_bias"),
                    vec![e, 2 * i],
                    Float,
                    Experts,
                    at,
                );
                push(
                    format!("{x}down_proj_blocks"),
                    vec![e, h, i / 32, 16],
                    Mxfp4Bytes,
                    Experts,
                    at,
                );
                push(
                    format!("{x}down_proj_scales"),
                    vec![e, h, i / 32],
                    Mxfp4Bytes,
                    Experts,
                    at,
                );
                push(format!("{x}down_proj_bias"), vec![e, h], Float, Experts, at);
            }
            ExpertFormat::Dense => {
                push(
                    format!("{x}gate_up_proj"),
                    vec![e, h, 2 * i],
                    Float,
                    Experts,
                    at,
                );
                push(
                    format!("{x}gate_up_proj_bias"),
                    vec![e, 2 * i],
                    Float,
                    Experts,
                    at,
                );
                push(format!("{x}down_proj"), vec![e, i, h], Float, Experts, at);
                push(format!("{x}down_proj_bias"), vec![e, h], Float, Experts, at);
            }
        }
    }
    push("model.norm.weight".into(), vec![h], Float, Norms, None);
    if !config.tie_word_embeddings {
        push(
            "lm_head.weight".into(),
            vec![config.vocab_size, h],
            Float,
            LmHead,
            None,
        );
    }
    out
}

/// Which expert format a checkpoint uses, judged from layer 0's tensor names.
pub fn detect_expert_format(has: impl Fn(&str) -> bool) -> Option<ExpertFormat> {
    let p = format!("{}mlp.experts.", layer_prefix(0));
    if has(&format!("{p}gate_up_proj_blocks")) {
        Some(ExpertFormat::Mxfp4)
    } else if has(&format!("{p}gate_up_proj")) {
        Some(ExpertFormat::Dense)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GPT_OSS_20B_CONFIG;
    use std::path::Path;

    #[test]
    fn release_20b_inventory_matches_published_total_size() {
        // Spec 2.1/2.2: 459 tensors, 13,761,264,768 bytes with BF16 floats.
        let c = GptOssConfig::from_json_str(GPT_OSS_20B_CONFIG, Path::new("20b")).unwrap();
        let specs = expected_tensors(&c, ExpertFormat::Mxfp4);
        assert_eq!(specs.len(), 459);
        let total: u64 = specs.iter().map(|s| s.bytes(Dtype::BF16)).sum();
        assert_eq!(total, 13_761_264_768);
    }

    #[test]
    fn size_formula_of_spec_8_2_holds_for_kept_experts() {
        let c = GptOssConfig::from_json_str(GPT_OSS_20B_CONFIG, Path::new("20b")).unwrap();
        for k in [32, 16, 8, 6, 4] {
            let pruned = c.with_num_experts(k).unwrap();
            let total: u64 = expected_tensors(&pruned, ExpertFormat::Mxfp4)
                .iter()
                .map(|s| s.bytes(Dtype::BF16))
                .sum();
            assert_eq!(total, 3_591_222_912 + k as u64 * 317_813_808, "k = {k}");
        }
    }
}
