//! Metrics as pure functions of logits and log-probabilities (f64 accumulation throughout).

/// log-softmax of one row of logits.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&l| l as f64 - log_z).collect()
}

/// KL(P || Q) in nats for one position, P from `reference` logits (the full model), Q from
/// `variant` logits (the pruned one).
pub fn kl_divergence(reference: &[f32], variant: &[f32]) -> f64 {
    assert_eq!(reference.len(), variant.len(), "one vocabulary");
    kl_of_log_probs(&log_softmax(reference), &log_softmax(variant))
}

/// KL(P || Q) from log-probabilities already computed (one log-softmax per row, not two).
pub fn kl_of_log_probs(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(lp, lq)| lp.exp() * (lp - lq))
        .sum::<f64>()
        .max(0.0)
}

/// The index of the largest logit (the lowest index among ties).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// 1-based rank of `token` under `logits`: 1 + the number of tokens with a strictly larger logit.
pub fn rank_of(logits: &[f32], token: usize) -> usize {
    let target = logits[token];
    1 + logits.iter().filter(|&&l| l > target).count()
}

/// exp(-mean log-probability); 1 for no tokens.
pub fn perplexity(logprobs: &[f64]) -> f64 {
    if logprobs.is_empty() {
        return 1.0;
    }
    (-logprobs.iter().sum::<f64>() / logprobs.len() as f64).exp()
}

/// The Wilson score interval of a proportion at 95% (z = 1.96): sensible at 0 and at n.
pub fn wilson_interval(successes: usize, trials: usize) -> (f64, f64) {
    if trials == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = trials as f64;
    let p = successes as f64 / n;
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn log_softmax_of_hand_made_logits() {
        let l = log_softmax(&[0.0, 0.0]);
        assert!(close(l[0], -(2f64.ln()), 1e-12) && close(l[1], l[0], 0.0));
        let l = log_softmax(&[1000.0, 0.0]);
        assert!(close(l[0], 0.0, 1e-12) && close(l[1], -1000.0, 1e-9));
    }

    #[test]
    fn kl_is_zero_for_equal_distributions_and_matches_a_hand_computation() {
        assert_eq!(kl_divergence(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        // Shifting every logit changes nothing.
        assert!(kl_divergence(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]) < 1e-12);
        // P = (1/2, 1/2), Q = (1/(1+e), e/(1+e)): KL = ln 2 ... computed directly.
        let (p, q1) = (0.5f64, 1.0 / (1.0 + 1f64.exp()));
        let want = p * (p / q1).ln() + p * (p / (1.0 - q1)).ln();
        assert!(close(kl_divergence(&[0.0, 0.0], &[0.0, 1.0]), want, 1e-9));
        // Asymmetric: KL(P||Q) != KL(Q||P) for these.
        let (a, b) = ([0.0, 0.0, 5.0], [3.0, 0.0, 0.0]);
        assert!((kl_divergence(&a, &b) - kl_divergence(&b, &a)).abs() > 1e-3);
    }

    #[test]
    fn argmax_and_rank() {
        let l = [0.1, 2.0, -1.0, 2.0, 0.5];
        assert_eq!(argmax(&l), 1);
        assert_eq!(rank_of(&l, 1), 1);
        assert_eq!(rank_of(&l, 3), 1, "ties share the better rank");
        assert_eq!(rank_of(&l, 4), 3);
        assert_eq!(rank_of(&l, 2), 5);
    }

    #[test]
    fn perplexity_of_uniform_guesses_is_the_vocabulary_size() {
        let lp = vec![-(50f64.ln()); 7];
        assert!(close(perplexity(&lp), 50.0, 1e-9));
        assert_eq!(perplexity(&[]), 1.0);
    }

    #[test]
    fn wilson_interval_contains_the_proportion_and_known_values() {
        let (lo, hi) = wilson_interval(50, 100);
        assert!(
            close(lo, 0.4038, 1e-4) && close(hi, 0.5962, 1e-4),
            "{lo} {hi}"
        );
        let (lo, hi) = wilson_interval(0, 10);
        assert!(lo == 0.0 && close(hi, 0.2775, 1e-4), "{hi}");
        let (lo, hi) = wilson_interval(10, 10);
        assert!(
            close(lo, 0.7225, 1e-4) && close(hi, 1.0, 1e-12),
            "{lo} {hi}"
        );
        assert_eq!(wilson_interval(0, 0), (0.0, 1.0));
    }
}
