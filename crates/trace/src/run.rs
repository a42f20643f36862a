//! The trace of a dataset through a model, shard by shard, resumable.

use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use gpt_oss_model::dataset::{Record, Tokenized};
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{
    ForwardOptions, GptOss, LayerRouting, ObserverNeeds, RoutingObserver, TokenBatch,
};
use gpt_oss_select::{ExpertStats, LayerActivations};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::activations::{layer_path, write_layer};
use crate::recorder::{BatchLayout, BatchRecorder};
use crate::rows::RoutingRows;
use crate::shards::{ShardPlan, plan_shards, routing_path, stats_path, write_atomically};
use crate::{Result, TraceError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceOptions {
    /// Samples per forward pass.
    pub batch_size: usize,
    /// Rows (tokens x layers) per shard; bounds memory.
    pub max_rows_per_shard: usize,
    /// Also record the full router logits in the rows.
    pub router_logits: bool,
    /// Statistics count only answer-span tokens (after the prompt).
    pub answer_only: bool,
    /// Cache the router logits and all experts' outputs of this many tokens per layer (0: none).
    pub cache_activation_tokens: usize,
    /// Stop after this many new shards (the rest is done by a later run).
    #[serde(skip)]
    pub max_shards_this_run: Option<usize>,
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            batch_size: 16,
            max_rows_per_shard: 2_000_000,
            router_logits: false,
            answer_only: false,
            cache_activation_tokens: 0,
            max_shards_this_run: None,
        }
    }
}

/// What identifies a trace's inputs; a folder holding a trace of other inputs is not reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceInputs {
    pub model: String,
    pub datasets: Vec<String>,
    pub options: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    inputs: TraceInputs,
    samples: usize,
    shards: Vec<ShardPlan>,
    complete: bool,
    stats_digest: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub shards: usize,
    pub written_now: usize,
    pub already_done: usize,
    pub tokens: usize,
    pub complete: bool,
    pub stats_digest: Option<String>,
}

fn manifest_path(out: &Path) -> PathBuf {
    out.join("trace.json")
}

