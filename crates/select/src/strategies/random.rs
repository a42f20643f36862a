//! A seeded random baseline.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::Result;
use crate::registry::{SelectionInput, Strategy, StrategyParams};

pub struct Random;

impl Strategy for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn description(&self) -> &'static str {
        "uniformly random experts (seeded baseline)"
    }
    fn parameters(&self, p: &StrategyParams) -> serde_json::Value {
        serde_json::json!({"seed": p.seed})
    }
    fn select_layer(
        &self,
        input: &SelectionInput<'_>,
        layer: usize,
        k: usize,
    ) -> Result<Vec<usize>> {
        let mut rng = StdRng::seed_from_u64(
            input
                .params
                .seed
                .wrapping_mul(1000)
                .wrapping_add(layer as u64),
        );
        let mut all: Vec<usize> = (0..input.stats.num_experts).collect();
        all.shuffle(&mut rng);
        all.truncate(k);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::test_stats::one_layer;

    #[test]
    fn same_seed_same_choice_other_seed_other_choice() {
        let stats = one_layer(&[("t", &[(0, 1, 1.0)])]);
        let pick = |seed| {
            let params = StrategyParams {
                seed,
                ..Default::default()
            };
            let input = SelectionInput {
                stats: &stats,
                activations: None,
                params: &params,
            };
            let mut v = Random.select_layer(&input, 0, 4).unwrap();
            v.sort();
            v
        };
        assert_eq!(pick(1), pick(1));
        assert_eq!(pick(1).len(), 4);
        assert!((2..20).any(|s| pick(s) != pick(1)));
    }
}
