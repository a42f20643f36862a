//! `generate`: continue a prompt, greedy by default.

use std::time::Instant;

use gpt_oss_model::generate::{GenerateOptions, Sampling, generate};
use gpt_oss_model::harmony::render_user_turn;
use serde_json::json;

use crate::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Wrap the prompt as a harmony user turn (default system message, no date).
    #[arg(long)]
    pub chat: bool,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Re-run the whole sequence each step instead of using the KV cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print {"token_ids": [...], "text": "..."} (the continuation only).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let tokenizer = loaded.tokenizer()?;
    let text = if args.chat {
        render_user_turn(&args.prompt)
    } else {
        args.prompt.clone()
    };
    let prompt = tokenizer.encode(&text)?;
    anyhow::ensure!(!prompt.is_empty(), "the prompt encodes to no tokens");
    let options = GenerateOptions {
        max_new_tokens: args.max_tokens,
        stop_tokens: tokenizer.stop_tokens(&loaded.model.config),
        sampling: args.temperature.map(|temperature| Sampling {
            temperature,
            top_p: args.top_p,
            seed: args.seed,
        }),
        use_cache: !args.no_cache,
    };
    let start = Instant::now();
    let out = generate(&loaded.model, std::slice::from_ref(&prompt), &options).remove(0);
    let seconds = start.elapsed().as_secs_f64();
    // A process's first generation on the GPU also compiles and tunes its kernels (about 8 of
    // 8.7 s for 200 tokens of a 20b on an H100); `bench model` times warm decoding.
    tracing::info!(
        "{} prompt + {} new tokens in {seconds:.2}s ({:.1} new tokens/s, including the first \
         use's kernel compilation and tuning on a GPU)",
        prompt.len(),
        out.len(),
        out.len() as f64 / seconds
    );
    let continuation = tokenizer.decode(&out)?;
    if args.json {
        println!("{}", json!({"token_ids": out, "text": continuation}));
    } else {
        println!("{text}{continuation}");
    }
    Ok(())
}
