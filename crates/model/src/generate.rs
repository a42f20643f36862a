//! Token generation: batched, left-padded prompts; greedy by default, or temperature and top-p
//! sampling from a seed; stops on the model's stop tokens. With the KV cache each step feeds one
//! token per row; without it every step re-runs the whole sequence (the reference for tests).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use burn::tensor::{Graph, Tensor};

use crate::routing::ExpertMask;
use crate::transformer::cache::{KEY_BLOCK, KvCache};
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

/// [`generate`] with experts forbidden by `mask` (a selection evaluated on the full model):
/// [`Decoder::generate`] with a decoder of its own. Callers that generate again and again
/// (probes, benchmarks) keep one [`Decoder`] instead, so that its captured step is reused.
pub fn generate_masked(
    model: &GptOss,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mask: Option<&ExpertMask>,
) -> Vec<Vec<u32>> {
    Decoder::new(model).generate(prompts, options, mask)
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
        let last = model.forward_last(
            &step_batch,
            cache.as_mut(),
            ForwardOptions {
                observer: None,
                mask,
            },
        );
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

/// Fewest decode steps for which a [`Decoder`] captures a step (capturing runs three steps to
/// warm up, then records one).
pub const CAPTURE_MIN_STEPS: usize = 8;

/// Greedy generation with the cache on device state ([`Decoder::generate_on_device_state`])
/// with a decoder of its own: the step is captured (or not) for this generation alone.
pub fn generate_captured(
    model: &GptOss,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mask: Option<&ExpertMask>,
) -> Vec<Vec<u32>> {
    Decoder::new(model).generate_on_device_state(prompts, options, mask)
}

/// Generation that keeps its decode step between calls: the step's device state, its tables
/// and, on the GPU, the captured graph stay for the next greedy generation with as many rows,
/// the same mask and no more slots: its prefill writes into the kept key and value buffers
/// ([`StepState::cache_for_prefill`]), the rest is refilled in place
/// ([`StepState::refill_after_prefill`], [`StepTables::refill_for`]), and the graph is replayed
/// instead of capturing a new one (three uncaptured steps and a recording, several steps' time
/// at batch 1). What it keeps holds GPU memory (the caches of its capacity, the graph's
/// buffers) until the next generation of another shape or until the decoder is dropped.
pub struct Decoder<'m> {
    model: &'m GptOss,
    kept: Option<KeptStep<'m>>,
    /// Generations that made a new step rather than refilling the kept one.
    steps_made: usize,
    times: GenerationTimes,
}

/// Wall time a [`Decoder`]'s generations on device state spent in each part, summed over its
/// generations. Each part ends with a wait for the device (a read of the picks, or the refills'
/// sync), so the device work it queued is counted in it; a new step's uploads are not waited
/// for and show in the steps. Generations step by step (the CPU) are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationTimes {
    /// The prompts' forward pass and the first picks.
    pub prefill: Duration,
    /// Refilling the kept step, or making a new one (and capturing it).
    pub step_setup: Duration,
    /// The decode steps and the reads of their picks.
    pub steps: Duration,
}

/// A decode step kept for the next generation of its shape.
struct KeptStep<'m> {
    /// The captured step (`None`: not captured yet, or the step reads back and cannot be).
    /// Its closure holds the state and tables below, so their buffers live as long as it.
    graph: Option<Graph<(), Box<dyn FnMut() + 'm>>>,
    state: Rc<RefCell<StepState>>,
    tables: Rc<RefCell<StepTables>>,
    mask: Option<ExpertMask>,
}

impl<'m> KeptStep<'m> {
    /// Whether a generation of `rows` rows needing `capacity` slots under `mask` can reuse it.
    fn fits(&self, rows: usize, capacity: usize, mask: Option<&ExpertMask>) -> bool {
        let state = self.state.borrow();
        state.rows() == rows && state.capacity() >= capacity && self.mask.as_ref() == mask
    }

    /// Captures the step on this state and tables (`burn::tensor::capture`: three real steps
    /// to warm up, then a recording that runs none).
    fn capture(&mut self, model: &'m GptOss) {
        let (state, tables) = (Rc::clone(&self.state), Rc::clone(&self.tables));
        let step: Box<dyn FnMut() + 'm> =
            Box::new(move || model.decode_step(&mut state.borrow_mut(), &tables.borrow()));
        let graph = burn::tensor::capture(&model.device(), step);
        if !graph.is_hardware() {
            tracing::warn!("the decode step could not be captured: each replay runs it again");
        }
        self.graph = Some(graph);
    }

