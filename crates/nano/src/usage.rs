//! Which experts each task routes to: top-k selections counted per layer over a task's
//! calibration documents, and how much two tasks' usage differs (Jensen-Shannon divergence).

use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{ForwardOptions, GptOss, LayerRouting, RoutingObserver, TokenBatch};

use crate::Result;
use std::collections::BTreeMap;

use crate::curriculum::{Curriculum, Sample, Task};

/// Counts top-k selections per (layer, expert), skipping padding.
struct UsageCounter {
    counts: Vec<Vec<u64>>,
    pads: Vec<usize>,
}

impl RoutingObserver for UsageCounter {
    fn observe(&mut self, r: &LayerRouting<'_>) {
        for row in 0..r.batch {
            for slot in self.pads[row]..r.seq_len {
                let n = row * r.seq_len + slot;
                for &e in &r.expert_ids[n * r.top_k..(n + 1) * r.top_k] {
                    self.counts[r.layer][e as usize] += 1;
                }
            }
        }
    }
}

/// Selection counts [layer][expert] over `samples`.
pub fn expert_usage(
    model: &GptOss,
    tokenizer: &TextTokenizer,
    samples: &[Sample],
    batch: usize,
) -> Result<Vec<Vec<u64>>> {
    let c = &model.config;
    let mut counter = UsageCounter {
        counts: vec![vec![0; c.num_experts]; c.num_hidden_layers],
        pads: vec![],
    };
    for chunk in samples.chunks(batch.max(1)) {
        let rows: Vec<Vec<u32>> = chunk
            .iter()
            .map(|s| tokenizer.encode(&s.text))
            .collect::<std::result::Result<_, _>>()?;
        let tokens = TokenBatch::left_padded(&rows, c.pad_token_id.unwrap_or(0));
        counter.pads = tokens.pads.clone();
        model.forward_hidden(
            &tokens,
            None,
            ForwardOptions {
                observer: Some(&mut counter),
                mask: None,
            },
        );
    }
    Ok(counter.counts)
}

/// Normalised distribution of one layer's counts.
pub fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| c as f64 / total.max(1) as f64)
        .collect()
}

/// Jensen-Shannon divergence (natural log; 0 identical, ln 2 disjoint).
pub fn js_divergence(p: &[f64], q: &[f64]) -> f64 {
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, y)| x * (x / y).ln())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| 0.5 * (a + b)).collect();
    0.5 * kl(p, &m) + 0.5 * kl(q, &m)
}

/// The `n` most used experts of one layer with their share of selections.
pub fn top_experts(counts: &[u64], n: usize) -> Vec<(usize, f64)> {
    let s = shares(counts);
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    order.into_iter().take(n).map(|e| (e, s[e])).collect()
}

/// Per task: selection counts on the first and the second half of `per_task` calibration
/// documents (two halves, so that the card can show the divergence sampling alone produces).
pub fn usage_by_task(
    model: &GptOss,
    tokenizer: &TextTokenizer,
    curriculum: &Curriculum,
    per_task: usize,
) -> Result<BTreeMap<String, [Vec<Vec<u64>>; 2]>> {
    let mut usage = BTreeMap::new();
    for task in Task::ALL {
        let samples = curriculum.calibration_documents(task, per_task);
        let (first, second) = samples.split_at(samples.len() / 2);
        usage.insert(
            task.name().to_string(),
            [
                expert_usage(model, tokenizer, first, 32)?,
                expert_usage(model, tokenizer, second, 32)?,
            ],
        );
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_and_top_experts() {
        let p = shares(&[10, 0, 0, 0]);
        let q = shares(&[0, 0, 0, 10]);
        assert!((js_divergence(&p, &q) - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(js_divergence(&p, &p), 0.0);
        assert_eq!(
            top_experts(&[1, 5, 5, 0], 2),
            vec![(1, 5.0 / 11.0), (2, 5.0 / 11.0)]
        );
    }
}
