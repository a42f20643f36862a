//! Writing the pruned checkpoint: into a staging folder, checked, then renamed into place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gpt_oss_model::GptOssConfig;
use gpt_oss_model::checkpoint::writer::write_json;
use gpt_oss_model::checkpoint::{
    Checkpoint, PlannedTensor, StagedDir, expected_tensors, write_safetensors,
};
use gpt_oss_model::transformer::load::check_inventory;
use gpt_oss_select::Selection;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::plan::{Action, plan_prune};
use crate::{PruneError, Result};

/// Files beside the weights that a pruned model keeps as they are.
const COPIED_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub force: bool,
    /// Shards are cut at this many bytes.
    pub max_shard_bytes: u64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            force: false,
            max_shard_bytes: 4_800_000_000,
        }
    }
}

/// What was written and how every source tensor was accounted for.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub out: PathBuf,
    pub kept_per_layer: usize,
    pub tensors_copied: usize,
    pub tensors_sliced: usize,
    pub tensors_dropped: usize,
    pub source_bytes: u64,
    pub output_bytes: u64,
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| gpt_oss_model::ModelError::Io {
        path: path.into(),
        error: e,
    })?;
    Ok(format!("sha256:{:x}", Sha256::digest(bytes)))
}

/// Writes `source` pruned to `selection` into `out`.
pub fn prune_checkpoint(
    source: &Path,
    selection: &Selection,
    out: &Path,
    options: &PruneOptions,
) -> Result<PruneReport> {
    selection.check().map_err(PruneError::Selection)?;
    let config = GptOssConfig::from_file(&source.join("config.json"))?;
    let ckpt = Checkpoint::open(source)?;
    let format = check_inventory(&config, &ckpt)?;
    if selection.num_experts != config.num_experts {
        return Err(PruneError::Selection(format!(
            "made for a model with {} experts per layer, {} has {}",
            selection.num_experts,
            source.display(),
            config.num_experts
        )));
    }
    let plan = plan_prune(&config, &ckpt, &selection.layers)?;
    let pruned_config = config.with_num_experts(plan.kept_per_layer)?;

    let staged = StagedDir::create(out, options.force, &[source])?;
    let mut raw = pruned_config.raw.clone();
    if let Some(obj) = raw.as_object_mut()
        && obj.contains_key("experts_per_token")
    {
        obj.insert("experts_per_token".into(), json!(config.experts_per_token));
    }
    write_json(&staged.path().join("config.json"), &raw)?;
    for name in COPIED_FILES {
        let from = source.join(name);
        if from.exists() {
            std::fs::copy(&from, staged.path().join(name)).map_err(|e| {
                gpt_oss_model::ModelError::Io {
                    path: from.clone(),
                    error: e,
                }
            })?;
        }
    }

    let planned: Vec<PlannedTensor> = plan
        .outputs
        .iter()
        .map(|o| PlannedTensor {
            name: o.name.clone(),
            dtype: o.dtype,
            shape: o.shape.clone(),
        })
        .collect();
    let written = write_safetensors(staged.path(), &planned, options.max_shard_bytes, |t| {
        let src = ckpt.tensor(&t.name)?;
        let out = plan
            .outputs
            .iter()
            .find(|o| o.name == t.name)
            .expect("planned");
        Ok(match &out.action {
            Action::Copy => src.bytes.to_vec(),
            Action::SliceExperts(kept) => {
                let per = src.bytes.len() / src.shape[0];
                kept.iter()
                    .flat_map(|&e| src.bytes[e * per..(e + 1) * per].iter().copied())
                    .collect()
            }
        })
    })?;

    // Inventory: every source tensor is in the output, nothing else is, and the output reloads
    // as a complete checkpoint of the pruned config.
    let reopened = Checkpoint::open(staged.path())?;
    let source_names: BTreeSet<&str> = ckpt.names().collect();
    let output_names: BTreeSet<&str> = reopened.names().collect();
    if source_names != output_names {
        let lost: Vec<_> = source_names.difference(&output_names).collect();
        let extra: Vec<_> = output_names.difference(&source_names).collect();
        return Err(PruneError::Inventory(format!(
            "lost {lost:?}, added {extra:?}"
        )));
    }
    let expected: BTreeSet<String> = expected_tensors(&pruned_config, format)
        .into_iter()
        .map(|s| s.name)
        .collect();
    if expected.iter().map(String::as_str).collect::<BTreeSet<_>>() != output_names {
        return Err(PruneError::Inventory(
            "the output's tensors are not those the pruned config implies".into(),
        ));
    }
    check_inventory(&pruned_config, &reopened)?;
    for name in reopened.names() {
        let (a, b) = (ckpt.tensor(name)?, reopened.tensor(name)?);
        let sliced = plan
            .outputs
            .iter()
            .any(|o| o.name == name && matches!(o.action, Action::SliceExperts(_)));
        if !sliced && a.bytes != b.bytes {
            return Err(PruneError::Inventory(format!(
                "`{name}` was to be copied unchanged and differs"
            )));
        }
    }

    write_json(
        &staged.path().join("expert_selection.json"),
        &json!({
            "layers": selection.layers,
            "strategy": selection.strategy,
            "parameters": selection.parameters,
            "budget": selection.budget,
            "stats_digest": selection.stats_digest,
            "source": {
                "path": source,
                "config_digest": sha256_file(&source.join("config.json"))?,
                "num_local_experts": config.num_experts,
                "tensor_bytes": ckpt.total_tensor_bytes(),
            },
        }),
    )?;
    let sliced = plan
        .outputs
        .iter()
        .filter(|o| matches!(o.action, Action::SliceExperts(_)))
        .count();
    let report = PruneReport {
        out: out.to_path_buf(),
        kept_per_layer: plan.kept_per_layer,
        tensors_copied: plan.outputs.len() - sliced,
        tensors_sliced: sliced,
        tensors_dropped: 0,
        source_bytes: ckpt.total_tensor_bytes(),
        output_bytes: written.total_tensor_bytes,
    };
    drop(reopened);
    staged.commit()?;
    Ok(report)
}
