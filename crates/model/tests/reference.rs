//! The workbench against Hugging Face transformers (float32, eager) on the random checkpoints
//! that tools/reference/make_fixtures.py builds: log-probabilities to 1e-4 and greedy tokens
//! exactly, with and without the KV cache, batched and unbatched, for MXFP4 experts decoded at
//! load and kept packed.

use std::path::PathBuf;

use burn::tensor::Device;
use gpt_oss_model::generate::{
    Decoder, GenerateOptions, generate, generate_captured, generate_step_by_step,
};
use gpt_oss_model::scoring::{full_logprobs, token_logprobs};
use gpt_oss_model::{ExpertMask, ExpertResidency, ForwardOptions, GptOss, LoadOptions, load_model};
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/reference/out")
        .join(name)
}

#[derive(Deserialize)]
struct Greedy {
    prompt: Vec<u32>,
    continuation: Vec<u32>,
}

#[derive(Deserialize)]
struct Reference {
    sequences: Vec<Vec<u32>>,
    greedy: Vec<Greedy>,
}

struct Expected {
    reference: Reference,
    /// Per sequence: log-softmax rows [T * vocab].
    logprobs: Vec<Vec<f32>>,
}

/// The prompts of the fixture's greedy references, in order.
fn greedy_prompts(exp: &Expected) -> Vec<Vec<u32>> {
    exp.reference
        .greedy
        .iter()
        .map(|g| g.prompt.clone())
        .collect()
}

fn expected(name: &str) -> Expected {
    let dir = fixture(name);
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logprobs = (0..reference.sequences.len())
        .map(|i| {
            let t = st.tensor(&format!("seq{i}.logprobs")).unwrap();
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        })
        .collect();
    Expected {
        reference,
        logprobs,
    }
}

