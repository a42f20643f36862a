//! The model card (models/oss-nano/README.md), written from what training and evaluation
//! measured. A pure function of its inputs.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::train::TrainConfig;
use crate::usage::{js_divergence, shares, top_experts};

/// What `train-nano` measured, kept in the model folder as training.json; the card is written
/// from it (and from fresh expert-usage measurements) by `train-nano` and `nano-card`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingLog {
    pub command: String,
    /// The burn backend, for example "cpu (burn flex)".
    pub device: String,
    /// The machine: CPU model and cores.
    #[serde(default)]
    pub host: String,
    pub train: TrainConfig,
    pub wall_seconds: f64,
    pub total_seconds: f64,
    pub final_lm_loss: f32,
    /// (correct, total) per task, f32 weights before export and the shipped MXFP4 model.
    pub probes_f32: BTreeMap<String, (usize, usize)>,
    pub probes_mxfp4: BTreeMap<String, (usize, usize)>,
}

/// Everything the card reports.
pub struct CardInputs<'a> {
    pub log: &'a TrainingLog,
    pub parameters: usize,
    pub checkpoint_bytes: u64,
    /// Selection counts [layer][expert] per task, on the two halves of its calibration set.
    pub usage: &'a BTreeMap<String, [Vec<Vec<u64>>; 2]>,
}

fn pct(c: (usize, usize)) -> f64 {
    100.0 * c.0 as f64 / c.1.max(1) as f64
}

