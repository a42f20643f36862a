//! Probe suites: `{"id", "task", "prompt", "answer"}` records (optionally `"chat": true`, a
//! harmony user turn). Each probe is answered greedily and scored by the rule in
//! [`crate::answer`]; the answer's log-probability and the rank of its first token are read from
//! one teacher-forced pass over prompt + answer.

use gpt_oss_model::dataset::Record;
use gpt_oss_model::generate::{Decoder, GenerateOptions, GenerationTimes};
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{ExpertMask, ForwardOptions, GptOss, TokenBatch};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::answer::{answer_matches, answer_text};
use crate::metrics::{log_softmax, rank_of};
use crate::{EvalError, Result};

/// One probe's outcome (a row of items.csv).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub id: String,
    pub task: String,
    pub answer: String,
    /// What the model answered: its continuation's first line, before any end marker.
    pub got: String,
    pub correct: bool,
    /// log p(answer tokens | prompt), summed over the answer's tokens.
    pub answer_logprob: f64,
    pub answer_tokens: usize,
    /// Rank of the answer's first token among the whole vocabulary (1 = the greedy choice).
    pub first_token_rank: usize,
}

struct Prepared<'a> {
    record: &'a Record,
    prompt: Vec<u32>,
    answer: Vec<u32>,
}

fn prepare<'a>(record: &'a Record, tokenizer: &TextTokenizer) -> Result<Prepared<'a>> {
    if record.prompt.is_none() {
        return Err(EvalError::Invalid(format!(
            "probe `{}` has no `prompt` and `answer`",
            record.id
        )));
    }
    let t = record.tokenize(tokenizer)?;
    if t.answer_start == 0 || t.answer_start >= t.tokens.len() {
        return Err(EvalError::Invalid(format!(
            "probe `{}`: the prompt or the answer has no tokens",
            record.id
        )));
    }
    Ok(Prepared {
        record,
        prompt: t.tokens[..t.answer_start].to_vec(),
        answer: t.tokens[t.answer_start..].to_vec(),
    })
}

/// Every probe in `records`, `batch` at a time, on `model` with `mask` (None: all experts).
/// Logs at debug level where the time went: generation (and its parts), the answers' pass and
/// their scores on the host.
pub fn evaluate_probes(
    model: &GptOss,
    tokenizer: &TextTokenizer,
    records: &[Record],
    mask: Option<&ExpertMask>,
    batch: usize,
) -> Result<Vec<ProbeResult>> {
    let stop_tokens = tokenizer.stop_tokens(&model.config);
    let mut out = Vec::with_capacity(records.len());
    // One decoder for every chunk: chunks of one shape reuse its captured decode step.
    let mut decoder = Decoder::new(model);
    let mut times = ProbeTimes::default();
    let chunks = records.chunks(batch.max(1));
    let chunk_count = chunks.len();
    for chunk in chunks {
        let prepared: Vec<Prepared<'_>> = chunk
            .iter()
            .map(|r| prepare(r, tokenizer))
            .collect::<Result<_>>()?;
        let longest = longest_answer(&prepared);
        let prompts: Vec<Vec<u32>> = prepared.iter().map(|p| p.prompt.clone()).collect();
        let options = GenerateOptions {
            max_new_tokens: longest + 2,
            stop_tokens: stop_tokens.clone(),
            sampling: None,
            use_cache: true,
        };
        let continuations = timed(&mut times.generation, || {
            decoder.generate(&prompts, &options, mask)
        });
        let logits = timed(&mut times.answer_passes, || {
            answer_logits(model, &prepared, mask)
        });
        let scores = timed(&mut times.scoring, || answer_scores(&prepared, &logits));
        for ((p, continuation), (logprob, rank)) in prepared.iter().zip(continuations).zip(scores) {
            let text = tokenizer.decode(&continuation)?;
            let answer = p.record.answer.clone().unwrap_or_default();
            out.push(ProbeResult {
                id: p.record.id.clone(),
                task: p.record.task.clone(),
                correct: answer_matches(&text, &answer),
                got: answer_text(&text).to_string(),
                answer,
                answer_logprob: logprob,
                answer_tokens: p.answer.len(),
                first_token_rank: rank,
            });
        }
    }
    times.log(out.len(), chunk_count, &decoder);
    Ok(out)
}

