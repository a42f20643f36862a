//! Search for the subset whose layer output best reconstructs the full layer's, on cached
//! calibration activations. Exhaustive search is out of reach (C(32, 16) = 6e8 subsets per
//! layer), so experts are removed one at a time, each time the one whose removal raises the
//! error least, keeping the `beam_width` best subsets at every step.
//!
//! Error of a subset S: sum over tokens of ||y_full - y_S||^2 / sum of ||y_full||^2, where y_S
//! routes each token to the top-k of its router logits restricted to S (softmax over those k),
//! exactly as the expert mask does at run time.

use crate::activations::LayerActivations;
use crate::registry::{SelectionInput, Strategy, StrategyParams};
use crate::{Result, SelectError};

pub struct Reconstruction;

impl Strategy for Reconstruction {
    fn name(&self) -> &'static str {
        "reconstruction"
    }
    fn description(&self) -> &'static str {
        "greedy/beam elimination minimising each layer's output reconstruction error on cached activations"
    }
    fn parameters(&self, p: &StrategyParams) -> serde_json::Value {
        serde_json::json!({"beam_width": p.beam_width})
    }
    fn select_layer(
        &self,
        input: &SelectionInput<'_>,
        layer: usize,
        k: usize,
    ) -> Result<Vec<usize>> {
        let cache = input.activations.ok_or_else(|| {
            SelectError::Invalid(
                "`reconstruction` needs cached activations (trace with --cache-activations)".into(),
            )
        })?;
        let acts = cache.layer(layer)?;
        let top_k = input.stats.top_k;
        let full = layer_outputs(&acts, &vec![true; acts.experts], top_k);
        let width = input.params.beam_width.max(1);
        let mut beams: Vec<Vec<bool>> = vec![vec![true; acts.experts]];
        for _ in k..acts.experts {
            let mut candidates: Vec<(f64, Vec<bool>)> = vec![];
            for beam in &beams {
                for e in (0..acts.experts).filter(|&e| beam[e]) {
                    let mut next = beam.clone();
                    next[e] = false;
                    if candidates.iter().any(|(_, c)| *c == next) {
                        continue;
                    }
                    let err = relative_error(&full, &layer_outputs(&acts, &next, top_k));
                    candidates.push((err, next));
                }
            }
            candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
            candidates.truncate(width);
            beams = candidates.into_iter().map(|(_, b)| b).collect();
        }
        Ok((0..acts.experts).filter(|&e| beams[0][e]).collect())
    }
}

/// Layer outputs [tokens, hidden] when only `allowed` experts may be routed to.
pub fn layer_outputs(acts: &LayerActivations, allowed: &[bool], top_k: usize) -> Vec<f32> {
    let (n, e, h) = (acts.tokens, acts.experts, acts.hidden);
    let mut out = vec![0f32; n * h];
    for t in 0..n {
        let logits = &acts.router_logits[t * e..(t + 1) * e];
        let mut order: Vec<usize> = (0..e).filter(|&x| allowed[x]).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        order.truncate(top_k);
        let max = order
            .iter()
            .map(|&x| logits[x])
            .fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> = order.iter().map(|&x| (logits[x] - max).exp()).collect();
        let z: f32 = weights.iter().sum();
        let row = &mut out[t * h..(t + 1) * h];
        for (&x, w) in order.iter().zip(weights) {
            let f = &acts.expert_outputs[(t * e + x) * h..(t * e + x + 1) * h];
            for (o, v) in row.iter_mut().zip(f) {
                *o += w / z * v;
            }
        }
    }
    out
}

/// sum ||a - b||^2 / sum ||a||^2.
pub fn relative_error(reference: &[f32], approx: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in reference.iter().zip(approx) {
        num += ((a - b) as f64).powi(2);
        den += (*a as f64).powi(2);
    }
    num / den.max(f64::MIN_POSITIVE)
}

