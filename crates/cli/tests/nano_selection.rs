//! On the shipped oss-nano: frequency selection on the "diverse" calibration mix (arithmetic 2%
//! of tokens) drops experts arithmetic depends on and loses arithmetic; math-probe-aware keeps
//! them. Traces, selections and masked evaluation all run through the workbench's own code.

use std::path::PathBuf;

use burn::tensor::Device;
use gpt_oss_model::dataset::read_records;
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{ExpertMask, LoadOptions, load_model};
use gpt_oss_nano::curriculum::{Probe, read_jsonl};
use gpt_oss_nano::probes::run_probes_masked;
use gpt_oss_select::registry::SelectionInput;
use gpt_oss_select::{Budget, ExpertStats, StrategyParams, strategy_by_name};
use gpt_oss_trace::{TraceOptions, trace};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const MATH: [&str; 3] = ["add", "sub", "mul"];

#[test]
fn frequency_loses_arithmetic_and_math_probe_aware_keeps_it() {
    let dir = repo().join("models/oss-nano");
    let model = load_model(&dir, &Device::flex(), LoadOptions::default()).unwrap();
    let tok = TextTokenizer::for_model(&dir, &model.config).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let diverse = read_records(&repo().join("datasets/nano/calibration/diverse.jsonl")).unwrap();
    let options = TraceOptions {
        batch_size: 32,
        ..Default::default()
    };
    trace(
        &model,
        &tok,
        &diverse,
        "oss-nano",
        &["diverse".into()],
        &tmp.path().join("diverse"),
        &options,
        &mut |_| {},
    )
    .unwrap();
    // Arithmetic in probe form from the calibration side of the split (never a probe item), its
    // answer tokens only, as math-probe-aware prescribes.
    let math_records =
        read_records(&repo().join("datasets/nano/calibration/math-probes.jsonl")).unwrap();
    let probes_path = repo().join("datasets/probes/oss-nano.jsonl");
    let answer_only = TraceOptions {
        batch_size: 32,
        answer_only: true,
        ..Default::default()
    };
    trace(
        &model,
        &tok,
        &math_records,
        "oss-nano",
        &["math probes".into()],
        &tmp.path().join("math"),
        &answer_only,
        &mut |_| {},
    )
    .unwrap();

    let diverse_stats = ExpertStats::read(&tmp.path().join("diverse/stats.json")).unwrap();
    let mut with_math = diverse_stats.clone();
    with_math
        .merge(&ExpertStats::read(&tmp.path().join("math/stats.json")).unwrap())
        .unwrap();

    let params = StrategyParams::default();
    let select = |name: &str, stats: &ExpertStats, k: usize| {
        let input = SelectionInput {
            stats,
            activations: None,
            params: &params,
        };
        strategy_by_name(name)
            .unwrap()
            .select(&input, Budget::Uniform(k))
            .unwrap()
    };
    let probes: Vec<Probe> = read_jsonl::<Probe>(&probes_path)
        .unwrap()
        .into_iter()
        .filter(|p| MATH.contains(&p.task.as_str()))
        .collect();
    let accuracy = |layers: Option<&Vec<Vec<usize>>>| {
        let mask = layers.map(|l| ExpertMask::keep_only(l, 4, 32, 4).unwrap());
        let outcomes = run_probes_masked(&model, &tok, &probes, 64, mask.as_ref()).unwrap();
        outcomes.iter().filter(|o| o.correct).count() as f64 / outcomes.len() as f64
    };
    let full = accuracy(None);
    assert!(
        full >= 0.95,
        "the full model answers arithmetic ({full:.3})"
    );
    for k in [24, 16] {
        let frequency = select("frequency", &diverse_stats, k);
        let math_aware = select("math-probe-aware", &with_math, k);
        // The experts arithmetic depends on: those carrying 90% of the arithmetic answer
        // tokens' routing in each layer (what math-probe-aware protects).
        let mut dropped_by_frequency = 0;
        for layer in 0..4 {
            let counts: Vec<f64> = with_math
                .layer_totals(layer, Some(&MATH.map(String::from)))
                .iter()
                .map(|c| c.count as f64)
                .collect();
            let total: f64 = counts.iter().sum();
            let mut order: Vec<usize> = (0..32).collect();
            order.sort_by(|&a, &b| counts[b].total_cmp(&counts[a]));
            let mut covered = 0.0;
            for e in order {
                if covered >= 0.9 * total || !math_aware.layers[layer].contains(&e) {
                    break;
                }
                covered += counts[e];
                dropped_by_frequency += !frequency.layers[layer].contains(&e) as usize;
            }
        }
        let (freq, aware) = (
            accuracy(Some(&frequency.layers)),
            accuracy(Some(&math_aware.layers)),
        );
        eprintln!(
            "{k} of 32 experts: arithmetic {full:.3} full, {freq:.3} frequency, {aware:.3} math-probe-aware; frequency drops {dropped_by_frequency} protected experts"
        );
        assert!(
            dropped_by_frequency > 0,
            "frequency keeps every expert arithmetic depends on"
        );
        assert!(
            freq < full - 0.2,
            "{k}: frequency keeps arithmetic ({freq:.3})"
        );
        assert!(
            aware > freq + 0.15,
            "{k}: math-probe-aware {aware:.3} vs frequency {freq:.3}"
        );
    }
}
