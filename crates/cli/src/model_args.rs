//! Options shared by every command that runs a model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use gpt_oss_model::device::{DeviceChoice, select_device};
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::transformer::moe_grouped::ExpertPath;
use gpt_oss_model::{ExpertResidency, GptOss, LoadOptions, load_model};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint folder (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// auto: the GPU (wgpu/Vulkan) when an adapter exists, else the CPU (burn flex).
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Where MXFP4 experts live: decoded to f32 at load, or packed and decoded per use.
    #[arg(long, default_value = "auto", value_parser = parse_residency)]
    pub experts: ExpertResidency,
    /// How MoE experts run: `grouped` (tokens sorted by expert on the device, one grouped
    /// MXFP4 matmul per projection on the tensor cores: GPU only, bf16 products),
    /// `per-expert` (one f32 matmul per routed expert: the reference), or `auto` (grouped on
    /// the GPU, per-expert on the CPU). `grouped-reference-bf16` runs the grouped path from burn
    /// ops with the kernel's bf16 input rounding, on any device (to check the kernel against).
    #[arg(long, value_enum, default_value_t = MoeChoice::Auto)]
    pub moe: MoeChoice,
    /// Attention projections, embedding and lm_head: `bf16` (tensor-core products, about the
    /// checkpoint's bytes; GPU only), `f32` (the reference), or `auto` (bf16 on the GPU, f32 on
    /// the CPU).
    #[arg(long, value_enum, default_value_t = WeightsChoice::Auto)]
    pub weights: WeightsChoice,
}

/// `--weights`: auto, f32, bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsChoice {
    Auto,
    F32,
    Bf16,
}

/// `--moe`: auto, per-expert, grouped, grouped-reference-bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MoeChoice {
    Auto,
    PerExpert,
    Grouped,
    GroupedReferenceBf16,
}

fn parse_residency(s: &str) -> Result<ExpertResidency, String> {
    match s {
        "auto" => Ok(ExpertResidency::Auto),
        "decoded" => Ok(ExpertResidency::Decoded),
        "packed" => Ok(ExpertResidency::Packed),
        other => Err(format!(
            "unknown expert storage `{other}` (auto, decoded or packed)"
        )),
    }
}

pub struct LoadedModel {
    pub model: GptOss,
    pub tokenizer: Option<TextTokenizer>,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let selected = select_device(self.device)?;
        tracing::info!("device: {}", selected.description);
        let (device, on_gpu) = (selected.device, selected.on_gpu);
        let bf16 = match (self.weights, on_gpu) {
            (WeightsChoice::F32, _) | (WeightsChoice::Auto, false) => false,
            (WeightsChoice::Bf16, true) | (WeightsChoice::Auto, true) => true,
            (WeightsChoice::Bf16, false) => anyhow::bail!(
                "--weights bf16 needs the GPU (wgpu/Vulkan); the CPU runs --weights f32"
            ),
        };
        let start = Instant::now();
        let mut model = load_model(
            &self.model,
            &device,
            LoadOptions {
                experts: self.experts,
                bf16_weights: bf16,
            },
        )
        .with_context(|| format!("loading {}", self.model.display()))?;
        // The host's part: reading, checking and converting the tensors, and handing their bytes
        // to the device (whose copies may still be running; the sync below waits for them).
        let read_seconds = start.elapsed().as_secs_f64();
        let path = match (self.moe, on_gpu) {
            (MoeChoice::PerExpert, _) | (MoeChoice::Auto, false) => ExpertPath::PerExpert,
            (MoeChoice::GroupedReferenceBf16, _) => ExpertPath::GroupedReferenceBf16,
            (MoeChoice::Grouped, true) | (MoeChoice::Auto, true) => ExpertPath::GroupedKernel,
            (MoeChoice::Grouped, false) => anyhow::bail!(
                "--moe grouped needs the GPU (wgpu/Vulkan); the CPU runs --moe per-expert"
            ),
        };
        model.set_expert_path(path);
        if bf16 {
            model = model.store_weights_bf16();
        }
        tracing::info!("MoE experts: {path:?}; non-expert weights in bf16: {bf16}");
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("device: {e:?}"))?;
        tracing::info!(
            "loaded {} in {:.2}s ({read_seconds:.2}s reading and handing over on the host)",
            self.model.display(),
            start.elapsed().as_secs_f64()
        );
        for w in model.config.warnings() {
            tracing::warn!("{w}");
        }
        let tokenizer = TextTokenizer::for_model(&self.model, &model.config).ok();
        Ok(LoadedModel { model, tokenizer })
    }
}

impl LoadedModel {
    pub fn tokenizer(&self) -> anyhow::Result<&TextTokenizer> {
        self.tokenizer
            .as_ref()
            .context("this model has no tokenizer.json (and is not o200k_harmony-sized)")
    }
}
