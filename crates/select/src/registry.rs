//! The strategy trait and the registry by name.

use serde::{Deserialize, Serialize};

use crate::activations::ActivationCache;
use crate::budget::Budget;
use crate::selection::Selection;
use crate::stats::{ExpertStats, StatCell};
use crate::strategies;
use crate::{Result, SelectError};

/// Knobs some strategies read; each strategy records the ones it used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StrategyParams {
    /// `random`: seed.
    pub seed: u64,
    /// `math-probe-aware`: tasks whose routing is protected.
    pub protect_tasks: Vec<String>,
    /// `math-probe-aware`: protect the experts carrying this share of the protected tasks' routing.
    pub protect_share: f64,
    /// `reconstruction`: candidate subsets kept per elimination step.
    pub beam_width: usize,
}

impl Default for StrategyParams {
    fn default() -> Self {
        Self {
            seed: 0,
            protect_tasks: ["add", "sub", "mul", "add2", "sub2", "math", "arithmetic"]
                .map(String::from)
                .to_vec(),
            protect_share: 0.9,
            beam_width: 1,
        }
    }
}

/// What a strategy may look at.
pub struct SelectionInput<'a> {
    pub stats: &'a ExpertStats,
    pub activations: Option<&'a dyn ActivationCache>,
    pub params: &'a StrategyParams,
}

/// A way of choosing experts: statistics in, kept experts per layer out.
pub trait Strategy: Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// The parameters this strategy reads, for the record in selection.json.
    fn parameters(&self, _params: &StrategyParams) -> serde_json::Value {
        serde_json::json!({})
    }
    /// Exactly `k` distinct experts of `layer`.
    fn select_layer(
        &self,
        input: &SelectionInput<'_>,
        layer: usize,
        k: usize,
    ) -> Result<Vec<usize>>;

    /// Applies the strategy to every layer under `budget`.
    fn select(&self, input: &SelectionInput<'_>, budget: Budget) -> Result<Selection> {
        let per_layer = budget.per_layer(input.stats)?;
        let mut layers = Vec::with_capacity(per_layer.len());
        for (layer, &k) in per_layer.iter().enumerate() {
            let mut kept = self.select_layer(input, layer, k)?;
            kept.sort_unstable();
            layers.push(kept);
        }
        let s = Selection {
            strategy: self.name().into(),
            parameters: self.parameters(input.params),
            budget,
            num_experts: input.stats.num_experts,
            top_k: input.stats.top_k,
            layers,
            stats_digest: input.stats.digest(),
        };
        s.check().map_err(|m| {
            SelectError::Invalid(format!(
                "strategy `{}` produced an invalid selection: {m}",
                self.name()
            ))
        })?;
        Ok(s)
    }
}

/// Every registered strategy.
pub fn all_strategies() -> Vec<Box<dyn Strategy>> {
    vec![
        Box::new(strategies::frequency::FREQUENCY),
        Box::new(strategies::frequency::WEIGHTED_FREQUENCY),
        Box::new(strategies::task_coverage::TaskCoverage),
        Box::new(strategies::math_probe_aware::MathProbeAware),
        Box::new(strategies::saliency::REAP),
        Box::new(strategies::saliency::EAN),
        Box::new(strategies::random::Random),
        Box::new(strategies::reconstruction::Reconstruction),
    ]
}

pub fn strategy_names() -> Vec<&'static str> {
    all_strategies().iter().map(|s| s.name()).collect()
}

pub fn strategy_by_name(name: &str) -> Result<Box<dyn Strategy>> {
    all_strategies()
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| {
            SelectError::Invalid(format!(
                "unknown strategy `{name}` (known: {})",
                strategy_names().join(", ")
            ))
        })
}

/// Adds to `chosen` the experts not in it with the highest `scores` (one per expert of the
/// layer; ties: lower index first) until it holds `k`.
pub fn fill_by_score(chosen: &mut Vec<usize>, scores: &[f64], k: usize) {
    let open: Vec<f64> = scores
        .iter()
        .enumerate()
        .map(|(e, &score)| match chosen.contains(&e) {
            true => f64::NEG_INFINITY,
            false => score,
        })
        .collect();
    let missing = k.saturating_sub(chosen.len());
    chosen.extend(top_by_score(&open, missing));
}

/// The `k` experts with the highest scores (ties: lower index first).
pub fn top_by_score(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// A strategy that keeps, in each layer, the `k` experts whose statistics pooled over every
/// task score highest: frequency, weighted frequency, REAP and EAN differ only in the score.
pub struct PooledScore {
    name: &'static str,
    description: &'static str,
    score: fn(&StatCell) -> f64,
}

impl PooledScore {
    pub const fn new(
        name: &'static str,
        description: &'static str,
        score: fn(&StatCell) -> f64,
    ) -> Self {
        Self {
            name,
            description,
            score,
        }
    }
}

impl Strategy for PooledScore {
    fn name(&self) -> &'static str {
        self.name
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn select_layer(
        &self,
        input: &SelectionInput<'_>,
        layer: usize,
        k: usize,
    ) -> Result<Vec<usize>> {
        let scores: Vec<f64> = input
            .stats
            .layer_totals(layer, None)
            .iter()
            .map(self.score)
            .collect();
        Ok(top_by_score(&scores, k))
    }
}

#[cfg(test)]
mod tests {
    use super::{fill_by_score, top_by_score};

    #[test]
    fn top_by_score_takes_the_highest_and_breaks_ties_by_index() {
        assert_eq!(top_by_score(&[1.0, 5.0, 9.0, 5.0], 3), vec![2, 1, 3]);
        assert_eq!(top_by_score(&[1.0, 5.0], 0), Vec::<usize>::new());
    }

    /// The chosen experts stay first and are not chosen again, however high they score; a
    /// full list is left as it is.
    #[test]
    fn fill_by_score_adds_the_best_of_the_others_up_to_k() {
        let scores = [1.0, 5.0, 9.0, 5.0, 7.0];
        let mut chosen = vec![2];
        fill_by_score(&mut chosen, &scores, 4);
        assert_eq!(chosen, vec![2, 4, 1, 3]);
        let mut full = vec![0, 1];
        fill_by_score(&mut full, &scores, 2);
        assert_eq!(full, vec![0, 1]);
    }
}
