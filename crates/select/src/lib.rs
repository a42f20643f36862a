//! Choosing which experts to keep. A strategy is a function of statistics gathered by `trace`
//! (and, for search-based strategies, of cached calibration activations behind a narrow trait):
//! it never runs the model or opens files. Adding one is one file in `strategies/` plus one line
//! in [`registry`].

pub mod activations;
pub mod budget;
pub mod registry;
pub mod selection;
pub mod stats;
pub mod strategies;

pub use activations::{ActivationCache, LayerActivations};
pub use budget::Budget;
pub use registry::{Strategy, StrategyParams, strategy_by_name, strategy_names};
pub use selection::Selection;
pub use stats::{ExpertStats, StatCell};

/// The select crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
}

pub type Result<T, E = SelectError> = std::result::Result<T, E>;
