//! The model card (models/oss-nano/README.md), written from what training and evaluation
//! measured. A pure function of its inputs.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::train::TrainConfig;
use crate::usage::{js_divergence, shares, top_experts};

/// Everything the card reports.
pub struct CardInputs<'a> {
    pub command: &'a str,
    pub device: &'a str,
    pub train: &'a TrainConfig,
    pub train_tokens: usize,
    pub wall_seconds: f64,
    pub final_loss: f32,
    pub parameters: usize,
    pub checkpoint_bytes: u64,
    /// (correct, total) per task, f32 weights before export and the shipped MXFP4 model.
    pub probes_f32: &'a BTreeMap<String, (usize, usize)>,
    pub probes_mxfp4: &'a BTreeMap<String, (usize, usize)>,
    /// Selection counts [layer][expert] per task on its calibration set.
    pub usage: &'a BTreeMap<String, Vec<Vec<u64>>>,
}

fn pct(c: (usize, usize)) -> f64 {
    100.0 * c.0 as f64 / c.1.max(1) as f64
}

pub fn model_card(x: &CardInputs<'_>) -> String {
    let mut s = String::new();
    let t = x.train;
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
    let _ = writeln!(s, "| command | `{}` |", x.command);
    let _ = writeln!(s, "| device | {} |", x.device);
    let _ = writeln!(s, "| seed | {} |", t.seed);
    let _ = writeln!(
        s,
        "| steps x batch x length | {} x {} x {} ({} tokens) |",
        t.steps, t.batch_size, t.seq_len, x.train_tokens
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
    let _ = writeln!(s, "| wall time | {:.1} min |", x.wall_seconds / 60.0);
    let _ = writeln!(s, "| final training loss | {:.4} |", x.final_loss);
    let _ = writeln!(s, "\n![loss](loss.png)\n");
    let _ = writeln!(s, "## Probe scores (greedy exact match)\n");
    let _ = writeln!(
        s,
        "| task | f32 weights | shipped (MXFP4 experts, BF16) | items |\n| --- | --- | --- | --- |"
    );
    for (task, &c) in x.probes_mxfp4 {
        let f = x.probes_f32.get(task).copied().unwrap_or((0, 0));
        let _ = writeln!(s, "| {task} | {:.1}% | {:.1}% | {} |", pct(f), pct(c), c.1);
    }
    let _ = writeln!(s, "\n## Which experts each task routes to\n");
    let _ = writeln!(
        s,
        "Top-3 experts per layer on each task's calibration set, with their share of the layer's top-4 selections.\n"
    );
    let layers = x.usage.values().next().map_or(0, |u| u.len());
    let _ = write!(s, "| task |");
    for l in 0..layers {
        let _ = write!(s, " layer {l} |");
    }
    let _ = write!(s, "\n| --- |");
    for _ in 0..layers {
        let _ = write!(s, " --- |");
    }
    let _ = writeln!(s);
    for (task, usage) in x.usage {
        let _ = write!(s, "| {task} |");
        for layer in usage {
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
        (0: identical; ln 2 = 0.693: disjoint), mean over layers:\n"
    );
    let _ = writeln!(s, "| task | divergence |\n| --- | --- |");
    for (task, score) in task_divergences(x.usage) {
        let _ = writeln!(s, "| {task} | {score:.3} |");
    }
    s
}

/// Mean over layers of JS(task's shares, average shares of the other tasks).
pub fn task_divergences(usage: &BTreeMap<String, Vec<Vec<u64>>>) -> Vec<(String, f64)> {
    let tasks: Vec<&String> = usage.keys().collect();
    let layers = usage.values().next().map_or(0, |u| u.len());
    tasks
        .iter()
        .map(|task| {
            let mut total = 0.0;
            for l in 0..layers {
                let p = shares(&usage[*task][l]);
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
