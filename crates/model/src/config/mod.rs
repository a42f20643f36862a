//! gpt-oss `config.json`, parsed exactly as transformers reads it (spec section 1).
//!
//! Two layouts exist on disk: the hub files (`rope_scaling` plus a top-level `rope_theta`) and the
//! one newer transformers writes (`rope_parameters` with `rope_theta` inside). Both are accepted.
//! A missing `truncate` means true (transformers' default), which is *not* what gpt-oss was
//! trained with; [`GptOssConfig::warnings`] says so.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ModelError, Result};

mod rope;

use rope::{RawRope, is_positive, parse_rope};
pub use rope::{RopeConfig, RopeScaling};

/// Attention pattern of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Sees at most `sliding_window` keys, itself included.
    Sliding,
    /// Sees every earlier key.
    Full,
}

impl LayerType {
    pub fn hf_name(self) -> &'static str {
        match self {
            LayerType::Sliding => "sliding_attention",
            LayerType::Full => "full_attention",
        }
    }
}

/// The hyper-parameters the forward pass needs, validated.
#[derive(Debug, Clone)]
pub struct GptOssConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Read from the file: for gpt-oss it is 64 while hidden/heads is 45.
    pub head_dim: usize,
    pub num_experts: usize,
    pub experts_per_token: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub sliding_window: usize,
    pub layer_types: Vec<LayerType>,
    pub rope: RopeConfig,
    pub swiglu_limit: f32,
    pub swiglu_alpha: f32,
    pub tie_word_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// True when config.json declares MXFP4 experts (`quantization_config.quant_method`).
    pub mxfp4_experts: bool,
    /// The file as read, so that writers (pruning) change only what they mean to.
    pub raw: Value,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    num_local_experts: Option<usize>,
    num_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    experts_per_token: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    swiglu_limit: Option<f32>,
    swiglu_alpha: Option<f32>,
    attention_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<u32>,
    quantization_config: Option<Value>,
}

