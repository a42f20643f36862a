//! The shipped oss-nano (models/oss-nano, MXFP4 experts) scores on its probe set what the issue
//! asks: single-digit +, -, * and capitals at least 95% greedy exact match.

use std::path::PathBuf;

use burn::tensor::Device;
use gpt_oss_model::interop::{Agreement, TransformersFixture};
use gpt_oss_model::scoring::token_logprobs;
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{LoadOptions, load_model};
use gpt_oss_nano::curriculum::{Probe, read_jsonl};
use gpt_oss_nano::probes::{accuracy_by_task, run_probes};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn shipped_nano_meets_probe_thresholds() {
    let dir = repo().join("models/oss-nano");
    let model = load_model(&dir, &Device::flex(), LoadOptions::default()).unwrap();
    assert!(
        model.config.mxfp4_experts,
        "the shipped model stores MXFP4 experts"
    );
    let tokenizer = TextTokenizer::for_model(&dir, &model.config).unwrap();
    let probes: Vec<Probe> = read_jsonl(&repo().join("datasets/probes/oss-nano.jsonl")).unwrap();
    let accuracy = accuracy_by_task(&run_probes(&model, &tokenizer, &probes, 64).unwrap());
    for (task, (correct, total)) in &accuracy {
        eprintln!("{task:>9}: {correct}/{total}");
    }
    // The model card reports exactly these numbers (training.json is what the card was written from).
    let training: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("training.json")).unwrap()).unwrap();
    for (task, (correct, total)) in &accuracy {
        assert_eq!(
            training["probes_mxfp4"][task],
            serde_json::json!([correct, total]),
            "{task}"
        );
    }
    for task in ["add", "sub", "mul", "capital"] {
        let (correct, total) = accuracy[task];
        assert!(total >= 50, "{task}: only {total} probes");
        let pct = 100.0 * correct as f64 / total as f64;
        assert!(pct >= 95.0, "{task}: {pct:.1}% < 95%");
    }
}

#[test]
fn shipped_model_card_matches_measured_scores() {
    // The card's "shipped" column is training.json's, which the test above re-measures.
    let training: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/oss-nano/training.json")).unwrap(),
    )
    .unwrap();
    let card = std::fs::read_to_string(repo().join("models/oss-nano/README.md")).unwrap();
    for (task, v) in training["probes_mxfp4"].as_object().unwrap() {
        let (c, n) = (v[0].as_f64().unwrap(), v[1].as_f64().unwrap());
        let cell = format!("| {task} |");
        let row = card
            .lines()
            .find(|l| l.starts_with(&cell))
            .unwrap_or_else(|| panic!("no row for {task}"));
        assert!(row.contains(&format!("{:.1}%", 100.0 * c / n)), "{row}");
    }
}

/// tools/reference/compare_with_transformers.py --save wrote what transformers computes for the
/// shipped model (float32 and float64); the workbench agrees by that script's rule, and the short
/// texts match transformers' float32 result to 1e-4 outright.
#[test]
fn shipped_nano_matches_transformers() {
    let dir = repo().join("models/oss-nano");
    let fixture =
        TransformersFixture::read(&repo().join("tools/reference/out/oss-nano-transformers.json"))
            .unwrap();
    let model = load_model(&dir, &Device::flex(), LoadOptions::default()).unwrap();
    let mut within_tolerance = 0;
    for text in &fixture.texts {
        let ours = &token_logprobs(
            &model,
            std::slice::from_ref(&text.token_ids),
            Default::default(),
            4096,
        )[0];
        let agreement = Agreement::measure(text, ours);
        eprintln!("{} tokens: {agreement:?}", text.token_ids.len());
        assert!(
            agreement.agrees(1e-4),
            "{} tokens: {agreement:?}",
            text.token_ids.len()
        );
        within_tolerance += (agreement.vs_f32 <= 1e-4) as usize;
    }
    assert!(within_tolerance >= 3, "the short texts must match to 1e-4");
}

/// The issue asks that expert usage measurably differ by task: every task's divergence from
/// the other tasks is far above what splitting its own calibration set in two produces.
#[test]
fn shipped_nano_routes_tasks_to_measurably_different_experts() {
    use gpt_oss_nano::card::{add_counts, split_half_divergences, task_divergences};
    use gpt_oss_nano::curriculum::Curriculum;
    use gpt_oss_nano::usage::usage_by_task;

    let dir = repo().join("models/oss-nano");
    let model = load_model(&dir, &Device::flex(), LoadOptions::default()).unwrap();
    let tokenizer = TextTokenizer::for_model(&dir, &model.config).unwrap();
    let halves = usage_by_task(&model, &tokenizer, &Curriculum::new(0), 64).unwrap();
    let floors = split_half_divergences(&halves);
    let usage = halves
        .iter()
        .map(|(t, [a, b])| (t.clone(), add_counts(a, b)))
        .collect();
    for (task, divergence) in task_divergences(&usage) {
        let floor = floors[&task];
        eprintln!("{task:>9}: {divergence:.4} (noise floor {floor:.4})");
        assert!(
            divergence > 5.0 * floor && divergence > 0.01,
            "{task}: divergence {divergence:.4} is not above its noise floor {floor:.4}"
        );
    }
}
