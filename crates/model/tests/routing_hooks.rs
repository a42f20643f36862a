//! The routing observer sees every layer's top-k choice, the expert mask forbids experts, and
//! neither changes anything when absent.

use std::path::PathBuf;

use burn::tensor::Device;
use gpt_oss_model::scoring::{queue_token_logprobs, token_logprobs};
use gpt_oss_model::{
    ExpertMask, ForwardOptions, LayerRouting, LoadOptions, ObserverNeeds, RoutingObserver,
    TokenBatch, load_model,
};

fn model() -> gpt_oss_model::GptOss {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/out/tiny-mxfp4");
    load_model(&dir, &Device::flex(), LoadOptions::default()).unwrap()
}

#[derive(Default)]
struct Recorder {
    needs: ObserverNeeds,
    layers: Vec<usize>,
    ids: Vec<Vec<u32>>,
    gates: Vec<Vec<f32>>,
    logits: Vec<Vec<f32>>,
    norms: Vec<Vec<f32>>,
    max_abs: Vec<Vec<f32>>,
    inputs: Vec<usize>,
    residual_norms: Vec<(usize, Vec<f32>)>,
    shape: (usize, usize, usize, usize),
}

impl RoutingObserver for Recorder {
    fn needs(&self) -> ObserverNeeds {
        self.needs
    }
    fn observe(&mut self, r: &LayerRouting<'_>) {
        self.layers.push(r.layer);
        self.ids.push(r.expert_ids.to_vec());
        self.gates.push(r.gate_weights.to_vec());
        self.logits
            .push(r.router_logits.map(<[f32]>::to_vec).unwrap_or_default());
        self.norms.push(
            r.expert_output_norms
                .map(<[f32]>::to_vec)
                .unwrap_or_default(),
        );
        self.max_abs.push(
            r.expert_output_max_abs
                .map(<[f32]>::to_vec)
                .unwrap_or_default(),
        );
        self.inputs.push(r.moe_input.map_or(0, <[f32]>::len));
        self.shape = (r.batch, r.seq_len, r.top_k, r.num_experts);
    }
    fn observe_residual_norms(&mut self, layer: usize, norms: &[f32]) {
        self.residual_norms.push((layer, norms.to_vec()));
    }
}

fn batch() -> TokenBatch {
    TokenBatch::left_padded(&[vec![5, 17, 30, 2, 99, 100, 7], vec![1, 2, 3]], 0)
}

/// What an observer with `needs` receives from a forward pass over [`batch`].
fn observe_forward(m: &gpt_oss_model::GptOss, needs: ObserverNeeds) -> Recorder {
    let mut rec = Recorder {
        needs,
        ..Default::default()
    };
    m.forward(
        &batch(),
        None,
        ForwardOptions {
            observer: Some(&mut rec),
            mask: None,
        },
    );
    rec
}

