//! experiments/*.toml: what to trace, which strategies and budgets to select with, what to
//! evaluate, what the report is about. Paths are relative to the folder the command runs in (the
//! repository root for the committed experiments).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// The report's title and folder name (default: the file's stem).
    #[serde(default)]
    pub name: String,
    /// Shown at the top of the report.
    #[serde(default)]
    pub description: String,
    /// Checkpoint folder (`--model` on the command line replaces it).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// auto, cpu or wgpu.
    #[serde(default = "default_device")]
    pub device: String,
    pub trace: TraceConfig,
    pub select: SelectConfig,
    pub eval: EvalConfig,
    #[serde(default)]
    pub report: ReportConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// The calibration data every strategy selects from.
    pub calibration: Vec<PathBuf>,
    /// Probe-form data whose answer tokens the strategies in `select.protect_strategies` also
    /// see (traced with answer-only statistics).
    #[serde(default)]
    pub protect: Vec<PathBuf>,
    /// Tokens per layer whose activations are cached for the `reconstruction` strategy.
    #[serde(default)]
    pub cache_activations: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    pub strategies: Vec<String>,
    /// Experts kept in every layer; one selection per strategy and budget.
    pub experts_per_layer: Vec<usize>,
    #[serde(default)]
    pub seed: u64,
    /// Tasks whose routing `math-probe-aware` protects.
    #[serde(default)]
    pub protect_tasks: Vec<String>,
    /// Strategies that see the `trace.protect` statistics besides the calibration ones.
    #[serde(default = "default_protect_strategies")]
    pub protect_strategies: Vec<String>,
    #[serde(default = "default_beam")]
    pub beam_width: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub probes: Vec<PathBuf>,
    /// Held-out text for perplexity, fidelity to the full model and hidden-state norms.
    #[serde(default)]
    pub heldout: Vec<PathBuf>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Also write every variant as a pruned checkpoint and evaluate that instead of the mask.
    #[serde(default)]
    pub write_checkpoints: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Tasks the findings are about (default: every probe task).
    #[serde(default)]
    pub focus_tasks: Vec<String>,
    /// What the findings call the focus tasks (default: "the focus tasks").
    #[serde(default)]
    pub focus_label: Option<String>,
    /// The strategy the findings compare against (default: frequency).
    #[serde(default)]
    pub baseline_strategy: Option<String>,
    /// The budget whose variants the hidden-norm plot shows (default: the largest).
    #[serde(default)]
    pub hidden_norms_experts: Option<usize>,
}

fn default_device() -> String {
    "auto".into()
}
fn default_batch() -> usize {
    32
}
fn default_beam() -> usize {
    1
}
fn default_protect_strategies() -> Vec<String> {
    vec!["math-probe-aware".into()]
}

impl Experiment {
    /// Reads and checks an experiment file; errors name the file and the field.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut e: Experiment = toml::from_str(&text)
            .with_context(|| format!("{}: not a valid experiment", path.display()))?;
        if e.name.is_empty() {
            e.name = path
                .file_stem()
                .map_or("experiment".into(), |s| s.to_string_lossy().into_owned());
        }
        let fail = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
        if e.trace.calibration.is_empty() {
            return Err(fail("trace.calibration names no dataset"));
        }
        if e.select.strategies.is_empty() || e.select.experts_per_layer.is_empty() {
            return Err(fail("select needs strategies and experts_per_layer"));
        }
        for s in &e.select.strategies {
            gpt_oss_select::strategy_by_name(s)
                .map_err(|err| fail(&format!("select.strategies: {err}")))?;
        }
        if e.eval.probes.is_empty() {
            return Err(fail("eval.probes names no probe suite"));
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_experiments_parse() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
        for name in ["nano-quality-table.toml", "gpt-oss-20b.toml"] {
            let e = Experiment::read(&dir.join(name)).unwrap();
            assert!(!e.select.strategies.is_empty(), "{name}");
        }
    }

    #[test]
    fn unknown_fields_and_strategies_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        let base = "[trace]\ncalibration = [\"a.jsonl\"]\n[select]\nstrategies = [\"frequency\"]\nexperts_per_layer = [8]\n[eval]\nprobes = [\"p.jsonl\"]\n";
        std::fs::write(&path, base).unwrap();
        assert_eq!(Experiment::read(&path).unwrap().name, "x");
        std::fs::write(&path, base.replace("frequency", "most-popular")).unwrap();
        let e = format!("{:#}", Experiment::read(&path).unwrap_err());
        assert!(e.contains("x.toml") && e.contains("most-popular"), "{e}");
        std::fs::write(&path, format!("{base}budget = 3\n")).unwrap();
        let e = format!("{:#}", Experiment::read(&path).unwrap_err());
        assert!(e.contains("x.toml") && e.contains("budget"), "{e}");
    }
}
