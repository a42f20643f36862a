//! Options shared by every command that runs a model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use gpt_oss_model::device::{DeviceChoice, select_device};
use gpt_oss_model::tokenizer::TextTokenizer;
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
        let (device, description) = select_device(self.device)?;
        tracing::info!("device: {description}");
        let start = Instant::now();
        let model = load_model(
            &self.model,
            &device,
            LoadOptions {
                experts: self.experts,
            },
        )
        .with_context(|| format!("loading {}", self.model.display()))?;
        device
            .sync()
            .map_err(|e| anyhow::anyhow!("device: {e:?}"))?;
        tracing::info!(
            "loaded {} in {:.2}s",
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
