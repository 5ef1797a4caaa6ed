//! The rows of the JSON Lines files the neurons append to and `pretrain
//! report` and `pretrain localnet` read back: a miner run's
//! `metrics.jsonl` ([`TrainRow`]), a validator's `metrics.jsonl`
//! ([`StepReport`]) and a local subnet's `leaderboard.jsonl`
//! ([`LeaderboardLine`]). Readers that meet a line these types do not
//! parse (files from older versions) fall back to reading it untyped.

use serde::{Deserialize, Serialize};

use crate::model_id::CompetitionId;
use crate::scoring::{JsonF64, Uid};

/// One line of a miner run's `metrics.jsonl`, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainRow {
    /// An optimiser step.
    Step {
        /// Epoch (from 1).
        epoch: u64,
        /// Optimiser steps so far in the run.
        step: u64,
        /// Batch of the epoch (from 1).
        batch: u64,
        /// Loss of the step's last batch (as the trainer reports it, f32).
        loss: Option<f32>,
        /// Training throughput.
        tokens_per_s: Option<f64>,
        /// Learning rate.
        lr: f64,
        /// Unix time of the line, seconds.
        #[serde(default)]
        time: Option<f64>,
        /// Seconds since the run started.
        #[serde(default)]
        wall_s: Option<f64>,
    },
    /// The end of an epoch.
    Epoch {
        /// Epoch (from 1).
        epoch: u64,
        /// Optimiser steps so far in the run.
        step: u64,
        /// Average loss of the epoch.
        loss: Option<f64>,
        /// Training throughput over the epoch.
        tokens_per_s: Option<f64>,
        /// Learning rate.
        lr: f64,
        /// Whether the epoch improved on the best loss.
        best: bool,
        /// Unix time of the line, seconds.
        #[serde(default)]
        time: Option<f64>,
        /// Seconds since the run started.
        #[serde(default)]
        wall_s: Option<f64>,
    },
}

impl TrainRow {
    /// The epoch and the loss of the line.
    pub fn epoch_loss(&self) -> (u64, Option<f64>) {
        match self {
            TrainRow::Step { epoch, loss, .. } => (*epoch, loss.map(f64::from)),
            TrainRow::Epoch { epoch, loss, .. } => (*epoch, *loss),
        }
    }

    /// Sets the wall-clock fields of the line.
    pub fn stamped(mut self, unix: f64, wall: f64) -> Self {
        match &mut self {
            TrainRow::Step { time, wall_s, .. } | TrainRow::Epoch { time, wall_s, .. } => {
                *time = Some(unix);
                *wall_s = Some(wall);
            }
        }
        self
    }
}

/// One uid's line of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UidReport {
    /// The uid.
    pub uid: Uid,
    /// Its hotkey.
    pub hotkey: String,
    /// The competition it was evaluated in (`None` under the seed protocol).
    pub competition: Option<CompetitionId>,
    /// The evaluated model (`None`: no valid model).
    pub model: Option<String>,
    /// Commit block (`None`: no valid model).
    pub block: Option<u64>,
    /// Loss per batch (`"inf"`: failed).
    pub losses: Vec<JsonF64>,
    /// Mean loss.
    pub mean_loss: JsonF64,
    /// Pairs won.
    pub wins: u64,
    /// Win rate.
    pub win_rate: f64,
    /// Moving-average weight after the step (the subnet weight, across
    /// competitions, under the later protocol).
    pub weight: f32,
    /// Why it scored +inf, if it did.
    pub error: Option<String>,
}

/// The line appended to `metrics.jsonl` after every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Steps completed including this one.
    pub step: u64,
    /// Block of the metagraph the step used.
    pub block: u64,
    /// The competition evaluated (`None` under the seed protocol).
    pub competition: Option<CompetitionId>,
    /// Seed the pages were drawn with.
    pub seed: u64,
    /// The pages.
    pub pages: Vec<u64>,
    /// Batches every model was evaluated on.
    pub n_batches: usize,
    /// Size of the metagraph.
    pub n_total_uids: usize,
    /// Per evaluated uid, ascending.
    pub uids: Vec<UidReport>,
    /// All weights after the step (the subnet weights under the later protocol).
    pub weights: Vec<f32>,
    /// Uids kept for the next step (of this competition, under the later protocol).
    pub uids_to_eval_next: Vec<Uid>,
    /// Seconds spent loading pages.
    pub data_s: f64,
    /// Seconds spent evaluating.
    pub eval_s: f64,
    /// Seconds of the whole step.
    pub step_s: f64,
    /// Whether weights were set on chain after this step.
    pub weights_set: Option<WeightsSet>,
}

