//! The typed errors of the model crate.

use std::path::PathBuf;

/// Everything that can go wrong when loading, checking, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    // The I/O error is part of the message, not a `source`: reasons given as
    // one string (`to_string()`) stay complete and `{:#}` does not repeat it.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// `config.json` is missing, not JSON, or has a bad field.
    #[error("bad config: {0}")]
    Config(String),
    /// The model type is not one this project runs.
    #[error("architecture not supported: {0}")]
    UnsupportedArchitecture(String),
    /// Only pickle weights (`*.bin`, `*.pt`) are present, no safetensors.
    #[error("pickle weights are not accepted (found {0}); only safetensors")]
    PickleWeights(String),
    /// No weights file at all.
    #[error("no model.safetensors (or sharded index) in {0}")]
    NoWeights(PathBuf),
    /// A safetensors file is malformed or its header lies about its data.
    #[error("bad safetensors file {file}: {reason}")]
    Safetensors {
        /// The file name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the config needs is not in the weights.
    #[error("missing tensor {0}")]
    MissingTensor(String),
    /// A tensor has a shape other than the config implies.
    #[error("tensor {name} has shape {found:?}, the config needs {expected:?}")]
    WrongShape {
        /// Tensor name.
        name: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    /// The model has more parameters than allowed.
    #[error("too many parameters: {count} > limit {limit}")]
    TooManyParameters {
        /// Parameters of the model.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// The model directory is larger than allowed.
    #[error("model files too large: {size} bytes > limit {limit}")]
    TooLarge {
        /// Total size of the files.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The token batch cannot be fed to this model.
    #[error("bad input: {0}")]
    Input(String),
    /// A weight the model uses is NaN or infinite once read as the f32 it
    /// computes in: the model's own content, refused as such.
    #[error("tensor {0} holds non-finite values (NaN or inf)")]
    NonFinite(String),
    /// The device cannot run what was asked (e.g. bf16 compute on the CPU).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// An error inside candle (shape mismatch, device error, ...).
    #[error("tensor computation failed: {0}")]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(e)
    }
}

impl ModelError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error: source,
        }
    }

    /// A safetensors error for `file`.
    pub(crate) fn st(file: &str, reason: impl Into<String>) -> Self {
        Self::Safetensors {
            file: file.to_string(),
            reason: reason.into(),
        }
    }
}

/// Result with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;
