//! The original project's method: keep the most often routed experts (pooled over every task of
//! the calibration data), and its gate-weighted variant.

use crate::registry::PooledScore;
use crate::stats::StatCell;

/// The most routed experts.
pub const FREQUENCY: PooledScore = PooledScore::new(
    "frequency",
    "most routed experts (token count over the whole calibration set)",
    token_count,
);

/// The experts with the largest gate mass.
pub const WEIGHTED_FREQUENCY: PooledScore = PooledScore::new(
    "weighted-frequency",
    "largest gate mass (sum of router weights) over the whole calibration set",
    gate_mass,
);

fn token_count(cell: &StatCell) -> f64 {
    cell.count as f64
}

fn gate_mass(cell: &StatCell) -> f64 {
    cell.gate_mass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::StrategyParams;
    use crate::registry::{SelectionInput, Strategy};
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
        assert_eq!(FREQUENCY.select_layer(&input, 0, 2).unwrap(), vec![0, 1]);
        assert_eq!(
            WEIGHTED_FREQUENCY.select_layer(&input, 0, 2).unwrap(),
            vec![1, 3]
        );
    }
}