/// A `set_weights` call made after a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsSet {
    /// Block it was made at.
    pub block: u64,
    /// Uids sent.
    pub uids: Vec<Uid>,
    /// Values sent.
    pub values: Vec<u16>,
    /// `None` when the chain accepted it; the error otherwise.
    pub error: Option<String>,
}

/// One line of a local subnet's `leaderboard.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardLine {
    /// Seconds since the local subnet started.
    pub elapsed_s: f64,
    /// The chain's block, when it answered.
    pub block: Option<u64>,
    /// A row per uid.
    pub leaderboard: Vec<LeaderboardRow>,
}

/// One uid of a [`LeaderboardLine`] (also the rows of `pretrain localnet`'s summary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderboardRow {
    /// The uid.
    pub uid: u16,
    /// Its hotkey.
    pub hotkey: String,
    /// `validator`, `miner-<i>` or `other`.
    pub role: String,
    /// `namespace/name@commit8` of its commitment.
    pub model: Option<String>,
    /// Its competition, where the rules have competition ids.
    #[serde(default)]
    pub competition: Option<CompetitionId>,
    /// The validator's latest mean loss (`null` when not finite).
    pub loss: Option<f64>,
    /// The validator's latest win rate.
    pub win_rate: Option<f64>,
    /// The validator's weight on it, normalised.
    pub weight: f64,
    /// Its incentive on chain.
    pub incentive: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_miner_line_parses_by_its_event() {
        let step = r#"{"batch":2,"epoch":1,"event":"step","loss":7.5,"lr":0.001,"step":4,"time":1.5,"tokens_per_s":100.0,"wall_s":0.5}"#;
        let row: TrainRow = serde_json::from_str(step).unwrap();
        assert_eq!(row.epoch_loss(), (1, Some(7.5)));
        assert!(matches!(
            row,
            TrainRow::Step {
                batch: 2,
                step: 4,
                ..
            }
        ));
        let epoch = r#"{"best":true,"epoch":3,"event":"epoch","loss":null,"lr":0.001,"step":9,"tokens_per_s":null}"#;
        let row: TrainRow = serde_json::from_str(epoch).unwrap();
        assert_eq!(row.epoch_loss(), (3, None));
        assert!(matches!(
            row,
            TrainRow::Epoch {
                best: true,
                time: None,
                ..
            }
        ));
        // A line of another shape is no TrainRow (readers fall back).
        assert!(serde_json::from_str::<TrainRow>(r#"{"epoch":1,"avg_loss":3.0}"#).is_err());
    }

    #[test]
    fn a_validator_line_round_trips_with_non_finite_losses() {
        let line = r#"{"step":1,"block":12,"competition":null,"seed":7,"pages":[3],"n_batches":1,"n_total_uids":2,"uids":[{"uid":1,"hotkey":"hk","competition":null,"model":"a/b@c","block":5,"losses":["inf"],"mean_loss":"inf","wins":0,"win_rate":0.0,"weight":0.5,"error":"failed"}],"weights":[0.5,0.5],"uids_to_eval_next":[1],"data_s":0.1,"eval_s":0.2,"step_s":0.3,"weights_set":{"block":12,"uids":[0,1],"values":[1,2],"error":null}}"#;
        let r: StepReport = serde_json::from_str(line).unwrap();
        assert_eq!(r.uids[0].mean_loss.0, f64::INFINITY);
        assert_eq!(r.uids[0].error.as_deref(), Some("failed"));
        assert_eq!(
            r.weights_set.as_ref().map(|w| w.values.clone()),
            Some(vec![1, 2])
        );
        assert_eq!(serde_json::to_string(&r).unwrap(), line);
    }
}
