//! The validator as operators and the community watch it: each step to
//! Weights & Biases in the original's format (the dashboards read its
//! `original_format_json`) and to Prometheus gauges and counters. Both are
//! optional and neither can stop a step: W&B queues and retries in the
//! background, and a failure there is a warning.

use std::sync::OnceLock;
use std::time::Duration;

use pretrain_core::metrics::StepReport;
use pretrain_telemetry::prometheus::{Outcome, ValidatorMetrics};
use pretrain_telemetry::wandb::validator::{UidStep, ValidatorLog, ValidatorStep};
use tokio::sync::Mutex;
use tracing::warn;

/// The validator's observers, installed once at start (none by default).
#[derive(Default)]
pub struct Observers {
    inner: OnceLock<Inner>,
}

struct Inner {
    wandb: Option<Mutex<ValidatorLog>>,
    metrics: Option<ValidatorMetrics>,
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.get();
        f.debug_struct("Observers")
            .field("wandb", &inner.is_some_and(|i| i.wandb.is_some()))
            .field("prometheus", &inner.is_some_and(|i| i.metrics.is_some()))
            .finish()
    }
}

impl Observers {
    /// Installs the observers; `false` if some were installed already.
    pub fn install(&self, wandb: Option<ValidatorLog>, metrics: Option<ValidatorMetrics>) -> bool {
        self.inner
            .set(Inner {
                wandb: wandb.map(Mutex::new),
                metrics,
            })
            .is_ok()
    }

    /// The Prometheus metrics, if installed.
    pub fn metrics(&self) -> Option<&ValidatorMetrics> {
        self.inner.get().and_then(|i| i.metrics.as_ref())
    }

    /// Counts a refused model under a short reason word.
    pub fn refused(&self, reason: &str) {
        if let Some(m) = self.metrics() {
            m.refused(refusal_kind(reason));
        }
    }

    /// Counts a weight update.
    pub fn weights(&self, outcome: Outcome) {
        if let Some(m) = self.metrics() {
            m.weights_outcome(outcome);
        }
    }

    /// Sends one step to every observer.
    pub async fn step(&self, report: &StepReport) {
        let Some(inner) = self.inner.get() else {
            return;
        };
        if let Some(m) = &inner.metrics {
            m.step.set(i64::try_from(report.step).unwrap_or(i64::MAX));
            m.block.set(i64::try_from(report.block).unwrap_or(i64::MAX));
            m.step_duration_seconds.set(report.step_s);
            for u in &report.uids {
                m.record_uid(u.uid, u.mean_loss.0, u.win_rate, f64::from(u.weight));
                if u.model.is_some() && u.error.is_none() {
                    m.models_evaluated.inc();
                }
            }
        }
        if let Some(wandb) = &inner.wandb {
            let step = wandb_step(report, unix_now());
            if let Err(e) = wandb.lock().await.log_step(&step).await {
                warn!("W&B: step {} not logged: {e}", report.step);
            }
        }
    }

    /// Ends the W&B run (at most `limit` spent waiting for the server).
    pub async fn finish(&self, limit: Duration) {
        let Some(wandb) = self.inner.get().and_then(|i| i.wandb.as_ref()) else {
            return;
        };
        let mut log = wandb.lock().await;
        match tokio::time::timeout(limit, log.finish(0)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("W&B: the run did not finish cleanly: {e}"),
            Err(_) => warn!("W&B: the run's last lines were not sent within {limit:?}"),
        }
    }
}

/// A bounded set of words for refusals, so each is one Prometheus series.
pub fn refusal_kind(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("hash") {
        "hash"
    } else if r.contains("commitment") || r.contains("model id") {
        "commitment"
    } else if r.contains("parameter") {
        "parameters"
    } else if r.contains("architecture") || r.contains("config") {
        "architecture"
    } else if r.contains("bytes") || r.contains("size") || r.contains("too large") {
        "size"
    } else if r.contains("safetensors")
        || r.contains("header")
        || r.contains("tensor")
        || r.contains("pickle")
    {
        "weights"
    } else {
        "other"
    }
}

/// The original's W&B step from our step report: per uid its commit block,
/// mean loss, win rate, wins and weight.
pub fn wandb_step(report: &StepReport, timestamp: f64) -> ValidatorStep {
    let uid_data: Vec<UidStep> = report
        .uids
        .iter()
        .map(|u| UidStep {
            uid: u.uid,
            block: u.block,
            average_loss: u.mean_loss.0,
            win_rate: u.win_rate,
            win_total: u.wins,
            weight: f64::from(u.weight),
        })
        .collect();
    ValidatorStep {
        global_step: report.step,
        block: report.block,
        timestamp,
        pages: report.pages.clone(),
        uids: report.uids.iter().map(|u| u.uid).collect(),
        uid_data,
        load_model_perf_log: format!("Load pages: {:.3}s", report.data_s),
        compute_model_perf_log: format!(
            "Compute loss: {} models on {} batches in {:.3}s",
            report.uids.len(),
            report.n_batches,
            report.eval_s
        ),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretrain_core::metrics::UidReport;
    use pretrain_core::scoring::JsonF64;

    #[test]
    fn a_step_report_becomes_the_originals_step_log() {
        let uid = |uid: u16, block: Option<u64>, loss: f64, wins: u64, weight: f32| UidReport {
            uid,
            hotkey: format!("hk{uid}"),
            competition: None,
            model: block.map(|_| format!("me/m{uid}@c")),
            block,
            losses: vec![JsonF64(loss)],
            mean_loss: JsonF64(loss),
            wins,
            win_rate: wins as f64 / 2.0,
            weight,
            error: None,
        };
        let report = StepReport {
            step: 4,
            block: 120,
            competition: None,
            seed: 1,
            pages: vec![5, 9],
            n_batches: 2,
            n_total_uids: 3,
            uids: vec![
                uid(1, Some(40), 3.5, 2, 0.75),
                uid(2, None, f64::INFINITY, 0, 0.25),
            ],
            weights: vec![0.0, 0.75, 0.25],
            uids_to_eval_next: vec![1],
            data_s: 0.5,
            eval_s: 2.0,
            step_s: 3.0,
            weights_set: None,
        };
        let step = wandb_step(&report, 1000.0);
        let log: serde_json::Value =
            serde_json::from_str(&step.original_format().to_string()).unwrap();
        assert_eq!(
            log,
            serde_json::json!({
                "timestamp": 1000.0,
                "pages": [5, 9],
                "uids": [1, 2],
                "uid_data": {
                    "1": {"uid": 1, "block": 40, "average_loss": 3.5, "win_rate": 1.0, "win_total": 2, "weight": 0.75},
                    "2": {"uid": 2, "block": null, "average_loss": null, "win_rate": 0.0, "win_total": 0, "weight": 0.25}
                }
            })
        );
        assert_eq!(step.global_step, 4);
        assert_eq!(step.block, 120);
    }

    #[test]
    fn refusal_reasons_fold_into_few_words() {
        assert_eq!(refusal_kind("hash mismatch: expected ab"), "hash");
        assert_eq!(
            refusal_kind("commitment is not a model id: x"),
            "commitment"
        );
        assert_eq!(
            refusal_kind("186000000 parameters, over the limit"),
            "parameters"
        );
        assert_eq!(
            refusal_kind("repo of 9000000000 bytes is over 5000000000"),
            "size"
        );
        assert_eq!(refusal_kind("connection reset"), "other");
    }
}
