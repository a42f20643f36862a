//! The `gpt-oss-lite` binary on the reference fixtures: its JSON output agrees with the library,
//! and bad input fails with a message, not a panic.

use std::path::PathBuf;
use std::process::Command;

use burn::tensor::Device;
use gpt_oss_model::generate::{GenerateOptions, generate};
use gpt_oss_model::scoring::token_logprobs;
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{ForwardOptions, LoadOptions, load_model};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/reference/out")
        .join(name)
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gpt-oss-lite"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = run(args);
    assert!(ok, "{args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn generate_json_is_the_greedy_continuation() {
    let dir = fixture("tiny-mxfp4");
    let out = run_json(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "2 + 2 =",
        "--max-tokens",
        "10",
        "--json",
        "--device",
        "cpu",
    ]);
    let model = load_model(&dir, &Device::flex(), LoadOptions::default()).unwrap();
    let tok = TextTokenizer::for_model(&dir, &model.config).unwrap();
    let prompt = tok.encode("2 + 2 =").unwrap();
    let options = GenerateOptions {
        max_new_tokens: 10,
        stop_tokens: tok.stop_tokens(&model.config),
        sampling: None,
        use_cache: true,
    };
    let expected = generate(&model, &[prompt], &options).remove(0);
    assert_eq!(ids(&out["token_ids"]), expected);
    assert_eq!(
        out["text"].as_str().unwrap(),
        tok.decode(&expected).unwrap()
    );
}

#[test]
fn score_json_gives_one_logprob_per_token_after_the_first() {
    let dir = fixture("tiny-dense");
    let text = "Hello world, 2 + 2 = 4";
    let out = run_json(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--text",
        text,
        "--json",
        "--device",
        "cpu",
    ]);
    let token_ids = ids(&out["token_ids"]);
    let logprobs: Vec<f32> = out["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(logprobs.len(), token_ids.len() - 1);
    let model = load_model(&dir, &Device::flex(), LoadOptions::default()).unwrap();
    let expected = token_logprobs(&model, &[token_ids], ForwardOptions::default(), 64).remove(0);
    for (a, b) in logprobs.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-6);
    }
    assert!(logprobs.iter().all(|&l| l < 0.0));
}

#[test]
fn inspect_json_accounts_for_every_tensor_byte() {
    let dir = fixture("tiny-mxfp4");
    let out = run_json(&["inspect", "--model", dir.to_str().unwrap(), "--json"]);
    let by_component: u64 = out["bytes_by_component"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_component, out["tensor_bytes"].as_u64().unwrap());
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(out["tensor_bytes"], index["metadata"]["total_size"]);
    assert_eq!(out["experts_per_layer"], 8);
    assert_eq!(out["expert_format"], "mxfp4");
}

#[test]
fn synth_writes_a_loadable_sharded_checkpoint_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    let config = fixture("tiny-mxfp4").join("config.json");
    let args = [
        "synth",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--shard-bytes",
        "200000",
    ];
    let (ok, _, stderr) = run(&args);
    assert!(ok, "{stderr}");
    assert!(out.join("model.safetensors.index.json").exists());
    let model = load_model(&out, &Device::flex(), LoadOptions::default()).unwrap();
    assert_eq!(model.config.num_experts, 8);

    let (ok, _, stderr) = run(&args);
    assert!(!ok);
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_model_folder_is_a_clear_error() {
    let (ok, _, stderr) = run(&[
        "score",
        "--model",
        "/nonexistent/model",
        "--text",
        "a b",
        "--device",
        "cpu",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("/nonexistent/model/config.json"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn gpu_kernel_benches_refuse_the_cpu_with_a_clear_error() {
    for args in [
        &["bench", "kernel-check", "--device", "cpu"][..],
        &["bench", "matmul", "--device", "cpu", "--kernel", "rows"][..],
    ] {
        let (ok, _, stderr) = run(args);
        assert!(!ok, "{args:?} succeeded on the CPU");
        assert!(stderr.contains("only on the GPU"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn select_list_names_every_strategy_without_statistics() {
    let (ok, stdout, stderr) = run(&["select", "--list"]);
    assert!(ok, "{stderr}");
    for name in gpt_oss_select::strategy_names() {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{stdout}"
        );
    }
    let (ok, _, stderr) = run(&["select", "--experts", "16"]);
    assert!(!ok && stderr.contains("--stats"), "{stderr}");
}
