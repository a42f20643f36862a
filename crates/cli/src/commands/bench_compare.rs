//! `bench compare`: the issue-7 table from one GPU call's outputs. Reads our `bench model` lines
//! and, when given, transformers' (`tools/gpu/torch_baseline.py model`, same call), and prints
//! each figure as tokens/s, % of roofline and multiple of transformers (Markdown).
//!
//! Rooflines come from the model's config: scoring at the card's dense bf16 rate (two FLOPs per
//! active weight per token, plus the attention scores and values over the keys each query
//! sees), decoding at its memory bandwidth (the bytes one step must read: bf16 attention and
//! lm_head weights, f32 router, the MXFP4 experts the batch is expected to route to, the KV
//! cache). Both are upper bounds, not predictions.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gpt_oss_model::config::{GptOssConfig, LayerType};
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// `gpt-oss-lite bench model` output (JSON lines).
    #[arg(long)]
    pub ours: PathBuf,
    /// `tools/gpu/torch_baseline.py model` output from the same call (JSON lines).
    #[arg(long)]
    pub transformers: Option<PathBuf>,
    /// The benchmarked model's config.json.
    #[arg(long)]
    pub config: PathBuf,
    /// The card's memory bandwidth in TB/s (H100 SXM: 3.35).
    #[arg(long, default_value_t = 3.35)]
    pub bandwidth_tb_s: f64,
    /// The card's dense bf16 rate in TFLOP/s (H100 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    pub bf16_tflop_s: f64,
}

pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let config = GptOssConfig::from_file(&args.config)?;
    let ours = read_json_lines(&args.ours)?;
    let theirs = match &args.transformers {
        Some(path) => read_json_lines(path)?,
        None => vec![],
    };
    let card = Card {
        bytes_per_second: args.bandwidth_tb_s * 1e12,
        flops_per_second: args.bf16_tflop_s * 1e12,
    };
    println!("{}", comparison_table(&config, &ours, &theirs, card)?);
    Ok(())
}

/// The card's two limits.
#[derive(Debug, Clone, Copy)]
pub struct Card {
    pub bytes_per_second: f64,
    pub flops_per_second: f64,
}

/// Every line of `path` as JSON; a bad line is an error naming the file and line.
fn read_json_lines(path: &Path) -> anyhow::Result<Vec<Value>> {
    Ok(gpt_oss_nano::curriculum::read_jsonl(path)?)
}

/// Field `name` of `line` as a number, or an error naming the bench line.
fn number(line: &Value, name: &str) -> anyhow::Result<f64> {
    line.get(name)
        .and_then(Value::as_f64)
        .with_context(|| format!("bench line {line} has no number `{name}`"))
}

fn lines_of<'a>(lines: &'a [Value], bench: &'a str) -> impl Iterator<Item = &'a Value> {
    lines.iter().filter(move |l| l["bench"] == bench)
}

/// One table row: a figure, our rate, the roofline rate and transformers' rate if measured.
struct Row {
    figure: String,
    ours: f64,
    roofline: f64,
    transformers: Option<f64>,
}

