//! `bench model`: a model's scoring and decode throughput, the issue-7 figures. Scoring is
//! `token_logprobs` over `batch x seq` random tokens (chunked log-softmax, targets gathered),
//! timed without and with routing recorded (an observer that reads every layer's expert ids and
//! gate weights, what `trace` records); decode is greedy generation with the KV cache at each
//! batch size. Compare with `tools/gpu/torch_baseline.py model` run in the same call
//! (`bench compare` prints both with the roofline).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use gpt_oss_model::generate::{
    Decoder, GenerateOptions, GenerationTimes, generate_masked, generate_step_by_step,
};
use gpt_oss_model::scoring::{DEFAULT_CHUNK, queue_token_logprobs};
use gpt_oss_model::{ForwardOptions, GptOss, LayerRouting, RoutingObserver};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use crate::host::{cpu_seconds_by_thread, cpu_seconds_per_run_since};
use crate::model_args::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct ModelBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 2048)]
    pub seq: usize,
    /// Timed scoring passes of each kind, without and with routing recorded, alternating (after
    /// one untimed pass of each).
    #[arg(long, default_value_t = 2)]
    pub iters: usize,
    /// Decode batch sizes (0: no decode).
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub decode_batches: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    pub prompt: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Seconds of untimed generations before each decoding's timed ones (at least one
    /// generation): a GPU raises its clocks only under sustained load (see [`time_decode`]).
    #[arg(long, default_value_t = 2.0)]
    pub warm_up_seconds: f64,
    /// Timed generations per decoding; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub timed_generations: usize,
    /// Token ids the decodings stop at, checked as `generate` checks the model's stop tokens
    /// (the picks read back at the steps `generate::checks_for_stops` names): what the checks
    /// cost. The tokens-per-second figures count every row's full length, so give ids the
    /// model does not produce (a random model's: harmony's 200002,200012).
    #[arg(long, value_delimiter = ',')]
    pub stop_tokens: Vec<u32>,
    /// Decode under this selection's expert mask (selection.json), as `eval --selection`
    /// generates.
    #[arg(long)]
    pub selection: Option<std::path::PathBuf>,
    /// The grouped kernel's tiling for large tiles (scoring), as `bench kernel-check
    /// --grouped-tilings` writes it (`128x320x32/tcdweg`); its rows must be the default's.
    #[arg(long)]
    pub grouped_tiling: Option<String>,
    /// The dense GEMM's tiling for every product, as `bench matmul --tilings` takes it
    /// (`128x256x48/256/warps`; not a `ceiling-*` or `-feed` bound), instead of the default
    /// (`gpt_oss_kernels::coopmat_gemm::tiling_for`, by the product's shape).
    #[arg(long)]
    pub dense_tiling: Option<String>,
}

/// Keeps what `trace` keeps of each layer: the selected experts and their gate weights.
#[derive(Default)]
struct RoutingRecorder {
    ids: Vec<u32>,
    gates: Vec<f32>,
}

impl RoutingObserver for RoutingRecorder {
    fn observe(&mut self, routing: &LayerRouting<'_>) {
        self.ids.extend_from_slice(routing.expert_ids);
        self.gates.extend_from_slice(routing.gate_weights);
    }
}

fn random_rows(rows: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rows)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

/// A scoring pass's median seconds, the median seconds until its last operation was handed to
/// the backend (before the read that waits for the device), and the host's CPU seconds per pass
/// by thread.
struct ScoringTiming {
    seconds: f64,
    /// Near `seconds`: the pass waits on the host's launch work, not on the device.
    queued_seconds: f64,
    /// CPU seconds per thread per timed pass (see `host::cpu_seconds_by_thread`): a busiest
    /// thread near `seconds` means the pass waits on the host's launch work.
    host_cpu: BTreeMap<String, f64>,
}