/// Default YaRN block of gpt-oss (transformers' `GptOssConfig` uses it when none is given).
impl GptOssConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::config(path, format!("not valid JSON: {e}")))?;
        Self::from_value(value, path)
    }

    pub fn from_value(value: Value, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_value(value.clone())
            .map_err(|e| ModelError::config(path, format!("{e}")))?;
        let err = |m: String| ModelError::config(path, m);
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| err(format!("missing `{name}`")));

        if let Some(t) = &raw.model_type
            && t != "gpt_oss"
        {
            return Err(err(format!("model_type is `{t}`, expected `gpt_oss`")));
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        let num_hidden_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
        // Spec 1.1: read, never derived, when present (transformers falls back the same way).
        let head_dim = raw
            .head_dim
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let vocab_size = need(raw.vocab_size, "vocab_size")?;
        let num_experts = agree(
            raw.num_local_experts,
            raw.num_experts,
            "num_local_experts",
            "num_experts",
        )
        .map_err(err)?
        .ok_or_else(|| err("missing `num_local_experts` (or `num_experts`)".into()))?;
        let experts_per_token = agree(
            raw.num_experts_per_tok,
            raw.experts_per_token,
            "num_experts_per_tok",
            "experts_per_token",
        )
        .map_err(err)?
        .ok_or_else(|| err("missing `num_experts_per_tok` (or `experts_per_token`)".into()))?;

        let layer_types = match &raw.layer_types {
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, n)| match n.as_str() {
                    "sliding_attention" => Ok(LayerType::Sliding),
                    "full_attention" => Ok(LayerType::Full),
                    other => Err(err(format!("layer_types[{i}] is `{other}`"))),
                })
                .collect::<Result<Vec<_>>>()?,
            // Spec 1.3: even index sliding, odd full.
            None => (0..num_hidden_layers)
                .map(|i| {
                    if i % 2 == 0 {
                        LayerType::Sliding
                    } else {
                        LayerType::Full
                    }
                })
                .collect(),
        };
        let rope = parse_rope(
            raw.rope_parameters.as_ref(),
            raw.rope_scaling.as_ref(),
            raw.rope_theta,
        )
        .map_err(err)?;
        let eos_token_ids = match &raw.eos_token_id {
            None | Some(Value::Null) => vec![],
            Some(Value::Number(n)) => {
                vec![n.as_u64().ok_or_else(|| err("bad eos_token_id".into()))? as u32]
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err("bad eos_token_id".into()))?,
            Some(_) => return Err(err("eos_token_id must be a number or a list".into())),
        };
        let mxfp4_experts = raw
            .quantization_config
            .as_ref()
            .and_then(|q| q.get("quant_method"))
            .and_then(Value::as_str)
            == Some("mxfp4");

        let config = GptOssConfig {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            num_experts,
            experts_per_token,
            vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            sliding_window: raw.sliding_window.unwrap_or(0),
            layer_types,
            rope,
            swiglu_limit: raw.swiglu_limit.unwrap_or(7.0),
            swiglu_alpha: raw.swiglu_alpha.unwrap_or(1.702),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            eos_token_ids,
            pad_token_id: raw.pad_token_id,
            mxfp4_experts,
            raw: value,
        };
        if raw.attention_bias == Some(false) {
            return Err(err(
                "attention_bias is false; gpt-oss attention always has q/k/v/o biases".into(),
            ));
        }
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("num_local_experts", self.num_experts),
            ("num_experts_per_tok", self.experts_per_token),
            ("vocab_size", self.vocab_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if self.experts_per_token > self.num_experts {
            return Err(format!(
                "num_experts_per_tok ({}) exceeds num_local_experts ({})",
                self.experts_per_token, self.num_experts
            ));
        }
        if self.layer_types.len() != self.num_hidden_layers {
            return Err(format!(
                "layer_types has {} entries for {} layers",
                self.layer_types.len(),
                self.num_hidden_layers
            ));
        }
        if self.layer_types.contains(&LayerType::Sliding) && self.sliding_window == 0 {
            return Err("sliding layers need a positive `sliding_window`".into());
        }
        if !is_positive(self.rms_norm_eps) {
            return Err("rms_norm_eps must be positive".into());
        }
        if !is_positive(self.swiglu_limit as f64) {
            return Err("swiglu_limit must be positive".into());
        }
        if self.mxfp4_experts
            && (!self.hidden_size.is_multiple_of(32) || !self.intermediate_size.is_multiple_of(32))
        {
            return Err(format!(
                "MXFP4 experts need hidden_size ({}) and intermediate_size ({}) divisible by 32",
                self.hidden_size, self.intermediate_size
            ));
        }
        Ok(())
    }

    /// Things a user should know that do not stop the model from running.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = vec![];
        if let RopeScaling::Yarn { truncate: true, .. } = self.rope.scaling {
            out.push(
                "rope: `truncate` is missing or true, so the YaRN correction range is rounded \
                 (transformers' default); gpt-oss was trained with truncate=false"
                    .to_string(),
            );
        }
        out
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// A copy for a model that keeps `kept` experts per layer (pruned variants).
    pub fn with_num_experts(&self, kept: usize) -> Result<Self> {
        let mut raw = self.raw.clone();
        let obj = raw
            .as_object_mut()
            .ok_or_else(|| ModelError::Invalid("config is not a JSON object".into()))?;
        obj.insert("num_local_experts".into(), json!(kept));
        if obj.contains_key("num_experts") {
            obj.insert("num_experts".into(), json!(kept));
        }
        Self::from_value(raw, Path::new("<pruned config>"))
    }

    /// The config in the hub layout (spec 1.1): what `synth` and the nano trainer write.
    pub fn to_hf_json(&self) -> Value {
        let mut v = self.raw.clone();
        if !v.is_object() {
            v = json!({});
        }
        let obj = v.as_object_mut().expect("object");
        let (rope_scaling, theta) = match &self.rope.scaling {
            RopeScaling::None => (json!({"rope_type": "default"}), self.rope.theta),
            RopeScaling::Yarn {
                factor,
                beta_fast,
                beta_slow,
                original_max_position_embeddings,
                truncate,
                attention_factor,
            } => {
                let mut s = json!({
                    "rope_type": "yarn",
                    "factor": factor,
                    "beta_fast": beta_fast,
                    "beta_slow": beta_slow,
                    "original_max_position_embeddings": original_max_position_embeddings,
                    "truncate": truncate,
                });
                if let Some(a) = attention_factor {
                    s["attention_factor"] = json!(a);
                }
                (s, self.rope.theta)
            }
        };
        obj.remove("rope_parameters");
        let fields = json!({
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "sliding_window": self.sliding_window,
            "layer_types": self.layer_types.iter().map(|t| t.hf_name()).collect::<Vec<_>>(),
            "rope_theta": theta,
            "rope_scaling": rope_scaling,
            "swiglu_limit": self.swiglu_limit,
            "attention_bias": true,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
        });
        for (k, val) in fields.as_object().expect("object") {
            obj.insert(k.clone(), val.clone());
        }
        obj.remove("num_experts");
        if !self.eos_token_ids.is_empty() {
            obj.insert(
                "eos_token_id".into(),
                if self.eos_token_ids.len() == 1 {
                    json!(self.eos_token_ids[0])
                } else {
                    json!(self.eos_token_ids)
                },
            );
        }
        if let Some(p) = self.pad_token_id {
            obj.insert("pad_token_id".into(), json!(p));
        }
        if self.mxfp4_experts {
            obj.insert("quantization_config".into(), mxfp4_quantization_config());
        } else {
            obj.remove("quantization_config");
        }
        v
    }
}

/// The `quantization_config` of the release checkpoints.
pub fn mxfp4_quantization_config() -> Value {
    json!({
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head"
        ]
    })
}

fn agree(
    a: Option<usize>,
    b: Option<usize>,
    a_name: &str,
    b_name: &str,
) -> std::result::Result<Option<usize>, String> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => {
            Err(format!("`{a_name}` ({x}) and `{b_name}` ({y}) disagree"))
        }
        (Some(x), _) | (None, Some(x)) => Ok(Some(x)),
        (None, None) => Ok(None),
    }
}

/// config.json of openai/gpt-oss-20b as published (spec 1.1).
pub const GPT_OSS_20B_CONFIG: &str = include_str!("../presets/gpt-oss-20b.json");
/// config.json of openai/gpt-oss-120b as published (spec 1.1).
pub const GPT_OSS_120B_CONFIG: &str = include_str!("../presets/gpt-oss-120b.json");

#[cfg(test)]
mod tests;
