//! `inspect`: what a checkpoint holds, without loading it onto a device.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use gpt_oss_model::GptOssConfig;
use gpt_oss_model::checkpoint::{Checkpoint, Component, expected_tensors};
use gpt_oss_model::transformer::load::check_inventory;
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    /// List every tensor with its dtype, shape and file.
    #[arg(long)]
    pub tensors: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = GptOssConfig::from_file(&args.model.join("config.json"))?;
    let ckpt = Checkpoint::open(&args.model)
        .with_context(|| format!("opening {}", args.model.display()))?;
    let format = check_inventory(&config, &ckpt)?;
    let specs = expected_tensors(&config, format);
    let mut by_component: BTreeMap<Component, u64> = BTreeMap::new();
    for spec in &specs {
        let t = ckpt.tensor(&spec.name)?;
        *by_component.entry(spec.component).or_default() += t.bytes.len() as u64;
    }
    let total = ckpt.total_tensor_bytes();
    if args.json {
        let components: serde_json::Map<String, serde_json::Value> = by_component
            .iter()
            .map(|(c, b)| (c.name().to_string(), json!(b)))
            .collect();
        println!(
            "{}",
            json!({
                "model": args.model,
                "layers": config.num_hidden_layers,
                "experts_per_layer": config.num_experts,
                "experts_per_token": config.experts_per_token,
                "hidden_size": config.hidden_size,
                "vocab_size": config.vocab_size,
                "expert_format": format!("{format:?}").to_lowercase(),
                "tensors": specs.len(),
                "files": ckpt.files().len(),
                "tensor_bytes": total,
                "bytes_by_component": components,
            })
        );
        return Ok(());
    }
    println!("model           {}", args.model.display());
    println!(
        "layers          {} ({})",
        config.num_hidden_layers,
        config
            .layer_types
            .iter()
            .map(|t| t.hf_name().trim_end_matches("_attention"))
            .collect::<Vec<_>>()
            .join(",")
    );
    println!(
        "hidden          {} (heads {} x {}, kv heads {})",
        config.hidden_size, config.num_attention_heads, config.head_dim, config.num_key_value_heads
    );
    println!(
        "experts/layer   {} (top-{}), intermediate {}",
        config.num_experts, config.experts_per_token, config.intermediate_size
    );
    println!("expert format   {format:?}");
    println!("vocab           {}", config.vocab_size);
    println!("sliding window  {}", config.sliding_window);
    println!(
        "rope            theta {} {:?}",
        config.rope.theta, config.rope.scaling
    );
    for w in config.warnings() {
        println!("warning         {w}");
    }
    println!("files           {}", ckpt.files().len());
    println!("tensors         {}", specs.len());
    println!();
    println!("{:<12} {:>16} {:>10}", "component", "bytes", "GiB");
    for (c, b) in &by_component {
        println!(
            "{:<12} {:>16} {:>10.3}",
            c.name(),
            b,
            *b as f64 / (1u64 << 30) as f64
        );
    }
    println!(
        "{:<12} {:>16} {:>10.3}",
        "total",
        total,
        total as f64 / (1u64 << 30) as f64
    );
    if args.tensors {
        println!();
        for spec in &specs {
            let t = ckpt.tensor(&spec.name)?;
            println!(
                "{:<60} {:>5?} {:?} {}",
                spec.name,
                t.dtype,
                t.shape,
                t.path.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    Ok(())
}