/// Traces `records` through `model` into `out`. `model_id` and `dataset_ids` identify the
/// inputs (e.g. a path with a digest); `progress` is told the tokens of each finished batch.
#[allow(clippy::too_many_arguments)] // each is a distinct input; a struct would only rename them
pub fn trace(
    model: &GptOss,
    tokenizer: &TextTokenizer,
    records: &[Record],
    model_id: &str,
    dataset_ids: &[String],
    out: &Path,
    options: &TraceOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<TraceSummary> {
    let c = &model.config;
    let tokenized: Vec<Tokenized> = records
        .iter()
        .map(|r| r.tokenize(tokenizer))
        .collect::<std::result::Result<_, _>>()?;
    if let Some(empty) = tokenized.iter().find(|t| t.tokens.is_empty()) {
        return Err(TraceError::Invalid(format!(
            "sample `{}` has no tokens",
            empty.id
        )));
    }
    let mut options_record = serde_json::to_value(options).expect("options serialise");
    options_record
        .as_object_mut()
        .expect("object")
        .remove("batch_size");
    let inputs = TraceInputs {
        model: model_id.into(),
        datasets: dataset_ids.to_vec(),
        options: options_record,
    };
    std::fs::create_dir_all(out).map_err(|e| TraceError::file(out, e))?;
    let mut manifest = match std::fs::read_to_string(manifest_path(out)) {
        Ok(text) => {
            let m: Manifest = serde_json::from_str(&text)
                .map_err(|e| TraceError::file(&manifest_path(out), e))?;
            if m.inputs != inputs || m.samples != tokenized.len() {
                return Err(TraceError::file(
                    out,
                    "holds a trace of other inputs (model, datasets or options); choose another folder or delete it",
                ));
            }
            m
        }
        Err(_) => {
            let counts: Vec<usize> = tokenized.iter().map(|t| t.tokens.len()).collect();
            let m = Manifest {
                inputs,
                samples: tokenized.len(),
                shards: plan_shards(&counts, c.num_hidden_layers, options.max_rows_per_shard),
                complete: false,
                stats_digest: None,
            };
            write_manifest(out, &m)?;
            m
        }
    };

    let mut summary = TraceSummary {
        shards: manifest.shards.len(),
        written_now: 0,
        already_done: 0,
        tokens: 0,
        complete: false,
        stats_digest: None,
    };
    for plan in &manifest.shards {
        if routing_path(out, plan.index).exists() {
            summary.already_done += 1;
            progress(plan.tokens);
            continue;
        }
        if options
            .max_shards_this_run
            .is_some_and(|n| summary.written_now >= n)
        {
            return Ok(summary);
        }
        trace_shard(
            model,
            &tokenized[plan.first_sample..plan.first_sample + plan.samples],
            plan.index,
            out,
            options,
            progress,
        )?;
        summary.written_now += 1;
        summary.tokens += plan.tokens;
    }

    let mut stats = ExpertStats::empty(c.num_hidden_layers, c.num_experts, c.experts_per_token);
    for plan in &manifest.shards {
        let path = stats_path(out, plan.index);
        let part = ExpertStats::read(&path)?;
        stats.merge(&part)?;
    }
    let text = serde_json::to_string(&stats).expect("stats serialise");
    write_atomically(&out.join("stats.json"), |p| {
        std::fs::write(p, &text).map_err(|e| TraceError::file(p, e))
    })?;
    write_atomically(&out.join("stats.parquet"), |p| {
        write_stats_parquet(&stats, p)
    })?;
    if options.cache_activation_tokens > 0 && !layer_path(out, c.num_hidden_layers - 1).exists() {
        cache_activations(model, &tokenized, out, options)?;
    }
    manifest.complete = true;
    manifest.stats_digest = Some(stats.digest());
    write_manifest(out, &manifest)?;
    summary.complete = true;
    summary.stats_digest = manifest.stats_digest;
    Ok(summary)
}

fn write_manifest(out: &Path, m: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(m).expect("manifest serialises") + "\n";
    write_atomically(&manifest_path(out), |p| {
        std::fs::write(p, &text).map_err(|e| TraceError::file(p, e))
    })
}

fn trace_shard(
    model: &GptOss,
    samples: &[Tokenized],
    index: usize,
    out: &Path,
    options: &TraceOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<()> {
    let c = &model.config;
    let mut rows = RoutingRows::new(c.experts_per_token, c.num_experts, options.router_logits);
    let mut stats = ExpertStats::empty(c.num_hidden_layers, c.num_experts, c.experts_per_token);
    for batch in samples.chunks(options.batch_size.max(1)) {
        let tokens: Vec<Vec<u32>> = batch.iter().map(|s| s.tokens.clone()).collect();
        let tb = TokenBatch::left_padded(&tokens, c.pad_token_id.unwrap_or(0));
        let sample_ids: Vec<String> = batch.iter().map(|s| s.id.clone()).collect();
        let tasks: Vec<String> = batch.iter().map(|s| s.task.clone()).collect();
        let answer_starts: Vec<usize> = batch.iter().map(|s| s.answer_start).collect();
        let mut recorder = BatchRecorder {
            layout: BatchLayout {
                sample_ids: &sample_ids,
                tasks: &tasks,
                tokens: &tokens,
                answer_starts: &answer_starts,
                pads: &tb.pads,
            },
            rows: &mut rows,
            stats: &mut stats,
            answer_only: options.answer_only,
            needs: ObserverNeeds {
                router_logits: options.router_logits,
                expert_output_norms: true,
                moe_inputs: false,
                residual_norms: false,
            },
        };
        model.forward_hidden(
            &tb,
            None,
            ForwardOptions {
                observer: Some(&mut recorder),
                mask: None,
            },
        );
        progress(tokens.iter().map(Vec::len).sum());
    }
    let text = serde_json::to_string(&stats).expect("stats serialise");
    write_atomically(&stats_path(out, index), |p| {
        std::fs::write(p, &text).map_err(|e| TraceError::file(p, e))
    })?;
    // The routing file last: its presence marks the shard done.
    write_atomically(&routing_path(out, index), |p| rows.write_parquet(p))
}

fn write_stats_parquet(stats: &ExpertStats, path: &Path) -> Result<()> {
    let (mut task, mut layer, mut expert, mut tokens, mut count) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut frequency, mut gate_mass, mut reap, mut ean, mut max_act) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (t, name) in stats.tasks.iter().enumerate() {
        for l in 0..stats.num_layers {
            for e in 0..stats.num_experts {
                let cell = &stats.cells[t][l][e];
                task.push(name.clone());
                layer.push(l as u32);
                expert.push(e as u32);
                tokens.push(stats.tokens[t]);
                count.push(cell.count);
                frequency.push(cell.count as f64 / stats.tokens[t].max(1) as f64);
                gate_mass.push(cell.gate_mass);
                reap.push(cell.reap());
                ean.push(cell.ean_sum);
                max_act.push(cell.max_activation);
            }
        }
    }
    let mut frame = DataFrame::new_infer_height(vec![
        Column::new("task".into(), task),
        Column::new("layer".into(), layer),
        Column::new("expert".into(), expert),
        Column::new("tokens".into(), tokens),
        Column::new("count".into(), count),
        Column::new("frequency".into(), frequency),
        Column::new("gate_mass".into(), gate_mass),
        Column::new("reap_saliency".into(), reap),
        Column::new("ean".into(), ean),
        Column::new("max_activation".into(), max_act),
    ])
    .map_err(|e| TraceError::file(path, e))?;
    let file = File::create(path).map_err(|e| TraceError::file(path, e))?;
    ParquetWriter::new(file)
        .finish(&mut frame)
        .map_err(|e| TraceError::file(path, e))?;
    Ok(())
}

/// Collects MoE inputs and router logits of the first tokens, per layer.
struct ActivationCollector {
    wanted: usize,
    pads: Vec<usize>,
    inputs: Vec<Vec<f32>>,
    logits: Vec<Vec<f32>>,
    taken: Vec<usize>,
}

impl RoutingObserver for ActivationCollector {
    fn needs(&self) -> ObserverNeeds {
        ObserverNeeds {
            router_logits: true,
            expert_output_norms: false,
            moe_inputs: true,
            residual_norms: false,
        }
    }
    fn observe(&mut self, r: &LayerRouting<'_>) {
        let (Some(x), Some(z)) = (r.moe_input, r.router_logits) else {
            return;
        };
        let h = x.len() / (r.batch * r.seq_len);
        for row in 0..r.batch {
            for slot in self.pads[row]..r.seq_len {
                if self.taken[r.layer] == self.wanted {
                    return;
                }
                let n = row * r.seq_len + slot;
                self.inputs[r.layer].extend_from_slice(&x[n * h..(n + 1) * h]);
                self.logits[r.layer]
                    .extend_from_slice(&z[n * r.num_experts..(n + 1) * r.num_experts]);
                self.taken[r.layer] += 1;
            }
        }
    }
}

fn cache_activations(
    model: &GptOss,
    samples: &[Tokenized],
    out: &Path,
    options: &TraceOptions,
) -> Result<()> {
    let c = &model.config;
    let layers = c.num_hidden_layers;
    let mut collector = ActivationCollector {
        wanted: options.cache_activation_tokens,
        pads: vec![],
        inputs: vec![vec![]; layers],
        logits: vec![vec![]; layers],
        taken: vec![0; layers],
    };
    for batch in samples.chunks(options.batch_size.max(1)) {
        if collector.taken.iter().all(|&t| t == collector.wanted) {
            break;
        }
        let tokens: Vec<Vec<u32>> = batch.iter().map(|s| s.tokens.clone()).collect();
        let tb = TokenBatch::left_padded(&tokens, c.pad_token_id.unwrap_or(0));
        collector.pads = tb.pads.clone();
        model.forward_hidden(
            &tb,
            None,
            ForwardOptions {
                observer: Some(&mut collector),
                mask: None,
            },
        );
    }
    let device = model.device();
    let h = c.hidden_size;
    for l in 0..layers {
        let n = collector.taken[l];
        let x = Tensor::<2>::from_data(
            TensorData::new(std::mem::take(&mut collector.inputs[l]), [n, h]),
            &device,
        );
        let mut outputs = vec![0f32; n * c.num_experts * h];
        for e in 0..c.num_experts {
            let y = model.layers[l]
                .mlp
                .experts
                .forward_expert(e, x.clone())
                .try_into_vec_as::<f32>()
                .map_err(|e| TraceError::Invalid(e.to_string()))?;
            for t in 0..n {
                outputs[(t * c.num_experts + e) * h..(t * c.num_experts + e + 1) * h]
                    .copy_from_slice(&y[t * h..(t + 1) * h]);
            }
        }
        let acts = LayerActivations {
            tokens: n,
            experts: c.num_experts,
            hidden: h,
            router_logits: std::mem::take(&mut collector.logits[l]),
            expert_outputs: outputs,
        };
        write_layer(out, l, &acts)?;
    }
    Ok(())
}
