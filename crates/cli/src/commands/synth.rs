//! `synth`: a random checkpoint in the release layout (for full-size benchmarks).

use std::path::{Path, PathBuf};

use gpt_oss_model::GptOssConfig;
use gpt_oss_model::checkpoint::ExpertFormat;
use gpt_oss_model::config::{GPT_OSS_20B_CONFIG, GPT_OSS_120B_CONFIG};
use gpt_oss_model::synth::{SynthOptions, synth_checkpoint};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A published config: 20b or 120b.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// Any gpt-oss config.json.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Expert storage: mxfp4 (the release) or dense.
    #[arg(long, default_value = "mxfp4")]
    pub experts: String,
    /// Float storage: bf16 (the release) or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Largest shard in bytes.
    #[arg(long, default_value_t = 4_800_000_000)]
    pub shard_bytes: u64,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = match (&args.preset, &args.config) {
        (Some(p), None) => {
            let text = match p.as_str() {
                "20b" | "gpt-oss-20b" => GPT_OSS_20B_CONFIG,
                "120b" | "gpt-oss-120b" => GPT_OSS_120B_CONFIG,
                other => anyhow::bail!("unknown preset `{other}` (20b or 120b)"),
            };
            GptOssConfig::from_json_str(text, Path::new(p))?
        }
        (None, Some(path)) => GptOssConfig::from_file(path)?,
        _ => anyhow::bail!("give --preset or --config"),
    };
    let options = SynthOptions {
        seed: args.seed,
        experts: match args.experts.as_str() {
            "mxfp4" => ExpertFormat::Mxfp4,
            "dense" => ExpertFormat::Dense,
            other => anyhow::bail!("unknown expert format `{other}` (mxfp4 or dense)"),
        },
        float_dtype: match args.dtype.as_str() {
            "bf16" => safetensors::Dtype::BF16,
            "f32" => safetensors::Dtype::F32,
            other => anyhow::bail!("unknown dtype `{other}` (bf16 or f32)"),
        },
        max_shard_bytes: args.shard_bytes,
        force: args.force,
    };
    let start = std::time::Instant::now();
    let dir = synth_checkpoint(&config, &args.out, &options)?;
    tracing::info!(
        "wrote {} in {:.1}s",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
