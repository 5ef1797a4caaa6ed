//! Each protocol ([`Protocol`]) in one place: the model id it commits
//! (read and written as chain bytes), which commitments a validator admits,
//! how a step's losses are scored and how weights are kept between steps.
//! Neurons and the CLI call these instead of branching on the protocol; the
//! maths stay in [`crate::scoring`] (`sn9-2024-01`) and [`super::wins`] /
//! [`super::weights`] (the competitions).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::constants::{Tunables, MAX_MODEL_BYTES};
use crate::ids::{ModelHash, RepoIdPart, Unchecked};
use crate::model_id::{
    check_competition_repo_id, CompetitionId, CompetitionModelId, CompetitionModelIdError,
    ModelIdError, RepoIdTooLong,
};
use crate::scoring::{ScoringError, StepInput, Uid};
use crate::{CommitId, ModelId, RepoId};

use super::weights::scatter;
use super::wins::{keep_for_next_step, score_competition, Contender, Wins};
use super::{check, CompetitionSpec, CompetitionTracker, RulesError, Schedule, ScheduleEntry};

pub use super::Protocol;

/// A commitment read by the rules of its protocol, its parts as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Hub namespace.
    pub namespace: Unchecked<RepoIdPart>,
    /// Repo name.
    pub name: Unchecked<RepoIdPart>,
    /// Hub commit (`None`: not given).
    pub commit: Option<Unchecked<CommitId>>,
    /// The hash committed: the raw directory hash (`sn9-2024-01`) or the
    /// hotkey-bound secure hash (competitions).
    pub hash: Option<Unchecked<ModelHash>>,
    /// The competition entered (`None` under `sn9-2024-01`).
    pub competition: Option<CompetitionId>,
}

/// A model id in its protocol's chain format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainModelId {
    /// `namespace:name:commit:hash` (`sn9-2024-01`).
    Sn9Rules2024(ModelId),
    /// `namespace:name:commit:secure_hash:competition_id`.
    Competitions(CompetitionModelId),
}

/// A model id too long for the chain, in the format that overflowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainModelIdError {
    /// The 4-field id.
    #[error(transparent)]
    Sn9Rules2024(#[from] ModelIdError),
    /// The 5-field id.
    #[error(transparent)]
    Competitions(#[from] CompetitionModelIdError),
}

impl ChainModelId {
    /// The bytes committed, checked against the chain's limit.
    pub fn to_chain_bytes(&self) -> Result<Vec<u8>, ChainModelIdError> {
        Ok(match self {
            ChainModelId::Sn9Rules2024(id) => id.to_chain_bytes()?,
            ChainModelId::Competitions(id) => id.to_chain_bytes()?,
        })
    }

    /// The id as a validator tracks it: `hash` is the committed hash (the
    /// raw one, or the secure hash under the competitions).
    pub fn model_id(&self) -> ModelId {
        match self {
            ChainModelId::Sn9Rules2024(id) => id.clone(),
            ChainModelId::Competitions(id) => ModelId {
                namespace: id.namespace.clone(),
                name: id.name.clone(),
                commit: id.commit.clone(),
                hash: id.secure_hash.clone(),
            },
        }
    }

    /// The hub commit.
    pub fn commit(&self) -> Option<&str> {
        match self {
            ChainModelId::Sn9Rules2024(id) => id.commit.as_deref(),
            ChainModelId::Competitions(id) => id.commit.as_deref(),
        }
    }

    /// The hotkey-bound secure hash (`None` under `sn9-2024-01`).
    pub fn secure_hash(&self) -> Option<&str> {
        match self {
            ChainModelId::Sn9Rules2024(_) => None,
            ChainModelId::Competitions(id) => id.secure_hash.as_deref(),
        }
    }

    /// The competition entered (`None` under `sn9-2024-01`).
    pub fn competition(&self) -> Option<CompetitionId> {
        match self {
            ChainModelId::Sn9Rules2024(_) => None,
            ChainModelId::Competitions(id) => Some(id.competition_id),
        }
    }
}

impl fmt::Display for ChainModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainModelId::Sn9Rules2024(id) => id.fmt(f),
            ChainModelId::Competitions(id) => id.fmt(f),
        }
    }
}

