//! The validator's W&B log, exactly as the original's `neurons/validator.py`
//! writes it (v2.2): run name `validator-{uid}-{%Y-%m-%d_%H-%M-%S}`, config
//! `{uid, hotkey, run_name, version, type: "validator"}`, a new run every
//! [`MAX_RUN_STEPS_PER_WANDB_RUN`] steps, and per step `time`, `block`,
//! `uid_data` (uid -> average loss), `weight_data` (uid -> weight), the two
//! perf logs and `original_format_json` (the whole step record as a JSON
//! string, which dashboards parse) at `step = global_step`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{finite, online, Mode, Run, RunSpec, WandbError};

/// The original's project for validators.
pub const DEFAULT_PROJECT: &str = "pretraining-subnet";
/// The seed era's entity for validators.
pub const DEFAULT_ENTITY: &str = "opentensor-dev";
/// Steps logged to one run before a new one starts (`constants`).
pub const MAX_RUN_STEPS_PER_WANDB_RUN: u64 = 100;

/// Longest a rotation waits for the old run to finish.
const ROTATION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One uid's line of a step, as `step_log["uid_data"][uid]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UidStep {
    /// The uid.
    pub uid: u16,
    /// The block of its commitment (`None`: it had no valid model; the
    /// dashboards drop such lines).
    pub block: Option<u64>,
    /// Mean loss over the step's batches (+inf when it failed).
    #[serde(serialize_with = "finite_or_null")]
    pub average_loss: f64,
    /// Fraction of the other models it beat.
    #[serde(serialize_with = "finite_or_null")]
    pub win_rate: f64,
    /// Number of (batch, opponent) wins.
    pub win_total: u64,
    /// Its weight after the step.
    #[serde(serialize_with = "finite_or_null")]
    pub weight: f64,
}

/// One validator step, the input of [`ValidatorLog::log_step`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatorStep {
    /// The validator's global step.
    pub global_step: u64,
    /// The chain's block when the step was logged.
    pub block: u64,
    /// Unix time of the step (seconds).
    pub timestamp: f64,
    /// The dataset pages the step evaluated on.
    pub pages: Vec<u64>,
    /// The uids evaluated, in order.
    pub uids: Vec<u16>,
    /// Per uid (same order as `uids`).
    pub uid_data: Vec<UidStep>,
    /// The original's `load_model_perf.summary_str()`.
    pub load_model_perf_log: String,
    /// The original's `compute_loss_perf.summary_str()`.
    pub compute_model_perf_log: String,
}

impl ValidatorStep {
    /// `step_log` of the original: `{timestamp, pages, uids, uid_data}`,
    /// `uid_data` keyed by the uid as a string.
    pub fn original_format(&self) -> Value {
        let uid_data: BTreeMap<String, &UidStep> = self
            .uid_data
            .iter()
            .map(|u| (u.uid.to_string(), u))
            .collect();
        json!({
            "timestamp": finite(self.timestamp),
            "pages": self.pages,
            "uids": self.uids,
            "uid_data": uid_data,
        })
    }

    /// The W&B row: the graphed data plus `original_format_json`.
    pub fn row(&self, now_unix: f64) -> Map<String, Value> {
        let losses: Map<String, Value> = self
            .uid_data
            .iter()
            .map(|u| (u.uid.to_string(), finite(u.average_loss)))
            .collect();
        let weights: Map<String, Value> = self
            .uid_data
            .iter()
            .map(|u| (u.uid.to_string(), finite(u.weight)))
            .collect();
        let mut row = Map::new();
        row.insert("time".into(), finite(now_unix));
        row.insert("block".into(), Value::from(self.block));
        row.insert("uid_data".into(), Value::Object(losses));
        row.insert("weight_data".into(), Value::Object(weights));
        row.insert(
            "load_model_perf_log".into(),
            Value::from(self.load_model_perf_log.clone()),
        );
        row.insert(
            "compute_model_perf_log".into(),
            Value::from(self.compute_model_perf_log.clone()),
        );
        row.insert(
            "original_format_json".into(),
            Value::from(self.original_format().to_string()),
        );
        row
    }
}

fn finite_or_null<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        s.serialize_f64(*x)
    } else {
        s.serialize_none()
    }
}

/// Who the validator is, for the run's name and config.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatorIdentity {
    /// Its uid on the subnet.
    pub uid: u16,
    /// Its hotkey (SS58).
    pub hotkey: String,
    /// Our version (the original logs its own `__version__`).
    pub version: String,
}

/// The validator's W&B runs: starts one, logs steps, rotates every 100.
pub struct ValidatorLog {
    mode: Mode,
    entity: String,
    project: String,
    identity: ValidatorIdentity,
    options: online::Options,
    run: Option<Run>,
    run_step_count: u64,
}