/// Times scoring passes without and with routing recorded, alternating (after one untimed
/// pass of each), so that a drift of the card's speed over the run falls on both alike: the
/// plain passes' timing and the recorded passes' median seconds.
fn time_scoring(model: &GptOss, rows: &[Vec<u32>], iters: usize) -> (ScoringTiming, f64) {
    let pass = |record: bool| {
        let mut recorder = RoutingRecorder::default();
        let options = ForwardOptions {
            observer: record.then_some(&mut recorder as &mut dyn RoutingObserver),
            mask: None,
        };
        let start = Instant::now();
        let queued = queue_token_logprobs(model, rows, options, DEFAULT_CHUNK);
        let queued_seconds = start.elapsed().as_secs_f64();
        let logprobs = queued.read();
        assert_eq!(logprobs.len(), rows.len());
        if record {
            assert!(!recorder.ids.is_empty(), "the recorded pass saw no routing");
        }
        (start.elapsed().as_secs_f64(), queued_seconds)
    };
    pass(false);
    pass(true);
    let iters = iters.max(1);
    let (mut seconds, mut queued, mut recorded) = (vec![], vec![], vec![]);
    let mut host_cpu = BTreeMap::new();
    for _ in 0..iters {
        let cpu_before = cpu_seconds_by_thread();
        let (plain, plain_queued) = pass(false);
        for (thread, cpu) in cpu_seconds_per_run_since(&cpu_before, iters) {
            *host_cpu.entry(thread).or_insert(0.0) += cpu;
        }
        seconds.push(plain);
        queued.push(plain_queued);
        recorded.push(pass(true).0);
    }
    let plain = ScoringTiming {
        seconds: median(seconds),
        queued_seconds: median(queued),
        host_cpu,
    };
    (plain, median(recorded))
}

