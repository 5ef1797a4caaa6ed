//! Weights & Biases, as the original's validator and miner log to it.
//!
//! A [`Run`] is one W&B run: online it creates the run with the `UpsertBucket`
//! GraphQL mutation and streams history lines to `file_stream` from a
//! background task (a W&B that is down or slow never blocks the caller: lines
//! wait in a bounded buffer and are resent from the offset the server last
//! accepted); offline it appends to a `.wandb` transaction log that
//! `wandb sync` uploads later. [`validator`] and [`miner`] hold the
//! original's naming, config and row formats.
//!
//! Values that are not finite (a model that failed scores +inf) are written
//! as JSON `null`, never as the invalid JSON tokens `Infinity`/`NaN`: the
//! community dashboards already drop `None` with inf and NaN.

pub mod miner;
pub mod offline;
pub mod online;
mod proto;
pub mod validator;

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Map, Value};
use thiserror::Error;

/// W&B's public API; `WANDB_BASE_URL` or `--wandb.base_url` point elsewhere.
pub const DEFAULT_BASE_URL: &str = "https://api.wandb.ai";

/// Where a run's records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Streamed to a W&B server.
    Online {
        /// The server's base URL (no trailing slash).
        base_url: String,
        /// The API key (`WANDB_API_KEY`).
        api_key: String,
    },
    /// Written as `.wandb` files under this folder, for `wandb sync`.
    Offline {
        /// The folder (the validator uses `<model_dir>/wandb`).
        dir: PathBuf,
    },
}

impl Mode {
    /// The mode the environment asks for: `WANDB_MODE=offline` (or
    /// `offline` true) writes files under `offline_dir`; otherwise online with
    /// `WANDB_API_KEY` (required) and `WANDB_BASE_URL` (default W&B's).
    pub fn from_env(offline: bool, offline_dir: PathBuf) -> Result<Mode, WandbError> {
        Self::from_vars(offline, offline_dir, |k| std::env::var(k).ok())
    }

    /// [`Mode::from_env`] with the variables looked up through `var`.
    pub fn from_vars(
        offline: bool,
        offline_dir: PathBuf,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Mode, WandbError> {
        let mode = var("WANDB_MODE").unwrap_or_default();
        if offline || mode.trim().eq_ignore_ascii_case("offline") {
            return Ok(Mode::Offline { dir: offline_dir });
        }
        let api_key = var("WANDB_API_KEY")
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .ok_or(WandbError::MissingApiKey)?;
        let base_url = var("WANDB_BASE_URL")
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        Ok(Mode::Online { base_url, api_key })
    }
}

/// What a run is: where it lives and how dashboards find it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Entity (user or team).
    pub entity: String,
    /// Project.
    pub project: String,
    /// The run's display name (what dashboards match).
    pub display_name: String,
    /// The run's config: plain values (wrapped as `{"value": v}` online).
    pub config: Map<String, Value>,
}

/// Why W&B could not be used.
#[derive(Debug, Error)]
pub enum WandbError {
    /// Online logging without an API key.
    #[error("W&B logging needs WANDB_API_KEY (or --wandb.off, or WANDB_MODE=offline)")]
    MissingApiKey,
    /// The request did not get an answer.
    #[error("W&B request to {url} failed: {message}")]
    Transport {
        /// The endpoint.
        url: String,
        /// What the HTTP client said.
        message: String,
    },
    /// The server answered with an error status.
    #[error("W&B answered {status} at {url}: {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// The start of the body, escaped.
        body: String,
    },
    /// The GraphQL answer held errors or not the fields asked for.
    #[error("W&B GraphQL: {0}")]
    GraphQl(String),
    /// A run file could not be written.
    #[error("W&B run file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The run's background task is gone (it ended or panicked).
    #[error("the W&B run has already finished")]
    Finished,
}

