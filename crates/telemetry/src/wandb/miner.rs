//! The miner's opt-in W&B log, as the original's `neurons/miner.py`: only
//! when not `--offline` and both `--wandb_entity` and `--wandb_project` are
//! given; run name the start time `%Y-%m-%d_%H-%M-%S`, config `{uid, hotkey,
//! run_name, version, type: "miner"}`, and `{loss, n_batches}` at each
//! optimizer step (`step = n_acc_steps`).

use serde_json::{Map, Value};

use super::{finite, Mode, Run, RunSpec, WandbError};

/// Who the miner is, for the run's config.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerIdentity {
    /// Its uid (the original logs `my_uid`).
    pub uid: Option<u16>,
    /// Its hotkey (SS58).
    pub hotkey: String,
    /// Our version.
    pub version: String,
}

/// Whether the miner logs to W&B: the original's rule.
pub fn enabled(offline: bool, entity: Option<&str>, project: Option<&str>) -> bool {
    !offline && entity.is_some_and(|e| !e.is_empty()) && project.is_some_and(|p| !p.is_empty())
}

/// Starts the miner's run.
pub fn start(
    mode: &Mode,
    entity: &str,
    project: &str,
    who: &MinerIdentity,
) -> Result<Run, WandbError> {
    let run_name = chrono::Local::now().format("%Y-%m-%d_%H-%M-%S").to_string();
    let mut config = Map::new();
    config.insert(
        "uid".into(),
        who.uid.map(Value::from).unwrap_or(Value::Null),
    );
    config.insert("hotkey".into(), Value::from(who.hotkey.clone()));
    config.insert("run_name".into(), Value::from(run_name.clone()));
    config.insert("version".into(), Value::from(who.version.clone()));
    config.insert("type".into(), Value::from("miner"));
    Run::start(
        mode,
        RunSpec {
            entity: entity.into(),
            project: project.into(),
            display_name: run_name,
            config,
        },
    )
}

/// The row of one optimizer step.
pub fn step_row(loss: f64, n_batches: u64) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert("loss".into(), finite(loss));
    row.insert("n_batches".into(), Value::from(n_batches));
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_only_online_with_entity_and_project() {
        assert!(enabled(false, Some("me"), Some("p")));
        assert!(!enabled(true, Some("me"), Some("p")));
        assert!(!enabled(false, None, Some("p")));
        assert!(!enabled(false, Some("me"), None));
        assert!(!enabled(false, Some(""), Some("p")));
    }
}
