//! The routing observer of one forward batch: turns each layer's routing into rows and
//! statistics, skipping padding and (optionally) tokens outside answer spans.

use gpt_oss_model::{LayerRouting, ObserverNeeds, RoutingObserver};
use gpt_oss_select::ExpertStats;

use crate::rows::RoutingRows;

/// Which tokens of one batch belong to which sample.
pub struct BatchLayout<'a> {
    pub sample_ids: &'a [String],
    pub tasks: &'a [String],
    pub tokens: &'a [Vec<u32>],
    pub answer_starts: &'a [usize],
    /// Left padding per row.
    pub pads: &'a [usize],
}

pub struct BatchRecorder<'a> {
    pub layout: BatchLayout<'a>,
    pub rows: &'a mut RoutingRows,
    pub stats: &'a mut ExpertStats,
    /// Count only tokens in answer spans for the statistics (rows record every token).
    pub answer_only: bool,
    pub needs: ObserverNeeds,
}

impl RoutingObserver for BatchRecorder<'_> {
    fn needs(&self) -> ObserverNeeds {
        self.needs
    }

    fn observe(&mut self, r: &LayerRouting<'_>) {
        let k = r.top_k;
        let l = &self.layout;
        for row in 0..r.batch {
            let task = self.stats.task_index(&l.tasks[row]);
            for slot in l.pads[row]..r.seq_len {
                let n = row * r.seq_len + slot;
                let position = slot - l.pads[row];
                let in_answer = position >= l.answer_starts[row];
                let ids = &r.expert_ids[n * k..(n + 1) * k];
                let gates = &r.gate_weights[n * k..(n + 1) * k];
                self.rows.push(
                    &l.sample_ids[row],
                    &l.tasks[row],
                    position as u32,
                    r.layer as u32,
                    l.tokens[row][position],
                    in_answer,
                    ids,
                    gates,
                    r.router_logits
                        .map(|z| &z[n * r.num_experts..(n + 1) * r.num_experts]),
                );
                if self.answer_only && !in_answer {
                    continue;
                }
                if r.layer == 0 {
                    self.stats.tokens[task] += 1;
                }
                for j in 0..k {
                    let cell = &mut self.stats.cells[task][r.layer][ids[j] as usize];
                    cell.count += 1;
                    cell.gate_mass += gates[j] as f64;
                    if let (Some(norms), Some(max_abs)) =
                        (r.expert_output_norms, r.expert_output_max_abs)
                    {
                        let norm = norms[n * k + j] as f64;
                        cell.reap_sum += gates[j] as f64 * norm;
                        cell.ean_sum += norm;
                        cell.max_activation = cell.max_activation.max(max_abs[n * k + j] as f64);
                    }
                }
            }
        }
    }
}
