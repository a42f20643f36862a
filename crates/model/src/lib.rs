//! gpt-oss in burn: config, Hugging Face checkpoints (sharded safetensors, MXFP4 or dense
//! experts), the forward pass with KV cache, routing hooks, generation, scoring, tokenizers and
//! harmony rendering. One implementation serves the CPU (flex) and the GPU (wgpu/Vulkan).

pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod device;
pub mod error;
pub mod generate;
pub mod harmony;
pub mod interop;
pub mod routing;
pub mod scoring;
pub mod synth;
pub mod tokenizer;
pub mod transformer;

pub use config::GptOssConfig;
pub use error::{ModelError, Result};
pub use routing::{ExpertMask, LayerRouting, ObserverNeeds, RoutingObserver};
pub use transformer::load::{ExpertResidency, LoadOptions, load_model};
pub use transformer::{ForwardOptions, GptOss, TokenBatch};