/// How a validator checks a downloaded model's hash against a commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashRule {
    /// The directory hash must be the committed one (`sn9-2024-01`).
    Committed,
    /// `secure_hash(directory hash, hotkey)` must be the committed secure
    /// hash (or, for a legacy 4-field id, the raw hash must be the committed one).
    HotkeyBound(CompetitionModelId),
}

impl HashRule {
    /// Checks `downloaded` (the directory hash) committed by `hotkey_ss58`.
    /// Only [`HashRule::HotkeyBound`] can refuse here: the committed hash is
    /// compared by the store itself.
    pub fn check(&self, downloaded: &str, hotkey_ss58: &str) -> Result<(), check::HashCheckError> {
        match self {
            HashRule::Committed => Ok(()),
            HashRule::HotkeyBound(id) => check::check_download(id, downloaded, hotkey_ss58),
        }
    }
}

/// A commitment the validator fetches and checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// What is fetched and tracked: its `hash` is the committed one (the
    /// raw hash, or the secure hash under the competitions).
    pub model: ModelId,
    /// The commitment as logged.
    pub shown: String,
    /// The competition entered (`None` under `sn9-2024-01`).
    pub competition: Option<CompetitionId>,
    /// The competition whose limits apply (`None`: the seed's constants).
    pub spec: Option<CompetitionSpec>,
    /// Most bytes downloaded.
    pub max_bytes: u64,
    /// How the download is checked.
    pub hash_rule: HashRule,
    /// Whether a missing repo is retried rather than refused: under the
    /// competitions the miner makes its repo public only once the
    /// commitment has landed.
    pub missing_repo_is_transient: bool,
}

/// What the admission rules say of a commitment.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Fetch and check the model.
    Admit(Box<Admitted>),
    /// Not now: looked at again on a later pass.
    Defer(String),
    /// Refused until the commitment changes.
    Refuse(String),
}

impl Protocol {
    /// Reads committed chain bytes as this protocol's model id: 4 fields
    /// for `sn9-2024-01`, 5 (competition id last) for the competitions.
    /// The error says why it is no model id.
    pub fn read_commitment(self, bytes: &[u8]) -> Result<Committed, String> {
        match self {
            Protocol::Sn9Rules2024 => ModelId::from_chain_bytes(bytes)
                .map(|id| Committed {
                    namespace: id.namespace,
                    name: id.name,
                    commit: id.commit,
                    hash: id.hash,
                    competition: None,
                })
                .map_err(|e| e.to_string()),
            Protocol::Competitions => CompetitionModelId::from_chain_bytes(bytes)
                .map(|id| Committed {
                    namespace: id.namespace,
                    name: id.name,
                    commit: id.commit,
                    hash: id.secure_hash,
                    competition: Some(id.competition_id),
                })
                .map_err(|e| e.to_string()),
        }
    }

    /// Refuses a repo id that would not fit this protocol's model id on
    /// chain (the 4-field id has room for any valid repo id).
    pub fn check_repo_id(self, repo: &RepoId) -> Result<(), RepoIdTooLong> {
        match self {
            Protocol::Sn9Rules2024 => Ok(()),
            Protocol::Competitions => check_competition_repo_id(repo),
        }
    }

    /// Whether miners name a competition in their commitment.
    pub fn has_competition_ids(self) -> bool {
        matches!(self, Protocol::Competitions)
    }

    /// Whether a miner uploads its repo private and publishes it once the
    /// commitment has landed (the competitions), or public at once.
    pub fn uploads_private(self) -> bool {
        self.has_competition_ids()
    }

