//! `prune`: a pruned checkpoint in the release layout from a selection.

use std::path::PathBuf;

use gpt_oss_prune::{PruneOptions, prune_checkpoint};
use gpt_oss_select::Selection;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source checkpoint folder (never written to).
    #[arg(long)]
    pub model: PathBuf,
    /// selection.json from `select`.
    #[arg(long)]
    pub selection: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
    /// Largest shard in bytes.
    #[arg(long, default_value_t = 4_800_000_000)]
    pub shard_bytes: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let selection = Selection::read(&args.selection)?;
    let report = prune_checkpoint(
        &args.model,
        &selection,
        &args.out,
        &PruneOptions {
            force: args.force,
            max_shard_bytes: args.shard_bytes,
        },
    )?;
    tracing::info!(
        "{}: {} experts per layer; {} tensors copied, {} sliced, none dropped; {} -> {} tensor bytes",
        report.out.display(),
        report.kept_per_layer,
        report.tensors_copied,
        report.tensors_sliced,
        report.source_bytes,
        report.output_bytes
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