pub fn model(args: ModelBenchArgs) -> anyhow::Result<()> {
    if let Some(text) = &args.grouped_tiling {
        let tiling = super::bench_kernels::parse_grouped_tiling(text)?;
        let rows = gpt_oss_kernels::grouped_mxfp4::LARGE_TILES.m;
        anyhow::ensure!(
            tiling.m == rows,
            "--grouped-tiling `{text}`: large tiles have {rows} rows"
        );
        gpt_oss_kernels::grouped_mxfp4::set_large_tiles(tiling);
    }
    if let Some(text) = &args.dense_tiling {
        gpt_oss_kernels::coopmat_gemm::set_tiling(super::bench_matmul::parse_product_tiling(text)?);
    }
    let loaded = args.model.load()?;
    let model = &loaded.model;
    let mask = match &args.selection {
        Some(path) => Some(super::eval::selection_mask(model, path)?),
        None => None,
    };
    let device = model.device();
    let after_load = device.memory_pool_usage();
    println!(
        "{}",
        json!({
            "bench": "load",
            "gpu_bytes_in_use": after_load.as_ref().map(|u| u.bytes_in_use),
            "gpu_bytes_reserved": after_load.as_ref().map(|u| u.bytes_reserved),
        })
    );
    let vocab = model.config.vocab_size;
    let rows = random_rows(args.batch, args.seq, vocab, 7);
    let tokens = (args.batch * args.seq) as f64;
    let (plain_timing, recorded) = time_scoring(model, &rows, args.iters);
    let plain = plain_timing.seconds;
    let pool = |d: &burn::tensor::Device| d.memory_pool_usage().map(|u| u.bytes_reserved);
    println!(
        "{}",
        json!({
            "bench": "score",
            "batch": args.batch,
            "seq": args.seq,
            "seconds": plain,
            "tokens_per_second": tokens / plain,
            "recording_seconds": recorded,
            "recording_tokens_per_second": tokens / recorded,
            "recording_overhead": recorded / plain - 1.0,
            "host_cpu_seconds_by_thread": plain_timing.host_cpu,
            "queued_seconds": plain_timing.queued_seconds,
            "gpu_bytes_reserved": pool(&device),
        })
    );
    let runs = DecodeRuns {
        new_tokens: args.new_tokens,
        warm_up_seconds: args.warm_up_seconds,
        timed: args.timed_generations.max(1),
        stop_tokens: args.stop_tokens.clone(),
    };
    for &batch in args.decode_batches.iter().filter(|&&b| b > 0) {
        let prompts = random_rows(batch, args.prompt, vocab, 11);
        // Rows of other lengths (so other padding), generated between the timed ones' warm-up
        // generations: a kept decoder must refill its state and tables for them and back.
        let other_prompts: Vec<Vec<u32>> = random_rows(batch, args.prompt, vocab, 13)
            .into_iter()
            .enumerate()
            .map(|(i, row)| row[..args.prompt - ((i + 1) % 3) * args.prompt / 4].to_vec())
            .collect();
        let prompts = DecodePrompts {
            timed: &prompts,
            other: &other_prompts,
        };
        // On the GPU kernel path a decoder captures a decode step and replays it: "default"
        // keeps one decoder for all its generations (as probes and eval do), so the step is
        // captured once; "capture_per_generation" captures it in every generation (a decoder
        // each); "step_by_step" runs one forward call per token.
        // The kept decoder lives in its decoding and in the reader of its times (where its
        // generations spend their time); both are dropped after its timing, so that what it
        // keeps (caches, the graph) is freed before the next decoding is timed.
        let decoder = Rc::new(RefCell::new(Decoder::new(model)));
        let reader = Rc::clone(&decoder);
        let mut parts: Option<Box<PartsFn<'_>>> = Some(Box::new(move || reader.borrow().times()));
        let mask = mask.as_ref();
        let mut decodings: Vec<(&str, Box<GenerateFn<'_>>)> = vec![(
            "default",
            Box::new(move |rows, options| decoder.borrow_mut().generate(rows, options, mask)),
        )];
        if model.on_kernel_path() {
            decodings.push((
                "capture_per_generation",
                Box::new(move |rows, options| generate_masked(model, rows, options, mask)),
            ));
            decodings.push((
                "step_by_step",
                Box::new(move |rows, options| generate_step_by_step(model, rows, options, mask)),
            ));
        }
        let mut first_tokens: Option<Vec<Vec<u32>>> = None;
        for (decoding, mut generate) in decodings {
            // Only the first decoding (the kept decoder) has parts to read.
            let decoding_parts = parts.take();
            let timing = time_decode(&prompts, &runs, &mut generate, decoding_parts.as_deref());
            drop(generate);
            drop(decoding_parts);
            // Every decoding must give the first one's tokens (greedy, same kernels).
            let same_tokens =
                first_tokens.get_or_insert_with(|| timing.tokens.clone()) == &timing.tokens;
            println!(
                "{}",
                json!({
                    "bench": "decode",
                    "decoding": decoding,
                    "batch": batch,
                    "prompt": args.prompt,
                    "new_tokens": args.new_tokens,
                    "stop_tokens": args.stop_tokens,
                    "selection": args.selection,
                    "produced_tokens": timing.produced,
                    "seconds": timing.seconds,
                    "warm_up_seconds": timing.warm_up,
                    "first_generation_seconds": timing.first_generation,
                    "timed_generations": runs.timed,
                    "tokens_per_second": timing.produced as f64 / timing.seconds,
                    "prefill_and_first_token_seconds": timing.prefill,
                    "decode_step_tokens_per_second": timing.step_tokens_per_second(batch, args.new_tokens),
                    "steady_step_tokens_per_second": timing.steady_step_tokens_per_second(batch, args.new_tokens),
                    "gpu_bytes_reserved": pool(&device),
                    "host_cpu_seconds_by_thread": timing.host_cpu,
                    "prefill_host_cpu_seconds_by_thread": timing.prefill_host_cpu,
                    "generation_parts_seconds": timing.parts.map(|p| json!({
                        "prefill": p.prefill, "step_setup": p.step_setup, "steps": p.steps})),
                    "same_tokens_as_first_decoding": same_tokens,
                })
            );
        }
    }
    Ok(())
}

/// Continuations, one per prompt.
type Tokens = Vec<Vec<u32>>;

/// A decoding: prompts and options -> continuations.
type GenerateFn<'a> = dyn FnMut(&[Vec<u32>], &GenerateOptions) -> Tokens + 'a;

/// A kept decoder's [`GenerationTimes`] so far (summed over its generations).
type PartsFn<'a> = dyn Fn() -> GenerationTimes + 'a;

/// Seconds per timed generation (the mean, where the whole is a median) in each part a kept
/// decoder times ([`GenerationTimes`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct GenerationParts {
    prefill: f64,
    step_setup: f64,
    steps: f64,
}