pub fn model_card(x: &CardInputs<'_>) -> String {
    let mut s = String::new();
    let log = x.log;
    let t = &log.train;
    let train_tokens = t.steps * t.batch_size * t.seq_len;
    let _ = writeln!(s, "# oss-nano\n");
    let _ = writeln!(
        s,
        "A small model of gpt-oss's exact architecture and Hugging Face file layout (sinks, alternating \
         sliding/full attention, the release's YaRN config, q/k/v/o and expert biases, clamped SwiGLU, \
         MXFP4 experts, config.json and tokenizer.json), trained by gpt-oss-lite on its synthetic \
         curriculum (datasets/nano). It is the workbench's embedded default: every experiment runs on it \
         in minutes on a CPU.\n"
    );
    let _ = writeln!(s, "## Shape\n");
    let _ = writeln!(
        s,
        "4 layers, hidden 128, 4 query heads x 32 (2 kv heads), 32 experts per layer with top-4 routing \
        (the 20b's ratio), expert width 128, sliding window 32, {} parameters; {:.2} MB on disk (BF16 + MXFP4 experts).\n",
        x.parameters,
        x.checkpoint_bytes as f64 / 1e6
    );
    let _ = writeln!(s, "## Training\n");
    let _ = writeln!(s, "| | |\n| --- | --- |");
    let _ = writeln!(s, "| command | `{}` |", log.command);
    let _ = writeln!(s, "| device | {} |", log.device);
    if !log.host.is_empty() {
        let _ = writeln!(s, "| machine | {} |", log.host);
    }
    let _ = writeln!(s, "| seed | {} |", t.seed);
    let _ = writeln!(
        s,
        "| steps x batch x length | {} x {} x {} ({} tokens) |",
        t.steps, t.batch_size, t.seq_len, train_tokens
    );
    let _ = writeln!(
        s,
        "| optimiser | AdamW, lr {} warmup {} then cosine to {}, weight decay {}, clip {} |",
        t.learning_rate, t.warmup_steps, t.min_learning_rate, t.weight_decay, t.grad_clip_norm
    );
    let _ = writeln!(
        s,
        "| load-balancing loss weight | {} |",
        t.balance_loss_coef
    );
    let _ = writeln!(
        s,
        "| wall time | {:.1} min training, {:.1} min in all (tokenizer, export, probes) |",
        log.wall_seconds / 60.0,
        log.total_seconds / 60.0
    );
    let _ = writeln!(
        s,
        "| final training loss | {:.4} (mean of the last 50 steps) |",
        log.final_lm_loss
    );
    let _ = writeln!(s, "\n![loss](loss.png)\n");
    let _ = writeln!(s, "## Probe scores (greedy exact match)\n");
    let _ = writeln!(
        s,
        "| task | f32 weights | shipped (MXFP4 experts, BF16) | items |\n| --- | --- | --- | --- |"
    );
    for (task, &c) in &log.probes_mxfp4 {
        let f = log.probes_f32.get(task).copied().unwrap_or((0, 0));
        let _ = writeln!(s, "| {task} | {:.1}% | {:.1}% | {} |", pct(f), pct(c), c.1);
    }
    let _ = writeln!(s, "\n## Which experts each task routes to\n");
    let _ = writeln!(
        s,
        "Top-3 experts per layer on each task's calibration set, with their share of the layer's top-4 selections.\n"
    );
    let usage: BTreeMap<String, Vec<Vec<u64>>> = x
        .usage
        .iter()
        .map(|(task, [a, b])| (task.clone(), add_counts(a, b)))
        .collect();
    let layers = usage.values().next().map_or(0, |u| u.len());
    let _ = write!(s, "| task |");
    for l in 0..layers {
        let _ = write!(s, " layer {l} |");
    }
    let _ = write!(s, "\n| --- |");
    for _ in 0..layers {
        let _ = write!(s, " --- |");
    }
    let _ = writeln!(s);
    for (task, task_usage) in &usage {
        let _ = write!(s, "| {task} |");
        for layer in task_usage {
            let top: Vec<String> = top_experts(layer, 3)
                .iter()
                .map(|(e, sh)| format!("{e} ({:.0}%)", 100.0 * sh))
                .collect();
            let _ = write!(s, " {} |", top.join(", "));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "\nJensen-Shannon divergence of each task's expert distribution from the others' average \
        (0: identical; ln 2 = 0.693: disjoint), mean over layers. The noise floor is the divergence \
        between the two halves of the same task's calibration set: what sampling alone produces.\n"
    );
    let _ = writeln!(
        s,
        "| task | divergence from the other tasks | noise floor (split halves) |\n| --- | --- | --- |"
    );
    let floors = split_half_divergences(x.usage);
    for (task, score) in task_divergences(&usage) {
        let _ = writeln!(s, "| {task} | {score:.3} | {:.4} |", floors[&task]);
    }
    s
}

/// Element-wise sum of two [layer][expert] count tables.
pub fn add_counts(a: &[Vec<u64>], b: &[Vec<u64>]) -> Vec<Vec<u64>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect())
        .collect()
}

/// Per task, the mean over layers of JS(first half's shares, second half's shares).
pub fn split_half_divergences(
    usage: &BTreeMap<String, [Vec<Vec<u64>>; 2]>,
) -> BTreeMap<String, f64> {
    usage
        .iter()
        .map(|(task, [a, b])| {
            let total: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| js_divergence(&shares(x), &shares(y)))
                .sum();
            (task.clone(), total / a.len().max(1) as f64)
        })
        .collect()
}

/// Mean over layers of JS(task's shares, average shares of the other tasks).
pub fn task_divergences(usage: &BTreeMap<String, Vec<Vec<u64>>>) -> Vec<(String, f64)> {
    let tasks: Vec<&String> = usage.keys().collect();
    let layers = usage.values().next().map_or(0, |u| u.len());
    tasks
        .iter()
        .map(|task| {
            let mut total = 0.0;
            for (l, counts) in usage[*task].iter().enumerate() {
                let p = shares(counts);
                let mut rest = vec![0.0; p.len()];
                let others: Vec<_> = tasks.iter().filter(|t| *t != task).collect();
                for other in &others {
                    for (r, v) in rest.iter_mut().zip(shares(&usage[**other][l])) {
                        *r += v / others.len() as f64;
                    }
                }
                total += js_divergence(&p, &rest);
            }
            ((*task).clone(), total / layers.max(1) as f64)
        })
        .collect()
}