    /// The model id a miner with hotkey `hotkey_ss58` commits for the
    /// files hashed `model_hash` at `commit` of `repo`: the raw hash
    /// (`sn9-2024-01`), or the secure hash and `competition`.
    pub fn model_id(
        self,
        repo: &RepoId,
        commit: &str,
        model_hash: &str,
        hotkey_ss58: &str,
        competition: CompetitionId,
    ) -> ChainModelId {
        match self {
            Protocol::Sn9Rules2024 => ChainModelId::Sn9Rules2024(ModelId {
                namespace: Unchecked::new(repo.namespace()),
                name: Unchecked::new(repo.name()),
                commit: Some(Unchecked::new(commit)),
                hash: Some(Unchecked::new(model_hash)),
            }),
            Protocol::Competitions => ChainModelId::Competitions(CompetitionModelId::committed(
                repo,
                commit,
                model_hash,
                hotkey_ss58,
                competition,
            )),
        }
    }

    /// The competition a miner enters while `spec` is active: `spec` under
    /// the competitions (its id is committed and its constraints checked
    /// before the push); none under `sn9-2024-01`, whose commitment names
    /// no competition and whose loader checks the seed's limits.
    pub fn entered(self, spec: &CompetitionSpec) -> Option<&CompetitionSpec> {
        self.has_competition_ids().then_some(spec)
    }

    /// The model limits `(max parameters, max bytes)` known before the
    /// chain is read: the seed's under `sn9-2024-01`; none under the
    /// competitions, whose limits are those of the competition entered at
    /// the chain's block ([`Protocol::entered`]).
    pub fn limits_before_chain(self) -> Option<(u64, u64)> {
        match self {
            Protocol::Sn9Rules2024 => {
                Some((crate::constants::MAX_MODEL_PARAMETERS, MAX_MODEL_BYTES))
            }
            Protocol::Competitions => None,
        }
    }

    /// The validator's tunables at `block`: under `sn9-2024-01` the active
    /// competition's per-batch constants (epsilon, temperature, alpha,
    /// sequence length) with `flags`' sample_min and step sizes; under the
    /// competitions `flags` as given (each competition brings its own
    /// constants, read at its step). Refused with the reason when the
    /// schedule has no entry then, or its competition is not per batch with
    /// a fixed epsilon.
    pub fn validator_tunables(
        self,
        schedule: &Schedule,
        block: u64,
        flags: Tunables,
    ) -> Result<Tunables, RulesError> {
        let entry = schedule.active_entry(block)?;
        match self {
            Protocol::Competitions => Ok(flags),
            Protocol::Sn9Rules2024 => {
                let spec = entry.competitions.first().ok_or_else(|| {
                    RulesError::Invalid(format!("schedule {} has an empty entry", schedule.name))
                })?;
                spec.support()
                    .map_err(|e| RulesError::Invalid(e.to_string()))?;
                let seed = spec.seed_competition().ok_or_else(|| {
                    RulesError::Invalid(format!(
                        "schedule {}: competition {} ({}) counts wins as {:?} with epsilon {:?}; \
                         this build's validator counts them per batch with a fixed epsilon",
                        schedule.name,
                        spec.id,
                        spec.name,
                        spec.scoring.wins,
                        spec.constraints.epsilon
                    ))
                })?;
                Ok(Tunables {
                    sample_min: flags.sample_min,
                    blocks_per_epoch: flags.blocks_per_epoch,
                    pages_per_eval: flags.pages_per_eval,
                    ..seed
                })
            }
        }
    }

    /// The competitions' state a validator keeps under this protocol:
    /// `existing` (or a new one over `num_neurons`) under the competitions,
    /// none under `sn9-2024-01`, whose state file keeps its seed format.
    pub fn competition_state(
        self,
        existing: Option<CompetitionState>,
        num_neurons: usize,
    ) -> Option<CompetitionState> {
        match self {
            Protocol::Sn9Rules2024 => None,
            Protocol::Competitions => {
                Some(existing.unwrap_or_else(|| CompetitionState::new(num_neurons)))
            }
        }
    }

    /// The admission rules: whether the commitment `bytes`, landed at
    /// `block`, is fetched now (`current` is the chain's block), retried
    /// later or refused; and what then applies to its download.
    pub fn admit(self, schedule: &Schedule, bytes: &[u8], block: u64, current: u64) -> Admission {
        match self {
            Protocol::Sn9Rules2024 => admit_sn9(schedule, bytes, block, current),
            Protocol::Competitions => admit_competition(schedule, bytes, block, current),
        }
    }
}