/// The Markdown table for `ours` (`bench model` lines) against `theirs` (torch_baseline lines).
fn comparison_table(
    config: &GptOssConfig,
    ours: &[Value],
    theirs: &[Value],
    card: Card,
) -> anyhow::Result<String> {
    let mut rows = vec![];
    for line in lines_of(ours, "score") {
        let (batch, seq) = (number(line, "batch")?, number(line, "seq")?);
        let roofline = card.flops_per_second / scoring_flops_per_token(config, seq as usize);
        let torch = |recorded: bool| {
            lines_of(theirs, "torch_score")
                .find(|t| {
                    t["batch"] == line["batch"]
                        && t["seq"] == line["seq"]
                        && t["router_logits"] == recorded
                })
                .map(|t| number(t, "tokens_per_second"))
                .transpose()
        };
        rows.push(Row {
            figure: format!("scoring {batch} x {seq}"),
            ours: number(line, "tokens_per_second")?,
            roofline,
            transformers: torch(false)?,
        });
        rows.push(Row {
            figure: format!(
                "scoring {batch} x {seq}, routing recorded ({:+.1}%)",
                100.0 * number(line, "recording_overhead")?
            ),
            ours: number(line, "recording_tokens_per_second")?,
            roofline,
            transformers: torch(true)?,
        });
    }
    for line in lines_of(ours, "decode") {
        let batch = number(line, "batch")?;
        let (prompt, new) = (number(line, "prompt")?, number(line, "new_tokens")?);
        // `bench model` also times decoding that captures its step in every generation and
        // step-by-step decoding next to the default (captured once) one.
        let how = match line["decoding"].as_str() {
            Some("capture_per_generation") => ", captured per generation",
            Some("step_by_step") => ", step by step",
            _ => "",
        };
        // The keys a step reads on average: the prompt and half the new tokens.
        let keys = (prompt + new / 2.0) as usize;
        let bytes = decode_bytes_per_step(config, batch as usize, keys);
        let roofline = batch * card.bytes_per_second / bytes;
        let torch = lines_of(theirs, "torch_decode")
            .find(|t| {
                t["batch"] == line["batch"]
                    && t["prompt"] == line["prompt"]
                    && t["new_tokens"] == line["new_tokens"]
            })
            .map(|t| number(t, "tokens_per_second"))
            .transpose()?;
        rows.push(Row {
            figure: format!(
                "greedy decode{how}, batch {batch}, prompt {prompt}, {new} new (with prefill)"
            ),
            ours: number(line, "tokens_per_second")?,
            roofline,
            transformers: torch,
        });
        rows.push(Row {
            figure: format!("greedy decode{how}, batch {batch}, decode steps alone"),
            ours: number(line, "decode_step_tokens_per_second")?,
            roofline,
            transformers: None,
        });
    }
    anyhow::ensure!(!rows.is_empty(), "no `score` or `decode` bench lines");
    let mut table = String::from(
        "| figure | gpt-oss-lite tok/s | roofline tok/s | % of roofline | transformers tok/s | multiple |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for row in rows {
        let (theirs, multiple) = match row.transformers {
            Some(t) => (format!("{t:.1}"), format!("{:.2}x", row.ours / t)),
            None => ("-".into(), "-".into()),
        };
        table.push_str(&format!(
            "| {} | {:.1} | {:.0} | {:.1}% | {theirs} | {multiple} |\n",
            row.figure,
            row.ours,
            row.roofline,
            100.0 * row.ours / row.roofline
        ));
    }
    Ok(table)
}

/// Weights a token multiplies by (attention projections, router, its k experts, lm_head); the
/// embedding is a lookup and not counted.
pub fn active_weights_per_token(c: &GptOssConfig) -> f64 {
    per_layer_attention_weights(c) * c.num_hidden_layers as f64
        + (c.hidden_size * c.num_experts) as f64 * c.num_hidden_layers as f64
        + (c.experts_per_token as f64 * expert_weights(c)) * c.num_hidden_layers as f64
        + (c.hidden_size * c.vocab_size) as f64
}

fn per_layer_attention_weights(c: &GptOssConfig) -> f64 {
    let (h, d) = (c.hidden_size, c.head_dim);
    let q_and_o = 2 * h * c.num_attention_heads * d;
    let k_and_v = 2 * h * c.num_key_value_heads * d;
    (q_and_o + k_and_v) as f64
}

/// One expert's gate_up and down weights.
fn expert_weights(c: &GptOssConfig) -> f64 {
    (3 * c.hidden_size * c.intermediate_size) as f64
}

/// Keys a query at position `p` (0-based) of a layer sees.
fn visible_keys(c: &GptOssConfig, layer: usize, p: usize) -> usize {
    match c.layer_types[layer] {
        LayerType::Sliding if c.sliding_window > 0 => (p + 1).min(c.sliding_window),
        _ => p + 1,
    }
}

/// FLOPs per scored token of a `seq`-token sequence: two per active weight, and per layer four
/// per head dimension per visible key (scores and weighted values), averaged over positions.
pub fn scoring_flops_per_token(c: &GptOssConfig, seq: usize) -> f64 {
    let mut attention = 0.0;
    for layer in 0..c.num_hidden_layers {
        let keys: usize = (0..seq).map(|p| visible_keys(c, layer, p)).sum();
        attention += 4.0 * (c.num_attention_heads * c.head_dim) as f64 * keys as f64 / seq as f64;
    }
    2.0 * active_weights_per_token(c) + attention
}

/// Experts a batch of `batch` tokens is expected to touch per layer under uniform routing.
pub fn expected_distinct_experts(c: &GptOssConfig, batch: usize) -> f64 {
    let e = c.num_experts as f64;
    let untouched = (1.0 - c.experts_per_token as f64 / e).powi(batch as i32);
    e * (1.0 - untouched)
}

