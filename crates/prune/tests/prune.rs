//! Pruned checkpoints are complete, reload, and compute exactly what the expert mask computes on
//! the full model; bad selections and unsafe outputs are refused.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use gpt_oss_model::checkpoint::Checkpoint;
use gpt_oss_model::{ExpertMask, ForwardOptions, GptOss, LoadOptions, TokenBatch, load_model};
use gpt_oss_prune::{PruneOptions, prune_checkpoint};
use gpt_oss_select::{Budget, Selection};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/reference/out")
        .join(name)
}

fn selection(layers: Vec<Vec<usize>>, experts: usize, top_k: usize) -> Selection {
    Selection {
        strategy: "hand".into(),
        parameters: serde_json::json!({}),
        budget: Budget::Uniform(layers[0].len()),
        num_experts: experts,
        top_k,
        layers,
        stats_digest: "none".into(),
    }
}

fn batch() -> TokenBatch {
    TokenBatch::left_padded(
        &[
            (0..30).map(|i| (i * 37 % 300) as u32).collect(),
            vec![5, 6, 7, 8],
        ],
        0,
    )
}

fn logits(model: &GptOss, mask: Option<&ExpertMask>) -> Vec<f32> {
    model
        .forward(
            &batch(),
            None,
            ForwardOptions {
                observer: None,
                mask,
            },
        )
        .try_into_vec_as::<f32>()
        .unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check_mask_equals_pruned(source: &Path, kept: Vec<Vec<usize>>) {
    let name = source.display();
    let device = Device::flex();
    let full = load_model(source, &device, LoadOptions::default()).unwrap();
    let c = &full.config;
    let sel = selection(kept.clone(), c.num_experts, c.experts_per_token);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pruned");
    let report = prune_checkpoint(
        source,
        &sel,
        &out,
        &PruneOptions {
            max_shard_bytes: 200_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.tensors_dropped, 0);
    assert_eq!(
        report.tensors_sliced,
        2 * c.num_hidden_layers + c.num_hidden_layers * if c.mxfp4_experts { 6 } else { 4 }
    );
    let pruned = load_model(&out, &device, LoadOptions::default()).unwrap();
    assert_eq!(pruned.config.num_experts, kept[0].len());
    let mask = ExpertMask::keep_only(
        &kept,
        c.num_hidden_layers,
        c.num_experts,
        c.experts_per_token,
    )
    .unwrap();
    let (masked, written) = (logits(&full, Some(&mask)), logits(&pruned, None));
    let diff = masked
        .iter()
        .zip(&written)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert_eq!(
        diff, 0.0,
        "{name}: masked full model and pruned checkpoint differ by {diff}"
    );
    assert_ne!(masked, logits(&full, None), "pruning must change something");
}

#[test]
fn pruned_mxfp4_checkpoint_equals_masked_full_model() {
    check_mask_equals_pruned(
        &fixture("tiny-mxfp4"),
        vec![
            vec![0, 2, 5, 7],
            vec![1, 2, 3, 4],
            vec![4, 5, 6, 7],
            vec![0, 3, 6, 7],
        ],
    );
    check_mask_equals_pruned(&fixture("tiny-mxfp4"), vec![vec![0, 1, 2, 5, 6, 7]; 4]);
}

#[test]
fn pruned_nano_equals_masked_full_model_at_several_budgets() {
    use gpt_oss_select::registry::SelectionInput;
    use gpt_oss_select::{ExpertStats, StrategyParams, strategy_by_name};

    let stats = ExpertStats::read(&repo().join("datasets/nano/traces/diverse/stats.json")).unwrap();
    let params = StrategyParams::default();
    for (strategy, k) in [("frequency", 16), ("reap", 8), ("task-coverage", 4)] {
        let input = SelectionInput {
            stats: &stats,
            activations: None,
            params: &params,
        };
        let selection = strategy_by_name(strategy)
            .unwrap()
            .select(&input, Budget::Uniform(k))
            .unwrap();
        check_mask_equals_pruned(&repo().join("models/oss-nano"), selection.layers);
    }
}

#[test]
fn pruned_dense_checkpoint_equals_masked_full_model() {
    check_mask_equals_pruned(
        &fixture("tiny-dense"),
        vec![vec![0, 4, 5], vec![1, 2, 3], vec![5, 3, 0]],
    );
}

#[test]
fn pruned_checkpoint_keeps_every_non_expert_tensor_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p");
    let sel = selection(vec![vec![1, 3, 5, 7]; 4], 8, 4);
    prune_checkpoint(&fixture("tiny-mxfp4"), &sel, &out, &PruneOptions::default()).unwrap();
    let (src, dst) = (
        Checkpoint::open(&fixture("tiny-mxfp4")).unwrap(),
        Checkpoint::open(&out).unwrap(),
    );
    assert_eq!(
        src.names().collect::<Vec<_>>(),
        dst.names().collect::<Vec<_>>()
    );
    for name in src.names().filter(|n| {
        n.contains("self_attn")
            || n.contains("norm")
            || n.contains("embed")
            || n.contains("lm_head")
    }) {
        assert_eq!(
            src.tensor(name).unwrap().bytes,
            dst.tensor(name).unwrap().bytes,
            "{name}"
        );
    }
    // Expert 5 of layer 2 is expert 2 of the output, bytes unchanged.
    let blocks = "model.layers.2.mlp.experts.gate_up_proj_blocks";
    let (a, b) = (src.tensor(blocks).unwrap(), dst.tensor(blocks).unwrap());
    let per = a.bytes.len() / 8;
    assert_eq!(&a.bytes[5 * per..6 * per], &b.bytes[2 * per..3 * per]);
    let router = "model.layers.2.mlp.router.bias";
    let (a, b) = (src.tensor(router).unwrap(), dst.tensor(router).unwrap());
    assert_eq!(
        &a.bytes[2 * 7..2 * 8],
        &b.bytes[2 * 3..2 * 4],
        "router entries follow the kept order"
    );
    let selection: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("expert_selection.json")).unwrap())
            .unwrap();
    assert_eq!(selection["layers"][0], serde_json::json!([1, 3, 5, 7]));
    assert!(out.join("tokenizer.json").exists());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (
            config["num_local_experts"].as_u64(),
            config["num_experts_per_tok"].as_u64()
        ),
        (Some(4), Some(4))
    );
}

