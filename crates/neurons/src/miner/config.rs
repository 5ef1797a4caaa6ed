//! The miner's settings and the layout of one training run on disk.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::MinerError;

/// Training settings; the defaults are the original miner's flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinerConfig {
    /// Epochs to train in all (a resumed run counts the epochs already done);
    /// `None` trains until stopped (`--num_epochs -1`).
    pub num_epochs: Option<u64>,
    /// AdamW learning rate.
    pub lr: f64,
    /// Rows per batch.
    pub bs: usize,
    /// Tokens per row.
    pub sl: usize,
    /// Batches per optimizer step (each loss is divided by this).
    pub accumulation_steps: usize,
    /// Fresh random pages drawn at the start of each epoch.
    pub pages_per_epoch: usize,
    /// Seed of the page draws (per epoch) and of the dropout masks.
    pub seed: u64,
    /// Base directory; runs live in `<model_dir>/training/<run_id>/`.
    pub model_dir: PathBuf,
}

impl Default for MinerConfig {
    fn default() -> Self {
        Self {
            num_epochs: None,
            lr: 1e-5,
            bs: 1,
            sl: 1024,
            accumulation_steps: 5,
            pages_per_epoch: 10,
            seed: 0,
            model_dir: PathBuf::from("./local-models"),
        }
    }
}

impl MinerConfig {
    /// Refuses settings that cannot train.
    pub fn validate(&self) -> Result<(), MinerError> {
        let bad = |m: &str| Err(MinerError::Config(m.to_string()));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("--lr must be a number >= 0");
        }
        if self.bs == 0 {
            return bad("--bs must be at least 1");
        }
        if self.sl < 2 {
            return bad("--sl must be at least 2 (a next-token loss needs two tokens)");
        }
        if self.accumulation_steps == 0 {
            return bad("--accumulation_steps must be at least 1");
        }
        if self.pages_per_epoch == 0 {
            return bad("--pages_per_epoch must be at least 1");
        }
        Ok(())
    }
}

/// A run id as the original makes them: the start time, `%Y-%m-%d_%H-%M-%S`
/// (UTC here, so ids sort the same on every machine).
pub fn new_run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// `%Y-%m-%d_%H-%M-%S` of a Unix time (proleptic Gregorian, UTC).
pub(crate) fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}_{:02}-{:02}-{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One run's directory, `<model_dir>/training/<run_id>/`:
/// - `best/`: the best model so far (`save_pretrained`; what is pushed),
/// - `checkpoint/`: the latest weights, optimizer state and counters (`--resume`),
/// - `run.json`: the settings, `metrics.jsonl`: one JSON line per step and epoch.
///
/// Each of `best/` and `checkpoint/` is replaced whole, never edited in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// `<model_dir>/training/<run_id>/`, created (the original's `model_path`).
    pub fn create(model_dir: &Path, run_id: &str) -> Result<Self, MinerError> {
        if run_id.is_empty() || run_id.contains(['/', '\\']) || run_id.starts_with('.') {
            return Err(MinerError::Config(format!("bad run id {run_id:?}")));
        }
        let root = model_dir.join("training").join(run_id);
        std::fs::create_dir_all(&root).map_err(MinerError::io(&root))?;
        Ok(Self { root })
    }

    /// An existing run directory (for `--resume`).
    pub fn open(root: &Path) -> Result<Self, MinerError> {
        let run = Self {
            root: root.to_path_buf(),
        };
        if !run.settings_file().is_file() {
            return Err(MinerError::Config(format!(
                "{} is not a miner run directory (no run.json)",
                root.display()
            )));
        }
        Ok(run)
    }

    /// The run directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The run id (the directory's name).
    pub fn run_id(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The best model so far.
    pub fn best_dir(&self) -> PathBuf {
        self.root.join("best")
    }

    /// The latest checkpoint.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    /// The run's settings.
    pub fn settings_file(&self) -> PathBuf {
        self.root.join("run.json")
    }

    /// The metrics, JSON Lines.
    pub fn metrics_file(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_utc_timestamps() {
        // 2024-01-15 12:34:56 UTC (date -u -d @1705322096).
        assert_eq!(format_utc(1_705_322_096), "2024-01-15_12-34-56");
        assert_eq!(format_utc(0), "1970-01-01_00-00-00");
        // Leap day.
        assert_eq!(format_utc(951_782_400), "2000-02-29_00-00-00");
    }
}