/// Under `sn9-2024-01`, the competition active at `block` (the first of its
/// entry; such an entry has one); `None` before the schedule's first entry.
pub fn sn9_spec(schedule: &Schedule, block: u64) -> Option<&CompetitionSpec> {
    schedule
        .active_entry(block)
        .ok()
        .and_then(|e| e.competitions.first())
}

fn admit_sn9(schedule: &Schedule, bytes: &[u8], block: u64, current: u64) -> Admission {
    let id = match ModelId::from_chain_bytes(bytes) {
        Ok(id) => id,
        Err(e) => return Admission::Refuse(format!("commitment is not a model id: {e}")),
    };
    // The metagraph's block may lag the chain, which only delays, never
    // admits early.
    let spec = sn9_spec(schedule, current).cloned();
    // Upstream's `eval_block_delay`, checked before anything is fetched: a
    // model is only evaluated on data drawn after it was committed.
    if let Some(delay) = spec
        .as_ref()
        .map(|c| c.constraints.eval_block_delay)
        .filter(|&d| d > 0)
    {
        let age = current.saturating_sub(block);
        if current < block || age < delay {
            return Admission::Defer(format!(
                "committed at block {block} ({age} blocks ago): not evaluated before eval_block_delay = {delay} blocks have passed"
            ));
        }
    }
    let max_bytes = spec
        .as_ref()
        .map_or(MAX_MODEL_BYTES, |s| s.constraints.max_bytes);
    Admission::Admit(Box::new(Admitted {
        shown: id.to_compressed_str(),
        model: id,
        competition: None,
        spec,
        max_bytes,
        hash_rule: HashRule::Committed,
        missing_repo_is_transient: false,
    }))
}

fn admit_competition(schedule: &Schedule, bytes: &[u8], block: u64, current: u64) -> Admission {
    let id = match CompetitionModelId::from_chain_bytes(bytes) {
        Ok(id) => id,
        Err(e) => return Admission::Refuse(format!("commitment is not a model id: {e}")),
    };
    // Upstream's order: the competition at the commit block, now, then the
    // current competition's `eval_block_delay`; all before the "unchanged"
    // short cut, so a tracked model of a retired competition is dropped.
    let spec = match check::admit(schedule, id.competition_id, block, current) {
        Ok(spec) => spec.clone(),
        Err(why) if why.is_retryable() => {
            return Admission::Defer(format!(
                "{id} committed at block {block}, now {current}: {why}"
            ))
        }
        Err(why) => return Admission::Refuse(why.to_string()),
    };
    if let Err(why) = spec.support() {
        return Admission::Refuse(why.to_string());
    }
    Admission::Admit(Box::new(Admitted {
        model: ModelId {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            commit: id.commit.clone(),
            hash: id.secure_hash.clone(),
        },
        shown: id.to_compressed_str(),
        competition: Some(id.competition_id),
        max_bytes: spec.constraints.max_bytes,
        spec: Some(spec),
        hash_rule: HashRule::HotkeyBound(id),
        missing_repo_is_transient: true,
    }))
}

/// What the competitions keep between validator steps: whose turn it is, an
/// evaluation set per competition and the per-competition moving averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompetitionState {
    /// Steps attempted (one competition each, in turn), including those
    /// that found nothing to evaluate.
    pub turn: u64,
    /// Per competition, the uids evaluated at its next step.
    pub uids_to_eval: BTreeMap<CompetitionId, BTreeSet<Uid>>,
    /// Per competition, uids whose model changed, joining at its next step.
    pub pending_uids: BTreeMap<CompetitionId, BTreeSet<Uid>>,
    /// Per-competition moving averages of the weights.
    pub tracker: CompetitionTracker,
}

impl CompetitionState {
    /// Nothing evaluated yet, over a metagraph of `num_neurons`.
    pub fn new(num_neurons: usize) -> Self {
        Self {
            turn: 0,
            uids_to_eval: BTreeMap::new(),
            pending_uids: BTreeMap::new(),
            tracker: CompetitionTracker::new(num_neurons),
        }
    }
}

