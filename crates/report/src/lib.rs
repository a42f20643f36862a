//! Reports: plots as PNG and SVG (plotters, with DejaVu Sans bundled so that no system font
//! library is needed), the quality table as markdown and CSV, and an experiment's report folder.
//! The report never runs a model: it draws what other stages measured.

pub mod bars;
pub mod document;
pub mod findings;
pub mod heatmap;
pub mod line;
mod render;
pub mod table;

pub use bars::{BarSeries, grouped_bar_chart};
pub use document::{ExperimentReport, LayerUsage, write_report};
pub use heatmap::heatmap;
pub use line::{Series, line_chart};
pub use table::{
    TaskAccuracy, VariantResult, human_bytes, quality_table_csv, quality_table_markdown,
};

/// What can go wrong while writing a report file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {message}")]
    Write {
        path: std::path::PathBuf,
        message: String,
    },
}

pub type Result<T, E = ReportError> = std::result::Result<T, E>;
