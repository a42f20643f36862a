//! Hand-made statistics for strategy tests.

use crate::stats::{ExpertStats, StatCell};

/// One layer, 8 experts, top-2; per task a list of (expert, count, gate mass).
/// (expert, routed tokens, gate mass) of one task.
pub type TaskCounts<'a> = &'a [(usize, u64, f64)];

pub fn one_layer(tasks: &[(&str, TaskCounts<'_>)]) -> ExpertStats {
    let mut s = ExpertStats::empty(1, 8, 2);
    for (task, cells) in tasks {
        let t = s.task_index(task);
        for &(e, count, mass) in *cells {
            s.cells[t][0][e] = StatCell {
                count,
                gate_mass: mass,
                reap_sum: mass,
                ean_sum: count as f64,
                max_activation: 1.0,
            };
            s.tokens[t] += count;
        }
    }
    s
}
