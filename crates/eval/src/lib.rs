//! Evaluation of a model or a selection of its experts: probe suites (greedy exact match,
//! answer log-probability and rank), held-out text (perplexity, fidelity to the full model:
//! KL divergence and top-1 agreement) and hidden-state norms per layer.
//!
//! Metrics are pure functions of logits ([`metrics`]); [`probes`] and [`heldout`] run the model
//! (full, or with an [`ExpertMask`](gpt_oss_model::ExpertMask)); [`summary`] aggregates per task
//! with confidence intervals; [`results`] writes CSV and JSON.

pub mod answer;
pub mod heldout;
pub mod metrics;
pub mod probes;
pub mod results;
pub mod summary;

pub use heldout::{HeldoutResult, Variant, evaluate_heldout};
pub use probes::{ProbeResult, evaluate_probes};
pub use summary::{EvalSummary, FidelitySummary, TaskSummary, summarize};

/// What can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] gpt_oss_model::ModelError),
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl EvalError {
    pub(crate) fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
