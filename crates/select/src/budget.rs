//! How many experts each layer keeps: the same number everywhere, or a global total allocated
//! across layers. A layer never keeps fewer than top-k (routing needs k candidates).

use serde::{Deserialize, Serialize};

use crate::stats::ExpertStats;
use crate::{Result, SelectError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Budget {
    /// `k` experts in every layer.
    Uniform(usize),
    /// `n` experts in total, allocated by [`Budget::per_layer`].
    Global(usize),
}

impl Budget {
    /// Experts kept per layer.
    ///
    /// A global budget gives every layer top-k, then shares the rest in proportion to each
    /// layer's effective number of experts (exp of the entropy of its gate-mass distribution):
    /// layers that spread their routing keep more. Largest remainders settle the rounding.
    pub fn per_layer(&self, stats: &ExpertStats) -> Result<Vec<usize>> {
        let (l, e, k) = (stats.num_layers, stats.num_experts, stats.top_k);
        match *self {
            Budget::Uniform(n) => {
                if n < k || n > e {
                    return Err(SelectError::Invalid(format!(
                        "{n} experts per layer: must be between top-k = {k} and {e}"
                    )));
                }
                Ok(vec![n; l])
            }
            Budget::Global(total) => {
                if total < k * l || total > e * l {
                    return Err(SelectError::Invalid(format!(
                        "a global budget of {total} experts must be between {} (top-k = {k} per layer) and {}",
                        k * l,
                        e * l
                    )));
                }
                let weights: Vec<f64> = (0..l)
                    .map(|layer| effective_experts(stats, layer))
                    .collect();
                let extra = total - k * l;
                let sum: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
                let ideal: Vec<f64> = weights.iter().map(|w| extra as f64 * w / sum).collect();
                let mut counts: Vec<usize> = ideal
                    .iter()
                    .map(|x| (x.floor() as usize).min(e - k))
                    .collect();
                let mut left = extra - counts.iter().sum::<usize>();
                let mut order: Vec<usize> = (0..l).collect();
                order.sort_by(|&a, &b| {
                    (ideal[b] - ideal[b].floor())
                        .total_cmp(&(ideal[a] - ideal[a].floor()))
                        .then(a.cmp(&b))
                });
                while left > 0 {
                    let before = left;
                    for &layer in &order {
                        if left > 0 && counts[layer] < e - k {
                            counts[layer] += 1;
                            left -= 1;
                        }
                    }
                    assert!(left < before, "budget within bounds always fits");
                }
                Ok(counts.into_iter().map(|c| c + k).collect())
            }
        }
    }
}

fn effective_experts(stats: &ExpertStats, layer: usize) -> f64 {
    let mass: Vec<f64> = stats
        .layer_totals(layer, None)
        .iter()
        .map(|c| c.gate_mass)
        .collect();
    let total: f64 = mass.iter().sum();
    if total <= 0.0 {
        return stats.num_experts as f64;
    }
    let entropy: f64 = mass
        .iter()
        .filter(|&&m| m > 0.0)
        .map(|&m| -(m / total) * (m / total).ln())
        .sum();
    entropy.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_with(mass: &[&[f64]]) -> ExpertStats {
        let mut s = ExpertStats::empty(mass.len(), mass[0].len(), 2);
        let t = s.task_index("t");
        for (l, row) in mass.iter().enumerate() {
            for (e, &m) in row.iter().enumerate() {
                s.cells[t][l][e].gate_mass = m;
            }
        }
        s
    }

    #[test]
    fn uniform_budget_respects_top_k() {
        let s = stats_with(&[&[1.0; 8], &[1.0; 8]]);
        assert_eq!(Budget::Uniform(4).per_layer(&s).unwrap(), vec![4, 4]);
        assert!(
            Budget::Uniform(1)
                .per_layer(&s)
                .unwrap_err()
                .to_string()
                .contains("top-k")
        );
        assert!(Budget::Uniform(9).per_layer(&s).is_err());
    }

    #[test]
    fn global_budget_favours_layers_that_spread_routing() {
        // Layer 0 routes everywhere, layer 1 to two experts only.
        let s = stats_with(&[&[1.0; 8], &[5.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]);
        let per = Budget::Global(10).per_layer(&s).unwrap();
        assert_eq!(per.iter().sum::<usize>(), 10);
        assert!(per[0] > per[1] && per[1] >= 2, "{per:?}");
        assert!(Budget::Global(3).per_layer(&s).is_err());
    }
}
