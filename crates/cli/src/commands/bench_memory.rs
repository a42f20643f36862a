//! `bench memory` and `bench footprint`: what pruning saves, on disk and in memory.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use gpt_oss_model::GptOssConfig;
use gpt_oss_model::{ForwardOptions, TokenBatch};
use gpt_oss_prune::{PruneOptions, checkpoint_size, prune_checkpoint};
use gpt_oss_report::human_bytes;
use gpt_oss_select::{Budget, Selection};
use serde_json::{Value, json};

use crate::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    /// Source checkpoint (all experts).
    #[arg(long)]
    pub model: PathBuf,
    /// Experts per layer to measure, comma-separated (the source's count uses the source).
    #[arg(long, value_delimiter = ',', default_value = "32,16,8,6,4")]
    pub experts: Vec<usize>,
    /// Where the pruned variants are written (reused when present).
    #[arg(long)]
    pub work: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Tokens in the measured forward pass.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Delete each variant after measuring it (saves disk for full-size models).
    #[arg(long)]
    pub delete_variants: bool,
}

#[derive(clap::Args, Debug)]
pub struct FootprintArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
}

/// (VmRSS, VmHWM) of this process in bytes.
fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn snapshot(device: &burn::tensor::Device) -> Value {
    let (rss, peak) = resident();
    let pool = device.memory_pool_usage();
    json!({
        "rss_bytes": rss,
        "peak_rss_bytes": peak,
        "device_bytes_in_use": pool.as_ref().map(|p| p.bytes_in_use),
        "device_bytes_reserved": pool.as_ref().map(|p| p.bytes_reserved),
    })
}

pub fn footprint(args: FootprintArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let loaded = args.model.load()?;
    let device = loaded.model.device();
    device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let load_seconds = start.elapsed().as_secs_f64();
    let after_load = snapshot(&device);
    let vocab = loaded.model.config.vocab_size.min(1000);
    let tokens: Vec<u32> = (0..args.tokens)
        .map(|i| (i * 7919 % vocab) as u32)
        .collect();
    let batch = TokenBatch::left_padded(&[tokens], 0);
    let hidden = loaded
        .model
        .forward_hidden(&batch, None, ForwardOptions::default());
    let _ = hidden.narrow(1, 0, 1).try_into_vec_as::<f32>();
    let after_forward = snapshot(&device);
    println!(
        "{}",
        json!({"load_seconds": load_seconds, "after_load": after_load, "after_forward": after_forward})
    );
    Ok(())
}

pub fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    let config = GptOssConfig::from_file(&args.model.join("config.json"))?;
    // Size formula (spec 8.2): non-expert bytes + k x (one expert and its router row, all layers).
    let source = checkpoint_size(&args.model)?;
    let exe = std::env::current_exe()?;
    let mut rows = vec![];
    for &k in &args.experts {
        let dir = if k == config.num_experts {
            args.model.clone()
        } else {
            let dir = args.work.join(format!("experts-{k}"));
            if !dir.join("expert_selection.json").exists() {
                // Which experts does not change the bytes; the first k of every layer.
                let selection = Selection {
                    strategy: "first-k (memory benchmark)".into(),
                    parameters: json!({}),
                    budget: Budget::Uniform(k),
                    num_experts: config.num_experts,
                    top_k: config.experts_per_token,
                    layers: vec![(0..k).collect(); config.num_hidden_layers],
                    stats_digest: "none".into(),
                };
                prune_checkpoint(
                    &args.model,
                    &selection,
                    &dir,
                    &PruneOptions {
                        force: true,
                        ..Default::default()
                    },
                )?;
            }
            dir
        };
        let written = checkpoint_size(&dir)?;
        let (by, total) = (written.by_component, written.total);
        let formula = source.with_experts(k);
        anyhow::ensure!(
            total == formula,
            "{}: {total} tensor bytes, the size formula gives {formula}",
            dir.display()
        );
        let out = Command::new(&exe)
            .args(["bench", "footprint", "--model"])
            .arg(&dir)
            .args([
                "--device",
                &args.device,
                "--experts",
                "packed",
                "--tokens",
                &args.tokens.to_string(),
            ])
            .output()
            .context("running bench footprint")?;
        anyhow::ensure!(
            out.status.success(),
            "footprint of {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let measured: Value = serde_json::from_slice(&out.stdout)?;
        rows.push(json!({
            "experts_per_layer": k,
            "total_experts": k * config.num_hidden_layers,
            "tensor_bytes": total,
            "size_formula_bytes": formula,
            "bytes_by_component": by,
            "footprint": measured,
        }));
        tracing::info!("{k} experts/layer: {total} bytes on disk; {}", measured);
        if args.delete_variants && dir != args.model {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    println!(
        "| configuration | experts/layer | total experts | tensor bytes on disk | size | device memory after load | device memory reserved after forward | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let f = &r["footprint"];
        let size = |v: &Value| v.as_u64().map_or("n/a".to_string(), human_bytes);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            args.model.file_name().unwrap_or_default().to_string_lossy(),
            r["experts_per_layer"],
            r["total_experts"],
            r["tensor_bytes"],
            size(&r["tensor_bytes"]),
            size(&f["after_load"]["device_bytes_in_use"]),
            size(&f["after_forward"]["device_bytes_reserved"]),
            size(&f["after_forward"]["peak_rss_bytes"]),
        );
    }
    std::fs::create_dir_all(&args.work)?;
    std::fs::write(
        args.work.join("memory.json"),
        serde_json::to_string_pretty(&rows)? + "\n",
    )?;
    Ok(())
}