    /// Runs the decode steps after a prefill of `prompt_slots` slots: `steps` of them, or
    /// fewer once every row has produced one of `stop_tokens` (looked for at the steps
    /// [`checks_for_stops`] names). Returns each row's picks from the prefill's slot on
    /// (row-major) and how many each row has.
    fn run_steps(
        &mut self,
        model: &GptOss,
        prompt_slots: usize,
        steps: usize,
        stop_tokens: &[u32],
    ) -> (Vec<f32>, usize) {
        let t = prompt_slots;
        let (state, tables) = (&self.state, &self.tables);
        let slot_now = || state.borrow().slot_value();
        // After `done` steps: whether every row has produced a stop token (picks read back; the
        // first token, before any step, was looked at before).
        let all_stopped = |done: usize| {
            if stop_tokens.is_empty() || done == 0 || !checks_for_stops(done) {
                return false;
            }
            let produced = done + 1;
            let picks = state.borrow().picks_values(t, produced);
            every_row_has_a_stop(&picks, produced, stop_tokens)
        };
        if let Some(graph) = self.graph.as_mut() {
            // A capture's warm-up runs were real steps; the recorded one ran none.
            let mut done = slot_now() - t;
            while done < steps && !all_stopped(done) {
                // Safety: every buffer the step touches is owned by the kept state, tables
                // (held by the graph's closure) and the model (borrowed for the decoder's life);
                // all work runs on this thread's stream, and the refills were synced before.
                unsafe { graph.replay() };
                done += 1;
            }
        } else {
            for done in 0..steps {
                if all_stopped(done) {
                    break;
                }
                model.decode_step(&mut state.borrow_mut(), &tables.borrow());
            }
        }
        let produced = (slot_now() - t + 1).min(steps + 1);
        (state.borrow().picks_values(t, produced), produced)
    }
}

impl<'m> Decoder<'m> {
    pub fn new(model: &'m GptOss) -> Self {
        Self {
            model,
            kept: None,
            steps_made: 0,
            times: GenerationTimes::default(),
        }
    }

    /// Where this decoder's generations on device state spent their time so far.
    pub fn times(&self) -> GenerationTimes {
        self.times
    }

    /// How many generations made a new decode step (state, tables and, when captured, a graph)
    /// rather than refilling the kept one.
    pub fn steps_made(&self) -> usize {
        self.steps_made
    }

    /// The cache for the prefill of a generation of `rows` rows needing `capacity` slots under
    /// `mask`, and whether it is the kept step's own buffers (the kept step fits: the prefill
    /// writes into them, [`StepState::cache_for_prefill`]) rather than a new cache.
    fn prefill_cache(
        &self,
        rows: usize,
        capacity: usize,
        mask: Option<&ExpertMask>,
    ) -> (KvCache, bool) {
        match &self.kept {
            Some(kept) if kept.fits(rows, capacity, mask) => {
                (kept.state.borrow().cache_for_prefill(self.model), true)
            }
            _ => (self.model.new_cache(), false),
        }
    }

    /// Keeps a step for the decoding after a prefill into `cache` (of `prompt_slots` slots,
    /// greedy picks `first`): the kept one refilled when the prefill went into its buffers
    /// (`into_kept`, from [`Self::prefill_cache`]), else a new one for `capacity` slots under
    /// `mask` (what was kept is dropped first).
    fn prepare_step(
        &mut self,
        cache: KvCache,
        into_kept: bool,
        first: &[u32],
        prompt_slots: usize,
        capacity: usize,
        mask: Option<&ExpertMask>,
    ) {
        let model = self.model;
        let device = model.device();
        match self.kept.take() {
            Some(kept) if into_kept => {
                let kernels = model.on_kernel_path();
                let mut state = kept.state.borrow_mut();
                kept.tables.borrow_mut().refill_for(model, &cache.pads);
                state.refill_after_prefill(cache, first, prompt_slots, kernels);
                // The refills run before any replay reads them (a replay goes to the device
                // stream past burn's fusion).
                device.sync().expect("the device runs the refills");
                drop(state);
                self.kept = Some(kept);
            }
            _ => {
                self.steps_made += 1;
                let tables = StepTables::new(model, &cache.pads, capacity, mask, &device);
                let state =
                    StepState::after_prefill(&cache, first, prompt_slots, capacity, &device);
                self.kept = Some(KeptStep {
                    graph: None,
                    state: Rc::new(RefCell::new(state)),
                    tables: Rc::new(RefCell::new(tables)),
                    mask: mask.cloned(),
                });
            }
        }
    }