#[test]
fn observer_sees_top_k_ids_and_gates_consistent_with_router_logits() {
    let m = model();
    let mut rec = Recorder {
        needs: ObserverNeeds {
            router_logits: true,
            expert_output_norms: true,
            moe_inputs: true,
            residual_norms: true,
        },
        ..Default::default()
    };
    let with = m.forward(
        &batch(),
        None,
        ForwardOptions {
            observer: Some(&mut rec),
            mask: None,
        },
    );
    let without = m.forward(&batch(), None, ForwardOptions::default());
    let diff = (with - without).abs().max().into_scalar::<f32>();
    assert_eq!(diff, 0.0, "observing must not change the result");

    let (b, t, k, e) = rec.shape;
    assert_eq!((b, t, k, e), (2, 7, 4, 8));
    assert_eq!(rec.layers, vec![0, 1, 2, 3]);
    assert_eq!(
        rec.inputs,
        vec![b * t * 64; 4],
        "MoE inputs are [tokens, hidden]"
    );
    // Hidden-state norms: one per token after every layer, the same for a row whether it runs
    // alone or in a padded batch.
    let mut alone = Recorder {
        needs: ObserverNeeds {
            residual_norms: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let first_row = TokenBatch::left_padded(&[vec![5, 17, 30, 2, 99, 100, 7]], 0);
    m.forward_hidden(
        &first_row,
        None,
        ForwardOptions {
            observer: Some(&mut alone),
            mask: None,
        },
    );
    assert_eq!(
        rec.residual_norms
            .iter()
            .map(|(l, _)| *l)
            .collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    for ((_, batched), (_, single)) in rec.residual_norms.iter().zip(&alone.residual_norms) {
        assert_eq!(batched.len(), b * t);
        for (x, y) in batched[..t].iter().zip(single) {
            assert!(*x > 0.0 && (x - y).abs() <= 1e-4 * y, "{x} vs {y}");
        }
    }
    for layer in 0..4 {
        let (ids, gates, logits, norms) = (
            &rec.ids[layer],
            &rec.gates[layer],
            &rec.logits[layer],
            &rec.norms[layer],
        );
        assert_eq!(ids.len(), b * t * k);
        assert_eq!(logits.len(), b * t * e);
        for n in 0..b * t {
            let row = &logits[n * e..(n + 1) * e];
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
            let mut chosen: Vec<usize> = ids[n * k..(n + 1) * k]
                .iter()
                .map(|&x| x as usize)
                .collect();
            chosen.sort();
            let mut best: Vec<usize> = order[..k].to_vec();
            best.sort();
            assert_eq!(
                chosen, best,
                "layer {layer} token {n}: ids are the top-k logits"
            );
            // Gates are the softmax over the selected logits.
            let sel: Vec<f32> = ids[n * k..(n + 1) * k]
                .iter()
                .map(|&x| row[x as usize])
                .collect();
            let max = sel.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = sel.iter().map(|l| (l - max).exp()).sum();
            for j in 0..k {
                let want = (sel[j] - max).exp() / z;
                assert!((gates[n * k + j] - want).abs() < 1e-5);
            }
            assert!(
                norms[n * k..(n + 1) * k]
                    .iter()
                    .all(|&x| x > 0.0 && x.is_finite())
            );
            // The largest element is at most the L2 norm and at least norm / sqrt(H).
            let slots = n * k..(n + 1) * k;
            for (&m, &norm) in rec.max_abs[layer][slots.clone()].iter().zip(&norms[slots]) {
                assert!(m <= norm + 1e-5 && m >= norm / 8.0 - 1e-5, "{m} vs {norm}");
            }
        }
    }
}

#[test]
fn expert_mask_keeps_routing_inside_the_kept_experts() {
    let m = model();
    let kept: Vec<Vec<usize>> = vec![
        vec![0, 2, 4, 6],
        vec![1, 3, 5, 7],
        vec![0, 1, 2, 3, 4],
        vec![3, 4, 5, 6, 7],
    ];
    let mask = ExpertMask::keep_only(&kept, 4, 8, 4).unwrap();
    let mut rec = Recorder::default();
    let masked = m.forward(
        &batch(),
        None,
        ForwardOptions {
            observer: Some(&mut rec),
            mask: Some(&mask),
        },
    );
    for (layer, ids) in rec.ids.iter().enumerate() {
        assert!(
            ids.iter().all(|&e| kept[layer].contains(&(e as usize))),
            "layer {layer}: {ids:?}"
        );
    }
    let full = m.forward(&batch(), None, ForwardOptions::default());
    let diff = (masked - full).abs().max().into_scalar::<f32>();
    assert!(diff > 1e-3, "masking experts must change the output");
}

/// Routing an observer can wait for is read after the pass (one wait for the device instead of
/// one per layer): it must arrive complete, in layer order, and equal to what an observer that
/// cannot wait (residual norms between layers) receives layer by layer.
#[test]
fn routing_read_after_the_pass_equals_routing_read_per_layer() {
    let m = model();
    let observe = |needs: ObserverNeeds| observe_forward(&m, needs);
    let waiting = ObserverNeeds {
        router_logits: true,
        ..Default::default()
    };
    assert!(waiting.can_wait());
    let per_layer = ObserverNeeds {
        residual_norms: true,
        ..waiting
    };
    assert!(!per_layer.can_wait());
    let (after, during) = (observe(waiting), observe(per_layer));
    assert_eq!(after.layers, vec![0, 1, 2, 3]);
    assert_eq!(after.layers, during.layers);
    assert_eq!(after.ids, during.ids);
    assert_eq!(after.gates, during.gates);
    assert_eq!(after.logits, during.logits);
    assert!(after.logits.iter().all(|l| l.len() == 2 * 7 * 8));
    assert!(
        after.inputs.iter().all(|&len| len == 0),
        "MoE inputs only when asked for"
    );
}

/// Scoring queues the lm_head before the routing is read, and hands the routing over when the
/// log-probabilities are read (the queued scores hold the observer until then): every layer's
/// routing, all kinds read in one transaction, equal to a plain forward's; the
/// log-probabilities equal unobserved ones.
#[test]
fn scoring_hands_over_the_routing_at_the_read() {
    let m = model();
    let rows = vec![vec![5, 17, 30, 2, 99, 100, 7], vec![1, 2, 3]];
    let needs = ObserverNeeds {
        router_logits: true,
        expert_output_norms: true,
        ..Default::default()
    };
    let mut scored = Recorder {
        needs,
        ..Default::default()
    };
    let queued = queue_token_logprobs(
        &m,
        &rows,
        ForwardOptions {
            observer: Some(&mut scored),
            mask: None,
        },
        4,
    );
    let logprobs = queued.read();
    assert_eq!(
        logprobs,
        token_logprobs(&m, &rows, ForwardOptions::default(), 4)
    );

    let forward = observe_forward(&m, needs);
    assert_eq!(scored.layers, vec![0, 1, 2, 3]);
    assert_eq!(scored.ids, forward.ids);
    assert_eq!(scored.gates, forward.gates);
    assert_eq!(scored.logits, forward.logits);
    assert_eq!(scored.norms, forward.norms);
    assert!(scored.norms.iter().all(|n| n.len() == 2 * 7 * 4));
}