/// One evaluated step, as every protocol's scoring reads it.
#[derive(Debug, Clone, Copy)]
pub struct EvaluatedStep<'a> {
    /// The chain's block.
    pub block: u64,
    /// Size of the metagraph.
    pub n_total_uids: usize,
    /// Batches every uid was evaluated on.
    pub n_batches: usize,
    /// Evaluated uids, in order.
    pub uids: &'a [Uid],
    /// Losses per batch per uid (`+inf`: could not evaluate).
    pub losses: &'a [Vec<f64>],
    /// Commit block per uid (`None`: no model tracked).
    pub blocks: &'a [Option<u64>],
}

/// What a step scored, per uid in the order evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredStep {
    /// Mean loss (`+inf` without losses, and for NaN: a NaN never wins).
    pub mean_loss: Vec<f64>,
    /// Wins.
    pub wins: Vec<u64>,
    /// Win rate.
    pub win_rate: Vec<f64>,
    /// The subnet's weights after the step, over all uids.
    pub weights: Vec<f32>,
    /// The uids kept for the next step (of this competition), ascending.
    pub uids_to_eval_next: Vec<Uid>,
    /// The uids the competitive filter kept (competitions only).
    pub competitive_uids: Option<Vec<Uid>>,
}

/// Why a step could not be scored.
#[derive(Debug, Error)]
pub enum ScoreError {
    /// The `sn9-2024-01` maths refused their inputs.
    #[error(transparent)]
    Scoring(#[from] ScoringError),
    /// The competition maths refused their inputs.
    #[error(transparent)]
    Rules(#[from] RulesError),
}

/// A protocol's scoring of one step with the state it updates: the moving
/// average and evaluation set it keeps between steps.
#[derive(Debug)]
pub enum StepRules<'a> {
    /// `sn9-2024-01`: per-batch wins with a fixed epsilon, one moving
    /// average over every uid ([`crate::scoring`]).
    Sn9Rules2024 {
        /// Epsilon, temperature, alpha, sample_min.
        tunables: &'a Tunables,
        /// The moving-average weights, updated.
        weights: &'a mut Vec<f32>,
        /// The evaluation set, replaced by the uids kept.
        uids_to_eval: &'a mut BTreeSet<Uid>,
    },
    /// The competitions: the competitive filter and mean-loss wins of
    /// `spec`'s models, its moving average, and the subnet weights summed
    /// over `entry`'s competitions by share ([`super::wins`], [`super::weights`]).
    Competitions {
        /// The competition whose turn it is.
        spec: &'a CompetitionSpec,
        /// The schedule entry it runs in.
        entry: &'a ScheduleEntry,
        /// The competitions' state, updated.
        state: &'a mut CompetitionState,
        /// The subnet weights, replaced.
        weights: &'a mut Vec<f32>,
    },
}

/// The mean of a uid's losses as scored: `+inf` without losses or for NaN.
pub fn mean_loss(losses: &[f64]) -> f64 {
    if losses.is_empty() {
        return f64::INFINITY;
    }
    let m = losses.iter().sum::<f64>() / losses.len() as f64;
    if m.is_nan() {
        f64::INFINITY
    } else {
        m
    }
}

impl StepRules<'_> {
    /// Scores `step` and updates the state it carries.
    pub fn score(self, step: &EvaluatedStep<'_>) -> Result<ScoredStep, ScoreError> {
        let mean: Vec<f64> = step.losses.iter().map(|l| mean_loss(l)).collect();
        match self {
            StepRules::Sn9Rules2024 {
                tunables,
                weights,
                uids_to_eval,
            } => score_sn9(step, mean, tunables, weights, uids_to_eval),
            StepRules::Competitions {
                spec,
                entry,
                state,
                weights,
            } => score_turn(step, mean, spec, entry, state, weights),
        }
    }
}

