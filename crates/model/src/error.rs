//! The model crate's one error type. Every variant names the file (and, where there is one, the
//! tensor or field) so that a user with a broken checkpoint knows what to fix.

use std::path::PathBuf;

/// What can go wrong while reading, checking or running a gpt-oss checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The reason is in the message and not also a `source()`: a chain printed with `{:#}`
    /// (the CLI's errors) would otherwise say it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },

    #[error("{path}, line {line}: {message}")]
    Dataset {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("{0}")]
    Invalid(String),

    #[error("device: {0}")]
    Device(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::ModelError;
    use std::error::Error;

    /// An I/O error names the file and the reason once: the reason is not also its source,
    /// which a chain printed with `{:#}` would repeat.
    #[test]
    fn an_io_error_names_the_file_and_the_reason_once() {
        let reason = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = ModelError::io("/models/x/config.json", reason);
        assert_eq!(error.to_string(), "/models/x/config.json: no such file");
        assert!(error.source().is_none());
    }
}
