//! Routing rows in columns, written to and read from Parquet with polars. Schema: `sample`,
//! `task` (strings), `position`, `layer`, `token` (u32), `in_answer` (bool), `expert_0..k-1`
//! (u32), `gate_0..k-1` (f32) and, when recorded, `logit_0..E-1` (f32).

use std::fs::File;
use std::path::Path;

use polars::prelude::*;

use crate::{Result, TraceError};

#[derive(Debug, Default)]
pub struct RoutingRows {
    pub top_k: usize,
    pub num_experts: usize,
    pub with_logits: bool,
    pub sample: Vec<String>,
    pub task: Vec<String>,
    pub position: Vec<u32>,
    pub layer: Vec<u32>,
    pub token: Vec<u32>,
    pub in_answer: Vec<bool>,
    /// experts[j][row]
    pub experts: Vec<Vec<u32>>,
    pub gates: Vec<Vec<f32>>,
    pub logits: Vec<Vec<f32>>,
}

impl RoutingRows {
    pub fn new(top_k: usize, num_experts: usize, with_logits: bool) -> Self {
        Self {
            top_k,
            num_experts,
            with_logits,
            experts: vec![vec![]; top_k],
            gates: vec![vec![]; top_k],
            logits: if with_logits {
                vec![vec![]; num_experts]
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.position.len()
    }

    pub fn is_empty(&self) -> bool {
        self.position.is_empty()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        sample: &str,
        task: &str,
        position: u32,
        layer: u32,
        token: u32,
        in_answer: bool,
        experts: &[u32],
        gates: &[f32],
        logits: Option<&[f32]>,
    ) {
        self.sample.push(sample.to_string());
        self.task.push(task.to_string());
        self.position.push(position);
        self.layer.push(layer);
        self.token.push(token);
        self.in_answer.push(in_answer);
        for j in 0..self.top_k {
            self.experts[j].push(experts[j]);
            self.gates[j].push(gates[j]);
        }
        if self.with_logits
            && let Some(z) = logits
        {
            for (col, v) in self.logits.iter_mut().zip(z) {
                col.push(*v);
            }
        }
    }

    fn to_frame(&self) -> PolarsResult<DataFrame> {
        let mut columns = vec![
            Column::new("sample".into(), &self.sample),
            Column::new("task".into(), &self.task),
            Column::new("position".into(), &self.position),
            Column::new("layer".into(), &self.layer),
            Column::new("token".into(), &self.token),
            Column::new("in_answer".into(), &self.in_answer),
        ];
        for j in 0..self.top_k {
            columns.push(Column::new(format!("expert_{j}").into(), &self.experts[j]));
        }
        for j in 0..self.top_k {
            columns.push(Column::new(format!("gate_{j}").into(), &self.gates[j]));
        }
        for (e, col) in self.logits.iter().enumerate() {
            columns.push(Column::new(format!("logit_{e}").into(), col));
        }
        DataFrame::new_infer_height(columns)
    }

    /// Writes the rows to `path` (a whole file; callers make it appear atomically).
    pub fn write_parquet(&self, path: &Path) -> Result<()> {
        let mut frame = self.to_frame().map_err(|e| TraceError::file(path, e))?;
        let file = File::create(path).map_err(|e| TraceError::file(path, e))?;
        ParquetWriter::new(file)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(&mut frame)
            .map_err(|e| TraceError::file(path, e))?;
        Ok(())
    }
}

/// Reads a routing shard back as a data frame.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).map_err(|e| TraceError::file(path, e))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| TraceError::file(path, e))
}
