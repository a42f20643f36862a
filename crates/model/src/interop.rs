//! What Hugging Face transformers computed for a checkpoint, saved by
//! tools/reference/compare_with_transformers.py --save, and the rule by which the workbench's
//! log-probabilities agree with it (so that tests check interop without Python).

use std::path::Path;

use serde::Deserialize;

use crate::error::ModelError;

/// Log-probabilities of one text's tokens after the first, from transformers in f32 and in f64.
#[derive(Debug, Clone, Deserialize)]
pub struct TransformersText {
    pub token_ids: Vec<u32>,
    pub transformers_f32: Vec<f64>,
    pub transformers_f64: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TransformersFixture {
    pub model: String,
    pub texts: Vec<TransformersText>,
}

impl TransformersFixture {
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("not a transformers fixture: {e}"),
        })
    }
}

/// Max distances (over tokens) between one text's log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// |transformers f32 - workbench|
    pub vs_f32: f64,
    /// |transformers f64 - workbench|: the workbench's own rounding error.
    pub vs_f64: f64,
    /// |transformers f64 - transformers f32|: transformers' own rounding error.
    pub transformers_rounding: f64,
}

impl Agreement {
    pub fn measure(text: &TransformersText, ours: &[f32]) -> Self {
        assert_eq!(
            ours.len(),
            text.transformers_f32.len(),
            "one log-probability per token after the first"
        );
        let max_diff = |a: &[f64], b: &mut dyn Iterator<Item = f64>| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max)
        };
        let ours64 = || ours.iter().map(|&v| v as f64);
        Self {
            vs_f32: max_diff(&text.transformers_f32, &mut ours64()),
            vs_f64: max_diff(&text.transformers_f64, &mut ours64()),
            transformers_rounding: max_diff(
                &text.transformers_f64,
                &mut text.transformers_f32.iter().copied(),
            ),
        }
    }

    /// Within `tolerance` of transformers' f32 result, or (long texts through trained models,
    /// where two f32 implementations drift apart by rounding alone) at least as close to the
    /// f64 result as transformers' own f32 run is.
    pub fn agrees(&self, tolerance: f64) -> bool {
        self.vs_f32 <= tolerance || self.vs_f64 <= self.transformers_rounding
    }
}
