//! The eval loop: steps of evaluation and scoring, and weight setting.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pretrain_chain::Metagraph;
use pretrain_core::constants::{SEQUENCE_LENGTH, WEIGHTS_VERSION_KEY};
use pretrain_core::rules::{
    CompetitionSpec, CompetitionState, EvaluatedStep, Protocol, ScheduleEntry, StepRules,
};
use pretrain_core::scoring::{JsonF64, Uid};
use pretrain_core::{weights_for_emit, HotkeyAddress, Tunables};
use thiserror::Error;
use tracing::{error, info, warn};

use super::worker::{evaluate_step, HashCheck, ModelJob};
use super::{Shared, TrackedModel, ValidatorState};

/// Upstream's choice of a competition's next evaluation set (now in core).
pub use pretrain_core::rules::keep_for_next_step;

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
    /// The schedule has no entry now, or the competition scoring refused its inputs.
    #[error("competition rules")]
    Rules(#[from] pretrain_core::rules::RulesError),
}

impl From<pretrain_core::rules::ScoreError> for StepError {
    fn from(e: pretrain_core::rules::ScoreError) -> Self {
        match e {
            pretrain_core::rules::ScoreError::Scoring(e) => StepError::Scoring(e),
            pretrain_core::rules::ScoreError::Rules(e) => StepError::Rules(e),
        }
    }
}

pub use pretrain_core::metrics::{StepReport, UidReport, WeightsSet};

