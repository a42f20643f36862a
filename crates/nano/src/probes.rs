//! Greedy exact-match probes for training-time scoring: the model continues `prompt`, judged by
//! the evaluation crate's rule ([`answer_matches`]).

use std::collections::BTreeMap;

use gpt_oss_model::generate::{Decoder, GenerateOptions};
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{ExpertMask, GptOss};
use serde::Serialize;

use crate::Result;
use crate::curriculum::Probe;

#[derive(Debug, Clone, Serialize)]
pub struct ProbeOutcome {
    pub id: String,
    pub task: String,
    pub prompt: String,
    pub answer: String,
    /// The continuation's first line.
    pub got: String,
    pub correct: bool,
}

pub use gpt_oss_eval::answer::answer_matches;

/// Runs every probe greedily, `batch` prompts at a time.
pub fn run_probes(
    model: &GptOss,
    tokenizer: &TextTokenizer,
    probes: &[Probe],
    batch: usize,
) -> Result<Vec<ProbeOutcome>> {
    run_probes_masked(model, tokenizer, probes, batch, None)
}

/// [`run_probes`] with the experts `mask` forbids removed from routing.
pub fn run_probes_masked(
    model: &GptOss,
    tokenizer: &TextTokenizer,
    probes: &[Probe],
    batch: usize,
    mask: Option<&ExpertMask>,
) -> Result<Vec<ProbeOutcome>> {
    let mut out = Vec::with_capacity(probes.len());
    // One decoder for every chunk: chunks of one shape reuse its captured decode step.
    let mut decoder = Decoder::new(model);
    for chunk in probes.chunks(batch.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|p| tokenizer.encode(&p.prompt))
            .collect::<std::result::Result<_, _>>()?;
        let longest_answer = chunk
            .iter()
            .map(|p| tokenizer.encode(&format!(" {}", p.answer)).map(|t| t.len()))
            .collect::<std::result::Result<Vec<_>, _>>()?
            .into_iter()
            .max()
            .unwrap_or(1);
        let options = GenerateOptions {
            max_new_tokens: longest_answer + 2,
            stop_tokens: vec![],
            sampling: None,
            use_cache: true,
        };
        let continuations = decoder.generate(&prompts, &options, mask);
        for (p, c) in chunk.iter().zip(continuations) {
            let text = tokenizer.decode(&c)?;
            let got = text.lines().next().unwrap_or("").trim().to_string();
            out.push(ProbeOutcome {
                id: p.id.clone(),
                task: p.task.clone(),
                prompt: p.prompt.clone(),
                answer: p.answer.clone(),
                correct: answer_matches(&text, &p.answer),
                got,
            });
        }
    }
    Ok(out)
}

/// (correct, total) per task.
pub fn accuracy_by_task(outcomes: &[ProbeOutcome]) -> BTreeMap<String, (usize, usize)> {
    let mut acc: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for o in outcomes {
        let e = acc.entry(o.task.clone()).or_default();
        e.0 += o.correct as usize;
        e.1 += 1;
    }
    acc
}
