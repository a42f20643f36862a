//! `eval`: probe suites and held-out text on a model, or on a selection of its experts through
//! the expert mask; per-item and per-task results with confidence intervals.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gpt_oss_eval::results::write_results;
use gpt_oss_eval::{EvalSummary, Variant, evaluate_heldout, evaluate_probes, summarize};
use gpt_oss_model::dataset::{Record, read_datasets};
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{ExpertMask, GptOss};
use gpt_oss_select::Selection;

use crate::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Evaluate only these experts (selection.json), masking the others in the full model.
    #[arg(long)]
    pub selection: Option<PathBuf>,
    /// Probe suites (JSONL: id, task, prompt, answer[, chat]), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub probes: Vec<PathBuf>,
    /// Held-out text (JSONL: id, task, text) for perplexity and fidelity to the full model.
    #[arg(long, value_delimiter = ',')]
    pub heldout: Vec<PathBuf>,
    /// Output folder: items.csv, tasks.csv, heldout.csv, summary.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

/// The expert mask a selection stands for on `model`, or a clear error when they do not fit.
pub fn selection_mask(model: &GptOss, path: &Path) -> anyhow::Result<ExpertMask> {
    let selection = Selection::read(path)?;
    let c = &model.config;
    anyhow::ensure!(
        selection.num_experts == c.num_experts && selection.layers.len() == c.num_hidden_layers,
        "{}: made for {} layers x {} experts, the model has {} x {}",
        path.display(),
        selection.layers.len(),
        selection.num_experts,
        c.num_hidden_layers,
        c.num_experts
    );
    ExpertMask::keep_only(
        &selection.layers,
        c.num_hidden_layers,
        c.num_experts,
        c.experts_per_token,
    )
    .with_context(|| format!("{}", path.display()))
}

/// Probes and held-out text of one configuration (`variant`, compared with the `full` model),
/// written to `out`; returns the summary.
pub fn evaluate_to(
    full: &GptOss,
    variant: Variant<'_>,
    tokenizer: &TextTokenizer,
    probes: &[Record],
    heldout: &[Record],
    batch_size: usize,
    out: &Path,
) -> anyhow::Result<EvalSummary> {
    let (model, mask) = variant.resolve(full);
    let probe_results = evaluate_probes(model, tokenizer, probes, mask, batch_size)?;
    let heldout_result = if heldout.is_empty() {
        None
    } else {
        Some(evaluate_heldout(
            full, variant, tokenizer, heldout, batch_size,
        )?)
    };
    let summary = summarize(&probe_results, heldout_result.as_ref());
    write_results(out, &probe_results, heldout_result.as_ref(), &summary)?;
    Ok(summary)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let (model, tokenizer) = (&loaded.model, loaded.tokenizer()?);
    let mask = args
        .selection
        .as_deref()
        .map(|p| selection_mask(model, p))
        .transpose()?;
    let probes = read_datasets(&args.probes)?;
    let heldout = read_datasets(&args.heldout)?;
    let variant = mask.as_ref().map_or(Variant::Full, Variant::Masked);
    let summary = evaluate_to(
        model,
        variant,
        tokenizer,
        &probes,
        &heldout,
        args.batch_size,
        &args.out,
    )?;
    for t in summary.tasks.iter().chain([&summary.overall]) {
        eprintln!(
            "{:>12}: {:>4}/{:<4} {:5.1}% (95% CI {:.1} to {:.1}), mean answer log-prob {:.3}",
            t.task,
            t.correct,
            t.items,
            100.0 * t.accuracy,
            100.0 * t.accuracy_low,
            100.0 * t.accuracy_high,
            t.mean_answer_logprob
        );
    }
    if let Some(f) = &summary.fidelity {
        eprintln!(
            "held-out: {} tokens, perplexity {:.3} (full {:.3}), KL to full {:.4} nats/token, top-1 agreement {:.1}%",
            f.tokens,
            f.perplexity,
            f.perplexity_full,
            f.mean_kl,
            100.0 * f.top1_agreement
        );
    }
    println!("{}", serde_json::to_string(&summary)?);
    tracing::info!("wrote {}", args.out.display());
    Ok(())
}
