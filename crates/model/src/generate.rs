//! Token generation: batched, left-padded prompts; greedy by default, or temperature and top-p
//! sampling from a seed; stops on the model's stop tokens. With the KV cache each step feeds one
//! token per row; without it every step re-runs the whole sequence (the reference for tests).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use std::cell::RefCell;

use burn::tensor::Tensor;

use crate::routing::ExpertMask;
use crate::transformer::cache::KEY_BLOCK;
use crate::transformer::step::{StepState, StepTables};
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
/// Greedy decoding with the cache on the GPU kernel path runs [`generate_captured`]; everything
/// else [`generate_step_by_step`]. Both give the same tokens.
pub fn generate_masked(
    model: &GptOss,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mask: Option<&ExpertMask>,
) -> Vec<Vec<u32>> {
    let greedy = options.sampling.is_none_or(|s| s.temperature <= 0.0);
    if greedy && options.use_cache && model.on_kernel_path() {
        generate_captured(model, prompts, options, mask)
    } else {
        generate_step_by_step(model, prompts, options, mask)
    }
}

/// Generation one forward call per step, every step's inputs prepared on the host.
pub fn generate_step_by_step(
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
        let last = last_position(logits);
        let next: Vec<u32> = match (&options.sampling, rng.as_mut()) {
            (Some(s), Some(rng)) if s.temperature > 0.0 => {
                let v = last.dims()[1];
                let rows = last.try_into_vec_as::<f32>().expect("f32 logits");
                rows.chunks_exact(v)
                    .map(|row| sample(row, s, rng))
                    .collect()
            }
            _ => greedy_picks(last),
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

/// Fewest decode steps for which [`generate_captured`] captures a step (capturing runs three
/// steps to warm up, then records one).
pub const CAPTURE_MIN_STEPS: usize = 8;

/// Greedy generation with the cache, each step after the prefill run by
/// [`GptOss::decode_step`] on device state ([`crate::transformer::step`]): when the step reads
/// nothing back ([`GptOss::steps_on_device_only`]), with no expert mask (its router bias is
/// uploaded per layer) and at least [`CAPTURE_MIN_STEPS`] steps, the step is captured once
/// and replayed (`burn::tensor::capture`), otherwise it runs as it is, step by step. The same
/// tokens as [`generate_step_by_step`]; picks are read back once at the end, or after every
/// step when there are stop tokens.
pub fn generate_captured(
    model: &GptOss,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mask: Option<&ExpertMask>,
) -> Vec<Vec<u32>> {
    let b = prompts.len();
    if b == 0 || options.max_new_tokens == 0 {
        return vec![vec![]; b];
    }
    let device = model.device();
    let pad = model.config.pad_token_id.unwrap_or(0);
    let prompt = TokenBatch::left_padded(prompts, pad);
    let mut cache = model.new_cache();
    let options_prefill = ForwardOptions {
        observer: None,
        mask,
    };
    let logits = model.forward(&prompt, Some(&mut cache), options_prefill);
    let t = logits.dims()[1];
    let first = greedy_picks(last_position(logits));
    let steps = options.max_new_tokens - 1;
    let stops = |token: &u32| options.stop_tokens.contains(token);
    if steps == 0 || first.iter().all(stops) {
        return first.into_iter().map(|token| vec![token]).collect();
    }
    let capacity = (t + options.max_new_tokens).div_ceil(KEY_BLOCK) * KEY_BLOCK;
    let tables = StepTables::new(model, &cache.pads, capacity, &device);
    let state = RefCell::new(StepState::after_prefill(
        &cache, &first, t, capacity, &device,
    ));
    drop(cache);
    let step = || model.decode_step(&mut state.borrow_mut(), &tables, mask);
    let slot_now = || state.borrow().slot.clone().into_scalar::<f32>() as usize;
    let all_stopped = || {
        let tokens = state.borrow().tokens.clone().try_into_vec_as::<f32>();
        tokens
            .expect("f32 tokens")
            .iter()
            .all(|&x| stops(&(x as u32)))
    };
    let mut stopped = false;
    if model.steps_on_device_only(b) && mask.is_none() && steps >= CAPTURE_MIN_STEPS {
        let mut graph = burn::tensor::capture(&device, step);
        if !graph.is_hardware() {
            tracing::warn!("the decode step could not be captured: each replay runs it again");
        }
        // The warm-up runs before the capture were real steps; the recorded one ran none.
        let mut done = slot_now() - t;
        while done < steps && !stopped {
            // Safety: every buffer the step touches is owned by `state`, `tables` and the model,
            // all alive until the graph is dropped; all work runs on this thread's stream.
            unsafe { graph.replay() };
            done += 1;
            stopped = !options.stop_tokens.is_empty() && all_stopped();
        }
    } else {
        for _ in 0..steps {
            step();
            if !options.stop_tokens.is_empty() && all_stopped() {
                break;
            }
        }
    }
    let produced = (slot_now() - t + 1).min(options.max_new_tokens);
    let picks = state.borrow().picks.clone().narrow(1, t, produced);
    let picks = picks.try_into_vec_as::<f32>().expect("f32 picks");
    picks
        .chunks_exact(produced)
        .map(|row| {
            let mut out = vec![];
            for &x in row {
                out.push(x as u32);
                if stops(&(x as u32)) {
                    break;
                }
            }
            out
        })
        .collect()
}

/// The logits [B, T, V] of each row's last position -> [B, V].
fn last_position(logits: Tensor<3>) -> Tensor<2> {
    let [b, t, v] = logits.dims();
    logits.narrow(1, t - 1, 1).reshape([b, v])
}

/// Each row's most likely token of `logits` [B, V] (read back to the host).
fn greedy_picks(logits: Tensor<2>) -> Vec<u32> {
    logits
        .argmax(1)
        .try_into_vec_as::<i64>()
        .expect("token ids")
        .into_iter()
        .map(|x| x as u32)
        .collect()
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