impl WandbError {
    /// Whether the same request may succeed later (network, 5xx, 429).
    pub fn is_retryable(&self) -> bool {
        match self {
            WandbError::Transport { .. } => true,
            WandbError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// One W&B run, online or offline.
pub struct Run {
    id: String,
    sink: Sink,
    started: Instant,
    start_unix: f64,
}

enum Sink {
    Online(online::OnlineRun),
    Offline(offline::OfflineRun),
}

impl Run {
    /// Starts a run. Online this returns at once: the run is created and its
    /// lines are sent by a background task on the current tokio runtime
    /// (failures there are warnings, retried); offline the run file is
    /// created now, so a folder that cannot be written is an error here.
    pub fn start(mode: &Mode, spec: RunSpec) -> Result<Run, WandbError> {
        Self::start_with(mode, spec, online::Options::default())
    }

    /// [`Run::start`] with online timing options (tests use short ones).
    pub fn start_with(
        mode: &Mode,
        spec: RunSpec,
        options: online::Options,
    ) -> Result<Run, WandbError> {
        let id = new_run_id();
        let now = chrono::Utc::now();
        let start_unix = now.timestamp_micros() as f64 / 1e6;
        let sink = match mode {
            Mode::Online { base_url, api_key } => Sink::Online(online::OnlineRun::spawn(
                base_url.clone(),
                api_key.clone(),
                id.clone(),
                spec,
                options,
            )),
            Mode::Offline { dir } => {
                let config = proto::ConfigRecord {
                    update: items(&spec.config),
                };
                let run = proto::RunRecord {
                    run_id: id.clone(),
                    entity: spec.entity,
                    project: spec.project,
                    config: Some(config),
                    display_name: spec.display_name,
                    host: host_name(),
                    start_time: Some(proto::Timestamp {
                        seconds: now.timestamp(),
                        nanos: now.timestamp_subsec_nanos() as i32,
                    }),
                };
                Sink::Offline(offline::OfflineRun::create(dir, run, now)?)
            }
        };
        Ok(Run {
            id,
            sink,
            started: Instant::now(),
            start_unix,
        })
    }

    /// The run's id (the last part of its URL).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The offline run file, if this run is offline.
    pub fn offline_path(&self) -> Option<&std::path::Path> {
        match &self.sink {
            Sink::Offline(run) => Some(run.path()),
            Sink::Online(_) => None,
        }
    }

    /// Logs one history row at `step` (`_step`, `_runtime` and `_timestamp`
    /// are added as wandb adds them). Never blocks on the network; an
    /// offline write that fails is returned (the caller warns and goes on).
    pub fn log(&mut self, step: u64, row: Map<String, Value>) -> Result<(), WandbError> {
        let runtime = self.started.elapsed().as_secs_f64();
        let timestamp = self.start_unix + runtime;
        let mut row = row;
        row.insert("_step".into(), Value::from(step));
        row.insert("_runtime".into(), finite(runtime));
        row.insert("_timestamp".into(), finite(timestamp));
        match &mut self.sink {
            Sink::Online(run) => {
                run.history(Value::Object(row).to_string());
                Ok(())
            }
            Sink::Offline(run) => {
                let summary = proto::SummaryRecord {
                    update: items(&row),
                };
                let history = proto::HistoryRecord {
                    item: items(&row),
                    step: Some(proto::HistoryStep { num: step as i64 }),
                };
                run.write(proto::RecordType::History(history))?;
                run.write(proto::RecordType::Summary(summary))
            }
        }
    }

    /// Ends the run: online, sends what is still buffered (for at most the
    /// finish timeout) and marks the run complete with `exit_code`; offline,
    /// writes the exit record.
    pub async fn finish(self, exit_code: i32) -> Result<(), WandbError> {
        let runtime = self.started.elapsed().as_secs() as i32;
        match self.sink {
            Sink::Online(run) => run.finish(exit_code).await,
            Sink::Offline(mut run) => run.write(proto::RecordType::Exit(proto::RunExitRecord {
                exit_code,
                runtime,
            })),
        }
    }
}

/// A JSON number, or `null` where the value is not finite (JSON has no inf).
pub fn finite(x: f64) -> Value {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn items(map: &Map<String, Value>) -> Vec<proto::Item> {
    map.iter()
        .map(|(key, value)| proto::Item {
            key: key.clone(),
            value_json: value.to_string(),
        })
        .collect()
}

/// An id like wandb's own: 8 characters of `[a-z0-9]`.
fn new_run_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn mode_follows_wandb_mode_key_and_base_url() {
        let dir = PathBuf::from("/tmp/w");
        assert_eq!(
            Mode::from_vars(false, dir.clone(), vars(&[("WANDB_MODE", "offline")])).unwrap(),
            Mode::Offline { dir: dir.clone() }
        );
        assert_eq!(
            Mode::from_vars(true, dir.clone(), vars(&[])).unwrap(),
            Mode::Offline { dir: dir.clone() }
        );
        assert!(matches!(
            Mode::from_vars(false, dir.clone(), vars(&[("WANDB_API_KEY", "  ")])),
            Err(WandbError::MissingApiKey)
        ));
        assert_eq!(
            Mode::from_vars(
                false,
                dir.clone(),
                vars(&[
                    ("WANDB_API_KEY", "k"),
                    ("WANDB_BASE_URL", "http://127.0.0.1:9/")
                ])
            )
            .unwrap(),
            Mode::Online {
                base_url: "http://127.0.0.1:9".into(),
                api_key: "k".into()
            }
        );
        assert_eq!(
            Mode::from_vars(false, dir, vars(&[("WANDB_API_KEY", "k")])).unwrap(),
            Mode::Online {
                base_url: DEFAULT_BASE_URL.into(),
                api_key: "k".into()
            }
        );
    }

    #[test]
    fn non_finite_values_become_null() {
        assert_eq!(finite(f64::INFINITY), Value::Null);
        assert_eq!(finite(f64::NAN), Value::Null);
        assert_eq!(finite(2.5), serde_json::json!(2.5));
    }

    #[test]
    fn run_ids_look_like_wandbs() {
        let id = new_run_id();
        assert_eq!(id.len(), 8);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }
}
