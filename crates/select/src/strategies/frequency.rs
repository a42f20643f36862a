//! The original project's method: keep the most often routed experts (pooled over every task of
//! the calibration data), and its gate-weighted variant.

use crate::Result;
use crate::registry::{SelectionInput, Strategy, top_by_pooled_score};

pub struct Frequency;

impl Strategy for Frequency {
    fn name(&self) -> &'static str {
        "frequency"
    }
    fn description(&self) -> &'static str {
        "most routed experts (token count over the whole calibration set)"
    }
    fn select_layer(
        &self,
        input: &SelectionInput<'_>,
        layer: usize,
        k: usize,
    ) -> Result<Vec<usize>> {
        Ok(top_by_pooled_score(input, layer, k, |c| c.count as f64))
    }
}

pub struct WeightedFrequency;

impl Strategy for WeightedFrequency {
    fn name(&self) -> &'static str {
        "weighted-frequency"
    }
    fn description(&self) -> &'static str {
        "largest gate mass (sum of router weights) over the whole calibration set"
    }
    fn select_layer(
        &self,
        input: &SelectionInput<'_>,
        layer: usize,
        k: usize,
    ) -> Result<Vec<usize>> {
        Ok(top_by_pooled_score(input, layer, k, |c| c.gate_mass))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::StrategyParams;
    use crate::strategies::test_stats::one_layer;

    #[test]
    fn frequency_counts_and_weighted_frequency_weighs() {
        // Expert 0 is chosen often with small gates; expert 3 rarely with large gates.
        let stats = one_layer(&[(
            "mix",
            &[(0, 100, 10.0), (1, 50, 20.0), (2, 40, 15.0), (3, 20, 19.0)],
        )]);
        let params = StrategyParams::default();
        let input = SelectionInput {
            stats: &stats,
            activations: None,
            params: &params,
        };
        assert_eq!(Frequency.select_layer(&input, 0, 2).unwrap(), vec![0, 1]);
        assert_eq!(
            WeightedFrequency.select_layer(&input, 0, 2).unwrap(),
            vec![1, 3]
        );
    }
}
