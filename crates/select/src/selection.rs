//! `selection.json`: for each layer the original indices of the experts kept, with the strategy,
//! its parameters, the budget and the digest of the statistics used.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::budget::Budget;
use crate::{Result, SelectError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub strategy: String,
    pub parameters: serde_json::Value,
    pub budget: Budget,
    pub num_experts: usize,
    pub top_k: usize,
    /// Kept original expert indices per layer, ascending.
    pub layers: Vec<Vec<usize>>,
    pub stats_digest: String,
}

impl Selection {
    /// Checks the invariants every consumer relies on: indices in range, no duplicates, at least
    /// top-k per layer.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (l, kept) in self.layers.iter().enumerate() {
            if kept.len() < self.top_k {
                return Err(format!(
                    "layer {l} keeps {} experts, fewer than top-k = {}",
                    kept.len(),
                    self.top_k
                ));
            }
            let mut seen = vec![false; self.num_experts];
            for &e in kept {
                if e >= self.num_experts {
                    return Err(format!(
                        "layer {l}: expert {e} out of range (the model has {})",
                        self.num_experts
                    ));
                }
                if std::mem::replace(&mut seen[e], true) {
                    return Err(format!("layer {l}: expert {e} named twice"));
                }
            }
        }
        Ok(())
    }

    pub fn total_kept(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }

    pub fn read(path: &Path) -> Result<Self> {
        let err = |message: String| SelectError::File {
            path: path.into(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let s: Selection = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        s.check().map_err(err)?;
        Ok(s)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("selection serialises") + "\n";
        std::fs::write(path, text).map_err(|e| SelectError::File {
            path: path.into(),
            message: e.to_string(),
        })
    }
}
