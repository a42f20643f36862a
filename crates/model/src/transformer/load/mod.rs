//! Building [`GptOss`] from a checkpoint folder. Every tensor the config implies must be there
//! with the implied shape, nothing else may be, and MXFP4 scales must be valid; each failure names
//! the tensor and the file.

use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use safetensors::Dtype;

use super::attention::Attention;
use super::experts::{ExpertMatrix, Experts, PackedMxfp4};
use super::moe::Moe;
use super::norm::RmsNorm;
use super::rope::RotaryTable;
use super::vocab::{Embedding, LmHead, rows_per_piece};
use super::{DecoderLayer, GptOss};
use crate::checkpoint::inventory::layer_prefix;
use crate::checkpoint::mxfp4::{self, BLOCK};
use crate::checkpoint::{
    Checkpoint, ExpertFormat, StoredAs, TensorRef, detect_expert_format, expected_tensors,
};
use crate::config::{GptOssConfig, LayerType};
use crate::error::{ModelError, Result};

mod stored;
mod transpose;

pub(crate) use stored::tensor_as_given;
use stored::{rows_as_stored, stored_as, words_as_stored};
pub(crate) use transpose::transpose;
use transpose::transpose_into;

/// Where MXFP4 experts live once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertResidency {
    /// Decoded when the decoded experts take at most [`AUTO_DECODE_LIMIT`] bytes, else packed.
    #[default]
    Auto,
    /// Decoded to f32 at load: fastest, 7.5x the checkpoint's expert bytes.
    Decoded,
    /// Kept as MXFP4 words and decoded per selected expert in the forward pass.
    Packed,
}

/// Decoded f32 experts up to this size are decoded at load under [`ExpertResidency::Auto`].
pub const AUTO_DECODE_LIMIT: u64 = 4 << 30;

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub experts: ExpertResidency,
    /// Upload the weights that [`GptOss::store_weights_bf16`] keeps in bf16 (the attention's
    /// projections, the embedding and the lm_head) as bf16 where the checkpoint stores them in
    /// bf16, so their values are the same, instead of in f32 to be cast on the device. The f32
    /// copies and the casts took a random 20b's load to 26,067 MiB on nvidia-smi for 13.8 GB of
    /// weights; 16,810 without them (docs/benchmarks.md, thirtieth round).
    pub bf16_weights: bool,
}

/// Opens `dir` (config.json + safetensors) and loads the model onto `device`.
pub fn load_model(dir: &Path, device: &Device, options: LoadOptions) -> Result<GptOss> {
    let config = GptOssConfig::from_file(&dir.join("config.json"))?;
    let checkpoint = Checkpoint::open(dir)?;
    // The weights in cubecl's persistent pool, not in its dynamic pages: those follow the
    // largest allocation so far, and the pages a later, larger allocation leaves behind are
    // emptied by copying what they hold when a decode step's capture is prepared. That copied
    // the experts once, briefly: 124 GB on nvidia-smi for a 120b of 65 GB (docs/benchmarks.md,
    // thirty-second round). A no-op on flex.
    device.memory_persistent_allocations(config, |config| {
        from_checkpoint(config, &checkpoint, device, options)
    })
}

