//! Math-probe-aware: the experts that math probes' answer tokens route to are protected (those
//! carrying `protect_share` of the protected tasks' routing, heaviest first); the remaining
//! places go by frequency over the other tasks.

use crate::Result;
use crate::registry::{SelectionInput, Strategy, StrategyParams, fill_by_score, top_by_score};

pub struct MathProbeAware;

impl Strategy for MathProbeAware {
    fn name(&self) -> &'static str {
        "math-probe-aware"
    }
    fn description(&self) -> &'static str {
        "protect experts routed by the math probes' answer tokens, fill the rest by frequency"
    }
    fn parameters(&self, p: &StrategyParams) -> serde_json::Value {
        serde_json::json!({"protect_tasks": p.protect_tasks, "protect_share": p.protect_share})
    }
    fn select_layer(
        &self,
        input: &SelectionInput<'_>,
        layer: usize,
        k: usize,
    ) -> Result<Vec<usize>> {
        let stats = input.stats;
        let protected_tasks: Vec<String> = stats
            .tasks
            .iter()
            .filter(|t| input.params.protect_tasks.contains(t))
            .cloned()
            .collect();
        let others: Vec<String> = stats
            .tasks
            .iter()
            .filter(|t| !protected_tasks.contains(t))
            .cloned()
            .collect();
        let math: Vec<f64> = stats
            .layer_totals(layer, Some(&protected_tasks))
            .iter()
            .map(|c| c.count as f64)
            .collect();
        let total: f64 = math.iter().sum();
        let mut chosen = vec![];
        if total > 0.0 {
            let mut covered = 0.0;
            for e in top_by_score(&math, stats.num_experts) {
                if chosen.len() == k
                    || covered >= input.params.protect_share * total
                    || math[e] == 0.0
                {
                    break;
                }
                covered += math[e];
                chosen.push(e);
            }
        }
        let rest: Vec<f64> = stats
            .layer_totals(layer, Some(&others))
            .iter()
            .map(|c| c.count as f64)
            .collect();
        fill_by_score(&mut chosen, &rest, k);
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::test_stats::one_layer;

    #[test]
    fn math_experts_are_protected_then_frequency_fills() {
        let stats = one_layer(&[
            (
                "diverse",
                &[(0, 1000, 1.0), (1, 900, 1.0), (2, 800, 1.0), (3, 700, 1.0)],
            ),
            ("mul", &[(7, 30, 1.0), (6, 10, 1.0), (5, 1, 1.0)]),
        ]);
        let params = StrategyParams {
            protect_tasks: vec!["mul".into()],
            protect_share: 0.9,
            ..Default::default()
        };
        let input = SelectionInput {
            stats: &stats,
            activations: None,
            params: &params,
        };
        let mut got = MathProbeAware.select_layer(&input, 0, 4).unwrap();
        got.sort();
        // 7 and 6 carry 40/41 >= 90% of mul's routing; 5 is not needed; then 0 and 1.
        assert_eq!(got, vec![0, 1, 6, 7]);
    }
}
