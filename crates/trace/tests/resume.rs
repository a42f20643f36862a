//! An interrupted trace resumes with every (sample, position, layer) row exactly once, and ends
//! with the same statistics as an uninterrupted one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use gpt_oss_model::dataset::Record;
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{GptOss, LoadOptions, load_model};
use gpt_oss_select::ExpertStats;
use gpt_oss_trace::rows::read_parquet;
use gpt_oss_trace::shards::{routing_path, stats_path};
use gpt_oss_trace::{TraceOptions, trace};
use polars::prelude::*;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/out/tiny-mxfp4")
}

fn records() -> Vec<Record> {
    let words = [
        "the", "capital", "of", "France", "is", "Paris", "2", "+", "=", "4", "hello", "world",
    ];
    (0..23)
        .map(|i| Record {
            id: format!("s{i:02}"),
            task: if i % 3 == 0 {
                "math".into()
            } else {
                "text".into()
            },
            text: Some(
                (0..(5 + i % 7))
                    .map(|j| words[(i * 7 + j * 3) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            messages: None,
            prompt: None,
            answer: None,
            chat: false,
        })
        .collect()
}

fn setup() -> (GptOss, TextTokenizer) {
    let model = load_model(&fixture(), &Device::flex(), LoadOptions::default()).unwrap();
    let tok = TextTokenizer::for_model(&fixture(), &model.config).unwrap();
    (model, tok)
}

fn run(
    model: &GptOss,
    tok: &TextTokenizer,
    out: &Path,
    max_shards: Option<usize>,
) -> gpt_oss_trace::TraceSummary {
    let options = TraceOptions {
        batch_size: 4,
        max_rows_per_shard: 200,
        max_shards_this_run: max_shards,
        ..Default::default()
    };
    trace(
        model,
        tok,
        &records(),
        "tiny-mxfp4",
        &["synthetic".into()],
        out,
        &options,
        &mut |_| {},
    )
    .unwrap()
}

fn all_rows(out: &Path, shards: usize) -> DataFrame {
    let frames: Vec<DataFrame> = (0..shards)
        .map(|i| read_parquet(&routing_path(out, i)).unwrap())
        .collect();
    let mut all = frames[0].clone();
    for f in &frames[1..] {
        all.vstack_mut(f).unwrap();
    }
    all
}

#[test]
fn interrupted_trace_resumes_with_every_row_exactly_once() {
    let (model, tok) = setup();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trace");

    let first = run(&model, &tok, &out, Some(2));
    assert!(
        !first.complete && first.written_now == 2 && first.shards > 4,
        "{first:?}"
    );
    // A crash in the middle of shard 2: its statistics landed, its routing file did not, and a
    // half-written file is lying around.
    std::fs::write(stats_path(&out, 2), "{\"truncated\": ").unwrap();
    std::fs::write(routing_path(&out, 2).with_extension("partial"), b"garbage").unwrap();

    let second = run(&model, &tok, &out, None);
    assert!(second.complete);
    assert_eq!(second.already_done, 2);
    assert_eq!(second.written_now, first.shards - 2);

    let rows = all_rows(&out, second.shards);
    let layers = model.config.num_hidden_layers;
    let expected_tokens: usize = records()
        .iter()
        .map(|r| r.tokenize(&tok).unwrap().tokens.len())
        .sum();
    assert_eq!(rows.height(), expected_tokens * layers);
    let sample = rows.column("sample").unwrap().str().unwrap();
    let position = rows.column("position").unwrap().u32().unwrap();
    let layer = rows.column("layer").unwrap().u32().unwrap();
    let mut seen = HashSet::new();
    for i in 0..rows.height() {
        let key = (
            sample.get(i).unwrap().to_string(),
            position.get(i).unwrap(),
            layer.get(i).unwrap(),
        );
        assert!(seen.insert(key.clone()), "row {key:?} twice");
    }

    // The same statistics as a trace that was never interrupted.
    let clean = tmp.path().join("clean");
    let summary = run(&model, &tok, &clean, None);
    assert_eq!(summary.stats_digest, second.stats_digest);
    let stats = ExpertStats::read(&out.join("stats.json")).unwrap();
    assert_eq!(stats.tokens.iter().sum::<u64>() as usize, expected_tokens);
    let routed: u64 = stats
        .cells
        .iter()
        .flatten()
        .flatten()
        .map(|c| c.count)
        .sum();
    assert_eq!(
        routed as usize,
        expected_tokens * layers * model.config.experts_per_token
    );
}

#[test]
fn a_folder_with_another_trace_is_refused() {
    let (model, tok) = setup();
    let tmp = tempfile::tempdir().unwrap();
    run(&model, &tok, tmp.path(), None);
    let options = TraceOptions {
        batch_size: 4,
        max_rows_per_shard: 200,
        answer_only: true,
        ..Default::default()
    };
    let e = trace(
        &model,
        &tok,
        &records(),
        "tiny-mxfp4",
        &["synthetic".into()],
        tmp.path(),
        &options,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("other inputs"), "{e}");
}

#[test]
fn cached_activations_reproduce_the_layer_output_routing() {
    use gpt_oss_select::ActivationCache;
    use gpt_oss_trace::activations::ActivationFiles;
    let (model, tok) = setup();
    let tmp = tempfile::tempdir().unwrap();
    let options = TraceOptions {
        batch_size: 4,
        cache_activation_tokens: 40,
        ..Default::default()
    };
    trace(
        &model,
        &tok,
        &records(),
        "tiny-mxfp4",
        &["synthetic".into()],
        tmp.path(),
        &options,
        &mut |_| {},
    )
    .unwrap();
    let acts = ActivationFiles {
        dir: tmp.path().to_path_buf(),
    }
    .layer(1)
    .unwrap();
    assert_eq!((acts.tokens, acts.experts, acts.hidden), (40, 8, 64));
    assert!(acts.expert_outputs.iter().any(|&v| v != 0.0));
}
