//! `select`: kept experts per layer from trace statistics, by a named strategy.

use std::path::PathBuf;

use gpt_oss_select::{
    Budget, ExpertStats, StrategyParams, registry::SelectionInput, strategy_by_name, strategy_names,
};
use gpt_oss_trace::activations::ActivationFiles;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trace folders (their stats.json are merged, task by task), comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "list")]
    pub stats: Vec<PathBuf>,
    /// Strategy name (see --list).
    #[arg(long, default_value = "frequency")]
    pub strategy: String,
    /// Experts kept in every layer.
    #[arg(long, conflicts_with = "total")]
    pub experts: Option<usize>,
    /// Experts kept in total, allocated across layers.
    #[arg(long)]
    pub total: Option<usize>,
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tasks whose routing `math-probe-aware` protects, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub protect_tasks: Option<Vec<String>>,
    #[arg(long, default_value_t = 0.9)]
    pub protect_share: f64,
    #[arg(long, default_value_t = 1)]
    pub beam_width: usize,
    /// List the strategies and exit.
    #[arg(long)]
    pub list: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.list {
        for name in strategy_names() {
            println!("{name:<20} {}", strategy_by_name(name)?.description());
        }
        return Ok(());
    }
    let mut stats: Option<ExpertStats> = None;
    for dir in &args.stats {
        let part = ExpertStats::read(&dir.join("stats.json"))?;
        match stats.as_mut() {
            None => stats = Some(part),
            Some(s) => s.merge(&part)?,
        }
    }
    let stats = stats.ok_or_else(|| anyhow::anyhow!("give --stats DIR (a trace folder)"))?;
    let budget = match (args.experts, args.total) {
        (Some(k), None) => Budget::Uniform(k),
        (None, Some(n)) => Budget::Global(n),
        _ => anyhow::bail!("give --experts K (per layer) or --total N"),
    };
    let mut params = StrategyParams {
        seed: args.seed,
        protect_share: args.protect_share,
        beam_width: args.beam_width,
        ..Default::default()
    };
    if let Some(t) = args.protect_tasks {
        params.protect_tasks = t;
    }
    let activations = args
        .stats
        .iter()
        .find(|d| d.join("activations").exists())
        .map(|d| ActivationFiles { dir: d.clone() });
    let strategy = strategy_by_name(&args.strategy)?;
    let input = SelectionInput {
        stats: &stats,
        activations: activations
            .as_ref()
            .map(|a| a as &dyn gpt_oss_select::ActivationCache),
        params: &params,
    };
    let selection = strategy.select(&input, budget)?;
    match &args.out {
        Some(path) => {
            selection.write(path)?;
            tracing::info!(
                "{}: {} experts kept ({} per layer on average)",
                path.display(),
                selection.total_kept(),
                selection.total_kept() / selection.layers.len()
            );
        }
        None => println!("{}", serde_json::to_string_pretty(&selection)?),
    }
    Ok(())
}
