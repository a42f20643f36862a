//! An experiment's report folder: report.md with the quality table, what the numbers say about
//! the focus tasks, and the plots; quality-table.md and .csv; results.csv (one row per
//! configuration and task); plots/ as PNG and SVG. A pure function of its inputs: the same
//! results give byte-identical files.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bars::{BarSeries, grouped_bar_chart};
use crate::heatmap::heatmap;
use crate::line::{Series, line_chart};
use crate::table::{VariantResult, human_bytes, quality_table_csv, quality_table_markdown};
use crate::{ReportError, Result};

/// Expert usage of one layer on the calibration data: `shares[task][expert]`, each task's
/// top-k selections normalised to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerUsage {
    pub layer: usize,
    pub tasks: Vec<String>,
    pub shares: Vec<Vec<f64>>,
}

/// Everything a report shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub name: String,
    /// The experiment file's description (markdown).
    pub description: String,
    /// The model and data, one line each, for the reader.
    pub inputs: Vec<String>,
    pub full: VariantResult,
    /// Every strategy at every budget.
    pub variants: Vec<VariantResult>,
    /// Probe tasks in display order.
    pub tasks: Vec<String>,
    /// The tasks the findings are about (arithmetic for the original question).
    pub focus_tasks: Vec<String>,
    /// What the findings call them ("arithmetic").
    pub focus_label: String,
    /// The strategy the findings compare against (the original project's: frequency).
    pub baseline_strategy: String,
    pub usage: Vec<LayerUsage>,
    /// The budget whose variants the hidden-norm plot shows.
    pub hidden_norm_budget: Option<usize>,
}

impl ExperimentReport {
    pub(crate) fn budgets(&self) -> Vec<usize> {
        let set: BTreeSet<usize> = self.variants.iter().map(|v| v.experts_per_layer).collect();
        set.into_iter().rev().collect()
    }

    pub(crate) fn strategies(&self) -> Vec<String> {
        let mut seen = vec![];
        for v in &self.variants {
            if !seen.contains(&v.strategy) {
                seen.push(v.strategy.clone());
            }
        }
        seen
    }

    /// One line per strategy of `value` over the budgets (ascending), ending at `full` when given.
    pub(crate) fn strategy_series(
        &self,
        value: impl Fn(&VariantResult) -> Option<f64>,
        full: Option<(f64, f64)>,
    ) -> Vec<Series> {
        self.strategies()
            .into_iter()
            .map(|name| Series {
                points: self
                    .budgets()
                    .iter()
                    .rev()
                    .filter_map(|&k| {
                        self.variant(&name, k)
                            .and_then(&value)
                            .map(|y| (k as f64, y))
                    })
                    .chain(full)
                    .collect(),
                name,
            })
            .collect()
    }

    pub(crate) fn variant(&self, strategy: &str, k: usize) -> Option<&VariantResult> {
        self.variants
            .iter()
            .find(|v| v.strategy == strategy && v.experts_per_layer == k)
    }
}