/// Bytes one decoding step of `batch` tokens over `keys` cached keys must read: bf16 attention
/// and lm_head weights, the f32 router, each expected expert once in MXFP4 (half a byte per
/// weight and a scale byte per 32) with its f32 biases, and the f32 KV cache.
pub fn decode_bytes_per_step(c: &GptOssConfig, batch: usize, keys: usize) -> f64 {
    let layers = c.num_hidden_layers as f64;
    let attention = 2.0 * per_layer_attention_weights(c) * layers;
    let lm_head = 2.0 * (c.hidden_size * c.vocab_size) as f64;
    let router = 4.0 * (c.hidden_size * c.num_experts) as f64 * layers;
    let expert_bytes = expert_weights(c) * (0.5 + 1.0 / 32.0)
        + 4.0 * (2 * c.intermediate_size + c.hidden_size) as f64;
    let experts = expected_distinct_experts(c, batch) * expert_bytes * layers;
    let cache: f64 = (0..c.num_hidden_layers)
        .map(|layer| {
            let seen = visible_keys(c, layer, keys.saturating_sub(1));
            (2 * batch * c.num_key_value_heads * c.head_dim * seen * 4) as f64
        })
        .sum();
    attention + lm_head + router + experts + cache
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset_20b() -> GptOssConfig {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/src/presets/gpt-oss-20b.json");
        GptOssConfig::from_file(&path).unwrap()
    }

    /// gpt-oss-20b is published as 3.6B active parameters; a batch-1 step reads about 3.7 GB.
    #[test]
    fn the_20b_counts_match_its_published_size() {
        let c = preset_20b();
        let active = active_weights_per_token(&c);
        assert!((3.5e9..3.7e9).contains(&active), "active weights {active}");
        let bytes = decode_bytes_per_step(&c, 1, 32);
        assert!((3.6e9..3.8e9).contains(&bytes), "bytes per step {bytes}");
        // A batch touches more experts, never more than all of them, and shares the rest.
        let distinct = expected_distinct_experts(&c, 32);
        assert!(distinct > 30.0 && distinct <= 32.0, "{distinct}");
        assert_eq!(expected_distinct_experts(&c, 1), 4.0);
        assert!(decode_bytes_per_step(&c, 32, 32) < 8.0 * bytes);
        // Attention at 2,048 tokens: 12 full layers see (2049 / 2) keys on average, 12 sliding
        // ones (window 128) 254,016 / 2,048 (1 + 2 + ... + 128, then 128 for 1,920 positions).
        let per_key = 4.0 * 64.0 * 64.0;
        let attention = 12.0 * per_key * (2049.0 / 2.0 + 254_016.0 / 2048.0);
        let flops = scoring_flops_per_token(&c, 2048);
        assert!((flops - 2.0 * active - attention).abs() < 1.0, "{flops}");
    }

    #[test]
    fn the_table_joins_same_call_lines_and_computes_the_multiple() {
        let c = preset_20b();
        let ours: Vec<Value> = [
            r#"{"bench":"load","gpu_bytes_in_use":1}"#,
            r#"{"batch":1,"bench":"decode","decode_step_tokens_per_second":64.0,"new_tokens":32,"prompt":16,"tokens_per_second":50.0}"#,
            r#"{"batch":32,"bench":"decode","decode_step_tokens_per_second":800.0,"new_tokens":32,"prompt":16,"tokens_per_second":700.0}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let theirs: Vec<Value> = [
            // Another run length first: the join must match new_tokens too.
            r#"{"bench": "torch_decode", "batch": 1, "prompt": 16, "new_tokens": 64, "tokens_per_second": 99.0}"#,
            r#"{"bench": "torch_decode", "batch": 1, "prompt": 16, "new_tokens": 32, "tokens_per_second": 25.0}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let card = Card {
            bytes_per_second: 3.35e12,
            flops_per_second: 989e12,
        };
        let table = comparison_table(&c, &ours, &theirs, card).unwrap();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 4, "{table}");
        assert!(
            rows[0].contains("| 50.0 |") && rows[0].ends_with("| 25.0 | 2.00x |"),
            "{table}"
        );
        // Batch 32 has no transformers line from this call: no multiple.
        assert!(rows[2].ends_with("| - | - |"), "{table}");
        let roofline: f64 = rows[0].split('|').nth(3).unwrap().trim().parse().unwrap();
        let expected = 3.35e12 / decode_bytes_per_step(&c, 1, 32);
        assert!(
            (roofline - expected).abs() < 1.0,
            "{roofline} vs {expected}"
        );
    }

    #[test]
    fn a_bad_line_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ours.jsonl");
        std::fs::write(&path, "{\"bench\":\"load\"}\nnot json\n").unwrap();
        let err = format!("{:#}", read_json_lines(&path).unwrap_err());
        assert!(err.contains("ours.jsonl: line 2"), "{err}");
        let missing = r#"{"bench":"decode","batch":1}"#;
        let line: Value = serde_json::from_str(missing).unwrap();
        let card = Card {
            bytes_per_second: 1.0,
            flops_per_second: 1.0,
        };
        let err = comparison_table(&preset_20b(), &[line], &[], card).unwrap_err();
        assert!(format!("{err}").contains("`prompt`"), "{err}");
    }
}
