//! `gpt-oss-lite`: the workbench's command line.

mod commands;
mod experiment;
mod host;
mod model_args;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gpt-oss-lite",
    version,
    about = "Expert-selection workbench for gpt-oss MoE models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt (greedy unless --temperature is given).
    Generate(commands::generate::Args),
    /// Per-token log-probabilities of a text.
    Score(commands::score::Args),
    /// Config summary, tensor inventory and bytes per component.
    Inspect(commands::inspect::Args),
    /// Write a random checkpoint in the release layout for any config.
    Synth(commands::synth::Args),
    /// Write a pruned checkpoint (release layout, loads in transformers) from a selection.
    Prune(commands::prune::Args),
    /// Benchmarks (tokens/s).
    #[command(subcommand)]
    Bench(commands::bench::Bench),
    /// Rewrite oss-nano's calibration and probe sets (datasets/nano) from the curriculum seed.
    NanoData(commands::train_nano::DataArgs),
    /// Rewrite a trained oss-nano's model card (README.md) from its training.json.
    NanoCard(commands::train_nano::CardArgs),
    /// Record routing of datasets into Parquet shards and per-expert statistics.
    Trace(commands::trace::Args),
    /// Choose the experts to keep per layer from trace statistics.
    Select(commands::select::Args),
    /// Probe suites and held-out text on a model or a selection of its experts.
    Eval(commands::eval::Args),
    /// Run an experiment file: trace, select, eval, report (each stage cached).
    Run(experiment::Args),
    /// Build oss-nano from its seed: curriculum, tokenizer, training, MXFP4 export, model card.
    TrainNano(commands::train_nano::Args),
}

/// Dispatches cubecl's wgpu runtime encodes into one command buffer before submitting it
/// (cubecl's default: 32). A replayed batch-1 decode step is about 300 small dispatches; on an
/// H100 it ran at 182 tok/s with 32, 197 with 128, 197 with 512, 195 with 2048
/// (docs/benchmarks.md, eighth round). `CUBECL_WGPU_MAX_TASKS` set by the user wins.
const WGPU_TASKS_PER_SUBMIT: &str = "128";

fn main() -> std::process::ExitCode {
    if std::env::var_os("CUBECL_WGPU_MAX_TASKS").is_none() {
        // Safety: the first statement of `main`: no other thread exists yet to read the
        // environment concurrently.
        unsafe { std::env::set_var("CUBECL_WGPU_MAX_TASKS", WGPU_TASKS_PER_SUBMIT) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Score(a) => commands::score::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Synth(a) => commands::synth::run(a),
        Command::TrainNano(a) => commands::train_nano::run(a),
        Command::Trace(a) => commands::trace::run(a),
        Command::NanoData(a) => commands::train_nano::run_data(a),
        Command::NanoCard(a) => commands::train_nano::run_card(a),
        Command::Bench(b) => commands::bench::run(b),
        Command::Prune(a) => commands::prune::run(a),
        Command::Select(a) => commands::select::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Run(a) => experiment::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, not a backtrace: errors name the file and what is wrong.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
