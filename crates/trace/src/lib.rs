//! `trace`: runs datasets through the model in batches and records, through the model's
//! routing observer, one Parquet row per (sample, position, layer) with the top-k expert ids and
//! gate weights, plus per-(layer, expert, task) statistics. Work is cut into shards written
//! atomically, so a long trace can be interrupted and resumed with no row lost or duplicated.

pub mod activations;
pub mod recorder;
pub mod rows;
pub mod run;
pub mod shards;

pub use run::{TraceOptions, TraceSummary, trace};

/// The trace crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Model(#[from] gpt_oss_model::ModelError),
    #[error(transparent)]
    Select(#[from] gpt_oss_select::SelectError),
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl TraceError {
    pub(crate) fn file(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

pub type Result<T, E = TraceError> = std::result::Result<T, E>;
