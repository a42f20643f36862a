//! `prune`: a pruned checkpoint in the release layout. Per layer the expert tensors (MXFP4 blocks
//! and scales byte for byte, dense weights and biases) and the router's rows and bias entries are
//! sliced by the kept indices; every other tensor (attention weights and biases, sinks, norms,
//! embeddings, lm_head) is copied unchanged. The output's tensor list is derived from the
//! source's, so no tensor can go missing, and an inventory check proves it before the folder
//! appears.

pub mod plan;
pub mod size;
pub mod write;

pub use plan::{Action, PrunePlan, plan_prune};
pub use size::{CheckpointSize, checkpoint_size};
pub use write::{PruneOptions, PruneReport, prune_checkpoint};

/// The prune crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Model(#[from] gpt_oss_model::ModelError),
    #[error("selection: {0}")]
    Selection(String),
    #[error("inventory check failed: {0}")]
    Inventory(String),
}

pub type Result<T, E = PruneError> = std::result::Result<T, E>;