fn load(name: &str, experts: ExpertResidency) -> GptOss {
    load_model(
        &fixture(name),
        &Device::flex(),
        LoadOptions {
            experts,
            ..Default::default()
        },
    )
    .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_full_logprobs(name: &str, experts: ExpertResidency) {
    let model = load(name, experts);
    let exp = expected(name);
    for (i, seq) in exp.reference.sequences.iter().enumerate() {
        let ours: Vec<f32> = full_logprobs(&model, seq).try_into_vec_as::<f32>().unwrap();
        let diff = max_abs_diff(&ours, &exp.logprobs[i]);
        eprintln!("{name} {experts:?} seq{i}: max |diff| {diff:.2e}");
        assert!(
            diff < TOLERANCE,
            "{name} seq{i} ({} tokens): max |diff| {diff}",
            seq.len()
        );
    }
}

fn check_batched_token_logprobs(name: &str) {
    let model = load(name, ExpertResidency::Auto);
    let exp = expected(name);
    let vocab = model.config.vocab_size;
    let rows = &exp.reference.sequences;
    let ours = token_logprobs(&model, rows, ForwardOptions::default(), 7);
    for (i, seq) in rows.iter().enumerate() {
        let theirs: Vec<f32> = (0..seq.len() - 1)
            .map(|t| exp.logprobs[i][t * vocab + seq[t + 1] as usize])
            .collect();
        let diff = max_abs_diff(&ours[i], &theirs);
        assert!(diff < TOLERANCE, "{name} batched seq{i}: max |diff| {diff}");
    }
}

/// Which generation function a greedy check runs.
#[derive(Clone, Copy, Debug)]
enum Decoding {
    /// `generate` (on the CPU: one forward call per step, inputs from the host).
    Default,
    /// `generate_captured` (steps on device state, as the GPU captures and replays them).
    OnDeviceState,
}

fn check_greedy(name: &str, use_cache: bool, batched: bool) {
    check_greedy_by(name, use_cache, batched, Decoding::Default);
}

fn check_greedy_by(name: &str, use_cache: bool, batched: bool, decoding: Decoding) {
    let generate = |model: &GptOss, prompts: &[Vec<u32>], options: &GenerateOptions| match decoding
    {
        Decoding::Default => generate(model, prompts, options),
        Decoding::OnDeviceState => generate_captured(model, prompts, options, None),
    };
    let model = load(name, ExpertResidency::Auto);
    let exp = expected(name);
    let options = |n: usize| GenerateOptions {
        max_new_tokens: n,
        stop_tokens: vec![],
        sampling: None,
        use_cache,
    };
    let n = exp.reference.greedy[0].continuation.len();
    if batched {
        let prompts = greedy_prompts(&exp);
        let outs = generate(&model, &prompts, &options(n));
        for (g, out) in exp.reference.greedy.iter().zip(outs) {
            assert_eq!(
                out, g.continuation,
                "{name} batched, cache {use_cache}, {decoding:?}, prompt {:?}",
                g.prompt
            );
        }
    } else {
        for g in &exp.reference.greedy {
            let out = generate(&model, std::slice::from_ref(&g.prompt), &options(n)).remove(0);
            assert_eq!(
                out, g.continuation,
                "{name} cache {use_cache}, {decoding:?}, prompt {:?}",
                g.prompt
            );
        }
    }
}

#[test]
fn mxfp4_fixture_logprobs_match_transformers() {
    check_full_logprobs("tiny-mxfp4", ExpertResidency::Decoded);
}

#[test]
fn mxfp4_fixture_logprobs_match_transformers_with_packed_experts() {
    check_full_logprobs("tiny-mxfp4", ExpertResidency::Packed);
}

#[test]
fn dense_fixture_logprobs_match_transformers() {
    check_full_logprobs("tiny-dense", ExpertResidency::Auto);
}

#[test]
fn batched_padded_scoring_matches_unbatched_reference() {
    check_batched_token_logprobs("tiny-mxfp4");
    check_batched_token_logprobs("tiny-dense");
}

#[test]
fn greedy_matches_transformers_with_kv_cache() {
    check_greedy("tiny-mxfp4", true, false);
    check_greedy("tiny-dense", true, false);
}

#[test]
fn greedy_matches_transformers_without_kv_cache() {
    check_greedy("tiny-mxfp4", false, false);
    check_greedy("tiny-dense", false, false);
}

#[test]
fn batched_greedy_with_padding_matches_transformers() {
    check_greedy("tiny-mxfp4", true, true);
    check_greedy("tiny-dense", true, true);
    check_greedy("tiny-mxfp4", false, true);
}

/// The decode step on device state (what the GPU captures and replays: slot, tokens and picks on
/// the device, caches written at a device-held slot, RoPE and key ranges looked up by slot) gives
/// transformers' greedy tokens, with left padding and sliding windows.
#[test]
fn greedy_on_device_state_matches_transformers() {
    for name in ["tiny-mxfp4", "tiny-dense"] {
        check_greedy_by(name, true, false, Decoding::OnDeviceState);
        check_greedy_by(name, true, true, Decoding::OnDeviceState);
    }
}

/// With stop tokens, decoding on device state stops each row where step-by-step decoding does.
#[test]
fn greedy_on_device_state_stops_where_step_by_step_does() {
    let model = load("tiny-mxfp4", ExpertResidency::Auto);
    let exp = expected("tiny-mxfp4");
    let prompts = greedy_prompts(&exp);
    let stop = exp.reference.greedy[0].continuation[2];
    let options = GenerateOptions {
        max_new_tokens: exp.reference.greedy[0].continuation.len(),
        stop_tokens: vec![stop],
        sampling: None,
        use_cache: true,
    };
    let step_by_step = generate_step_by_step(&model, &prompts, &options, None);
    assert_eq!(
        step_by_step[0].last(),
        Some(&stop),
        "the stop token ends row 0"
    );
    assert_eq!(step_by_step[0].len(), 3.min(step_by_step[0].len()));
    assert_eq!(
        generate_captured(&model, &prompts, &options, None),
        step_by_step
    );
}

/// Under an expert mask, decoding on device state (the mask's router biases in the step
/// tables) gives the tokens of step-by-step decoding (the biases uploaded per layer per step),
/// and the mask changes them.
#[test]
fn masked_greedy_on_device_state_matches_step_by_step() {
    let model = load("tiny-mxfp4", ExpertResidency::Auto);
    let exp = expected("tiny-mxfp4");
    let prompts = greedy_prompts(&exp);
    let (layers, experts) = (model.layers.len(), model.config.num_experts);
    let top_k = model.config.experts_per_token;
    // Keep the last top-k experts of every layer.
    let kept: Vec<Vec<usize>> = vec![(experts - top_k..experts).collect(); layers];
    let mask = ExpertMask::keep_only(&kept, layers, experts, top_k).unwrap();
    let options = GenerateOptions {
        max_new_tokens: 12,
        stop_tokens: vec![],
        sampling: None,
        use_cache: true,
    };
    let step_by_step = generate_step_by_step(&model, &prompts, &options, Some(&mask));
    let unmasked = generate_step_by_step(&model, &prompts, &options, None);
    assert_ne!(step_by_step, unmasked, "the mask changes the greedy tokens");
    assert_eq!(
        generate_captured(&model, &prompts, &options, Some(&mask)),
        step_by_step
    );
}

/// A decoder keeps its decode step between generations: refilled for other prompts (other
/// lengths, so another slot and other padding in every row) it gives step-by-step decoding's
/// tokens, also after a one-token generation whose prefill wrote into the kept step's caches
/// and stopped there, and a generation needing more slots, or under a mask, makes a new step.
#[test]
fn a_kept_decode_step_refilled_for_other_prompts_matches_step_by_step() {
    let model = load("tiny-mxfp4", ExpertResidency::Auto);
    let exp = expected("tiny-mxfp4");
    let prompts = greedy_prompts(&exp);
    assert!(prompts.len() >= 2, "the fixture has several prompts");
    // The same rows in reverse order, the first one cut short: every row's padding changes.
    let mut others: Vec<Vec<u32>> = prompts.iter().rev().cloned().collect();
    let half = others[0].len().div_ceil(2);
    others[0].truncate(half);
    let options = |n: usize| GenerateOptions {
        max_new_tokens: n,
        stop_tokens: vec![],
        sampling: None,
        use_cache: true,
    };
    let (layers, experts) = (model.layers.len(), model.config.num_experts);
    let top_k = model.config.experts_per_token;
    let kept: Vec<Vec<usize>> = vec![(0..top_k).collect(); layers];
    let mask = ExpertMask::keep_only(&kept, layers, experts, top_k).unwrap();
    let mut decoder = Decoder::new(&model);
    // (prompts, new tokens, mask, steps made so far)
    let runs = [
        (&prompts, 12, None, 1),
        (&others, 12, None, 1),
        (&prompts, 9, None, 1),
        (&others, 1, None, 1),
        (&prompts, 12, None, 1),
        (&others, 130, None, 2),
        (&others, 12, Some(&mask), 3),
    ];
    for (i, (rows, n, mask, made)) in runs.into_iter().enumerate() {
        let expected = generate_step_by_step(&model, rows, &options(n), mask);
        let before = decoder.times();
        let got = decoder.generate_on_device_state(rows, &options(n), mask);
        assert_eq!(got, expected, "generation {i} of one decoder");
        assert_eq!(
            decoder.steps_made(),
            made,
            "steps made after generation {i}"
        );
        // Every part of a generation adds to the decoder's times; one new token is the
        // prefill's alone.
        let after = decoder.times();
        let stepped = n > 1;
        assert!(
            after.prefill > before.prefill
                && (after.step_setup > before.step_setup) == stepped
                && (after.steps > before.steps) == stepped,
            "generation {i}: times {before:?} -> {after:?}"
        );
    }
}