    /// The continuation of each prompt, as [`generate`] gives it, with experts forbidden by
    /// `mask`. Greedy decoding with the cache on the GPU kernel path runs
    /// [`Self::generate_on_device_state`]; everything else [`generate_step_by_step`]. Both
    /// give the same tokens.
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        mask: Option<&ExpertMask>,
    ) -> Vec<Vec<u32>> {
        let greedy = options.sampling.is_none_or(|s| s.temperature <= 0.0);
        if greedy && options.use_cache && self.model.on_kernel_path() {
            self.generate_on_device_state(prompts, options, mask)
        } else {
            generate_step_by_step(self.model, prompts, options, mask)
        }
    }

    /// Greedy generation with the cache, each step after the prefill run by
    /// [`GptOss::decode_step`] on device state ([`crate::transformer::step`]), kept for the next
    /// generation of the same shape (see [`Decoder`]). Where the model captures the step
    /// ([`GptOss::captures_steps`]: it reads nothing back; an expert mask's router biases are
    /// uploaded once, in [`StepTables`]), it is captured once, by the first generation of at least
    /// [`CAPTURE_MIN_STEPS`] steps, and replayed (`burn::tensor::capture`); otherwise it runs
    /// as it is, step by step. The same tokens as [`generate_step_by_step`]; picks are read back
    /// once at the end and, with stop tokens, at the steps [`checks_for_stops`] names (the
    /// generation ends once every row has produced one).
    pub fn generate_on_device_state(
        &mut self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        mask: Option<&ExpertMask>,
    ) -> Vec<Vec<u32>> {
        let model = self.model;
        let b = prompts.len();
        if b == 0 || options.max_new_tokens == 0 {
            return vec![vec![]; b];
        }
        let pad = model.config.pad_token_id.unwrap_or(0);
        let started = Instant::now();
        let prompt = TokenBatch::left_padded(prompts, pad);
        let t = prompt.seq_len;
        let capacity = (t + options.max_new_tokens).div_ceil(KEY_BLOCK) * KEY_BLOCK;
        let (mut cache, into_kept) = self.prefill_cache(b, capacity, mask);
        let options_prefill = ForwardOptions {
            observer: None,
            mask,
        };
        let first = greedy_picks(model.forward_last(&prompt, Some(&mut cache), options_prefill));
        self.times.prefill += started.elapsed();
        let steps = options.max_new_tokens - 1;
        let stops = |token: &u32| options.stop_tokens.contains(token);
        if steps == 0 || first.iter().all(stops) {
            return first.into_iter().map(|token| vec![token]).collect();
        }
        let started = Instant::now();
        self.prepare_step(cache, into_kept, &first, t, capacity, mask);
        let kept = self.kept.as_mut().expect("a step was prepared above");
        if kept.graph.is_none() && model.captures_steps(b) && steps >= CAPTURE_MIN_STEPS {
            kept.capture(model);
        }
        self.times.step_setup += started.elapsed();
        let started = Instant::now();
        let (picks, produced) = kept.run_steps(model, t, steps, &options.stop_tokens);
        self.times.steps += started.elapsed();
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
}

/// Decode steps between two reads of the picks for stop tokens once that many have run (before,
/// every step is checked, so short answers end at once): a read makes the host wait for the
/// device, and the device then idles while the next step is encoded. Checked after every step,
/// 64 tokens of the random 20b on an H100 decoded at 188-200 steps/s instead of 238 at batch 1;
/// with this schedule at 219-222 (docs/benchmarks.md, thirteenth round). At most this many
/// steps run past the last row's stop token; their picks are cut.
pub const STOP_CHECK_STEPS: usize = 8;

/// Whether the picks are read for stop tokens after `done` decode steps: after each of the
/// first [`STOP_CHECK_STEPS`], then after every [`STOP_CHECK_STEPS`]-th.
pub fn checks_for_stops(done: usize) -> bool {
    done < STOP_CHECK_STEPS || done.is_multiple_of(STOP_CHECK_STEPS)
}

/// Whether each row of `picks` (rows of `row_len` tokens held as f32) holds one of `stops`.
fn every_row_has_a_stop(picks: &[f32], row_len: usize, stops: &[u32]) -> bool {
    picks
        .chunks_exact(row_len)
        .all(|row| row.iter().any(|&x| stops.contains(&(x as u32))))
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

    /// A row stops on any of its picks, not only its latest; every row must have stopped.
    #[test]
    fn generation_ends_when_every_row_has_produced_a_stop() {
        let stops = [7, 9];
        // Row 0 stopped at its second token and went on; row 1 stops at its last.
        assert!(every_row_has_a_stop(&[1., 7., 3., 4., 5., 9.], 3, &stops));
        assert!(!every_row_has_a_stop(&[1., 7., 3., 4., 5., 6.], 3, &stops));
        assert!(!every_row_has_a_stop(&[1., 2.], 2, &stops));
    }

    /// Every step at first, then every eighth.
    #[test]
    fn stops_are_checked_often_at_first_then_every_few_steps() {
        let checked: Vec<usize> = (0..40).filter(|&d| checks_for_stops(d)).collect();
        assert_eq!(checked, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32]);
    }

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
