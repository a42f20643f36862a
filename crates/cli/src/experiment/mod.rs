//! `run experiments/x.toml`: trace -> select (every strategy x budget) -> eval (expert mask by
//! default, or written checkpoints) -> report, each stage cached by the hash of its inputs.
//!
//! Cache: `--cache` (default target/experiments/<name>/): trace/, select/, eval/, checkpoints/.
//! Report: `--out` (default reports/<name>/). The report is rewritten on every run; it is a pure
//! function of the cached results, so a re-run gives identical files.

pub mod cache;
pub mod config;
mod trace_stage;

use std::path::{Path, PathBuf};

use anyhow::Context;
use gpt_oss_eval::results::read_summary;
use gpt_oss_eval::{EvalSummary, Variant};
use gpt_oss_model::ExpertResidency;
use gpt_oss_model::dataset::read_datasets;
use gpt_oss_model::device::DeviceChoice;
use gpt_oss_prune::{PruneOptions, checkpoint_size, prune_checkpoint};
use gpt_oss_report::{ExperimentReport, LayerUsage, TaskAccuracy, VariantResult, write_report};
use gpt_oss_select::registry::SelectionInput;
use gpt_oss_select::{
    ActivationCache, Budget, ExpertStats, Selection, StrategyParams, strategy_by_name,
};
use gpt_oss_trace::TraceOptions;
use gpt_oss_trace::activations::ActivationFiles;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::commands::eval::{evaluate_to, selection_mask};
use crate::commands::trace::file_id;
use crate::model_args::{LoadedModel, ModelArgs};
use cache::{Cache, StageKey, build_digest, folder_digest};
use config::Experiment;
use trace_stage::{Build, trace_stage};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The experiment file (experiments/*.toml).
    pub experiment: PathBuf,
    /// Checkpoint folder, replacing the file's `model`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Report folder (default reports/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stage cache (default target/experiments/<name>).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// auto, cpu or wgpu, replacing the file's `device`.
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Reuse the traces another build of gpt-oss-lite made (by default a rebuilt workbench
    /// traces again). For changes that cannot move the routing, such as a new strategy or
    /// metric; select and eval still run again.
    #[arg(long)]
    pub keep_traces: bool,
}

/// What happened to one stage (printed as JSON at the end: `ran` false means cached).
#[derive(Debug, Clone, Serialize)]
pub struct StageRun {
    pub stage: String,
    pub key: String,
    pub ran: bool,
}

/// One selection of the experiment: its strategy, budget and file.
struct Candidate {
    strategy: String,
    experts: usize,
    key: StageKey,
    selection: PathBuf,
}

/// Loads the model the first time a stage needs it.
struct LazyModel {
    args: ModelArgs,
    loaded: Option<LoadedModel>,
}

impl LazyModel {
    fn get(&mut self) -> anyhow::Result<&LoadedModel> {
        if self.loaded.is_none() {
            self.loaded = Some(self.args.load()?);
        }
        Ok(self.loaded.as_ref().expect("just loaded"))
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let experiment = Experiment::read(&args.experiment)?;
    let model_dir = args
        .model
        .clone()
        .or(experiment.model.clone())
        .with_context(|| {
            format!(
                "{}: no `model`; give --model DIR",
                args.experiment.display()
            )
        })?;
    let device = match args.device {
        Some(d) => d,
        None => experiment
            .device
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: device: {e}", args.experiment.display()))?,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("reports").join(&experiment.name));
    let cache = Cache {
        root: args
            .cache
            .clone()
            .unwrap_or_else(|| PathBuf::from("target/experiments").join(&experiment.name)),
    };
    let mut model = LazyModel {
        args: ModelArgs {
            model: model_dir.clone(),
            device,
            experts: ExpertResidency::Auto,
            moe: crate::model_args::MoeChoice::Auto,
            weights: crate::model_args::WeightsChoice::Auto,
        },
        loaded: None,
    };
    let mut runs = vec![];
    // The model's files and the binary that runs the stages: select and eval outputs are
    // reused only for the same checkpoint and the same build. Traces are keyed by the files
    // and record their build (`trace_stage`), so `--keep-traces` can keep another build's.
    let build = Build {
        digest: build_digest()?,
        keep_traces: args.keep_traces,
    };
    let files_key = folder_digest(&model_dir)?;
    let model_key = StageKey::of(&[&files_key, &build.digest]).0;

    // Trace.
    let t = &experiment.trace;
    let needs_activations = experiment
        .select
        .strategies
        .iter()
        .any(|s| s == "reconstruction");
    let calibration = trace_stage(
        &mut model,
        &cache,
        (&files_key, &build),
        "calibration",
        &t.calibration,
        TraceOptions {
            batch_size: t.batch_size,
            cache_activation_tokens: if needs_activations {
                t.cache_activations.max(1)
            } else {
                0
            },
            ..Default::default()
        },
        &mut runs,
    )?;
    let protect = if t.protect.is_empty() {
        None
    } else {
        Some(trace_stage(
            &mut model,
            &cache,
            (&files_key, &build),
            "protect",
            &t.protect,
            TraceOptions {
                batch_size: t.batch_size,
                answer_only: true,
                ..Default::default()
            },
            &mut runs,
        )?)
    };

    // Select.
    let calibration_stats = ExpertStats::read(&calibration.0.join("stats.json"))?;
    let mut with_protect = calibration_stats.clone();
    if let Some((dir, _)) = &protect {
        with_protect.merge(&ExpertStats::read(&dir.join("stats.json"))?)?;
    }
    let s = &experiment.select;
    let mut params = StrategyParams {
        seed: s.seed,
        beam_width: s.beam_width,
        ..Default::default()
    };
    if !s.protect_tasks.is_empty() {
        params.protect_tasks = s.protect_tasks.clone();
    }
    let activations = ActivationFiles {
        dir: calibration.0.clone(),
    };
    let mut variants = vec![];
    for &k in &s.experts_per_layer {
        for name in &s.strategies {
            let sees_protect = protect.is_some() && s.protect_strategies.contains(name);
            let key = StageKey::of(&[
                "select",
                &build.digest,
                &calibration.1.0,
                if sees_protect {
                    &protect.as_ref().expect("checked").1.0
                } else {
                    ""
                },
                name,
                &k.to_string(),
                &serde_json::to_string(&params)?,
            ]);
            let dir = cache.dir("select", &format!("{name}-{k}"), &key);
            let selection = dir.join("selection.json");
            let ran = !Cache::is_done(&dir);
            if ran {
                let stats = if sees_protect {
                    &with_protect
                } else {
                    &calibration_stats
                };
                let input = SelectionInput {
                    stats,
                    activations: (name == "reconstruction")
                        .then_some(&activations as &dyn ActivationCache),
                    params: &params,
                };
                let chosen = strategy_by_name(name)?
                    .select(&input, Budget::Uniform(k))
                    .with_context(|| format!("{name} at {k} experts per layer"))?;
                std::fs::create_dir_all(&dir)?;
                chosen.write(&selection)?;
                Cache::mark_done(&dir)?;
            }
            runs.push(StageRun {
                stage: format!("select {name} {k}"),
                key: key.short().into(),
                ran,
            });
            variants.push(Candidate {
                strategy: name.clone(),
                experts: k,
                key,
                selection,
            });
        }
    }

    // Eval.
    let e = &experiment.eval;
    let mut data_ids = vec![
        format!("batch {}", e.batch_size),
        format!("checkpoints {}", e.write_checkpoints),
    ];
    for p in e.probes.iter().chain(&e.heldout) {
        data_ids.push(file_id(p)?);
    }
    let data_key = StageKey::of(&data_ids.iter().map(String::as_str).collect::<Vec<_>>());
    let probes = read_datasets(&e.probes)?;
    let heldout = read_datasets(&e.heldout)?;
    let bar = ProgressBar::new(variants.len() as u64 + 1);
    bar.set_style(
        ProgressStyle::with_template(
            "eval {bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("template"),
    );
    let mut evaluate = |label: &str,
                        variant: Option<&Candidate>,
                        runs: &mut Vec<StageRun>|
     -> anyhow::Result<EvalSummary> {
        let key = StageKey::of(&[
            "eval",
            &model_key,
            variant.map_or("full", |v| &v.key.0),
            &data_key.0,
        ]);
        let dir = cache.dir("eval", label, &key);
        bar.set_message(label.to_string());
        let ran = !Cache::is_done(&dir);
        if ran {
            let results = dir.join("results");
            match variant {
                Some(v) if e.write_checkpoints => {
                    let pruned = cache.dir("checkpoints", label, &v.key);
                    if !pruned.join("expert_selection.json").exists() {
                        prune_checkpoint(
                            &model_dir,
                            &Selection::read(&v.selection)?,
                            &pruned,
                            &PruneOptions {
                                force: true,
                                ..Default::default()
                            },
                        )?;
                    }
                    let pruned = ModelArgs {
                        model: pruned,
                        device,
                        experts: ExpertResidency::Auto,
                        moe: crate::model_args::MoeChoice::Auto,
                        weights: crate::model_args::WeightsChoice::Auto,
                    }
                    .load()?;
                    let full = model.get()?;
                    evaluate_to(
                        &full.model,
                        Variant::Model(&pruned.model),
                        full.tokenizer()?,
                        &probes,
                        &heldout,
                        e.batch_size,
                        &results,
                    )?;
                }
                _ => {
                    let loaded = model.get()?;
                    let mask = variant
                        .map(|v| selection_mask(&loaded.model, &v.selection))
                        .transpose()?;
                    evaluate_to(
                        &loaded.model,
                        mask.as_ref().map_or(Variant::Full, Variant::Masked),
                        loaded.tokenizer()?,
                        &probes,
                        &heldout,
                        e.batch_size,
                        &results,
                    )?;
                }
            }
            Cache::mark_done(&dir)?;
        }
        bar.inc(1);
        runs.push(StageRun {
            stage: format!("eval {label}"),
            key: key.short().into(),
            ran,
        });
        Ok(read_summary(&dir.join("results"))?)
    };
    let full_summary = evaluate("full", None, &mut runs)?;
    let mut summaries = vec![];
    for v in &variants {
        summaries.push(evaluate(
            &format!("{}-{}", v.strategy, v.experts),
            Some(v),
            &mut runs,
        )?);
    }
    bar.finish_and_clear();

    // Report.
    let size = checkpoint_size(&model_dir)?;
    let layers = calibration_stats.num_layers;
    let full = variant_result(
        "full model",
        "full",
        size.num_experts,
        layers,
        size.total,
        &full_summary,
    );
    let variant_results: Vec<VariantResult> = variants
        .iter()
        .zip(&summaries)
        .map(|(v, s)| {
            variant_result(
                &format!("{} {}", v.strategy, v.experts),
                &v.strategy,
                v.experts,
                layers,
                size.with_experts(v.experts),
                s,
            )
        })
        .collect();
    let tasks: Vec<String> = full_summary.tasks.iter().map(|t| t.task.clone()).collect();
    let r = &experiment.report;
    let report = ExperimentReport {
        name: experiment.name.clone(),
        description: experiment.description.clone(),
        inputs: report_inputs(&experiment, &model_dir),
        full,
        variants: variant_results,
        focus_tasks: if r.focus_tasks.is_empty() {
            tasks.clone()
        } else {
            r.focus_tasks.clone()
        },
        tasks,
        focus_label: r
            .focus_label
            .clone()
            .unwrap_or_else(|| "the focus tasks".into()),
        baseline_strategy: r
            .baseline_strategy
            .clone()
            .unwrap_or_else(|| "frequency".into()),
        usage: usage_by_layer(&calibration_stats),
        hidden_norm_budget: r
            .hidden_norms_experts
            .or_else(|| s.experts_per_layer.iter().copied().max()),
    };
    let path = write_report(&out, &report)?;
    runs.push(StageRun {
        stage: "report".into(),
        key: String::new(),
        ran: true,
    });
    let ran = runs.iter().filter(|r| r.ran).count();
    tracing::info!(
        "{}: {} stages, {} run, {} cached, in {:.1}s",
        path.display(),
        runs.len(),
        ran,
        runs.len() - ran,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({"report": path, "stages": runs}))?
    );
    Ok(())
}

fn accuracy(t: &gpt_oss_eval::TaskSummary) -> TaskAccuracy {
    TaskAccuracy {
        correct: t.correct,
        items: t.items,
        accuracy: t.accuracy,
        low: t.accuracy_low,
        high: t.accuracy_high,
    }
}

fn variant_result(
    configuration: &str,
    strategy: &str,
    experts: usize,
    layers: usize,
    bytes: u64,
    s: &EvalSummary,
) -> VariantResult {
    VariantResult {
        configuration: configuration.into(),
        strategy: strategy.into(),
        experts_per_layer: experts,
        total_experts: experts * layers,
        bytes,
        tasks: s
            .tasks
            .iter()
            .map(|t| (t.task.clone(), accuracy(t)))
            .collect(),
        overall: accuracy(&s.overall),
        mean_kl: s
            .fidelity
            .as_ref()
            .filter(|_| strategy != "full")
            .map(|f| f.mean_kl),
        top1_agreement: s.fidelity.as_ref().map(|f| f.top1_agreement),
        perplexity: s.fidelity.as_ref().map(|f| f.perplexity),
        hidden_norms: s.hidden_norms.clone(),
    }
}

/// Per layer, each task's share of top-k selections per expert.
fn usage_by_layer(stats: &ExpertStats) -> Vec<LayerUsage> {
    (0..stats.num_layers)
        .map(|layer| LayerUsage {
            layer,
            tasks: stats.tasks.clone(),
            shares: stats
                .tasks
                .iter()
                .map(|task| {
                    let counts: Vec<f64> = stats
                        .layer_totals(layer, Some(std::slice::from_ref(task)))
                        .iter()
                        .map(|c| c.count as f64)
                        .collect();
                    let total: f64 = counts.iter().sum::<f64>().max(1.0);
                    counts.iter().map(|c| c / total).collect()
                })
                .collect(),
        })
        .collect()
}

fn report_inputs(e: &Experiment, model: &Path) -> Vec<String> {
    let list = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![
        format!("model: `{}`", model.display()),
        format!("calibration data: {}", list(&e.trace.calibration)),
    ];
    if !e.trace.protect.is_empty() {
        lines.push(format!(
            "protected-task data (answer tokens, seen by {}): {}",
            e.select.protect_strategies.join(", "),
            list(&e.trace.protect)
        ));
    }
    lines.push(format!("strategies: {}", e.select.strategies.join(", ")));
    lines.push(format!(
        "experts per layer: {}",
        e.select
            .experts_per_layer
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    lines.push(format!("probes: {}", list(&e.eval.probes)));
    if !e.eval.heldout.is_empty() {
        lines.push(format!("held-out text: {}", list(&e.eval.heldout)));
    }
    lines.push(format!(
        "evaluated through {}",
        if e.eval.write_checkpoints {
            "written pruned checkpoints"
        } else {
            "the expert mask on the full model (identical to the written checkpoints)"
        }
    ));
    lines
}