/// Draws `pages_per_eval` pages (seeded; seed logged) and tokenizes them
/// into batches of `sequence_length` tokens, within the data limit.
async fn load_step_batches(
    shared: &Shared,
    step: u64,
    uids: &[Uid],
    sequence_length: usize,
) -> Result<(u64, Vec<u64>, Vec<Vec<Vec<u32>>>), StepError> {
    let cfg = &shared.config;
    let comp = cfg.competition;
    let seed = pretrain_data::random_seed();
    let pages = pretrain_data::sample_pages(seed, shared.source.page_range(), comp.pages_per_eval);
    info!(seed, ?pages, uids = ?uids, "step {step}: loading pages");
    // One limit per page fetched, as each is one dataset call.
    let data_limit = cfg.call_timeout * (pages.len().max(1) as u32);
    let batches = tokio::time::timeout(
        data_limit,
        pretrain_data::load_batches(
            shared.source.as_ref(),
            &shared.tokenizer,
            &pages,
            comp.batch_size,
            sequence_length,
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
    Ok((seed, pages, batches))
}

/// The models of a step and what is known about each uid before evaluation.
#[derive(Default)]
struct StepModels {
    jobs: Vec<ModelJob>,
    errors: BTreeMap<Uid, String>,
    hotkeys: BTreeMap<Uid, String>,
    models: BTreeMap<Uid, TrackedModel>,
}

fn step_models(
    shared: &Shared,
    state: &ValidatorState,
    graph: &Metagraph,
    uids: &[Uid],
) -> StepModels {
    let mut m = StepModels::default();
    for &uid in uids {
        // Callers filter uids against this metagraph; a uid it lacks anyway
        // scores +inf with a reason instead of taking the validator down.
        let Some(hotkey) = hotkey_of(graph, uid) else {
            m.errors.insert(uid, "not in the metagraph".into());
            m.hotkeys.insert(uid, String::new());
            continue;
        };
        // A hotkey that is no address was never tracked (the update loop refuses it).
        let address = hotkey.parse::<HotkeyAddress>().ok();
        match address
            .as_ref()
            .and_then(|a| state.tracked.get(a).map(|t| (a, t)))
        {
            Some((address, tracked)) => match shared.store.model_path(address, &tracked.id) {
                Ok(dir) => {
                    let check = tracked.id.hash.clone().map(|hash| HashCheck {
                        hash: hash.into(),
                        hotkey: Some(address.to_string()),
                    });
                    m.jobs.push(ModelJob { uid, dir, check });
                    m.models.insert(uid, tracked.clone());
                }
                Err(e) => {
                    m.errors.insert(
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
                m.errors.insert(uid, why);
            }
        }
        m.hotkeys.insert(uid, hotkey);
    }
    m
}

/// The hotkey of `uid` in `graph` (`None`: the metagraph has no such uid).
fn hotkey_of(graph: &Metagraph, uid: Uid) -> Option<String> {
    graph
        .neurons
        .get(usize::from(uid))
        .map(|n| n.hotkey.clone())
}

/// Each uid's losses from the workers' results (`+inf` for every batch
/// of a model that could not be evaluated; the reason goes to `errors`).
fn step_losses(
    uids: &[Uid],
    results: &BTreeMap<Uid, Result<Vec<f64>, String>>,
    errors: &mut BTreeMap<Uid, String>,
    n_batches: usize,
) -> Vec<Vec<f64>> {
    uids.iter()
        .map(|uid| match results.get(uid) {
            Some(Ok(l)) => l.clone(),
            Some(Err(reason)) => {
                errors.insert(*uid, reason.clone());
                vec![f64::INFINITY; n_batches]
            }
            None => {
                errors.entry(*uid).or_insert_with(|| "not evaluated".into());
                vec![f64::INFINITY; n_batches]
            }
        })
        .collect()
}

/// What evaluating a step's uids gave.
struct Evaluated {
    seed: u64,
    pages: Vec<u64>,
    n_batches: usize,
    /// Per uid (in the order asked), a loss per batch.
    losses: Vec<Vec<f64>>,
    errors: BTreeMap<Uid, String>,
    hotkeys: BTreeMap<Uid, String>,
    models: BTreeMap<Uid, TrackedModel>,
    /// Seconds from the step's start until the batches were ready.
    data_s: f64,
    eval_s: f64,
}

/// The part of a step both protocols share: pages drawn and tokenized at
/// `sequence_length`, then every uid's model evaluated on the same batches.
async fn evaluate_uids(
    shared: &Shared,
    state: &ValidatorState,
    graph: &Metagraph,
    uids: &[Uid],
    sequence_length: usize,
    started: Instant,
) -> Result<Evaluated, StepError> {
    let cfg = &shared.config;
    let (seed, pages, batches) =
        load_step_batches(shared, state.step + 1, uids, sequence_length).await?;
    let data_s = started.elapsed().as_secs_f64();
    let StepModels {
        jobs,
        mut errors,
        hotkeys,
        models,
    } = step_models(shared, state, graph, uids);
    let eval_started = Instant::now();
    let worker = Arc::new(cfg.worker.clone());
    let (backend, step) = (&cfg.backend, state.step + 1);
    let results = evaluate_step(backend, worker, step, jobs, &batches, cfg.eval_workers).await;
    let eval_s = eval_started.elapsed().as_secs_f64();
    let n_batches = batches.len();
    let losses = step_losses(uids, &results, &mut errors, n_batches);
    Ok(Evaluated {
        seed,
        pages,
        n_batches,
        losses,
        errors,
        hotkeys,
        models,
        data_s,
        eval_s,
    })
}

/// What a step evaluates, and under which rules it is scored.
struct Plan {
    /// The state once the pending uids joined the evaluation set.
    state: ValidatorState,
    /// The uids evaluated, ascending.
    uids: Vec<Uid>,
    /// Tokens per evaluated sequence.
    sequence_length: usize,
    /// Under the competitions, the one whose turn it is and its entry
    /// (`None`: the `sn9-2024-01` rules).
    competition: Option<(CompetitionSpec, ScheduleEntry)>,
}

impl Plan {
    /// The protocol's scoring of this step over `s`'s state.
    fn rules<'a>(
        &'a self,
        s: &'a mut ValidatorState,
        tunables: &'a Tunables,
        num_neurons: usize,
    ) -> StepRules<'a> {
        let ValidatorState {
            weights,
            uids_to_eval,
            competitions,
            ..
        } = s;
        match &self.competition {
            None => StepRules::Sn9Rules2024 {
                tunables,
                weights,
                uids_to_eval,
            },
            Some((spec, entry)) => StepRules::Competitions {
                spec,
                entry,
                state: competitions.get_or_insert_with(|| CompetitionState::new(num_neurons)),
                weights,
            },
        }
    }
}

/// Under `sn9-2024-01`: every uid of the evaluation set, joined by the
/// uids whose model changed.
fn plan_sn9(shared: &Shared, graph: &Metagraph) -> Option<Plan> {
    let state = shared.update_state(|s| {
        let pending = std::mem::take(&mut s.pending_uids);
        s.uids_to_eval.extend(pending);
        s.clone()
    });
    let uids: Vec<Uid> = state
        .uids_to_eval
        .iter()
        .copied()
        .filter(|&u| usize::from(u) < graph.neurons.len())
        .collect();
    (!uids.is_empty()).then_some(Plan {
        state,
        uids,
        sequence_length: SEQUENCE_LENGTH,
        competition: None,
    })
}

/// The step the competitions add: the competition whose turn it is, and
/// its evaluation set joined by its models that changed.
fn plan_competition_turn(shared: &Shared, graph: &Metagraph) -> Result<Option<Plan>, StepError> {
    let entry = shared.config.schedule.active_entry(graph.block)?.clone();
    // The turn advances on every attempt, so that a competition without
    // models does not hold up the others.
    let turn = shared.update_state(|s| {
        let competitions = s
            .competitions
            .get_or_insert_with(|| CompetitionState::new(graph.neurons.len()));
        competitions.turn += 1;
        competitions.turn - 1
    });
    let spec = entry.competition_for_step(turn).clone();
    let c = spec.id;
    if let Err(why) = spec.support() {
        info!(
            "turn {turn}: competition {c} ({}) is not evaluated: {why}",
            spec.name
        );
        return Ok(None);
    }
    let sequence_length = spec.constraints.sequence_length.unwrap_or(SEQUENCE_LENGTH);
    // Its uids: the eval set joined by the models that changed, keeping only
    // uids whose hotkey's tracked model is in this competition.
    let in_competition = |s: &ValidatorState, uid: Uid| {
        graph
            .neurons
            .get(usize::from(uid))
            .and_then(|n| n.hotkey.parse::<HotkeyAddress>().ok())
            .and_then(|hk| s.tracked.get(&hk).map(|t| t.competition == Some(c)))
            .unwrap_or(false)
    };
    let state = shared.update_state(|s| {
        let snapshot = s.clone();
        if let Some(competitions) = s.competitions.as_mut() {
            let pending = competitions.pending_uids.remove(&c).unwrap_or_default();
            let set = competitions.uids_to_eval.entry(c).or_default();
            set.extend(pending);
            set.retain(|&u| in_competition(&snapshot, u));
        }
        s.clone()
    });
    let uids: Vec<Uid> = state
        .competitions
        .as_ref()
        .and_then(|l| l.uids_to_eval.get(&c))
        .map(|set| set.iter().copied().collect())
        .unwrap_or_default();
    if uids.is_empty() {
        info!(
            "turn {turn}: competition {c} ({}) has no models to evaluate",
            spec.name
        );
        return Ok(None);
    }
    Ok(Some(Plan {
        state,
        uids,
        sequence_length,
        competition: Some((spec, entry)),
    }))
}

/// One step. `Ok(None)` when there is nothing to evaluate.
pub async fn run_step(shared: &Shared) -> Result<Option<StepReport>, StepError> {
    let started = Instant::now();
    let graph = shared.metagraph_snapshot();
    // The competitions add a step before the evaluation: whose turn it is.
    let plan = match shared.config.protocol() {
        Protocol::Sn9Rules2024 => plan_sn9(shared, &graph),
        Protocol::Competitions => plan_competition_turn(shared, &graph)?,
    };
    let Some(plan) = plan else {
        return Ok(None);
    };
    let uids = &plan.uids;
    let Evaluated {
        seed,
        pages,
        n_batches,
        losses,
        errors,
        hotkeys,
        models,
        data_s,
        eval_s,
    } = evaluate_uids(
        shared,
        &plan.state,
        &graph,
        uids,
        plan.sequence_length,
        started,
    )
    .await?;
    // As the original: the block of tracked metadata, +inf (None) without.
    let blocks: Vec<Option<u64>> = uids
        .iter()
        .map(|uid| models.get(uid).map(|m| m.block))
        .collect();
    let evaluated = EvaluatedStep {
        block: graph.block,
        n_total_uids: graph.neurons.len(),
        n_batches,
        uids,
        losses: &losses,
        blocks: &blocks,
    };
    let tunables = shared.config.competition;
    let (step, scored) = shared.update_state(|s| {
        let scored = plan
            .rules(s, &tunables, graph.neurons.len())
            .score(&evaluated)?;
        s.step += 1;
        Ok::<_, StepError>((s.step, scored))
    })?;

    let competition = plan.competition.as_ref().map(|(spec, _)| spec.id);
    let uid_reports: Vec<UidReport> = uids
        .iter()
        .enumerate()
        .map(|(k, &uid)| UidReport {
            uid,
            hotkey: hotkeys.get(&uid).cloned().unwrap_or_default(),
            competition,
            model: models.get(&uid).map(TrackedModel::model_str),
            block: blocks[k],
            losses: losses[k].iter().map(|&l| JsonF64(l)).collect(),
            mean_loss: JsonF64(scored.mean_loss[k]),
            wins: scored.wins[k],
            win_rate: scored.win_rate[k],
            weight: scored.weights.get(usize::from(uid)).copied().unwrap_or(0.0),
            error: errors.get(&uid).cloned(),
        })
        .collect();
    if let Some((spec, _)) = &plan.competition {
        info!(competition = spec.id, name = %spec.name, competitive = ?scored.competitive_uids, "step {step}: competition {}", spec.id);
    }
    log_table(step, &uid_reports);
    Ok(Some(StepReport {
        step,
        block: graph.block,
        competition,
        seed,
        pages,
        n_batches,
        n_total_uids: graph.neurons.len(),
        uids: uid_reports,
        weights: scored.weights,
        uids_to_eval_next: scored.uids_to_eval_next,
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
            // From the chain and from model files: escaped, so nothing in
            // them can forge a line or drive the terminal.
            pretrain_core::escape::escape(&r.hotkey),
            r.win_rate,
            r.mean_loss.0,
            r.weight,
            pretrain_core::escape::escape(r.error.as_deref().unwrap_or(""))
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
        .submit_weights(hotkey, cfg.netuid, &uids, &values, WEIGHTS_VERSION_KEY);
    let error = match tokio::time::timeout(cfg.call_timeout, call).await {
        Ok(Ok(pretrain_chain::WeightsSubmission::Set { .. })) => {
            info!(block, ?uids, ?values, "weights set");
            shared
                .observers
                .weights(pretrain_telemetry::prometheus::Outcome::Set);
            None
        }
        Ok(Ok(pretrain_chain::WeightsSubmission::Committed {
            block: at,
            reveal_round,
            reveal_block,
        })) => {
            // Commit-reveal: the weights count only once the chain opens the commit; check
            // then, so an operator sees in the log whether they applied.
            info!(
                block = at,
                reveal_round,
                reveal_block,
                ?uids,
                ?values,
                "weights committed (commit-reveal); they apply at the reveal"
            );
            shared
                .observers
                .weights(pretrain_telemetry::prometheus::Outcome::Committed);
            let sent: Vec<(u16, u16)> = uids.iter().copied().zip(values.iter().copied()).collect();
            tokio::spawn(pretrain_chain::confirm_reveal(
                Arc::clone(&shared.chain),
                cfg.netuid,
                hotkey.ss58.clone(),
                sent,
                reveal_block,
                3,
                Duration::from_secs(2),
            ));
            None
        }
        Ok(Err(e)) => {
            let e = crate::error_chain(&e);
            warn!("set_weights failed: {}", pretrain_core::escape::Escaped(&e));
            shared
                .observers
                .weights(pretrain_telemetry::prometheus::Outcome::Failed);
            Some(e)
        }
        Err(_) => {
            warn!("set_weights did not answer within {:?}", cfg.call_timeout);
            shared
                .observers
                .weights(pretrain_telemetry::prometheus::Outcome::Failed);
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
                shared.observers.step(&report).await;
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
                    pretrain_core::escape::Escaped(&crate::error_chain(&e)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_beyond_the_metagraph_has_no_hotkey_instead_of_a_panic() {
        let neuron = |uid: u16| pretrain_chain::Neuron {
            uid,
            hotkey: format!("hk{uid}"),
            coldkey: String::new(),
            stake: 0.0,
            incentive: 0.0,
            validator_permit: false,
        };
        let graph = Metagraph {
            netuid: 9,
            block: 0,
            neurons: vec![neuron(0), neuron(1)],
        };
        assert_eq!(hotkey_of(&graph, 1).as_deref(), Some("hk1"));
        assert_eq!(hotkey_of(&graph, 2), None);
        assert_eq!(hotkey_of(&graph, u16::MAX), None);
    }
}
