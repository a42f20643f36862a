//! oss-nano's shape: gpt-oss's architecture and ratios (32 experts, top-4, alternating sliding and
//! full attention, sinks, YaRN config of the release, clamped SwiGLU), small enough for a laptop.

use std::path::Path;

use gpt_oss_model::GptOssConfig;
use serde_json::json;

/// Sliding window in tokens: curriculum documents are 50 to 100 tokens, so windows matter.
pub const SLIDING_WINDOW: usize = 32;

/// The config for a vocabulary of `vocab_size` tokens (rounded up to a multiple of 64).
pub fn nano_config(vocab_size: usize) -> GptOssConfig {
    let vocab = vocab_size.div_ceil(64) * 64;
    let value = json!({
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "hidden_size": 128,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_local_experts": 32,
        "num_experts_per_tok": 4,
        "experts_per_token": 4,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "sliding_window": SLIDING_WINDOW,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "rope_theta": 150000,
        "rope_scaling": {
            "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "original_max_position_embeddings": 4096, "truncate": false
        },
        "swiglu_limit": 7.0,
        "attention_bias": true,
        "tie_word_embeddings": false,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "max_position_embeddings": 4096,
        "initial_context_length": 4096,
        "router_aux_loss_coef": 0.02,
    });
    GptOssConfig::from_value(value, Path::new("oss-nano")).expect("the nano config is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_mirrors_20b_ratios() {
        let c = nano_config(700);
        assert_eq!(c.vocab_size, 704);
        assert_eq!((c.num_experts, c.experts_per_token), (32, 4));
        assert!(c.num_hidden_layers >= 4);
        assert_eq!(c.hidden_size % 32, 0);
        assert_eq!(c.intermediate_size % 32, 0);
    }
}
