//! oss-nano: a small model of gpt-oss's exact architecture and file layout that the workbench
//! trains itself, so that every experiment also runs without the 13 GB download.
//!
//! - [`curriculum`]: the seeded synthetic corpus (tasks, splits, calibration mixes, probes);
//! - [`tokenizer`]: byte-level BPE trained on it;
//! - [`shape`]: the model config;
//! - [`train`]: AdamW with warmup and cosine decay over the shared model code (burn autodiff);
//! - [`probes`]: greedy exact-match scoring;
//! - [`usage`]: which experts each task routes to.

pub mod card;
pub mod curriculum;
pub mod probes;
pub mod shape;
pub mod tokenizer;
pub mod train;
pub mod usage;

/// The nano crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum NanoError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Model(#[from] gpt_oss_model::ModelError),
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
}

pub type Result<T, E = NanoError> = std::result::Result<T, E>;
