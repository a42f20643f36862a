//! `trace`: routing of datasets through a model, into Parquet shards and statistics.

use std::path::PathBuf;

use anyhow::Context;
use gpt_oss_model::dataset::read_datasets;
use gpt_oss_trace::{TraceOptions, trace};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL datasets, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Record the full router logits in every row.
    #[arg(long)]
    pub router_logits: bool,
    /// Statistics count only answer tokens (after the prompt of probes and chats).
    #[arg(long)]
    pub answer_only: bool,
    /// Cache router logits and all experts' outputs of this many tokens per layer (for the
    /// `reconstruction` strategy).
    #[arg(long, default_value_t = 0)]
    pub cache_activations: usize,
    /// Rows (tokens x layers) per Parquet shard.
    #[arg(long, default_value_t = 2_000_000)]
    pub shard_rows: usize,
    /// Stop after this many new shards (resume later by running the same command).
    #[arg(long)]
    pub max_shards: Option<usize>,
}

/// `path sha256:...` of a file.
pub fn file_id(path: &std::path::Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!(
        "{} sha256:{:x}",
        path.display(),
        Sha256::digest(&bytes)
    ))
}

/// The model folder, its config digest and its tensor bytes.
pub fn model_id(dir: &std::path::Path) -> anyhow::Result<String> {
    let config = file_id(&dir.join("config.json"))?;
    let ckpt = gpt_oss_model::checkpoint::Checkpoint::open(dir)?;
    Ok(format!(
        "{config}; {} tensor bytes",
        ckpt.total_tensor_bytes()
    ))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let tokenizer = loaded.tokenizer()?;
    let records = read_datasets(&args.data)?;
    anyhow::ensure!(!records.is_empty(), "the datasets hold no records");
    let dataset_ids = args
        .data
        .iter()
        .map(|p| file_id(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = TraceOptions {
        batch_size: args.batch_size,
        max_rows_per_shard: args.shard_rows,
        router_logits: args.router_logits,
        answer_only: args.answer_only,
        cache_activation_tokens: args.cache_activations,
        max_shards_this_run: args.max_shards,
    };
    let total: usize = records.len();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {human_pos} tokens {per_sec} [{elapsed_precise}]")
            .expect("template"),
    );
    let start = std::time::Instant::now();
    let summary = trace(
        &loaded.model,
        tokenizer,
        &records,
        &model_id(&args.model.model)?,
        &dataset_ids,
        &args.out,
        &options,
        &mut |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    tracing::info!(
        "{total} samples, {} shards ({} written now, {} already done), {} tokens traced in {:.1}s{}",
        summary.shards,
        summary.written_now,
        summary.already_done,
        summary.tokens,
        start.elapsed().as_secs_f64(),
        if summary.complete {
            ""
        } else {
            "; incomplete: run again to resume"
        }
    );
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
