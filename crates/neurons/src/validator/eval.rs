//! The eval loop: steps of evaluation and scoring, and weight setting.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pretrain_chain::Metagraph;
use pretrain_core::constants::{SEQUENCE_LENGTH, WEIGHTS_VERSION_KEY};
use pretrain_core::rules::{
    CompetitionSpec, CompetitionState, EvaluatedStep, Protocol, ScheduleEntry, ScoredStep,
    StepRules,
};
use pretrain_core::scoring::{JsonF64, Uid};
use pretrain_core::{weights_for_emit, CompetitionId, HotkeyAddress, Tunables};
use thiserror::Error;
use tracing::{error, info, warn};

use super::worker::{evaluate_step, HashCheck, JobResult, ModelJob};
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
    /// Every model of the step was left unevaluated by the validator's own
    /// failures: nothing is scored, no weights come of it, the state stays.
    #[error("no model could be evaluated, for the validator's own reasons (no weights set, state unchanged): {}", show_reasons(.0))]
    NothingEvaluated(BTreeMap<Uid, String>),
}

fn show_reasons(reasons: &BTreeMap<Uid, String>) -> String {
    reasons
        .iter()
        .map(|(uid, why)| format!("uid {uid}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
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

/// The uids scored, their losses per batch, and the uids deferred with why.
type ScoredUids = (Vec<Uid>, Vec<Vec<f64>>, BTreeMap<Uid, String>);

/// The uids scored this step and each one's losses, from the workers'
/// results: `+inf` for every batch of a model that failed on its own (the
/// reason goes to `errors`); a model the validator could not evaluate is
/// left out of the step (its reason goes to `deferred`), so it keeps its
/// earlier standing. `Err` when no model ran at all and some were deferred.
fn step_losses(
    uids: &[Uid],
    results: &BTreeMap<Uid, JobResult>,
    errors: &mut BTreeMap<Uid, String>,
    n_batches: usize,
) -> Result<ScoredUids, StepError> {
    let mut deferred = BTreeMap::new();
    let mut scored = Vec::new();
    let mut losses = Vec::new();
    for &uid in uids {
        let l = match results.get(&uid) {
            Some(JobResult::Losses(l)) => l.clone(),
            Some(JobResult::Failed(reason)) => {
                errors.insert(uid, reason.clone());
                vec![f64::INFINITY; n_batches]
            }
            Some(JobResult::NotEvaluated(reason)) => {
                deferred.insert(uid, reason.clone());
                continue;
            }
            None => {
                errors.entry(uid).or_insert_with(|| "not evaluated".into());
                vec![f64::INFINITY; n_batches]
            }
        };
        scored.push(uid);
        losses.push(l);
    }
    // Uids without a job (refused for their content) alone would take all
    // the weight from models that were not run: no step then.
    let ran = results
        .values()
        .any(|r| !matches!(r, JobResult::NotEvaluated(_)));
    if !deferred.is_empty() && !ran {
        return Err(StepError::NothingEvaluated(deferred));
    }
    Ok((scored, losses, deferred))
}

/// Puts back the standing of the `deferred` uids in `weights` (what they
/// had in `prev`), scaling the others so that the total stays as scored:
/// a model the validator could not evaluate neither gains nor loses.
fn keep_standing(weights: &mut [f32], prev: &[f32], deferred: &BTreeMap<Uid, String>) {
    let total: f32 = weights.iter().sum();
    let is_deferred = |k: usize| u16::try_from(k).is_ok_and(|u| deferred.contains_key(&u));
    let mut kept = 0f32;
    let mut others = 0f32;
    for (k, w) in weights.iter_mut().enumerate() {
        if is_deferred(k) {
            *w = prev.get(k).copied().unwrap_or(0.0);
            kept += *w;
        } else {
            others += *w;
        }
    }
    let room = total - kept;
    if others > 0.0 && room >= 0.0 {
        let scale = room / others;
        for (k, w) in weights.iter_mut().enumerate() {
            if !is_deferred(k) {
                *w *= scale;
            }
        }
    }
}

/// What evaluating a step's uids gave.
struct Evaluated {
    seed: u64,
    pages: Vec<u64>,
    n_batches: usize,
    /// The uids scored: those asked, less the deferred.
    uids: Vec<Uid>,
    /// Per uid scored (in the order asked), a loss per batch.
    losses: Vec<Vec<f64>>,
    /// The uids the validator could not evaluate, and why.
    deferred: BTreeMap<Uid, String>,
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
    let (uids, losses, deferred) = step_losses(uids, &results, &mut errors, n_batches)?;
    Ok(Evaluated {
        seed,
        pages,
        n_batches,
        uids,
        losses,
        deferred,
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
    /// The uids this plan moved from pending into the evaluation set (put
    /// back when nothing could be evaluated).
    moved: std::collections::BTreeSet<Uid>,
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
    let (state, moved) = shared.update_state(|s| {
        let pending = std::mem::take(&mut s.pending_uids);
        let moved = pending
            .into_iter()
            .filter(|u| s.uids_to_eval.insert(*u))
            .collect();
        (s.clone(), moved)
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
        moved,
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
    let (state, moved) = shared.update_state(|s| {
        let snapshot = s.clone();
        let mut moved = std::collections::BTreeSet::new();
        if let Some(competitions) = s.competitions.as_mut() {
            let pending = competitions.pending_uids.remove(&c).unwrap_or_default();
            let set = competitions.uids_to_eval.entry(c).or_default();
            moved = pending.into_iter().filter(|u| set.insert(*u)).collect();
            set.retain(|&u| in_competition(&snapshot, u));
        }
        (s.clone(), moved)
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
        moved,
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
    let evaluated = evaluate_uids(
        shared,
        &plan.state,
        &graph,
        &plan.uids,
        plan.sequence_length,
        started,
    )
    .await;
    if let Err(StepError::NothingEvaluated(_)) = &evaluated {
        put_back(shared, &plan);
    }
    let ev = evaluated?;
    warn_deferred(plan.state.step + 1, &ev.deferred);
    // As the original: the block of tracked metadata, +inf (None) without.
    let blocks: Vec<Option<u64>> = ev
        .uids
        .iter()
        .map(|uid| ev.models.get(uid).map(|m| m.block))
        .collect();
    let (step, scored) = score_step(shared, &plan, &graph, &ev, &blocks)?;
    let competition = plan.competition.as_ref().map(|(spec, _)| spec.id);
    let uid_reports = uid_reports(&ev, &blocks, &scored, competition);
    if let Some((spec, _)) = &plan.competition {
        info!(competition = spec.id, name = %spec.name, competitive = ?scored.competitive_uids, "step {step}: competition {}", spec.id);
    }
    log_table(step, &uid_reports);
    Ok(Some(StepReport {
        step,
        block: graph.block,
        competition,
        seed: ev.seed,
        pages: ev.pages,
        n_batches: ev.n_batches,
        n_total_uids: graph.neurons.len(),
        uids: uid_reports,
        weights: scored.weights,
        uids_to_eval_next: scored.uids_to_eval_next,
        data_s: ev.data_s,
        eval_s: ev.eval_s,
        step_s: started.elapsed().as_secs_f64(),
        weights_set: None,
    }))
}

/// Says which models step `step` could not evaluate (the validator's own
/// failures), once per step.
fn warn_deferred(step: u64, deferred: &BTreeMap<Uid, String>) {
    if !deferred.is_empty() {
        warn!(
            deferred = ?deferred.keys().collect::<Vec<_>>(),
            "step {}: {} model(s) not evaluated (the validator's own failures; they keep their standing): {}",
            step,
            deferred.len(),
            pretrain_core::escape::Escaped(&show_reasons(deferred))
        );
    }
}

/// Scores the evaluated uids by the plan's rules and counts the step, in
/// one state update; the deferred keep their standing and are evaluated next.
fn score_step(
    shared: &Shared,
    plan: &Plan,
    graph: &Metagraph,
    ev: &Evaluated,
    blocks: &[Option<u64>],
) -> Result<(u64, ScoredStep), StepError> {
    let evaluated = EvaluatedStep {
        block: graph.block,
        n_total_uids: graph.neurons.len(),
        n_batches: ev.n_batches,
        uids: &ev.uids,
        losses: &ev.losses,
        blocks,
    };
    let deferred = &ev.deferred;
    let tunables = shared.config.competition;
    shared.update_state(|s| {
        let prev_weights = s.weights.clone();
        let competition = plan.competition.as_ref().map(|(spec, _)| spec.id);
        let prev_competition: Option<Vec<f32>> = competition.and_then(|c| {
            s.competitions
                .as_ref()
                .and_then(|l| l.tracker.competition_weights(c))
                .map(<[f32]>::to_vec)
        });
        let mut scored = plan
            .rules(s, &tunables, graph.neurons.len())
            .score(&evaluated)?;
        if !deferred.is_empty() {
            keep_deferred_standing(s, plan, deferred, &prev_weights, prev_competition);
            scored.weights.clone_from(&s.weights);
            scored.uids_to_eval_next.extend(deferred.keys().copied());
            scored.uids_to_eval_next.sort_unstable();
            scored.uids_to_eval_next.dedup();
        }
        s.step += 1;
        Ok::<_, StepError>((s.step, scored))
    })
}

/// The step's line per evaluated uid, in the order evaluated.
fn uid_reports(
    ev: &Evaluated,
    blocks: &[Option<u64>],
    scored: &ScoredStep,
    competition: Option<CompetitionId>,
) -> Vec<UidReport> {
    ev.uids
        .iter()
        .enumerate()
        .map(|(k, &uid)| UidReport {
            uid,
            hotkey: ev.hotkeys.get(&uid).cloned().unwrap_or_default(),
            competition,
            model: ev.models.get(&uid).map(TrackedModel::model_str),
            block: blocks[k],
            losses: ev.losses[k].iter().map(|&l| JsonF64(l)).collect(),
            mean_loss: JsonF64(scored.mean_loss[k]),
            wins: scored.wins[k],
            win_rate: scored.win_rate[k],
            weight: scored.weights.get(usize::from(uid)).copied().unwrap_or(0.0),
            error: ev.errors.get(&uid).cloned(),
        })
        .collect()
}

/// Undoes a plan whose step evaluated nothing: the uids it moved into the
/// evaluation set are pending again, as before the step.
fn put_back(shared: &Shared, plan: &Plan) {
    if plan.moved.is_empty() {
        return;
    }
    shared.update_state(|s| match &plan.competition {
        None => {
            s.uids_to_eval.retain(|u| !plan.moved.contains(u));
            s.pending_uids.extend(plan.moved.iter().copied());
        }
        Some((spec, _)) => {
            if let Some(l) = s.competitions.as_mut() {
                if let Some(set) = l.uids_to_eval.get_mut(&spec.id) {
                    set.retain(|u| !plan.moved.contains(u));
                }
                l.pending_uids
                    .entry(spec.id)
                    .or_default()
                    .extend(plan.moved.iter().copied());
            }
        }
    });
}

/// After scoring, gives the deferred uids back what they had before the
/// step (their weight, and under the competitions their share of the
/// competition's moving average), and keeps them in the evaluation set.
fn keep_deferred_standing(
    s: &mut ValidatorState,
    plan: &Plan,
    deferred: &BTreeMap<Uid, String>,
    prev_weights: &[f32],
    prev_competition: Option<Vec<f32>>,
) {
    match &plan.competition {
        None => {
            keep_standing(&mut s.weights, prev_weights, deferred);
            s.uids_to_eval.extend(deferred.keys().copied());
        }
        Some((spec, entry)) => {
            let Some(l) = s.competitions.as_mut() else {
                return;
            };
            let c = spec.id;
            let n = l.tracker.num_neurons();
            let old = std::mem::replace(
                &mut l.tracker,
                pretrain_core::rules::CompetitionTracker::new(n),
            );
            // The tracker keeps its averages private: rebuilt, each
            // competition recorded once as it stands (a first record is
            // stored as given), this one with the deferred uids put back.
            for (&id, w) in old.all_weights() {
                let mut w = w.clone();
                if id == c {
                    keep_standing(&mut w, prev_competition.as_deref().unwrap_or(&[]), deferred);
                }
                l.tracker.record(id, &w, spec.scoring.alpha);
            }
            l.uids_to_eval
                .entry(c)
                .or_default()
                .extend(deferred.keys().copied());
            s.weights = l.tracker.subnet_weights(&entry.shares());
        }
    }
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
    fn a_model_not_evaluated_is_left_out_and_one_that_failed_scores_inf() {
        let results: BTreeMap<Uid, JobResult> = [
            (1, JobResult::Losses(vec![2.0, 3.0])),
            (2, JobResult::Failed("worker died from signal 9".into())),
            (
                3,
                JobResult::NotEvaluated(
                    "cannot start worker p: Too many open files (os error 24)".into(),
                ),
            ),
        ]
        .into();
        let mut errors = BTreeMap::from([(4, "refused: bad config".to_string())]);
        let (scored, losses, deferred) =
            step_losses(&[1, 2, 3, 4], &results, &mut errors, 2).unwrap();
        assert_eq!(scored, [1, 2, 4]);
        assert_eq!(
            losses,
            [
                vec![2.0, 3.0],
                vec![f64::INFINITY; 2],
                vec![f64::INFINITY; 2]
            ]
        );
        assert_eq!(deferred.keys().copied().collect::<Vec<_>>(), [3]);
        assert_eq!(errors[&2], "worker died from signal 9");
        assert!(!errors.contains_key(&3));
    }

    #[test]
    fn a_step_where_nothing_ran_is_no_step() {
        let results: BTreeMap<Uid, JobResult> = [
            (1, JobResult::NotEvaluated("Slurm refused the job".into())),
            (2, JobResult::NotEvaluated("Slurm refused the job".into())),
        ]
        .into();
        // Uid 3 was refused for its content and has no job: alone, it would
        // take every weight of models that were never run.
        let mut errors = BTreeMap::from([(3, "refused: bad config".to_string())]);
        let e = step_losses(&[1, 2, 3], &results, &mut errors, 2).unwrap_err();
        let StepError::NothingEvaluated(why) = &e else {
            panic!("{e}")
        };
        assert_eq!(why.keys().copied().collect::<Vec<_>>(), [1, 2]);
        let text = e.to_string();
        assert!(text.contains("no weights set"), "{text}");
        assert!(text.contains("uid 2: Slurm refused the job"), "{text}");
        // One model that ran (even one that failed) makes it a step.
        let mut some = results.clone();
        some.insert(4, JobResult::Failed("panic".into()));
        assert!(step_losses(&[1, 2, 3, 4], &some, &mut errors, 2).is_ok());
    }

    #[test]
    fn a_deferred_uid_keeps_its_weight_and_the_others_share_the_rest() {
        // Before: uid 1 held 0.6. The step (without it) scored 0 for it.
        let prev = [0.1f32, 0.6, 0.3];
        let mut scored = [0.5f32, 0.06, 0.44];
        let deferred = BTreeMap::from([(1, "not evaluated".to_string())]);
        keep_standing(&mut scored, &prev, &deferred);
        assert!((scored[1] - 0.6).abs() < 1e-6, "{scored:?}");
        let total: f32 = scored.iter().sum();
        assert!((total - 1.0).abs() < 1e-6, "{scored:?}");
        // The others keep their ratio (0.5 : 0.44) in the 0.4 left.
        assert!((scored[0] - 0.4 * 0.5 / 0.94).abs() < 1e-6, "{scored:?}");
        assert!((scored[2] - 0.4 * 0.44 / 0.94).abs() < 1e-6, "{scored:?}");
        // A uid beyond the earlier weights had none.
        let mut grown = [0.5f32, 0.5, 0.0, 0.0];
        keep_standing(&mut grown, &prev, &BTreeMap::from([(3, String::new())]));
        assert_eq!(grown, [0.5, 0.5, 0.0, 0.0]);
    }

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
