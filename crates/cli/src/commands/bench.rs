//! `bench`: throughput measurements (benchmarks, never tests). Results go to stdout as JSON and
//! belong in docs/benchmarks.md with the machine they ran on.

use std::path::PathBuf;
use std::time::Instant;

use gpt_oss_model::dataset::read_datasets;
use gpt_oss_model::{ForwardOptions, TokenBatch};
use gpt_oss_trace::{TraceOptions, trace};
use serde_json::json;

use crate::model_args::ModelArgs;

#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// Tokens/s of the forward pass alone and of `trace` (routing rows, statistics, Parquet).
    Trace(TraceArgs),
    /// Bytes on disk per component and memory when loaded and during a forward pass, for
    /// several experts-per-layer budgets (pruned variants written under --work).
    Memory(super::bench_memory::MemoryArgs),
    /// One model's footprint (run in a child process by `bench memory`).
    Footprint(super::bench_memory::FootprintArgs),
    /// Dense matmul TFLOP/s per dtype and shape (are burn's kernels on the tensor cores?).
    Matmul(super::bench_matmul::MatmulArgs),
    /// Scoring tokens/s with and without routing recorded, and greedy decode tokens/s.
    Model(super::bench_model::ModelBenchArgs),
    /// Every GPU kernel against its burn-ops reference on random data.
    KernelCheck(super::bench_kernels::KernelCheckArgs),
    /// The issue-7 table from `bench model` and transformers' lines of one call: tokens/s, % of
    /// roofline (from the config and the card's rates), multiple of transformers.
    Compare(super::bench_compare::CompareArgs),
}

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_delimiter = ',', required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Untimed passes first (kernel compilation, autotune).
    #[arg(long, default_value_t = 1)]
    pub warmup_batches: usize,
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Trace(a) => trace_throughput(a),
        Bench::Memory(a) => super::bench_memory::memory(a),
        Bench::Footprint(a) => super::bench_memory::footprint(a),
        Bench::Matmul(a) => super::bench_matmul::matmul(a),
        Bench::Model(a) => super::bench_model::model(a),
        Bench::KernelCheck(a) => super::bench_kernels::kernel_check(a),
        Bench::Compare(a) => super::bench_compare::compare(a),
    }
}

fn trace_throughput(args: TraceArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let (model, tokenizer) = (&loaded.model, loaded.tokenizer()?);
    let records = read_datasets(&args.data)?;
    let tokenized: Vec<Vec<u32>> = records
        .iter()
        .map(|r| r.tokenize(tokenizer).map(|t| t.tokens))
        .collect::<Result<_, _>>()?;
    let tokens: usize = tokenized.iter().map(Vec::len).sum();
    let pad = model.config.pad_token_id.unwrap_or(0);
    let device = model.device();
    let forward_all = |batches: &[Vec<u32>]| {
        for chunk in batches.chunks(args.batch_size.max(1)) {
            let tb = TokenBatch::left_padded(chunk, pad);
            let h = model.forward_hidden(&tb, None, ForwardOptions::default());
            // Read one value so that the device has finished.
            let _ = h.narrow(1, 0, 1).narrow(2, 0, 1).try_into_vec_as::<f32>();
        }
    };
    let warm: Vec<Vec<u32>> = tokenized
        .iter()
        .take(args.warmup_batches * args.batch_size)
        .cloned()
        .collect();
    forward_all(&warm);
    let start = Instant::now();
    forward_all(&tokenized);
    device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let plain = start.elapsed().as_secs_f64();

    let tmp = std::env::temp_dir().join(format!("gpt-oss-lite-bench-trace-{}", std::process::id()));
    let options = TraceOptions {
        batch_size: args.batch_size,
        ..Default::default()
    };
    let trace_into = |records: &[gpt_oss_model::dataset::Record]| -> anyhow::Result<f64> {
        let _ = std::fs::remove_dir_all(&tmp);
        let start = Instant::now();
        trace(
            model,
            tokenizer,
            records,
            "bench",
            &["bench".into()],
            &tmp,
            &options,
            &mut |_| {},
        )?;
        let seconds = start.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(seconds)
    };
    // Recording runs kernels the plain pass does not (expert-output norms): warm them up too,
    // on the same batches, so that neither figure includes shader compilation.
    trace_into(&records[..warm.len()])?;
    let traced = trace_into(&records)?;
    let out = json!({
        "model": args.model.model,
        "device": format!("{:?}", device),
        "samples": records.len(),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "forward_only_tokens_per_second": tokens as f64 / plain,
        "trace_tokens_per_second": tokens as f64 / traced,
        "recording_overhead": traced / plain - 1.0,
    });
    println!("{out}");
    Ok(())
}
