//! `pretrain report DIR`: charts and an HTML page from the metrics files of
//! a miner run, a validator or a local subnet.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

/// Arguments of `pretrain report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A miner run directory (`<model_dir>/training/<run_id>`), a validator's
    /// `--model_dir`, or a `pretrain localnet --dir`.
    pub dir: PathBuf,
}

/// Writes the report into DIR; prints `{"html", "charts"}`.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let report = pretrain_report::write_report(&args.dir)
        .with_context(|| format!("making a report of {}", args.dir.display()))?;
    tracing::info!(
        "report written: {} ({} charts)",
        report.html.display(),
        report.charts.len()
    );
    if report.data.skipped_lines > 0 {
        tracing::warn!(
            "skipped {} lines that were not JSON objects (cut by a full disk or a crash, or not UTF-8)",
            report.data.skipped_lines
        );
    }
    super::out::print_json(&json!({
        "html": report.html,
        "charts": report.charts,
        "training_runs": report.data.training.len(),
        "validator_steps": report.data.validators.iter().map(|v| v.steps.len()).sum::<usize>(),
        "skipped_lines": report.data.skipped_lines,
    }))
}