/// Reconstruction error of keeping `kept` experts in one layer.
pub fn subset_error(acts: &LayerActivations, kept: &[usize], top_k: usize) -> f64 {
    let mut allowed = vec![false; acts.experts];
    for &e in kept {
        allowed[e] = true;
    }
    relative_error(
        &layer_outputs(acts, &vec![true; acts.experts], top_k),
        &layer_outputs(acts, &allowed, top_k),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activations::ActivationCache;
    use crate::registry::SelectionInput;
    use crate::stats::ExpertStats;
    use crate::strategies::frequency::FREQUENCY;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    struct Cache(LayerActivations);
    impl ActivationCache for Cache {
        fn layer(&self, _: usize) -> Result<LayerActivations> {
            Ok(self.0.clone())
        }
    }

    /// 8 experts, top-2. Experts 0-3 are routed often but output almost nothing; experts 4-7
    /// are routed less often and carry the layer's output.
    fn setup() -> (ExpertStats, Cache) {
        let (n, e, h) = (400, 8, 16);
        let mut rng = StdRng::seed_from_u64(1);
        let mut logits = vec![0f32; n * e];
        let mut outputs = vec![0f32; n * e * h];
        let mut stats = ExpertStats::empty(1, e, 2);
        let t = stats.task_index("calibration");
        for tok in 0..n {
            for x in 0..e {
                let bias = if x < 4 { 1.0 } else { 0.0 };
                logits[tok * e + x] = bias + rng.random::<f32>() * 1.5;
                let scale = if x < 4 { 0.01 } else { 1.0 };
                for d in 0..h {
                    outputs[(tok * e + x) * h + d] = scale * (rng.random::<f32>() * 2.0 - 1.0);
                }
            }
            let row = &logits[tok * e..(tok + 1) * e];
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            for &x in &order[..2] {
                stats.cells[t][0][x].count += 1;
            }
        }
        let acts = LayerActivations {
            tokens: n,
            experts: e,
            hidden: h,
            router_logits: logits,
            expert_outputs: outputs,
        };
        (stats, Cache(acts))
    }

    #[test]
    fn search_beats_frequency_on_reconstruction_error() {
        let (stats, cache) = setup();
        let params = StrategyParams {
            beam_width: 2,
            ..Default::default()
        };
        let input = SelectionInput {
            stats: &stats,
            activations: Some(&cache),
            params: &params,
        };
        let freq = FREQUENCY.select_layer(&input, 0, 4).unwrap();
        let search = Reconstruction.select_layer(&input, 0, 4).unwrap();
        let (ef, es) = (
            subset_error(&cache.0, &freq, 2),
            subset_error(&cache.0, &search, 2),
        );
        // The best of all C(8, 4) = 70 subsets, by brute force.
        let best = (0u32..256)
            .filter(|m| m.count_ones() == 4)
            .map(|m| {
                subset_error(
                    &cache.0,
                    &(0..8).filter(|e| m & (1 << e) != 0).collect::<Vec<_>>(),
                    2,
                )
            })
            .fold(f64::INFINITY, f64::min);
        eprintln!("search {es:.4} ({search:?}), frequency {ef:.4} ({freq:?}), best {best:.4}");
        assert!(
            es < 0.85 * ef,
            "search {es:.4} ({search:?}) vs frequency {ef:.4} ({freq:?})"
        );
        assert!(
            es <= 1.05 * best,
            "search {es:.4} vs the best subset {best:.4}"
        );
        assert_eq!(subset_error(&cache.0, &(0..8).collect::<Vec<_>>(), 2), 0.0);
    }

    #[test]
    fn needs_activations() {
        let (stats, _) = setup();
        let params = StrategyParams::default();
        let input = SelectionInput {
            stats: &stats,
            activations: None,
            params: &params,
        };
        assert!(
            Reconstruction
                .select_layer(&input, 0, 4)
                .unwrap_err()
                .to_string()
                .contains("--cache-activations")
        );
    }
}