/// [`StepRules::Sn9Rules2024`]: per-batch wins over every uid, one moving
/// average, the evaluation set replaced by the uids kept.
fn score_sn9(
    step: &EvaluatedStep<'_>,
    mean: Vec<f64>,
    tunables: &Tunables,
    weights: &mut Vec<f32>,
    uids_to_eval: &mut BTreeSet<Uid>,
) -> Result<ScoredStep, ScoreError> {
    let out = StepInput {
        n_total_uids: step.n_total_uids,
        uids: step.uids.to_vec(),
        n_batches: step.n_batches,
        epsilon: tunables.epsilon,
        temperature: tunables.temperature,
        alpha: tunables.alpha,
        sample_min: tunables.sample_min,
        blocks: step.blocks.to_vec(),
        losses: step.losses.to_vec(),
        prev_weights: weights.clone(),
    }
    .run()?;
    weights.clone_from(&out.weights);
    *uids_to_eval = out.uids_to_eval_next.iter().copied().collect();
    Ok(ScoredStep {
        mean_loss: mean,
        wins: out.stats.wins,
        win_rate: out.stats.win_rate,
        weights: out.weights,
        uids_to_eval_next: out.uids_to_eval_next,
        competitive_uids: None,
    })
}

/// [`StepRules::Competitions`]: `spec`'s turn scored by mean-loss wins among
/// the competitive, its moving average recorded, and the subnet weights
/// summed over `entry`'s competitions by share.
fn score_turn(
    step: &EvaluatedStep<'_>,
    mean: Vec<f64>,
    spec: &CompetitionSpec,
    entry: &ScheduleEntry,
    state: &mut CompetitionState,
    weights: &mut Vec<f32>,
) -> Result<ScoredStep, ScoreError> {
    let contenders: Vec<Contender> = step
        .uids
        .iter()
        .zip(&mean)
        .zip(step.blocks)
        .map(|((&uid, &score), block)| Contender {
            uid,
            score,
            block: block.unwrap_or(u64::MAX),
        })
        .collect();
    let scored = score_competition(
        &contenders,
        &spec.constraints.epsilon,
        step.block,
        spec.scoring.temperature,
        true,
    )?;
    let c = spec.id;
    let step_weights = scatter(step.n_total_uids, &scored.step_weights);
    let active: Vec<CompetitionId> = entry.competitions.iter().map(|k| k.id).collect();
    state.tracker.record(c, &step_weights, spec.scoring.alpha);
    state.tracker.reset_competitions(&active);
    *weights = state.tracker.subnet_weights(&entry.shares());
    let next = keep_for_next_step(
        &contenders,
        &scored.wins,
        state.tracker.competition_weights(c).unwrap_or(&[]),
        spec.scoring.sample_min,
    );
    state.uids_to_eval.insert(c, next.iter().copied().collect());
    let (wins, win_rate) = per_uid(step.uids, &scored.wins);
    Ok(ScoredStep {
        mean_loss: mean,
        wins,
        win_rate,
        weights: weights.clone(),
        uids_to_eval_next: next,
        competitive_uids: scored.competitive_uids,
    })
}