impl GenerationParts {
    /// The parts of `runs` generations that took `after` less `before`, per generation.
    fn per_run(before: GenerationTimes, after: GenerationTimes, runs: usize) -> Self {
        let per_run =
            |a: std::time::Duration, b: std::time::Duration| (a - b).as_secs_f64() / runs as f64;
        Self {
            prefill: per_run(after.prefill, before.prefill),
            step_setup: per_run(after.step_setup, before.step_setup),
            steps: per_run(after.steps, before.steps),
        }
    }
}

/// The prompts a decoding is timed on, and prompts of other lengths its warm-up generates too.
struct DecodePrompts<'a> {
    timed: &'a [Vec<u32>],
    other: &'a [Vec<u32>],
}

/// How a decoding is timed: generations of `new_tokens` per prompt, untimed ones for at least
/// `warm_up_seconds`, then `timed` ones (and `timed` of twice the tokens).
struct DecodeRuns {
    new_tokens: usize,
    warm_up_seconds: f64,
    timed: usize,
    stop_tokens: Vec<u32>,
}

/// A decoding's timing: medians over the timed generations.
struct DecodeTiming {
    seconds: f64,
    /// Generations of twice the tokens (see [`Self::steady_step_tokens_per_second`]).
    twice_seconds: f64,
    /// The prompt's forward pass and the first token alone.
    prefill: f64,
    /// Seconds the untimed generations took.
    warm_up: f64,
    /// Seconds of the first untimed generation (of the other prompts): a decoder's first,
    /// which captures its step.
    first_generation: f64,
    produced: usize,
    tokens: Vec<Vec<u32>>,
    /// CPU seconds per thread per timed generation (see `host::cpu_seconds_by_thread`).
    host_cpu: BTreeMap<String, f64>,
    /// The same per timed prefill and first token: a busiest thread near [`Self::prefill`]
    /// means the prefill, launched op by op, waits on the host.
    prefill_host_cpu: BTreeMap<String, f64>,
    /// A kept decoder's timed generations in parts (`None` for other decodings, and where the
    /// kept decoder generates step by step, which it does not time: off the GPU kernel path).
    parts: Option<GenerationParts>,
}

impl DecodeTiming {
    /// Tokens per second of the steps after the first token, each one token per row.
    fn step_tokens_per_second(&self, batch: usize, new_tokens: usize) -> f64 {
        let steps = new_tokens.saturating_sub(1) as f64;
        steps * batch as f64 / (self.seconds - self.prefill)
    }

    /// Tokens per second of the steps a generation of twice the tokens adds: the decode steps'
    /// steady rate, without the prefill and whatever a generation runs once (a captured step's
    /// warm-up and recording, which run uncaptured: at batch 1 the first three steps take
    /// several replays' time and weigh on [`Self::step_tokens_per_second`] over 64 tokens).
    fn steady_step_tokens_per_second(&self, batch: usize, new_tokens: usize) -> f64 {
        (new_tokens * batch) as f64 / (self.twice_seconds - self.seconds)
    }
}

