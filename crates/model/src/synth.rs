//! Random checkpoints in the exact release layout, for any config: full-size speed and memory
//! measurements without the real weights. Values are drawn so that activations stay O(1): linear
//! weights ~ U(-a, a) with a = sqrt(3 / fan_in), norms near 1, MXFP4 scales near 2^-7.

use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use safetensors::Dtype;

use crate::checkpoint::writer::{StagedDir, write_json};
use crate::checkpoint::{
    Component, ExpertFormat, PlannedTensor, StoredAs, TensorSpec, expected_tensors,
    write_safetensors,
};
use crate::config::GptOssConfig;
use crate::error::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub seed: u64,
    pub experts: ExpertFormat,
    /// BF16 (the release) or F32.
    pub float_dtype: Dtype,
    /// Shards are cut at this many bytes (the release uses about 4.8 GB).
    pub max_shard_bytes: u64,
    pub force: bool,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            experts: ExpertFormat::Mxfp4,
            float_dtype: Dtype::BF16,
            max_shard_bytes: 4_800_000_000,
            force: false,
        }
    }
}

/// Writes config.json and random weights for `config` into `out`; returns the folder.
pub fn synth_checkpoint(
    config: &GptOssConfig,
    out: &Path,
    options: &SynthOptions,
) -> Result<PathBuf> {
    if options.experts == ExpertFormat::Mxfp4
        && (!config.hidden_size.is_multiple_of(32) || !config.intermediate_size.is_multiple_of(32))
    {
        return Err(ModelError::Invalid(
            "MXFP4 experts need hidden_size and intermediate_size divisible by 32".into(),
        ));
    }
    let mut config = config.clone();
    config.mxfp4_experts = options.experts == ExpertFormat::Mxfp4;
    let staged = StagedDir::create(out, options.force, &[])?;
    write_json(&staged.path().join("config.json"), &config.to_hf_json())?;
    let specs = expected_tensors(&config, options.experts);
    let planned: Vec<PlannedTensor> = specs
        .iter()
        .map(|s| PlannedTensor {
            name: s.name.clone(),
            dtype: match s.stored_as {
                StoredAs::Mxfp4Bytes => Dtype::U8,
                StoredAs::Float => options.float_dtype,
            },
            shape: s.shape.clone(),
        })
        .collect();
    let mut rng = SmallRng::seed_from_u64(options.seed);
    write_safetensors(staged.path(), &planned, options.max_shard_bytes, |t| {
        let spec = specs
            .iter()
            .find(|s| s.name == t.name)
            .expect("planned from specs");
        Ok(random_bytes(spec, t.dtype, &mut rng))
    })?;
    staged.commit()
}

fn random_bytes(spec: &TensorSpec, dtype: Dtype, rng: &mut SmallRng) -> Vec<u8> {
    let n: usize = spec.shape.iter().product();
    if spec.stored_as == StoredAs::Mxfp4Bytes {
        if spec.name.ends_with("_scales") {
            return (0..n).map(|_| rng.random_range(119u8..=120)).collect();
        }
        let mut bytes = vec![0u8; n];
        rng.fill(&mut bytes[..]);
        return bytes;
    }
    let (center, spread) = value_range(spec);
    let values = (0..n).map(|_| center + spread * (2.0 * rng.random::<f32>() - 1.0));
    match dtype {
        Dtype::BF16 => values
            .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        _ => values.flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// (center, half-width) of the uniform distribution for a float tensor.
fn value_range(spec: &TensorSpec) -> (f32, f32) {
    let name = spec.name.as_str();
    if spec.component == Component::Norms {
        return (1.0, 0.2);
    }
    if name.ends_with("sinks") {
        return (0.0, 2.0);
    }
    if name.ends_with("bias") {
        return (0.0, 0.1);
    }
    if spec.component == Component::Embeddings {
        return (0.0, 1.0);
    }
    // Weights: fan-in is the last dimension for [out, in] tensors, the middle one for dense
    // experts [E, in, out].
    let fan_in = if spec.component == Component::Experts && spec.shape.len() == 3 {
        spec.shape[1]
    } else {
        *spec.shape.last().expect("weights have a shape")
    };
    (0.0, (3.0 / fan_in as f32).sqrt())
}