/// Each of `uids`' wins (0 without any) and win rate, in their order.
fn per_uid(uids: &[Uid], wins: &Wins) -> (Vec<u64>, Vec<f64>) {
    let count = uids
        .iter()
        .map(|u| wins.wins.iter().find(|(w, _)| w == u).map_or(0, |w| w.1))
        .collect();
    let rate = uids.iter().map(|&u| wins.rate_of(u)).collect();
    (count, rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_reads_its_own_model_id() {
        let four = b"ns:name:abc:hash";
        let seed = Protocol::Sn9Rules2024.read_commitment(four).unwrap();
        assert_eq!(
            (
                seed.commit.as_deref(),
                seed.hash.as_deref(),
                seed.competition
            ),
            (Some("abc"), Some("hash"), None)
        );
        // A legacy 4-field id is competition 0 under the competition rules.
        let legacy = Protocol::Competitions.read_commitment(four).unwrap();
        assert_eq!(legacy.competition, Some(0));
        let five = Protocol::Competitions
            .read_commitment(b"ns:name:abc:secure:3")
            .unwrap();
        assert_eq!(
            (five.hash.as_deref(), five.competition),
            (Some("secure"), Some(3))
        );
        assert!(Protocol::Competitions
            .read_commitment(b"ns:name:abc:s:x")
            .is_err());
        assert!(Protocol::Sn9Rules2024.read_commitment(b"ns:name").is_err());
    }

    #[test]
    fn only_the_competition_id_format_limits_repo_ids() {
        let long: RepoId = format!("me/{}", "a".repeat(36)).parse().unwrap();
        assert!(Protocol::Sn9Rules2024.check_repo_id(&long).is_ok());
        assert!(Protocol::Competitions.check_repo_id(&long).is_err());
        assert!(Protocol::Competitions.has_competition_ids());
        assert!(!Protocol::Sn9Rules2024.has_competition_ids());
    }

    fn localnet_two() -> Schedule {
        Schedule::by_name_or_file(super::super::schedule::LOCALNET_TWO).unwrap()
    }

    #[test]
    fn each_protocol_writes_the_id_it_reads() {
        let repo: RepoId = "me/model".parse().unwrap();
        let commit = "c".repeat(40);
        let seed = Protocol::Sn9Rules2024.model_id(&repo, &commit, "hello", "world", 3);
        assert_eq!(
            seed.to_chain_bytes().unwrap(),
            format!("me:model:{commit}:hello").into_bytes()
        );
        assert_eq!((seed.competition(), seed.secure_hash()), (None, None));
        // testdata/later/vectors.json: secure_hash("hello", "world").
        let secure = "k2oYXKqiZrucvpgengXLeM1zKwsygOuURBK7b4+PB68=";
        let five = Protocol::Competitions.model_id(&repo, &commit, "hello", "world", 3);
        assert_eq!(
            five.to_chain_bytes().unwrap(),
            format!("me:model:{commit}:{secure}:3").into_bytes()
        );
        let read = Protocol::Competitions
            .read_commitment(&five.to_chain_bytes().unwrap())
            .unwrap();
        assert_eq!(
            (read.hash.as_deref(), read.competition),
            (Some(secure), Some(3))
        );
        // What the validator tracks: the committed (secure) hash.
        assert_eq!(five.model_id().hash.as_deref(), Some(secure));
        assert_eq!(
            Protocol::Sn9Rules2024.limits_before_chain(),
            Some((122_268_040, 1024 * 1024 * 1024))
        );
        assert_eq!(Protocol::Competitions.limits_before_chain(), None);
        assert!(Protocol::Competitions.uploads_private());
        assert!(!Protocol::Sn9Rules2024.uploads_private());
    }

    #[test]
    fn admission_follows_each_protocol() {
        let seed = Schedule::default_schedule();
        let commitment = format!("a:b:{}:h", "c".repeat(40));
        match Protocol::Sn9Rules2024.admit(&seed, commitment.as_bytes(), 10, 20) {
            Admission::Admit(a) => {
                assert_eq!(a.model.hash.as_deref(), Some("h"));
                assert_eq!(a.competition, None);
                assert_eq!(a.hash_rule, HashRule::Committed);
                assert_eq!(a.max_bytes, MAX_MODEL_BYTES);
                assert!(!a.missing_repo_is_transient);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Protocol::Sn9Rules2024.admit(&seed, b"ab", 10, 20),
            Admission::Refuse(why) if why.starts_with("commitment is not a model id")
        ));
        // localnet-two: competitions 1 and 2 from block 0, eval_block_delay 20.
        let two = localnet_two();
        let five = format!("a:b:{}:s:1", "c".repeat(40));
        assert!(matches!(
            Protocol::Competitions.admit(&two, five.as_bytes(), 10, 20),
            Admission::Defer(why) if why.contains("fewer than the 20 blocks")
        ));
        match Protocol::Competitions.admit(&two, five.as_bytes(), 10, 30) {
            Admission::Admit(a) => {
                assert_eq!(a.model.hash.as_deref(), Some("s"));
                assert_eq!(a.competition, Some(1));
                assert!(matches!(a.hash_rule, HashRule::HotkeyBound(_)));
                assert!(a.missing_repo_is_transient);
            }
            other => panic!("{other:?}"),
        }
        let unscheduled = format!("a:b:{}:s:7", "c".repeat(40));
        assert!(matches!(
            Protocol::Competitions.admit(&two, unscheduled.as_bytes(), 10, 30),
            Admission::Refuse(why) if why.contains("competition 7 is not in the schedule")
        ));
    }

    fn num(v: &serde_json::Value) -> f64 {
        serde_json::from_value::<crate::scoring::JsonF64>(v.clone())
            .unwrap()
            .0
    }

    /// The `sn9-2024-01` step through `StepRules` gives the reference
    /// outputs of `testdata/scoring/cases.json` and keeps them as state.
    #[test]
    fn the_sn9_step_matches_the_reference_cases() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/scoring/cases.json"
        );
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let steps = cases["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 20);
        for case in steps {
            let parsed: crate::scoring::StepJson = serde_json::from_value(case.clone()).unwrap();
            let input = parsed.to_input().unwrap();
            let exp = &case["expected"];
            let tunables = Tunables {
                epsilon: input.epsilon,
                temperature: input.temperature,
                alpha: input.alpha,
                sample_min: input.sample_min,
                ..Tunables::default()
            };
            let mut weights = input.prev_weights.clone();
            let mut uids_to_eval = BTreeSet::new();
            let scored = StepRules::Sn9Rules2024 {
                tunables: &tunables,
                weights: &mut weights,
                uids_to_eval: &mut uids_to_eval,
            }
            .score(&EvaluatedStep {
                block: 0,
                n_total_uids: input.n_total_uids,
                n_batches: input.n_batches,
                uids: &input.uids,
                losses: &input.losses,
                blocks: &input.blocks,
            })
            .unwrap();
            for (k, uid) in input.uids.iter().enumerate() {
                let key = uid.to_string();
                assert_eq!(scored.wins[k], exp["wins"][&key].as_u64().unwrap());
                assert_eq!(scored.win_rate[k], num(&exp["win_rate"][&key]));
            }
            let want: Vec<f64> = exp["weights"].as_array().unwrap().iter().map(num).collect();
            assert_eq!(weights.len(), want.len());
            for (g, w) in weights.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() <= 1e-6, "{g} vs {w}");
            }
            assert_eq!(scored.weights, weights);
            let next: Vec<Uid> = serde_json::from_value(exp["uids_to_eval_next"].clone()).unwrap();
            assert_eq!(scored.uids_to_eval_next, next);
            assert_eq!(uids_to_eval, next.into_iter().collect());
        }
    }

    /// Two models of one competition: the better and earlier one wins
    /// every comparison, a NaN loss counts as +inf, and the competition's
    /// next evaluation set is kept in its state.
    #[test]
    fn the_competition_step_scores_its_competition_and_keeps_its_set() {
        let two = localnet_two();
        let entry = two.active_entry(0).unwrap();
        let spec = entry.competition(1).unwrap();
        let mut state = CompetitionState::new(3);
        let mut weights = Vec::new();
        let losses = vec![vec![1.0, 1.0], vec![f64::NAN, 3.0], vec![2.0, 2.0]];
        let scored = StepRules::Competitions {
            spec,
            entry,
            state: &mut state,
            weights: &mut weights,
        }
        .score(&EvaluatedStep {
            block: 100,
            n_total_uids: 3,
            n_batches: 2,
            uids: &[0, 1, 2],
            losses: &losses,
            blocks: &[Some(1), Some(2), Some(3)],
        })
        .unwrap();
        assert_eq!(scored.mean_loss, vec![1.0, f64::INFINITY, 2.0]);
        assert_eq!(scored.win_rate[0], 1.0);
        assert_eq!(scored.wins[1], 0);
        assert_eq!(scored.weights, weights);
        assert_eq!(weights.len(), 3);
        assert!(weights[0] > weights[2] && weights[2] >= weights[1]);
        assert_eq!(
            state.uids_to_eval.get(&1).map(|s| s.contains(&0)),
            Some(true)
        );
        assert!(state.tracker.competition_weights(1).is_some());
    }
}