/// Wall time of [`evaluate_probes`]' parts, summed over its chunks.
#[derive(Default)]
struct ProbeTimes {
    generation: Duration,
    answer_passes: Duration,
    /// The answers' log-probabilities and ranks, on the host.
    scoring: Duration,
}

impl ProbeTimes {
    /// Logs (at debug level: `RUST_LOG=gpt_oss_eval=debug`) where the time of `probes` probes
    /// in `chunks` chunks went, with generation's parts on device state from `decoder`.
    fn log(&self, probes: usize, chunks: usize, decoder: &Decoder<'_>) {
        let on_device = decoder.times();
        let parts = if on_device == GenerationTimes::default() {
            "step by step".to_string()
        } else {
            format!(
                "on device state: prefill {:.1} s, step set-up {:.1} s, steps {:.1} s; {} new \
                 decode steps",
                on_device.prefill.as_secs_f64(),
                on_device.step_setup.as_secs_f64(),
                on_device.steps.as_secs_f64(),
                decoder.steps_made()
            )
        };
        tracing::debug!(
            "probes: {probes} in {chunks} chunks: generation {:.1} s ({parts}), the answers' \
             pass {:.1} s, their scores on the host {:.1} s",
            self.generation.as_secs_f64(),
            self.answer_passes.as_secs_f64(),
            self.scoring.as_secs_f64()
        );
    }
}

/// `work`'s result, its wall time added to `total`.
fn timed<T>(total: &mut Duration, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = work();
    *total += started.elapsed();
    result
}

/// The logits at the answers' positions, from one pass over the left-padded prompt + answer rows:
/// [probes, longest answer, vocab] flat. Rows end with their answers, so the predicting positions
/// are the `longest` before every row's last, and only those go through the lm_head.
fn answer_logits(model: &GptOss, prepared: &[Prepared<'_>], mask: Option<&ExpertMask>) -> Vec<f32> {
    let rows: Vec<Vec<u32>> = prepared
        .iter()
        .map(|p| [p.prompt.as_slice(), p.answer.as_slice()].concat())
        .collect();
    let pad = model.config.pad_token_id.unwrap_or(0);
    let batch = TokenBatch::left_padded(&rows, pad);
    let longest = longest_answer(prepared);
    let t = batch.seq_len;
    let options = ForwardOptions {
        observer: None,
        mask,
    };
    model
        .forward_positions(&batch, None, options, t - 1 - longest..t - 1)
        .try_into_vec_as::<f32>()
        .expect("f32 logits")
}

/// The longest answer of `prepared`, in tokens (at least one).
fn longest_answer(prepared: &[Prepared<'_>]) -> usize {
    prepared.iter().map(|p| p.answer.len()).max().unwrap_or(1)
}

/// (log p(answer | prompt), rank of the answer's first token) per probe, from
/// [`answer_logits`]'s `logits`.
fn answer_scores(prepared: &[Prepared<'_>], logits: &[f32]) -> Vec<(f64, usize)> {
    let longest = longest_answer(prepared);
    let vocab = logits.len() / (prepared.len() * longest);
    prepared
        .iter()
        .enumerate()
        .map(|(row, p)| {
            let a = p.answer.len();
            let mut logprob = 0.0;
            let mut rank = 0;
            for (i, &token) in p.answer.iter().enumerate() {
                let j = longest - a + i;
                let start = (row * longest + j) * vocab;
                let position = &logits[start..start + vocab];
                logprob += log_softmax(position)[token as usize];
                if i == 0 {
                    rank = rank_of(position, token as usize);
                }
            }
            (logprob, rank)
        })
        .collect()
}