fn prune_error(sel: Selection, out: &Path, force: bool) -> String {
    prune_checkpoint(
        &fixture("tiny-mxfp4"),
        &sel,
        out,
        &PruneOptions {
            force,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn bad_selections_and_unsafe_outputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p");
    let mut twice = vec![vec![0, 1, 2, 3]; 4];
    twice[1] = vec![0, 1, 1, 3];
    assert!(prune_error(selection(twice, 8, 4), &out, false).contains("named twice"));
    let mut far = vec![vec![0, 1, 2, 3]; 4];
    far[3] = vec![0, 1, 2, 8];
    assert!(prune_error(selection(far, 8, 4), &out, false).contains("out of range"));
    let few = Selection {
        top_k: 2,
        ..selection(vec![vec![0, 1, 2]; 4], 8, 2)
    };
    assert!(prune_error(few, &out, false).contains("fewer than num_experts_per_tok"));
    let mut ragged = vec![vec![0, 1, 2, 3]; 4];
    ragged[2] = vec![0, 1, 2, 3, 4];
    assert!(prune_error(selection(ragged, 8, 4), &out, false).contains("one num_local_experts"));
    assert!(!out.exists(), "nothing written by refused prunes");

    std::fs::create_dir_all(&out).unwrap();
    assert!(
        prune_error(selection(vec![vec![0, 1, 2, 3]; 4], 8, 4), &out, false).contains("--force")
    );
    prune_checkpoint(
        &fixture("tiny-mxfp4"),
        &selection(vec![vec![0, 1, 2, 3]; 4], 8, 4),
        &out,
        &PruneOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    let e = prune_error(
        selection(vec![vec![0, 1, 2, 3]; 4], 8, 4),
        &fixture("tiny-mxfp4"),
        true,
    );
    assert!(e.contains("source model"), "{e}");
}

/// oss-nano pruned to 8 experts per layer (the selection tools/reference/check_pruned_interop.sh
/// made with `frequency` and committed) scores as transformers scored the same pruned checkpoint.
#[test]
fn pruned_nano_matches_transformers() {
    use gpt_oss_model::interop::{Agreement, TransformersFixture};
    use gpt_oss_model::scoring::token_logprobs;

    let repo = repo();
    let reference = repo.join("tools/reference/out");
    let selection = Selection::read(&reference.join("oss-nano-pruned-8.selection.json")).unwrap();
    let fixture =
        TransformersFixture::read(&reference.join("oss-nano-pruned-8-transformers.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nano-8");
    prune_checkpoint(
        &repo.join("models/oss-nano"),
        &selection,
        &out,
        &PruneOptions::default(),
    )
    .unwrap();
    let model = load_model(&out, &Device::flex(), LoadOptions::default()).unwrap();
    assert_eq!(model.config.num_experts, 8);
    for text in &fixture.texts {
        let ours = &token_logprobs(
            &model,
            std::slice::from_ref(&text.token_ids),
            ForwardOptions::default(),
            4096,
        )[0];
        let agreement = Agreement::measure(text, ours);
        assert!(
            agreement.agrees(1e-4),
            "{} tokens: {agreement:?}",
            text.token_ids.len()
        );
    }
}
