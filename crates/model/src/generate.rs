//! Token generation: batched, left-padded prompts; greedy by default, or temperature and top-p
//! sampling from a seed; stops on the model's stop tokens. With the KV cache each step feeds one
//! token per row; without it every step re-runs the whole sequence (the reference for tests).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::routing::ExpertMask;
use crate::transformer::{ForwardOptions, GptOss, TokenBatch};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation ends for a row once it produces one of these (the token is kept).
    pub stop_tokens: Vec<u32>,
    /// `None`: greedy.
    pub sampling: Option<Sampling>,
    pub use_cache: bool,
}

/// The continuation of each prompt (stop token included when one was produced).
pub fn generate(model: &GptOss, prompts: &[Vec<u32>], options: &GenerateOptions) -> Vec<Vec<u32>> {
    generate_masked(model, prompts, options, None)
}

/// [`generate`] with experts forbidden by `mask` (a selection evaluated on the full model).
pub fn generate_masked(
    model: &GptOss,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mask: Option<&ExpertMask>,
) -> Vec<Vec<u32>> {
    let b = prompts.len();
    let pad = model.config.pad_token_id.unwrap_or(0);
    let mut out: Vec<Vec<u32>> = vec![vec![]; b];
    let mut done = vec![false; b];
    let mut rng = options.sampling.map(|s| StdRng::seed_from_u64(s.seed));
    let mut cache = options.use_cache.then(|| model.new_cache());
    let mut step_batch = TokenBatch::left_padded(prompts, pad);
    for _ in 0..options.max_new_tokens {
        let logits = model.forward(
            &step_batch,
            cache.as_mut(),
            ForwardOptions {
                observer: None,
                mask,
            },
        );
        let [_, t, v] = logits.dims();
        let last = logits.narrow(1, t - 1, 1).reshape([b, v]);
        let next: Vec<u32> = match (&options.sampling, rng.as_mut()) {
            (Some(s), Some(rng)) if s.temperature > 0.0 => {
                let rows = last.try_into_vec_as::<f32>().expect("f32 logits");
                rows.chunks_exact(v)
                    .map(|row| sample(row, s, rng))
                    .collect()
            }
            _ => last
                .argmax(1)
                .try_into_vec_as::<i64>()
                .expect("token ids")
                .into_iter()
                .map(|x| x as u32)
                .collect(),
        };
        for row in 0..b {
            if !done[row] {
                out[row].push(next[row]);
                done[row] = options.stop_tokens.contains(&next[row]);
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        step_batch = if cache.is_some() {
            TokenBatch::step(&next)
        } else {
            let rows: Vec<Vec<u32>> = prompts
                .iter()
                .zip(&out)
                .map(|(p, o)| p.iter().chain(o).copied().collect())
                .collect();
            // Finished rows keep growing with their own tokens; the padding stays on the left.
            TokenBatch::left_padded(&rows, pad)
        };
    }
    out
}

/// Samples from softmax(logits / T) restricted to the smallest set with mass >= top_p.
fn sample(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, (((l - max) / s.temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= s.top_p as f64 {
            cut = i + 1;
            break;
        }
    }
    let nucleus = &probs[..cut];
    let mass: f64 = nucleus.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * mass;
    for &(i, p) in nucleus {
        r -= p;
        if r <= 0.0 {
            return i as u32;
        }
    }
    nucleus.last().expect("non-empty nucleus").0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_restricts_to_the_nucleus() {
        let logits = [10.0, 9.9, -10.0, -10.0];
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            seed: 0,
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            assert!(sample(&logits, &s, &mut rng) < 2);
        }
        let greedy_like = Sampling {
            temperature: 1.0,
            top_p: 0.0,
            seed: 0,
        };
        assert_eq!(sample(&logits, &greedy_like, &mut rng), 0);
    }
}
