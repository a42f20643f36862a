//! Rotary embedding configuration (spec 4.5): plain RoPE or YaRN, from either of the two layouts
//! config.json files use.

use serde::Deserialize;

/// Rotary embedding parameters (spec 4.5).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type: "default"`).
    None,
    /// YaRN as transformers computes it.
    Yarn {
        factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        original_max_position_embeddings: usize,
        /// Round the correction range to integers (transformers' default when the key is missing).
        truncate: bool,
        /// Explicit cos/sin multiplier; when absent it is 0.1 ln(factor) + 1.
        attention_factor: Option<f64>,
    },
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    truncate: Option<bool>,
    attention_factor: Option<f64>,
}

const GPT_OSS_DEFAULT_THETA: f64 = 150000.0;

/// The rope block of config.json: `rope_parameters` (newer transformers) or `rope_scaling` plus a
/// top-level `rope_theta`; none at all means the release's YaRN block.
pub(super) fn parse_rope(
    rope_parameters: Option<&RawRope>,
    rope_scaling: Option<&RawRope>,
    rope_theta: Option<f64>,
) -> std::result::Result<RopeConfig, String> {
    // transformers prefers `rope_parameters`; older files carry `rope_scaling` + `rope_theta`.
    let (rope, from) = match (rope_parameters, rope_scaling) {
        (Some(p), _) => (Some(p), "rope_parameters"),
        (None, Some(s)) => (Some(s), "rope_scaling"),
        (None, None) => (None, ""),
    };
    let Some(rope) = rope else {
        // transformers' GptOssConfig default: the YaRN block of the release.
        return Ok(RopeConfig {
            theta: rope_theta.unwrap_or(GPT_OSS_DEFAULT_THETA),
            scaling: RopeScaling::Yarn {
                factor: 32.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                original_max_position_embeddings: 4096,
                truncate: false,
                attention_factor: None,
            },
        });
    };
    let theta = rope
        .rope_theta
        .or(rope_theta)
        .unwrap_or(GPT_OSS_DEFAULT_THETA);
    if !is_positive(theta) {
        return Err(format!("{from}: rope_theta must be positive"));
    }
    let kind = rope
        .rope_type
        .clone()
        .or_else(|| rope.legacy_type.clone())
        .unwrap_or_else(|| "default".into());
    let scaling = match kind.as_str() {
        "default" => RopeScaling::None,
        "yarn" => {
            let factor = rope
                .factor
                .ok_or_else(|| format!("{from}: yarn needs `factor`"))?;
            if !is_positive(factor) {
                return Err(format!("{from}: factor must be positive"));
            }
            RopeScaling::Yarn {
                factor,
                beta_fast: rope.beta_fast.unwrap_or(32.0),
                beta_slow: rope.beta_slow.unwrap_or(1.0),
                original_max_position_embeddings: rope
                    .original_max_position_embeddings
                    .ok_or_else(|| {
                        format!("{from}: yarn needs `original_max_position_embeddings`")
                    })?,
                // Spec 1.3: a missing key means true, as in transformers.
                truncate: rope.truncate.unwrap_or(true),
                attention_factor: rope.attention_factor,
            }
        }
        other => {
            return Err(format!(
                "{from}: rope_type `{other}` is not supported (yarn or default)"
            ));
        }
    };
    Ok(RopeConfig { theta, scaling })
}

/// `x > 0`, false for NaN (a config value that must be positive).
pub(super) fn is_positive(x: f64) -> bool {
    x > 0.0
}
