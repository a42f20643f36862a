//! Output-aware criteria: REAP (router-weighted expert activation pruning: mean over routed
//! tokens of gate x ||expert output||, Lasby et al. 2025) and EAN (sum of expert activation
//! norms over routed tokens).

use crate::registry::PooledScore;
use crate::stats::StatCell;

/// REAP saliency.
pub const REAP: PooledScore = PooledScore::new(
    "reap",
    "REAP saliency: mean over routed tokens of gate weight x L2 norm of the expert's output",
    reap,
);

/// EAN: the experts' summed output norms.
pub const EAN: PooledScore = PooledScore::new(
    "ean",
    "EAN: sum over routed tokens of the L2 norm of the expert's output",
    ean,
);

fn reap(cell: &StatCell) -> f64 {
    cell.reap()
}

fn ean(cell: &StatCell) -> f64 {
    cell.ean_sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::StrategyParams;
    use crate::registry::{SelectionInput, Strategy};
    use crate::stats::{ExpertStats, StatCell};

    #[test]
    fn reap_prefers_strong_outputs_per_routed_token_and_ean_their_sum() {
        let mut s = ExpertStats::empty(1, 4, 1);
        let t = s.task_index("t");
        // (count, reap_sum, ean_sum): expert 0 frequent but weak, expert 2 rare but strong.
        for (e, (count, reap_sum, ean_sum)) in [
            (100, 10.0, 100.0),
            (10, 3.0, 12.0),
            (5, 5.0, 40.0),
            (50, 1.0, 20.0),
        ]
        .into_iter()
        .enumerate()
        {
            s.cells[t][0][e] = StatCell {
                count,
                gate_mass: 0.0,
                reap_sum,
                ean_sum,
                max_activation: 0.0,
            };
        }
        let params = StrategyParams::default();
        let input = SelectionInput {
            stats: &s,
            activations: None,
            params: &params,
        };
        assert_eq!(REAP.select_layer(&input, 0, 1).unwrap(), vec![2]);
        assert_eq!(EAN.select_layer(&input, 0, 1).unwrap(), vec![0]);
        assert_eq!(EAN.select_layer(&input, 0, 2).unwrap(), vec![0, 2]);
    }
}
