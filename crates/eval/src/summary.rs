//! Per-task accuracies with 95% confidence intervals, and the held-out figures, as one summary
//! (summary.json of an evaluation).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::heldout::HeldoutResult;
use crate::metrics::wilson_interval;
use crate::probes::ProbeResult;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task: String,
    pub items: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Wilson 95% interval of the accuracy.
    pub accuracy_low: f64,
    pub accuracy_high: f64,
    pub mean_answer_logprob: f64,
    /// Share of probes whose answer's first token is the greedy choice.
    pub first_token_top1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidelitySummary {
    pub tokens: usize,
    pub perplexity: f64,
    pub perplexity_full: f64,
    /// Mean KL(full || variant) of next-token distributions, nats per token.
    pub mean_kl: f64,
    pub top1_agreement: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Tasks in name order.
    pub tasks: Vec<TaskSummary>,
    /// Every probe together (task "all").
    pub overall: TaskSummary,
    pub fidelity: Option<FidelitySummary>,
    pub hidden_norms: Vec<f64>,
    pub hidden_norms_full: Vec<f64>,
}

impl EvalSummary {
    pub fn task(&self, name: &str) -> Option<&TaskSummary> {
        self.tasks.iter().find(|t| t.task == name)
    }
}

fn task_summary(task: &str, results: &[&ProbeResult]) -> TaskSummary {
    let items = results.len();
    let correct = results.iter().filter(|r| r.correct).count();
    let (accuracy_low, accuracy_high) = wilson_interval(correct, items);
    let n = items.max(1) as f64;
    TaskSummary {
        task: task.into(),
        items,
        correct,
        accuracy: correct as f64 / n,
        accuracy_low,
        accuracy_high,
        mean_answer_logprob: results.iter().map(|r| r.answer_logprob).sum::<f64>() / n,
        first_token_top1: results.iter().filter(|r| r.first_token_rank == 1).count() as f64 / n,
    }
}

/// The summary of one evaluation.
pub fn summarize(probes: &[ProbeResult], heldout: Option<&HeldoutResult>) -> EvalSummary {
    let mut by_task: BTreeMap<&str, Vec<&ProbeResult>> = BTreeMap::new();
    for p in probes {
        by_task.entry(p.task.as_str()).or_default().push(p);
    }
    EvalSummary {
        tasks: by_task
            .iter()
            .map(|(task, results)| task_summary(task, results))
            .collect(),
        overall: task_summary("all", &probes.iter().collect::<Vec<_>>()),
        fidelity: heldout.map(|h| FidelitySummary {
            tokens: h.tokens,
            perplexity: h.perplexity,
            perplexity_full: h.perplexity_full,
            mean_kl: h.mean_kl,
            top1_agreement: h.top1_agreement,
        }),
        hidden_norms: heldout.map_or(vec![], |h| h.hidden_norms.clone()),
        hidden_norms_full: heldout.map_or(vec![], |h| h.hidden_norms_full.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(task: &str, correct: bool, rank: usize, logprob: f64) -> ProbeResult {
        ProbeResult {
            id: format!("{task}-{rank}"),
            task: task.into(),
            answer: "4".into(),
            got: if correct { "4" } else { "3" }.into(),
            correct,
            answer_logprob: logprob,
            answer_tokens: 1,
            first_token_rank: rank,
        }
    }

    #[test]
    fn tasks_are_summarised_separately_and_together() {
        let results = vec![
            probe("add", true, 1, -0.1),
            probe("add", false, 2, -2.0),
            probe("add", true, 1, -0.3),
            probe("capital", false, 5, -4.0),
        ];
        let s = summarize(&results, None);
        assert_eq!(s.tasks.len(), 2);
        let add = s.task("add").unwrap();
        assert_eq!((add.items, add.correct), (3, 2));
        assert!((add.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!(add.accuracy_low < add.accuracy && add.accuracy < add.accuracy_high);
        assert!((add.mean_answer_logprob + 0.8).abs() < 1e-12);
        assert!((add.first_token_top1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.task("capital").unwrap().correct, 0);
        assert_eq!((s.overall.items, s.overall.correct), (4, 2));
        assert!(s.fidelity.is_none());
    }
}