/// Checks the checkpoint's inventory against `config`: the expert format it uses.
pub fn check_inventory(config: &GptOssConfig, ckpt: &Checkpoint) -> Result<ExpertFormat> {
    let format = detect_expert_format(|n| ckpt.contains(n)).ok_or_else(|| {
        ModelError::tensor(
            ckpt.dir(),
            "model.layers.0.mlp.experts.gate_up_proj_blocks",
            "missing (neither MXFP4 `*_blocks` nor dense `gate_up_proj` experts found)",
        )
    })?;
    let specs = expected_tensors(config, format);
    for spec in &specs {
        let t = ckpt.tensor(&spec.name)?;
        t.expect_shape(&spec.shape)?;
        match spec.stored_as {
            StoredAs::Float => t.expect_float()?,
            StoredAs::Mxfp4Bytes => t.expect_u8()?,
        }
        if spec.name.ends_with("_scales")
            && let Some(at) = mxfp4::find_invalid_scale(t.bytes)
        {
            return Err(ModelError::tensor(
                t.path,
                t.name,
                format!("MXFP4 scale byte 255 (NaN in E8M0) at flat index {at}"),
            ));
        }
    }
    if ckpt.names().count() != specs.len() {
        let expected: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        let extra: Vec<&str> = ckpt.names().filter(|n| !expected.contains(n)).collect();
        return Err(ModelError::tensor(
            ckpt.path_of(extra[0]),
            extra[0],
            format!(
                "unexpected for this config ({} unexpected tensor(s) in all{})",
                extra.len(),
                if extra.len() > 1 {
                    format!(", e.g. also `{}`", extra[1])
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(format)
}

/// Loads an already-opened checkpoint.
pub fn from_checkpoint(
    config: GptOssConfig,
    ckpt: &Checkpoint,
    device: &Device,
    options: LoadOptions,
) -> Result<GptOss> {
    let format = check_inventory(&config, ckpt)?;
    let packed = match (format, options.experts) {
        (ExpertFormat::Dense, _) => false,
        (ExpertFormat::Mxfp4, ExpertResidency::Packed) => true,
        (ExpertFormat::Mxfp4, ExpertResidency::Decoded) => false,
        (ExpertFormat::Mxfp4, ExpertResidency::Auto) => {
            decoded_expert_bytes(&config) > AUTO_DECODE_LIMIT
        }
    };
    let loader = Loader {
        ckpt,
        device,
        bf16_weights: options.bf16_weights,
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for l in 0..config.num_hidden_layers {
        let p = layer_prefix(l);
        let attn = Attention {
            q_proj: loader.projection(&format!("{p}self_attn.q_proj"))?,
            k_proj: loader.projection(&format!("{p}self_attn.k_proj"))?,
            v_proj: loader.projection(&format!("{p}self_attn.v_proj"))?,
            o_proj: loader.projection(&format!("{p}self_attn.o_proj"))?,
            sinks: Param::from_tensor(loader.float::<1>(&format!("{p}self_attn.sinks"))?),
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
        };
        let x = format!("{p}mlp.experts.");
        let (gate_up, down) = match format {
            ExpertFormat::Dense => (
                ExpertMatrix::Dense(Param::from_tensor(
                    loader.float::<3>(&format!("{x}gate_up_proj"))?,
                )),
                ExpertMatrix::Dense(Param::from_tensor(
                    loader.float::<3>(&format!("{x}down_proj"))?,
                )),
            ),
            ExpertFormat::Mxfp4 if packed => (
                loader.packed_experts(&format!("{x}gate_up_proj"))?,
                loader.packed_experts(&format!("{x}down_proj"))?,
            ),
            ExpertFormat::Mxfp4 => (
                loader.decoded_experts(&format!("{x}gate_up_proj"))?,
                loader.decoded_experts(&format!("{x}down_proj"))?,
            ),
        };
        let experts = Experts {
            gate_up,
            gate_up_bias: Param::from_tensor(loader.float::<2>(&format!("{x}gate_up_proj_bias"))?),
            down,
            down_bias: Param::from_tensor(loader.float::<2>(&format!("{x}down_proj_bias"))?),
            swiglu_limit: config.swiglu_limit,
            swiglu_alpha: config.swiglu_alpha,
        };
        layers.push(DecoderLayer {
            input_layernorm: loader
                .norm(&format!("{p}input_layernorm.weight"), config.rms_norm_eps)?,
            self_attn: attn,
            post_attention_layernorm: loader.norm(
                &format!("{p}post_attention_layernorm.weight"),
                config.rms_norm_eps,
            )?,
            mlp: Moe {
                router: loader.linear(&format!("{p}mlp.router"), true)?,
                experts,
                top_k: config.experts_per_token,
                path: Default::default(),
            },
            sliding_window: (config.layer_types[l] == LayerType::Sliding)
                .then_some(config.sliding_window),
        });
    }
    let lm_head_name = if config.tie_word_embeddings {
        "model.embed_tokens"
    } else {
        "lm_head"
    };
    let shape = [config.vocab_size, config.hidden_size];
    let embed_tokens = loader.embedding(shape)?;
    let head = ckpt.tensor(&format!("{lm_head_name}.weight"))?;
    let lm_head = match loader.keeps_bf16(&head) {
        true => LmHead::from_rows(&head.to_bf16()?, shape, device),
        false => LmHead::from_rows(&head.to_f32()?, shape, device),
    };
    Ok(GptOss {
        embed_tokens,
        layers,
        norm: loader.norm("model.norm.weight", config.rms_norm_eps)?,
        lm_head,
        rope: RotaryTable::new(&config),
        config,
    })
}

/// Bytes the experts take decoded to f32.
pub fn decoded_expert_bytes(config: &GptOssConfig) -> u64 {
    let per_expert = 3 * config.hidden_size as u64 * config.intermediate_size as u64;
    per_expert * config.num_experts as u64 * config.num_hidden_layers as u64 * 4
}

struct Loader<'a> {
    ckpt: &'a Checkpoint,
    device: &'a Device,
    bf16_weights: bool,
}

impl Loader<'_> {
    /// Whether a weight that may be kept in bf16 goes up in bf16 ([`LoadOptions::bf16_weights`]):
    /// only where the checkpoint's values are bf16 already, read as stored, so no value changes.
    fn keeps_bf16(&self, t: &TensorRef<'_>) -> bool {
        self.bf16_weights && t.dtype == Dtype::BF16
    }

    fn float<const D: usize>(&self, name: &str) -> Result<Tensor<D>> {
        let t = self.ckpt.tensor(name)?;
        Ok(Tensor::from_data(
            TensorData::new(t.to_f32()?, t.shape.to_vec()),
            self.device,
        ))
    }

    /// The token embedding [vocab, width] in pieces ([`Embedding`]), each sharing its rows of
    /// the checkpoint's map where [`stored_as`] the dtype they go up in (bf16 where kept, else
    /// f32): a 20b's 1.16 GB table is then not copied on the host.
    fn embedding(&self, [vocab, width]: [usize; 2]) -> Result<Embedding> {
        let t = self.ckpt.tensor("model.embed_tokens.weight")?;
        let keeps_bf16 = self.keeps_bf16(&t);
        let dtype = if keeps_bf16 { DType::BF16 } else { DType::F32 };
        if stored_as(&t, dtype) {
            let pieces = rows_per_piece(width);
            return Ok(Embedding::from_pieces(
                [vocab, width],
                pieces,
                self.device,
                |rows| rows_as_stored(&t, rows, width, dtype),
            ));
        }
        Ok(match keeps_bf16 {
            true => Embedding::from_rows(&t.to_bf16()?, [vocab, width], self.device),
            false => Embedding::from_rows(&t.to_f32()?, [vocab, width], self.device),
        })
    }

    fn norm(&self, name: &str, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm::new(self.float::<1>(name)?, eps))
    }

    /// `{prefix}.weight` [out, in] (+ `{prefix}.bias`) as a burn Linear with weight [in, out].
    fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        self.linear_kept(prefix, bias, false)
    }

    /// An attention projection (weight and bias), its weight in bf16 where
    /// [`Loader::keeps_bf16`].
    fn projection(&self, prefix: &str) -> Result<Linear> {
        self.linear_kept(prefix, true, true)
    }

    /// [`Loader::linear`], its weight uploaded in bf16 where `kept_in_bf16` (a weight
    /// `GptOss::store_weights_bf16` keeps in bf16) and [`Loader::keeps_bf16`], else in f32.
    fn linear_kept(&self, prefix: &str, bias: bool, kept_in_bf16: bool) -> Result<Linear> {
        let t = self.ckpt.tensor(&format!("{prefix}.weight"))?;
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let weight = match kept_in_bf16 && self.keeps_bf16(&t) {
            true => TensorData::new(transpose(&t.to_bf16()?, rows, cols), [cols, rows]),
            false => TensorData::new(transpose(&t.to_f32()?, rows, cols), [cols, rows]),
        };
        let weight = tensor_as_given(weight, self.device);
        let bias = if bias {
            Some(Param::from_tensor(
                self.float::<1>(&format!("{prefix}.bias"))?,
            ))
        } else {
            None
        };
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    fn mxfp4_pair(&self, prefix: &str) -> Result<(TensorRef<'_>, TensorRef<'_>)> {
        Ok((
            self.ckpt.tensor(&format!("{prefix}_blocks"))?,
            self.ckpt.tensor(&format!("{prefix}_scales"))?,
        ))
    }

    /// MXFP4 `{prefix}_blocks/_scales` decoded to [E, in, out].
    fn decoded_experts(&self, prefix: &str) -> Result<ExpertMatrix> {
        let (blocks, scales) = self.mxfp4_pair(prefix)?;
        let (e, rows, groups) = (blocks.shape[0], blocks.shape[1], blocks.shape[2]);
        let cols = groups * BLOCK;
        let mut out = vec![0f32; e * rows * cols];
        let mut expert = vec![0f32; rows * cols];
        let per_expert_scales = rows * groups;
        for (x, transposed) in out.chunks_exact_mut(rows * cols).enumerate() {
            let s = &scales.bytes[x * per_expert_scales..(x + 1) * per_expert_scales];
            let b = &blocks.bytes[x * per_expert_scales * 16..(x + 1) * per_expert_scales * 16];
            mxfp4::decode_rows(b, s, &mut expert);
            transpose_into(&expert, rows, cols, transposed);
        }
        let t = Tensor::from_data(TensorData::new(out, [e, cols, rows]), self.device);
        Ok(ExpertMatrix::Dense(Param::from_tensor(t)))
    }

    /// MXFP4 `{prefix}_blocks/_scales` kept packed on the device.
    fn packed_experts(&self, prefix: &str) -> Result<ExpertMatrix> {
        let (blocks, scales) = self.mxfp4_pair(prefix)?;
        let (e, rows, groups) = (blocks.shape[0], blocks.shape[1], blocks.shape[2]);
        let words = Tensor::<3, Int>::from_data(
            words_as_stored(&blocks, [e, rows, groups * 4]),
            self.device,
        );
        // Scale bytes four to a word, each expert padded to whole words.
        let per_expert = rows * groups;
        let words_per_expert = per_expert.div_ceil(4);
        let scale_words = match per_expert % 4 {
            0 => words_as_stored(&scales, [e, words_per_expert]),
            _ => {
                let mut padded = Vec::with_capacity(e * words_per_expert * 4);
                for chunk in scales.bytes.chunks_exact(per_expert) {
                    padded.extend_from_slice(chunk);
                    padded.resize(padded.len() + words_per_expert * 4 - per_expert, 0);
                }
                TensorData::new(mxfp4::pack_words(&padded), [e, words_per_expert])
            }
        };
        let scale_words = Tensor::<2, Int>::from_data(scale_words, self.device);
        Ok(ExpertMatrix::Mxfp4(PackedMxfp4::new(words, scale_words)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn load(fixture: &str, bf16_weights: bool) -> GptOss {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tools/reference/out")
            .join(fixture);
        let options = LoadOptions {
            bf16_weights,
            ..Default::default()
        };
        load_model(&dir, &Device::flex(), options).unwrap()
    }

    /// The weights `store_weights_bf16` keeps in bf16, then the router's (kept in f32).
    fn weights(model: &GptOss) -> Vec<Tensor<2>> {
        let attention = &model.layers[0].self_attn;
        let mut weights: Vec<Tensor<2>> = [
            &attention.q_proj,
            &attention.k_proj,
            &attention.v_proj,
            &attention.o_proj,
        ]
        .iter()
        .map(|p| p.weight.val())
        .collect();
        weights.extend(model.embed_tokens.pieces.iter().map(|p| p.val()));
        weights.extend(model.lm_head.pieces.iter().map(|p| p.val()));
        weights.push(model.layers[0].mlp.router.weight.val());
        weights
    }

    #[test]
    fn bf16_weights_arrive_in_bf16_with_the_same_values_where_the_checkpoint_stores_bf16() {
        let (f32_model, bf16_model) = (load("tiny-mxfp4", false), load("tiny-mxfp4", true));
        let (f32_weights, bf16_weights) = (weights(&f32_model), weights(&bf16_model));
        let router = bf16_weights.len() - 1;
        for (i, (a, b)) in f32_weights.into_iter().zip(bf16_weights).enumerate() {
            assert_eq!(a.dtype(), DType::F32, "weight {i} without bf16_weights");
            let expected = if i == router { DType::F32 } else { DType::BF16 };
            assert_eq!(b.dtype(), expected, "weight {i}");
            // The checkpoint's values are bf16: uploading them in bf16 changes none.
            assert_eq!(
                a.into_data(),
                b.cast(DType::F32).into_data(),
                "weight {i}'s values"
            );
        }
    }

    #[test]
    fn bf16_weights_stay_f32_where_the_checkpoint_stores_f32() {
        let model = load("tiny-dense", true);
        for (i, weight) in weights(&model).into_iter().enumerate() {
            assert_eq!(weight.dtype(), DType::F32, "weight {i}");
        }
    }
}