impl ValidatorLog {
    /// A log for `identity` (no run is started until the first step).
    pub fn new(
        mode: Mode,
        entity: Option<String>,
        project: Option<String>,
        identity: ValidatorIdentity,
    ) -> Self {
        ValidatorLog {
            mode,
            entity: entity.unwrap_or_else(|| DEFAULT_ENTITY.to_string()),
            project: project.unwrap_or_else(|| DEFAULT_PROJECT.to_string()),
            identity,
            options: online::Options::default(),
            run: None,
            run_step_count: 0,
        }
    }

    /// Online timing options (tests use short ones).
    pub fn with_options(mut self, options: online::Options) -> Self {
        self.options = options;
        self
    }

    /// The current run, if one was started.
    pub fn run(&self) -> Option<&Run> {
        self.run.as_ref()
    }

    fn new_run(&self) -> Result<Run, WandbError> {
        let run_name = chrono::Local::now().format("%Y-%m-%d_%H-%M-%S").to_string();
        let mut config = Map::new();
        config.insert("uid".into(), Value::from(self.identity.uid));
        config.insert("hotkey".into(), Value::from(self.identity.hotkey.clone()));
        config.insert("run_name".into(), Value::from(run_name.clone()));
        config.insert("version".into(), Value::from(self.identity.version.clone()));
        config.insert("type".into(), Value::from("validator"));
        let spec = RunSpec {
            entity: self.entity.clone(),
            project: self.project.clone(),
            display_name: format!("validator-{}-{}", self.identity.uid, run_name),
            config,
        };
        Run::start_with(&self.mode, spec, self.options.clone())
    }

    /// Logs one step. As the original: after every 100 steps the run is
    /// finished and a new one started before the step is logged.
    pub async fn log_step(&mut self, step: &ValidatorStep) -> Result<(), WandbError> {
        if self.run_step_count > 0
            && self
                .run_step_count
                .is_multiple_of(MAX_RUN_STEPS_PER_WANDB_RUN)
        {
            if let Some(run) = self.run.take() {
                // Bounded: a W&B that is down finishes the old run in the
                // background (its task keeps trying) instead of holding the step.
                match tokio::time::timeout(ROTATION_WAIT, run.finish(0)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "W&B: could not finish the run before rotating")
                    }
                    Err(_) => {
                        tracing::warn!("W&B: the old run is still finishing; a new one starts")
                    }
                }
            }
        }
        self.run_step_count += 1;
        if self.run.is_none() {
            self.run = Some(self.new_run()?);
        }
        let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        match self.run.as_mut() {
            Some(run) => run.log(step.global_step, step.row(now)),
            None => Ok(()),
        }
    }

    /// Finishes the current run (at shutdown).
    pub async fn finish(&mut self, exit_code: i32) -> Result<(), WandbError> {
        match self.run.take() {
            Some(run) => run.finish(exit_code).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> ValidatorStep {
        ValidatorStep {
            global_step: 7,
            block: 1234,
            timestamp: 1_700_000_000.5,
            pages: vec![3, 99],
            uids: vec![2, 5],
            uid_data: vec![
                UidStep {
                    uid: 2,
                    block: Some(40),
                    average_loss: 3.25,
                    win_rate: 1.0,
                    win_total: 6,
                    weight: 0.75,
                },
                UidStep {
                    uid: 5,
                    block: Some(41),
                    average_loss: f64::INFINITY,
                    win_rate: 0.0,
                    win_total: 0,
                    weight: 0.25,
                },
            ],
            load_model_perf_log: "load".into(),
            compute_model_perf_log: "compute".into(),
        }
    }

    #[test]
    fn original_format_has_the_originals_keys_and_nulls_for_inf() {
        let text = step().original_format().to_string();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["pages"], json!([3, 99]));
        assert_eq!(v["uids"], json!([2, 5]));
        assert_eq!(
            v["uid_data"]["2"],
            json!({"uid": 2, "block": 40, "average_loss": 3.25, "win_rate": 1.0, "win_total": 6, "weight": 0.75})
        );
        assert_eq!(v["uid_data"]["5"]["average_loss"], Value::Null);
        assert_eq!(v["timestamp"], json!(1_700_000_000.5));
    }

    #[test]
    fn row_has_the_graphed_keys() {
        let row = step().row(5.0);
        let keys: Vec<&str> = row.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "block",
                "compute_model_perf_log",
                "load_model_perf_log",
                "original_format_json",
                "time",
                "uid_data",
                "weight_data"
            ]
        );
        assert_eq!(row["uid_data"], json!({"2": 3.25, "5": null}));
        assert_eq!(row["weight_data"], json!({"2": 0.75, "5": 0.25}));
        assert_eq!(row["block"], json!(1234));
    }
}
