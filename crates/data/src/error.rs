//! The error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading, fetching or tokenizing text.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The tokenizer tables could not be built.
    #[error("cannot build the GPT-2 tokenizer: {0}")]
    Tokenizer(String),
    /// A token id outside the vocabulary was given to the decoder.
    #[error("cannot decode: token id {0} is not in the GPT-2 vocabulary")]
    UnknownToken(u32),
    /// The `--dataset` value names no known source.
    #[error("unknown dataset {0:?}: expected \"falcon\" or \"local:DIR\"")]
    UnknownDataset(String),
    /// All tries to fetch a page from the rows API failed.
    #[error("page {page} of {dataset}: failed after {tries} tries: {last}")]
    PageFetch {
        /// The dataset (e.g. `tiiuae/falcon-refinedweb`).
        dataset: String,
        /// The page offset that was requested.
        page: u64,
        /// How many requests were made.
        tries: u32,
        /// The reason the last request failed.
        last: String,
    },
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    /// A file or directory of a local dataset could not be read (the I/O
    /// error kept whole, so callers can branch on its kind).
    // Printed, not a `source`: `to_string()` stays complete and `{:#}` does
    // not repeat it (the model crate's convention).
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A local dataset's contents are unusable (not Parquet, no `content`
    /// column, no rows, ...).
    #[error("{}: {reason}", path.display())]
    Local {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A page past the end of a local dataset was requested.
    #[error("page {page} is out of range: the dataset has {rows} rows")]
    PageOutOfRange {
        /// The requested row offset.
        page: u64,
        /// The number of rows in the dataset.
        rows: u64,
    },
    /// Batching parameters that cannot form a batch.
    #[error(
        "batch_size and sequence_length must be positive (got {batch_size} and {sequence_length})"
    )]
    BadBatchShape {
        /// Rows per batch.
        batch_size: usize,
        /// Tokens per row.
        sequence_length: usize,
    },
    /// A background task (tokenizing or fetching) died.
    #[error("background task failed: {0}")]
    Task(String),
}

impl DataError {
    /// An `Io` error for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            error,
        }
    }

    /// A `Local` error for `path`.
    pub(crate) fn local(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        DataError::Local {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}
