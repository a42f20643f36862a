//! Task coverage: every task keeps the experts that carry most of its routing, so that a rare
//! task is not starved by a common one. Greedy: repeatedly, the task whose routing mass is least
//! covered so far adds its heaviest expert not yet kept. Tasks count equally, whatever their
//! token counts.

use crate::Result;
use crate::registry::{SelectionInput, Strategy, fill_by_score};

pub struct TaskCoverage;

impl Strategy for TaskCoverage {
    fn name(&self) -> &'static str {
        "task-coverage"
    }
    fn description(&self) -> &'static str {
        "greedy coverage of each task's gate mass; the least covered task picks next"
    }
    fn select_layer(
        &self,
        input: &SelectionInput<'_>,
        layer: usize,
        k: usize,
    ) -> Result<Vec<usize>> {
        let stats = input.stats;
        let e = stats.num_experts;
        // Each task's gate-mass shares in this layer.
        let shares: Vec<Vec<f64>> = (0..stats.tasks.len())
            .filter_map(|t| {
                let mass: Vec<f64> = stats.cells[t][layer].iter().map(|c| c.gate_mass).collect();
                let total: f64 = mass.iter().sum();
                (total > 0.0).then(|| mass.iter().map(|m| m / total).collect())
            })
            .collect();
        let mut kept = vec![false; e];
        let mut chosen = Vec::with_capacity(k);
        let mut covered = vec![0.0f64; shares.len()];
        while chosen.len() < k {
            // The least covered task that still has an uncovered expert with mass.
            let next = (0..shares.len())
                .filter_map(|t| {
                    let best = (0..e)
                        .filter(|&x| !kept[x] && shares[t][x] > 0.0)
                        .max_by(|&a, &b| shares[t][a].total_cmp(&shares[t][b]).then(b.cmp(&a)))?;
                    Some((t, best))
                })
                .min_by(|a, b| covered[a.0].total_cmp(&covered[b.0]).then(a.0.cmp(&b.0)));
            let Some((_, expert)) = next else { break };
            kept[expert] = true;
            chosen.push(expert);
            for (t, c) in covered.iter_mut().enumerate() {
                *c += shares[t][expert];
            }
        }
        if chosen.len() < k {
            // Every task is fully covered: fill by pooled gate mass, then by index.
            let pooled: Vec<f64> = stats
                .layer_totals(layer, None)
                .iter()
                .map(|c| c.gate_mass)
                .collect();
            fill_by_score(&mut chosen, &pooled, k);
        }
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::StrategyParams;
    use crate::strategies::frequency::FREQUENCY;
    use crate::strategies::test_stats::one_layer;

    #[test]
    fn rare_task_keeps_its_experts_where_frequency_drops_them() {
        // "text" is 50x more common than "math"; math routes to experts 6 and 7 only.
        let stats = one_layer(&[
            (
                "text",
                &[
                    (0, 1000, 500.0),
                    (1, 900, 450.0),
                    (2, 800, 400.0),
                    (3, 700, 350.0),
                    (4, 600, 300.0),
                ],
            ),
            ("math", &[(6, 20, 12.0), (7, 18, 8.0)]),
        ]);
        let params = StrategyParams::default();
        let input = SelectionInput {
            stats: &stats,
            activations: None,
            params: &params,
        };
        let mut freq = FREQUENCY.select_layer(&input, 0, 4).unwrap();
        freq.sort();
        assert_eq!(freq, vec![0, 1, 2, 3]);
        let mut cov = TaskCoverage.select_layer(&input, 0, 4).unwrap();
        cov.sort();
        // text picks 0 (covers 25%), math picks 6 (60%), then text, the less covered, picks
        // 1 and 2 (67.5%): each task ends with most of its mass, math is not starved.
        assert_eq!(cov, vec![0, 1, 2, 6]);
    }

    #[test]
    fn fills_by_pooled_mass_once_every_task_is_covered() {
        let stats = one_layer(&[("a", &[(5, 10, 1.0)]), ("b", &[(2, 10, 1.0), (3, 1, 0.5)])]);
        let params = StrategyParams::default();
        let input = SelectionInput {
            stats: &stats,
            activations: None,
            params: &params,
        };
        let mut got = TaskCoverage.select_layer(&input, 0, 5).unwrap();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 5]);
    }
}
