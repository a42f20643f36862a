//! Decoding through KV-cache buffers with tiny blocks (so that buffers grow and sliding layers
//! compact every few steps, which the default 128-slot block never does on the fixtures) gives
//! the logits of a full forward pass over the same tokens, on padded batches.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use gpt_oss_model::transformer::cache::KvCache;
use gpt_oss_model::{ExpertResidency, ForwardOptions, GptOss, LoadOptions, TokenBatch, load_model};

fn fixture(name: &str) -> GptOss {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/reference/out")
        .join(name);
    let options = LoadOptions {
        experts: ExpertResidency::Auto,
        ..Default::default()
    };
    load_model(&dir, &Device::flex(), options).unwrap()
}

/// Last-position logits [B, vocab] as rows.
fn last_logits(logits: Tensor<3>) -> Vec<f32> {
    let [b, t, v] = logits.dims();
    logits
        .narrow(1, t - 1, 1)
        .reshape([b, v])
        .try_into_vec_as::<f32>()
        .unwrap()
}

#[test]
fn small_cache_blocks_give_full_forward_logits() {
    for name in ["tiny-dense", "tiny-mxfp4"] {
        let model = fixture(name);
        let window = model.config.sliding_window;
        let pad = model.config.pad_token_id.unwrap_or(0);
        // Two rows of different lengths (the second left-padded); more steps than the window.
        let rows: Vec<Vec<u32>> = vec![vec![5, 17, 3, 99, 42, 7, 8], vec![11, 12, 13]];
        let steps = 2 * window + 3;
        for block in [1, 2, 3] {
            let mut cache = KvCache::new(&model.config, vec![], block);
            let mut batch = TokenBatch::left_padded(&rows, pad);
            let mut grown = rows.clone();
            for step in 0..steps {
                let cached = model.forward(&batch, Some(&mut cache), ForwardOptions::default());
                let full = model.forward(
                    &TokenBatch::left_padded(&grown, pad),
                    None,
                    ForwardOptions::default(),
                );
                let (cached, full) = (last_logits(cached), last_logits(full));
                let diff = cached
                    .iter()
                    .zip(&full)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    diff < 1e-4,
                    "{name}, block {block}, step {step}: cached logits differ by {diff}"
                );
                // Next tokens: fixed, not greedy, so every step is checked whatever the model says.
                let next: Vec<u32> = (0..grown.len())
                    .map(|r| (7 * step + 3 * r) as u32 % 50 + 1)
                    .collect();
                for (row, &token) in grown.iter_mut().zip(&next) {
                    row.push(token);
                }
                batch = TokenBatch::step(&next);
            }
        }
    }
}
