//! `pretrain report`: PNG charts and one self-contained HTML page for a
//! miner run directory, a validator model directory or a local subnet
//! directory, read from the JSON Lines files those programs append to.
//!
//! - A miner run's `metrics.jsonl` gives the training loss per epoch.
//! - A validator's `metrics.jsonl` (one line per evaluation step) gives each
//!   uid's mean loss and weight over the steps.
//! - A local subnet's `leaderboard.jsonl` gives each uid's incentive over time.
//!
//! Every `metrics.jsonl` and `leaderboard.jsonl` under the directory (a few
//! levels deep) is read, so a local subnet directory yields all three.
//!
//! ```no_run
//! let report = pretrain_report::write_report(std::path::Path::new("local-models/training/run"))?;
//! println!("{}", report.html.display());
//! # Ok::<(), pretrain_report::ReportError>(())
//! ```

#![warn(missing_docs)]

mod charts;
mod html;
pub mod parse;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use parse::{Collected, IncentiveRun, TrainingRun, ValidatorRun, ValidatorStep};

/// Name of the HTML page written into the directory.
pub const HTML_FILE: &str = "report.html";

/// Why a report could not be made.
#[derive(Debug, Error)]
pub enum ReportError {
    /// The directory holds no metrics file this crate understands.
    #[error("{0} holds no metrics.jsonl or leaderboard.jsonl: point at a miner run directory, a validator --model_dir or a localnet --dir")]
    Empty(PathBuf),
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A chart could not be drawn.
    #[error("drawing {path}: {reason}")]
    Draw {
        /// The chart file.
        path: PathBuf,
        /// What the plotting library said.
        reason: String,
    },
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone)]
pub struct Report {
    /// The HTML page.
    pub html: PathBuf,
    /// The charts, in the order the page shows them.
    pub charts: Vec<PathBuf>,
    /// The data the charts were drawn from.
    pub data: Collected,
}

/// Reads every metrics file under `dir`, draws the charts and writes the
/// HTML page into `dir`.
pub fn write_report(dir: &Path) -> Result<Report, ReportError> {
    let data = parse::collect(dir)?;
    if data.is_empty() {
        return Err(ReportError::Empty(dir.to_path_buf()));
    }
    let charts = charts::draw_all(dir, &data)?;
    let html = dir.join(HTML_FILE);
    let page = html::page(dir, &data, &charts);
    // The charts' mode: a web server that serves one serves all.
    pretrain_core::fsio::atomic_write_mode(
        &html,
        page.as_bytes(),
        pretrain_core::fsio::SHARED_MODE,
    )
    .map_err(|source| ReportError::Io {
        path: html.clone(),
        source,
    })?;
    Ok(Report { html, charts, data })
}
