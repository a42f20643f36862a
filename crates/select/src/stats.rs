//! Per-(task, layer, expert) routing statistics, as `trace` writes them (`stats.json`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Result, SelectError};

/// What one expert of one layer saw on one task's tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StatCell {
    /// Tokens routed to the expert (any rank).
    pub count: u64,
    /// Sum of the gate weights it received.
    pub gate_mass: f64,
    /// Sum over routed tokens of gate x L2 norm of the expert's output (REAP numerator).
    pub reap_sum: f64,
    /// Sum over routed tokens of the L2 norm of the expert's output (EAN).
    pub ean_sum: f64,
    /// Largest absolute output element over routed tokens.
    pub max_activation: f64,
}

impl StatCell {
    pub fn add(&mut self, other: &StatCell) {
        self.count += other.count;
        self.gate_mass += other.gate_mass;
        self.reap_sum += other.reap_sum;
        self.ean_sum += other.ean_sum;
        self.max_activation = self.max_activation.max(other.max_activation);
    }

    /// REAP saliency: mean over routed tokens of gate x ||output||.
    pub fn reap(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.reap_sum / self.count as f64
        }
    }
}

/// Statistics of one traced model over one or more datasets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertStats {
    pub num_layers: usize,
    pub num_experts: usize,
    pub top_k: usize,
    pub tasks: Vec<String>,
    /// Tokens seen per task (each routed to top_k experts in every layer).
    pub tokens: Vec<u64>,
    /// cells[task][layer][expert]
    pub cells: Vec<Vec<Vec<StatCell>>>,
}

impl ExpertStats {
    pub fn empty(num_layers: usize, num_experts: usize, top_k: usize) -> Self {
        Self {
            num_layers,
            num_experts,
            top_k,
            tasks: vec![],
            tokens: vec![],
            cells: vec![],
        }
    }

    /// Index of `task`, adding it when new.
    pub fn task_index(&mut self, task: &str) -> usize {
        if let Some(i) = self.tasks.iter().position(|t| t == task) {
            return i;
        }
        self.tasks.push(task.to_string());
        self.tokens.push(0);
        self.cells.push(vec![
            vec![StatCell::default(); self.num_experts];
            self.num_layers
        ]);
        self.tasks.len() - 1
    }

    /// Adds `other` (same model shape) into these statistics, task by task.
    pub fn merge(&mut self, other: &ExpertStats) -> Result<()> {
        if (other.num_layers, other.num_experts, other.top_k)
            != (self.num_layers, self.num_experts, self.top_k)
        {
            return Err(SelectError::Invalid(format!(
                "statistics of different models: {} layers x {} experts (top-{}) and {} x {} (top-{})",
                self.num_layers,
                self.num_experts,
                self.top_k,
                other.num_layers,
                other.num_experts,
                other.top_k
            )));
        }
        for (t, task) in other.tasks.iter().enumerate() {
            let i = self.task_index(task);
            self.tokens[i] += other.tokens[t];
            for l in 0..self.num_layers {
                for e in 0..self.num_experts {
                    self.cells[i][l][e].add(&other.cells[t][l][e]);
                }
            }
        }
        Ok(())
    }

    /// One layer's cells summed over `tasks` (all tasks when `None`).
    pub fn layer_totals(&self, layer: usize, tasks: Option<&[String]>) -> Vec<StatCell> {
        let mut out = vec![StatCell::default(); self.num_experts];
        for (t, name) in self.tasks.iter().enumerate() {
            if tasks.is_some_and(|ts| !ts.contains(name)) {
                continue;
            }
            for (o, c) in out.iter_mut().zip(&self.cells[t][layer]) {
                o.add(c);
            }
        }
        out
    }

    /// A stable digest of the numbers (sha256 of the canonical JSON).
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).expect("stats serialise");
        format!("sha256:{:x}", Sha256::digest(json))
    }

    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| SelectError::File {
            path: path.into(),
            message: e.to_string(),
        })?;
        let stats: ExpertStats = serde_json::from_str(&text).map_err(|e| SelectError::File {
            path: path.into(),
            message: e.to_string(),
        })?;
        stats.check().map_err(|m| SelectError::File {
            path: path.into(),
            message: m,
        })?;
        Ok(stats)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.tokens.len() != self.tasks.len() || self.cells.len() != self.tasks.len() {
            return Err("tasks, tokens and cells disagree in length".into());
        }
        for (t, per_layer) in self.cells.iter().enumerate() {
            if per_layer.len() != self.num_layers
                || per_layer.iter().any(|l| l.len() != self.num_experts)
            {
                return Err(format!(
                    "task `{}`: cells are not {} x {}",
                    self.tasks[t], self.num_layers, self.num_experts
                ));
            }
        }
        Ok(())
    }
}