fn rows(report: &ExperimentReport) -> Vec<VariantResult> {
    let mut rows = vec![report.full.clone()];
    for k in report.budgets() {
        for name in report.strategies() {
            if let Some(v) = report.variant(&name, k) {
                rows.push(v.clone());
            }
        }
    }
    rows
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| ReportError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn relative(files: &[PathBuf], dir: &Path) -> String {
    files
        .first()
        .and_then(|f| f.strip_prefix(dir).ok())
        .map_or(String::new(), |p| p.display().to_string())
}

/// Writes the report folder `dir` (created if missing; files of the same names replaced).
pub fn write_report(dir: &Path, report: &ExperimentReport) -> Result<PathBuf> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| ReportError::Write {
        path: plots.clone(),
        message: e.to_string(),
    })?;
    let rows = rows(report);
    let table = quality_table_markdown(&rows, &report.tasks);
    write(&dir.join("quality-table.md"), &table)?;
    write(
        &dir.join("quality-table.csv"),
        &quality_table_csv(&rows, &report.tasks),
    )?;
    let mut results = String::from(
        "configuration,strategy,experts_per_layer,task,correct,items,accuracy,low,high\n",
    );
    for r in &rows {
        for (task, a) in r.tasks.iter().chain([(&"all".to_string(), &r.overall)]) {
            let _ = writeln!(
                results,
                "{},{},{},{task},{},{},{:.6},{:.6},{:.6}",
                r.configuration,
                r.strategy,
                r.experts_per_layer,
                a.correct,
                a.items,
                a.accuracy,
                a.low,
                a.high
            );
        }
    }
    write(&dir.join("results.csv"), &results)?;

    let strategies = report.strategies();
    let budgets = report.budgets();
    let full_k = report.full.experts_per_layer as f64;
    // Quality versus experts kept, one line per strategy, per task (and all probes).
    let mut quality_plots = vec![];
    for task in report
        .tasks
        .iter()
        .chain(std::iter::once(&"all".to_string()))
    {
        let accuracy = |v: &VariantResult| {
            if task == "all" {
                Some(v.overall.accuracy)
            } else {
                v.tasks.get(task).map(|a| a.accuracy)
            }
        };
        let full_point = accuracy(&report.full).map(|a| (full_k, 100.0 * a));
        let mut series = report.strategy_series(|v| accuracy(v).map(|a| 100.0 * a), full_point);
        series.push(Series {
            name: "full model".into(),
            points: accuracy(&report.full)
                .map(|a| {
                    let lowest = budgets.last().copied().unwrap_or(0) as f64;
                    vec![(lowest, 100.0 * a), (full_k, 100.0 * a)]
                })
                .unwrap_or_default(),
        });
        let files = line_chart(
            &plots.join(format!("quality-{task}")),
            &format!("{task}: accuracy versus experts kept per layer"),
            "experts per layer",
            "greedy exact match (%)",
            &series,
        )?;
        quality_plots.push((task.clone(), relative(&files, dir)));
    }
    // Fidelity versus experts kept.
    let kl_series: Vec<Series> = report
        .strategy_series(|v| v.mean_kl, None)
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect();
    let kl_plot = if kl_series.is_empty() {
        None
    } else {
        Some(relative(
            &line_chart(
                &plots.join("fidelity-kl"),
                "KL divergence from the full model on held-out text",
                "experts per layer",
                "mean KL (nats per token)",
                &kl_series,
            )?,
            dir,
        ))
    };
    // Per-task accuracy bars per variant, one chart per budget.
    let mut bar_plots = vec![];
    for &k in &budgets {
        let mut series = vec![BarSeries {
            name: "full model".into(),
            values: report
                .tasks
                .iter()
                .map(|t| report.full.tasks.get(t).map_or(0.0, |a| a.accuracy))
                .collect(),
        }];
        for name in &strategies {
            if let Some(v) = report.variant(name, k) {
                series.push(BarSeries {
                    name: name.clone(),
                    values: report
                        .tasks
                        .iter()
                        .map(|t| v.tasks.get(t).map_or(0.0, |a| a.accuracy))
                        .collect(),
                });
            }
        }
        let files = grouped_bar_chart(
            &plots.join(format!("accuracy-{k}-experts")),
            &format!("accuracy per task, {k} experts per layer"),
            "greedy exact match (share)",
            &report.tasks,
            &series,
        )?;
        bar_plots.push((k, relative(&files, dir)));
    }
    // Expert usage heatmaps, one per layer.
    let mut usage_plots = vec![];
    for u in &report.usage {
        let files = heatmap(
            &plots.join(format!("usage-layer-{:02}", u.layer)),
            &format!("layer {}: share of each task's routing per expert", u.layer),
            "expert",
            &u.tasks,
            &u.shares,
        )?;
        usage_plots.push((u.layer, relative(&files, dir)));
    }
    // Hidden-state norms per layer, full versus pruned.
    let norm_plot = match report.hidden_norm_budget {
        Some(k) if !report.full.hidden_norms.is_empty() => {
            let layer_points = |norms: &[f64]| -> Vec<(f64, f64)> {
                norms
                    .iter()
                    .enumerate()
                    .map(|(l, &n)| (l as f64, n))
                    .collect()
            };
            let mut series = vec![Series {
                name: "full model".into(),
                points: layer_points(&report.full.hidden_norms),
            }];
            for name in &strategies {
                if let Some(v) = report
                    .variant(name, k)
                    .filter(|v| !v.hidden_norms.is_empty())
                {
                    series.push(Series {
                        name: format!("{name} {k}"),
                        points: layer_points(&v.hidden_norms),
                    });
                }
            }
            Some((
                k,
                relative(
                    &line_chart(
                        &plots.join("hidden-norms"),
                        &format!(
                            "hidden-state norm after each layer, full and {k} experts per layer"
                        ),
                        "layer",
                        "mean L2 norm of the hidden state",
                        &series,
                    )?,
                    dir,
                ),
            ))
        }
        _ => None,
    };

    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", report.name);
    if !report.description.trim().is_empty() {
        let _ = writeln!(md, "{}\n", report.description.trim());
    }
    for line in &report.inputs {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(
        md,
        "\nThe full model: {} experts per layer, {} in all, {}.\n",
        report.full.experts_per_layer,
        report.full.total_experts,
        human_bytes(report.full.bytes)
    );
    let _ = writeln!(md, "## Findings\n\n{}", report.findings());
    let _ = writeln!(
        md,
        "## Quality table\n\nGreedy exact match per task; memory is the tensor bytes of the checkpoint \
         `prune` writes for the configuration (spec 8.2); KL and top-1 agreement compare next-token \
         distributions with the full model's on held-out text. Per-task 95% intervals are in \
         results.csv.\n\n{table}"
    );
    let _ = writeln!(md, "## Quality versus experts kept\n");
    for (task, file) in &quality_plots {
        let _ = writeln!(md, "![{task}]({file})");
    }
    if let Some(file) = kl_plot {
        let _ = writeln!(md, "\n![fidelity]({file})");
    }
    let _ = writeln!(md, "\n## Accuracy per task\n");
    for (k, file) in &bar_plots {
        let _ = writeln!(md, "![{k} experts]({file})");
    }
    if let Some((k, file)) = norm_plot {
        let _ = writeln!(
            md,
            "\n## Hidden-state norms\n\nMean L2 norm of the hidden state after each layer on held-out \
             text, the full model against every strategy at {k} experts per layer. A jump that \
             appears only in a pruned variant is damage, not a property of the model.\n\n![hidden norms]({file})"
        );
        let _ = writeln!(
            md,
            "\n| layer | full model |{}",
            strategies
                .iter()
                .filter(|n| report.variant(n, k).is_some())
                .map(|n| format!(" {n} {k} |"))
                .collect::<String>()
        );
        let _ = writeln!(
            md,
            "| --- | --- |{}",
            strategies
                .iter()
                .filter(|n| report.variant(n, k).is_some())
                .map(|_| " --- |")
                .collect::<String>()
        );
        for (l, full) in report.full.hidden_norms.iter().enumerate() {
            let _ = write!(md, "| {l} | {full:.2} |");
            for name in &strategies {
                if let Some(v) = report.variant(name, k) {
                    let _ = write!(
                        md,
                        " {} |",
                        v.hidden_norms
                            .get(l)
                            .map_or("n/a".into(), |n| format!("{n:.2}"))
                    );
                }
            }
            let _ = writeln!(md);
        }
    }
    if !usage_plots.is_empty() {
        let _ = writeln!(
            md,
            "\n## Expert usage by task\n\nShare of each task's top-k routing that goes to each expert, \
             per layer, on the calibration data.\n"
        );
        for (layer, file) in &usage_plots {
            let _ = writeln!(md, "![layer {layer}]({file})");
        }
    }
    let path = dir.join("report.md");
    write(&path, &md)?;
    Ok(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::table::tests::variant;

    pub(crate) fn report() -> ExperimentReport {
        ExperimentReport {
            name: "demo".into(),
            description: "A hand-made experiment.".into(),
            inputs: vec!["model: demo".into()],
            full: variant("full", 32, 49, 50),
            variants: vec![
                variant("frequency", 16, 20, 50),
                variant("math-probe-aware", 16, 47, 48),
                variant("frequency", 8, 5, 45),
                variant("math-probe-aware", 8, 40, 40),
            ],
            tasks: vec!["add".into(), "capital".into()],
            focus_tasks: vec!["add".into()],
            focus_label: "arithmetic".into(),
            baseline_strategy: "frequency".into(),
            usage: vec![LayerUsage {
                layer: 0,
                tasks: vec!["add".into(), "capital".into()],
                shares: vec![vec![0.5, 0.5, 0.0], vec![0.0, 0.25, 0.75]],
            }],
            hidden_norm_budget: Some(8),
        }
    }

    #[test]
    fn report_folder_has_table_plots_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_report(dir.path(), &report()).unwrap();
        let md = std::fs::read_to_string(&path).unwrap();
        assert!(md.contains("| math-probe-aware 8 | 8 | 32 |"), "{md}");
        for file in [
            "plots/quality-add.png",
            "plots/quality-all.svg",
            "plots/fidelity-kl.png",
            "plots/accuracy-16-experts.png",
            "plots/usage-layer-00.png",
            "plots/hidden-norms.svg",
        ] {
            assert!(dir.path().join(file).exists(), "{file}");
            assert!(
                md.contains(&file.replace(".svg", ".png")),
                "report.md links {file}"
            );
        }
        let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        assert!(
            csv.contains("frequency 8,frequency,8,add,5,50,0.100000"),
            "{csv}"
        );
        let again = tempfile::tempdir().unwrap();
        write_report(again.path(), &report()).unwrap();
        for file in [
            "report.md",
            "quality-table.csv",
            "results.csv",
            "plots/quality-add.svg",
            "plots/quality-add.png",
        ] {
            assert_eq!(
                std::fs::read(dir.path().join(file)).unwrap(),
                std::fs::read(again.path().join(file)).unwrap(),
                "{file} differs between two writes"
            );
        }
    }
}
