//! The Hugging Face checkpoint layout: reading (mapped, sharded), the expected tensor inventory,
//! MXFP4 bytes, and writing.

pub mod inventory;
pub mod mxfp4;
pub mod reader;
pub mod writer;

pub use inventory::{
    Component, ExpertFormat, StoredAs, TensorSpec, detect_expert_format, expected_tensors,
};
pub use reader::{Checkpoint, TensorRef};
pub use writer::{PlannedTensor, StagedDir, WrittenCheckpoint, write_safetensors};
