//! Reports: plots as PNG and SVG (plotters, with DejaVu Sans bundled so that no system font
//! library is needed), markdown tables and CSV. The report never runs a model: it draws what
//! other stages measured.

pub mod chart;

pub use chart::{Series, line_chart};

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
