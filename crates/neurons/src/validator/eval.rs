//! The eval loop: steps of evaluation and scoring, and weight setting.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pretrain_core::constants::{SEQUENCE_LENGTH, WEIGHTS_VERSION_KEY};
use pretrain_core::scoring::{JsonF64, StepInput, Uid};
use pretrain_core::{weights_for_emit, HotkeyAddress};
use serde::Serialize;
use thiserror::Error;
use tracing::{error, info, warn};

use super::worker::{evaluate_models, ModelJob};
use super::Shared;

/// Why a step could not run (it is tried again later).
#[derive(Debug, Error)]
pub enum StepError {
    /// The pages could not be fetched or tokenized.
    #[error("loading pages {pages:?}")]
    Data {
        /// The pages drawn.
        pages: Vec<u64>,
        /// What went wrong.
        #[source]
        source: pretrain_data::DataError,
    },
    /// The pages did not arrive within the step's data limit.
    #[error("loading pages {pages:?}: timed out after {limit:?}")]
    DataTimeout {
        /// The pages drawn.
        pages: Vec<u64>,
        /// The limit.
        limit: Duration,
    },
    /// The pages held less than one batch.
    #[error("pages {0:?} hold less than one batch of tokens")]
    NoBatches(Vec<u64>),
    /// The scoring inputs did not line up (a bug).
    #[error("scoring")]
    Scoring(#[from] pretrain_core::scoring::ScoringError),
}

/// One uid's line of a step.
#[derive(Debug, Clone, Serialize)]
pub struct UidReport {
    /// The uid.
    pub uid: Uid,
    /// Its hotkey.
    pub hotkey: String,
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
    /// Moving-average weight after the step.
    pub weight: f32,
    /// Why it scored +inf, if it did.
    pub error: Option<String>,
}

/// The line appended to `metrics.jsonl` after every step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Steps completed including this one.
    pub step: u64,
    /// Block of the metagraph the step used.
    pub block: u64,
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
    /// All weights after the step.
    pub weights: Vec<f32>,
    /// Uids kept for the next step.
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
#[derive(Debug, Clone, Serialize)]
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

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::INFINITY
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// One step. `Ok(None)` when there is nothing to evaluate.
pub async fn run_step(shared: &Shared) -> Result<Option<StepReport>, StepError> {
    let started = Instant::now();
    let cfg = &shared.config;
    let comp = cfg.competition;
    let state = shared.update_state(|s| {
        let pending = std::mem::take(&mut s.pending_uids);
        s.uids_to_eval.extend(pending);
        s.clone()
    });
    let graph = shared.metagraph_snapshot();
    let uids: Vec<Uid> = state
        .uids_to_eval
        .iter()
        .copied()
        .filter(|&u| usize::from(u) < graph.neurons.len())
        .collect();
    if uids.is_empty() {
        return Ok(None);
    }

    let seed = pretrain_data::random_seed();
    let pages = pretrain_data::sample_pages(seed, shared.source.page_range(), comp.pages_per_eval);
    info!(seed, ?pages, uids = ?uids, "step {}: loading pages", state.step + 1);
    // One limit per page fetched, as each is one dataset call.
    let data_limit = cfg.call_timeout * (pages.len().max(1) as u32);
    let batches = tokio::time::timeout(
        data_limit,
        pretrain_data::load_batches(
            shared.source.as_ref(),
            &shared.tokenizer,
            &pages,
            comp.batch_size,
            SEQUENCE_LENGTH,
        ),
    )
    .await
    .map_err(|_| StepError::DataTimeout {
        pages: pages.clone(),
        limit: data_limit,
    })?
    .map_err(|source| StepError::Data {
        pages: pages.clone(),
        source,
    })?;
    if batches.is_empty() {
        return Err(StepError::NoBatches(pages));
    }
    let data_s = started.elapsed().as_secs_f64();

    let mut jobs = Vec::new();
    let mut errors: BTreeMap<Uid, String> = BTreeMap::new();
    let mut hotkeys = BTreeMap::new();
    let mut models = BTreeMap::new();
    for &uid in &uids {
        let hotkey = graph.neurons[usize::from(uid)].hotkey.clone();
        // A hotkey that is no address was never tracked (the update loop refuses it).
        let address = hotkey.parse::<HotkeyAddress>().ok();
        match address
            .as_ref()
            .and_then(|a| state.tracked.get(a).map(|m| (a, m)))
        {
            Some((address, meta)) => match shared.store.model_path(address, &meta.id) {
                Ok(dir) => {
                    jobs.push(ModelJob { uid, dir });
                    models.insert(uid, meta.clone());
                }
                Err(e) => {
                    errors.insert(
                        uid,
                        format!("no usable model path: {}", crate::error_chain(&e)),
                    );
                }
            },
            None => {
                let why = address
                    .as_ref()
                    .and_then(|a| state.refused.get(a))
                    .map(|r| format!("refused: {}", r.reason))
                    .unwrap_or_else(|| "no valid model committed".into());
                errors.insert(uid, why);
            }
        }
        hotkeys.insert(uid, hotkey);
    }
    let eval_started = Instant::now();
    let spec = Arc::new(cfg.worker.clone());
    let results = evaluate_models(spec, jobs, &batches, cfg.eval_workers).await;
    let eval_s = eval_started.elapsed().as_secs_f64();

    let n_batches = batches.len();
    let mut losses = Vec::with_capacity(uids.len());
    let mut blocks = Vec::with_capacity(uids.len());
    for &uid in &uids {
        let l = match results.get(&uid) {
            Some(Ok(l)) => l.clone(),
            Some(Err(reason)) => {
                errors.insert(uid, reason.clone());
                vec![f64::INFINITY; n_batches]
            }
            None => {
                errors.entry(uid).or_insert_with(|| "not evaluated".into());
                vec![f64::INFINITY; n_batches]
            }
        };
        losses.push(l);
        // As the original: the block of tracked metadata, +inf (None) without.
        blocks.push(models.get(&uid).map(|m| m.block));
    }
    let input = StepInput {
        n_total_uids: graph.neurons.len(),
        uids: uids.clone(),
        n_batches,
        epsilon: comp.epsilon,
        temperature: comp.temperature,
        alpha: comp.alpha,
        sample_min: comp.sample_min,
        blocks: blocks.clone(),
        losses: losses.clone(),
        prev_weights: state.weights.clone(),
    };
    let out = input.run()?;
    let step = shared.update_state(|s| {
        s.weights = out.weights.clone();
        s.uids_to_eval = out.uids_to_eval_next.iter().copied().collect();
        s.step += 1;
        s.step
    });

    let uid_reports: Vec<UidReport> = uids
        .iter()
        .enumerate()
        .map(|(k, &uid)| UidReport {
            uid,
            hotkey: hotkeys.get(&uid).cloned().unwrap_or_default(),
            model: models.get(&uid).map(|m| m.id.to_compressed_str()),
            block: blocks[k],
            losses: losses[k].iter().map(|&l| JsonF64(l)).collect(),
            mean_loss: JsonF64(mean(&losses[k])),
            wins: out.stats.wins[k],
            win_rate: out.stats.win_rate[k],
            weight: out.weights.get(usize::from(uid)).copied().unwrap_or(0.0),
            error: errors.get(&uid).cloned(),
        })
        .collect();
    log_table(step, &uid_reports);
    Ok(Some(StepReport {
        step,
        block: graph.block,
        seed,
        pages,
        n_batches,
        n_total_uids: graph.neurons.len(),
        uids: uid_reports,
        weights: out.weights,
        uids_to_eval_next: out.uids_to_eval_next,
        data_s,
        eval_s,
        step_s: started.elapsed().as_secs_f64(),
        weights_set: None,
    }))
}

fn log_table(step: u64, rows: &[UidReport]) {
    let mut t = format!(
        "step {step}\n{:>5}  {:<48}  {:>8}  {:>10}  {:>8}  note",
        "uid", "hotkey", "win_rate", "mean_loss", "weight"
    );
    for r in rows {
        t.push_str(&format!(
            "\n{:>5}  {:<48}  {:>8.4}  {:>10.4}  {:>8.4}  {}",
            r.uid,
            r.hotkey,
            r.win_rate,
            r.mean_loss.0,
            r.weight,
            r.error.as_deref().unwrap_or("")
        ));
    }
    info!("{t}");
}

/// Sets the weights when `blocks_per_epoch` blocks passed since the last
/// time (or the start); returns the call made, if any.
pub async fn maybe_set_weights(shared: &Shared) -> Option<WeightsSet> {
    let cfg = &shared.config;
    let hotkey = shared.hotkey.as_ref()?;
    if !cfg.set_weights {
        return None;
    }
    let block = shared.metagraph_snapshot().block;
    let state = shared.state_snapshot();
    let last = state.last_epoch_block.unwrap_or(block);
    if block.saturating_sub(last) < cfg.competition.blocks_per_epoch {
        info!(
            "{} / {} blocks until the next weights",
            block.saturating_sub(last),
            cfg.competition.blocks_per_epoch
        );
        return None;
    }
    let (uids, values) = weights_for_emit(&state.weights);
    let call = shared
        .chain
        .set_weights(hotkey, cfg.netuid, &uids, &values, WEIGHTS_VERSION_KEY);
    let error = match tokio::time::timeout(cfg.call_timeout, call).await {
        Ok(Ok(())) => {
            info!(block, ?uids, ?values, "weights set");
            None
        }
        Ok(Err(e)) => {
            let e = crate::error_chain(&e);
            warn!("set_weights failed: {e}");
            Some(e)
        }
        Err(_) => {
            warn!("set_weights did not answer within {:?}", cfg.call_timeout);
            Some(format!("timed out after {:?}", cfg.call_timeout))
        }
    };
    // As the original, the epoch restarts whether or not the call landed.
    shared.update_state(|s| s.last_epoch_block = Some(block));
    Some(WeightsSet {
        block,
        uids,
        values,
        error,
    })
}

/// Steps until `max_steps` (forever without); never returns early on errors.
pub async fn eval_loop(shared: Arc<Shared>) {
    let mut done = 0u64;
    // The first step waits (within a step's limit) for the update loop to
    // have looked at every uid, so it scores all models, not the first few.
    let waiting = Instant::now();
    while !shared.first_pass_done.load(Ordering::Relaxed)
        && waiting.elapsed() < shared.config.step_timeout
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        if shared.config.max_steps.is_some_and(|m| done >= m) {
            return;
        }
        let limit = shared.config.step_timeout;
        let outcome = tokio::time::timeout(limit, run_step(&shared)).await;
        shared.sync_metagraph().await;
        match outcome {
            Ok(Ok(Some(mut report))) => {
                done += 1;
                report.weights_set = maybe_set_weights(&shared).await;
                match serde_json::to_string(&report) {
                    Ok(line) => {
                        if let Err(e) =
                            pretrain_core::fsio::append_line(&shared.metrics_path(), &line)
                        {
                            warn!("cannot append to {}: {e}", shared.metrics_path().display());
                        }
                    }
                    Err(e) => warn!("cannot serialise the step report: {e}"),
                }
            }
            Ok(Ok(None)) => {
                info!(
                    "no models to evaluate yet; waiting {:?}",
                    shared.config.idle_wait
                );
                tokio::time::sleep(shared.config.idle_wait).await;
            }
            Ok(Err(e)) => {
                error!(
                    "step failed: {}; retrying in {:?}",
                    crate::error_chain(&e),
                    shared.config.idle_wait
                );
                tokio::time::sleep(shared.config.idle_wait).await;
            }
            Err(_) => {
                error!("step exceeded its limit of {limit:?}; abandoned (children killed)");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
