//! A model written by `save_checkpoint` reloads to the same function, in every format.

use std::path::PathBuf;

use burn::tensor::Device;
use gpt_oss_model::checkpoint::ExpertFormat;
use gpt_oss_model::transformer::export::ExportOptions;
use gpt_oss_model::{ForwardOptions, GptOss, LoadOptions, TokenBatch, load_model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/reference/out")
        .join(name)
}

fn logits(model: &GptOss) -> Vec<f32> {
    let batch = TokenBatch::left_padded(&[vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], vec![2, 7, 1]], 0);
    model
        .forward(&batch, None, ForwardOptions::default())
        .try_into_vec_as::<f32>()
        .unwrap()
}

fn round_trip(name: &str, experts: ExpertFormat, float_dtype: safetensors::Dtype) {
    let device = Device::flex();
    let original = load_model(&fixture(name), &device, LoadOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("copy");
    let options = ExportOptions {
        experts,
        float_dtype,
        max_shard_bytes: 150_000,
        force: false,
    };
    original
        .save_checkpoint(&out, &options, &[&fixture(name).join("tokenizer.json")])
        .unwrap();
    assert!(out.join("tokenizer.json").exists());
    let copy = load_model(&out, &device, LoadOptions::default()).unwrap();
    assert_eq!(
        logits(&original),
        logits(&copy),
        "{name} {experts:?} {float_dtype:?}"
    );
}

#[test]
fn mxfp4_model_round_trips_as_mxfp4_and_as_dense() {
    // The fixture's floats are BF16 and its experts MXFP4, so every format here is lossless.
    round_trip("tiny-mxfp4", ExpertFormat::Mxfp4, safetensors::Dtype::BF16);
    round_trip("tiny-mxfp4", ExpertFormat::Dense, safetensors::Dtype::F32);
}

#[test]
fn dense_model_round_trips_in_f32() {
    round_trip("tiny-dense", ExpertFormat::Dense, safetensors::Dtype::F32);
}