/// Times `generate` producing `runs.new_tokens` per timed prompt: untimed generations until
/// `runs.warm_up_seconds` have passed (at least one round: the other prompts, the timed ones,
/// and the timed ones with twice the tokens; kernels compiled and tuned, a kept decoder's step
/// captured for the longest), then `runs.timed` generations, as many of twice the tokens and
/// as many of the first token alone, each figure their median; given `parts` (a kept decoder's
/// times), the timed generations' parts as well.
///
/// The warm-up is for the GPU's clocks: an H100 idles at 345 MHz and, under load, reaches its
/// 1980 MHz only after 0.2 to 1.5 s (nvidia-smi every 100 ms, 2026-11-27; it falls back within
/// a second of idling). A batch-1 generation of 64 tokens takes about 0.3 s. Decoding's own
/// load raised the clock within 0.2-0.4 s, so the figures of one generation after one untimed
/// did not move with the warm-up (docs/benchmarks.md, twelfth round); the warm-up and the
/// medians make that so by construction, as transformers' baseline is timed.
fn time_decode(
    prompts: &DecodePrompts<'_>,
    runs: &DecodeRuns,
    generate: &mut GenerateFn<'_>,
    parts: Option<&PartsFn<'_>>,
) -> DecodeTiming {
    let options = GenerateOptions {
        max_new_tokens: runs.new_tokens,
        stop_tokens: runs.stop_tokens.clone(),
        sampling: None,
        use_cache: true,
    };
    let twice = GenerateOptions {
        max_new_tokens: 2 * runs.new_tokens,
        ..options.clone()
    };
    let first_token = GenerateOptions {
        max_new_tokens: 1,
        ..options.clone()
    };
    let warm_up = Instant::now();
    let mut first_generation = None;
    loop {
        let start = Instant::now();
        generate(prompts.other, &options);
        first_generation.get_or_insert(start.elapsed().as_secs_f64());
        generate(prompts.timed, &options);
        generate(prompts.timed, &twice);
        if warm_up.elapsed().as_secs_f64() >= runs.warm_up_seconds {
            break;
        }
    }
    let warm_up = warm_up.elapsed().as_secs_f64();
    // The median seconds of `runs.timed` generations with `options`, and the last one's tokens.
    let mut timed = |options: &GenerateOptions| {
        let mut out = vec![];
        let seconds = (0..runs.timed).map(|_| {
            let start = Instant::now();
            out = generate(prompts.timed, options);
            start.elapsed().as_secs_f64()
        });
        let seconds = median(seconds.collect());
        (seconds, out)
    };
    let cpu_before = cpu_seconds_by_thread();
    let parts_before = parts.map(|read| read());
    let (seconds, out) = timed(&options);
    let host_cpu = cpu_seconds_per_run_since(&cpu_before, runs.timed);
    // A decoder that generated step by step (off the GPU kernel path) timed no parts.
    let parts = parts.zip(parts_before).and_then(|(read, before)| {
        let after = read();
        (after != before).then(|| GenerationParts::per_run(before, after, runs.timed))
    });
    let twice_seconds = timed(&twice).0;
    let cpu_before = cpu_seconds_by_thread();
    let prefill = timed(&first_token).0;
    let prefill_host_cpu = cpu_seconds_per_run_since(&cpu_before, runs.timed);
    DecodeTiming {
        seconds,
        twice_seconds,
        prefill,
        warm_up,
        first_generation: first_generation.expect("one warm-up round"),
        produced: out.iter().map(Vec::len).sum(),
        tokens: out,
        host_cpu,
        prefill_host_cpu,
        parts,
    }
}

/// The median of `values` (the upper one of an even count); `values` is not empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::{DecodeTiming, median};

    /// The steady rate counts only the steps the longer generation adds; the step rate counts
    /// every step after the first token.
    #[test]
    fn steady_rate_divides_the_added_steps_by_the_added_time() {
        let timing = DecodeTiming {
            seconds: 1.0,
            twice_seconds: 1.5,
            prefill: 0.37,
            warm_up: 2.0,
            first_generation: 0.5,
            produced: 128,
            tokens: vec![],
            host_cpu: Default::default(),
            prefill_host_cpu: Default::default(),
            parts: None,
        };
        assert_eq!(timing.steady_step_tokens_per_second(2, 64), 256.0);
        assert_eq!(timing.step_tokens_per_second(2, 64), 200.0);
    }

    /// Each part is the time added between the two readings, per generation.
    #[test]
    fn generation_parts_divide_the_added_time_by_the_runs() {
        use super::{GenerationParts, GenerationTimes};
        use std::time::Duration;
        let ms = Duration::from_millis;
        let before = GenerationTimes {
            prefill: ms(100),
            step_setup: ms(10),
            steps: ms(1000),
        };
        let after = GenerationTimes {
            prefill: ms(160),
            step_setup: ms(22),
            steps: ms(1600),
        };
        let parts = GenerationParts::per_run(before, after, 3);
        assert!((parts.prefill - 0.020).abs() < 1e-12, "{parts:?}");
        assert!((parts.step_setup - 0.004).abs() < 1e-12, "{parts:?}");
        assert!((parts.steps - 0.200).abs() < 1e-12, "{parts:?}");
    }

    /// The middle value of an odd count, the upper middle of an even one, whatever the order.
    #[test]
    fn median_takes_the_middle_of_the_sorted_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
