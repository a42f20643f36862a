//! `score`: per-token log-probabilities of a text.

use gpt_oss_model::ForwardOptions;
use gpt_oss_model::scoring::{DEFAULT_CHUNK, token_logprobs};
use serde_json::json;

use crate::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub text: String,
    /// Print {"token_ids": [...], "logprobs": [...]} (one log-probability per token after the first).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let tokenizer = loaded.tokenizer()?;
    let ids = tokenizer.encode(&args.text)?;
    anyhow::ensure!(
        ids.len() >= 2,
        "the text must encode to at least two tokens"
    );
    let logprobs = token_logprobs(
        &loaded.model,
        std::slice::from_ref(&ids),
        ForwardOptions::default(),
        DEFAULT_CHUNK,
    )
    .remove(0);
    if args.json {
        println!("{}", json!({"token_ids": ids, "logprobs": logprobs}));
        return Ok(());
    }
    let total: f64 = logprobs.iter().map(|&l| l as f64).sum();
    println!("{:>8}  {:>12}  token", "id", "logprob");
    for (i, id) in ids.iter().enumerate() {
        let piece = tokenizer.decode(&[*id])?;
        match i {
            0 => println!("{id:>8}  {:>12}  {piece:?}", "-"),
            _ => println!("{id:>8}  {:>12.6}  {piece:?}", logprobs[i - 1]),
        }
    }
    let n = logprobs.len() as f64;
    println!(
        "sum {total:.6}, mean {:.6}, perplexity {:.4}",
        total / n,
        (-total / n).exp()
    );
    Ok(())
}
