//! The trainer learns: on a tiny gpt-oss and a predictable token stream the loss falls.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use gpt_oss_model::{GptOss, GptOssConfig};
use gpt_oss_nano::train::{TrainConfig, train};
use serde_json::json;

#[test]
fn loss_falls_on_a_learnable_stream() {
    let config = GptOssConfig::from_value(
        json!({
            "model_type": "gpt_oss", "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "num_local_experts": 4,
            "num_experts_per_tok": 2, "vocab_size": 24, "sliding_window": 4,
            "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096, "truncate": false},
        }),
        Path::new("tiny"),
    )
    .unwrap();
    let model = GptOss::init_random(&config, &Device::flex().autodiff(), 0);
    // A fixed cycle: the next token is always determined.
    let tokens: Vec<u32> = (0..4000).map(|i| (i % 16) as u32).collect();
    let c = TrainConfig {
        steps: 60,
        batch_size: 8,
        seq_len: 24,
        learning_rate: 1e-2,
        warmup_steps: 5,
        ..TrainConfig::default()
    };
    let mut losses = vec![];
    let trained = train(model, &tokens, &c, |r, _| losses.push(r.lm_loss));
    let first = losses[..5].iter().sum::<f32>() / 5.0;
    let last = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
    assert!(last < 0.25 * first, "loss {first} -> {last}");
    assert!(!trained.valid().device().is_autodiff());
}
