//! The validator: three concurrent loops over one shared state.
//!
//! - [`update`]: cycles through the uids (each at most once per
//!   `update_interval`), reads each hotkey's commitment and, when it
//!   changed, fetches the model (size from the hub's file list, download,
//!   hash check) and checks it; a model that passes is tracked and its uid
//!   queued; a refusal is logged once with its reason.
//! - [`eval`]: one step = queued uids join the set, pages are drawn (seeded,
//!   seed logged) and tokenized once, every model is evaluated on the same
//!   batches in a child process ([`worker`]), scoring (`StepInput::run`),
//!   state saved, weights set every `blocks_per_epoch` blocks.
//! - [`clean`]: deletes model directories nothing references.
//!
//! The schedule's protocol decides the rules. Under the seed's (the default
//! schedule) every model is in one competition and a step scores all of
//! them per batch. Under the competition rules a commitment is a 5-field
//! id: its competition must be scheduled at its commit block and now, the
//! model is fetched only once `eval_block_delay` blocks old (until then, and
//! while its repo is missing or private, it is deferred), the download must
//! hash, with the miner's hotkey, to the committed secure hash, and it is
//! checked against its own competition's limits. Each step then evaluates
//! one competition in turn, scores it by mean loss with the competitive
//! filter, updates that competition's moving average, and the subnet
//! weights are the competitions' averages summed by reward share.
//!
//! Every chain, hub and dataset call has a time limit, a step has one too,
//! and a failure is logged and retried later: nothing but a bad start-up
//! configuration ends the process.

pub mod clean;
pub mod eval;
pub mod failure;
pub mod observe;
pub mod slurm;
pub mod state;
pub mod update;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pretrain_chain::{Chain, ChainError, Hotkey, Metagraph};
use pretrain_core::rules::{self, CompetitionSpec, Protocol, Schedule};
use pretrain_core::Tunables;
use pretrain_data::{PageSource, Tokenizer};
use pretrain_store::{ModelHub, ModelStore};
use thiserror::Error;
use tracing::{info, warn};

pub use state::{CompetitionState, Refusal, StateError, TrackedModel, ValidatorState};
pub use worker::{Backend, WorkerSpec};

/// Everything the validator is told at start.
#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    /// Subnet.
    pub netuid: u16,
    /// `--model_dir`: models under `models/`, the state, `metrics.jsonl`.
    pub model_dir: PathBuf,
    /// Scoring constants, `sample_min`, `blocks_per_epoch`, `pages_per_eval`.
    pub competition: Tunables,
    /// Set weights on chain (false with `--dont_set_weights` or `--offline`).
    pub set_weights: bool,
    /// Stop after this many steps (`None`: run forever).
    pub max_steps: Option<u64>,
    /// Children evaluating at once.
    pub eval_workers: usize,
    /// How children are started.
    pub worker: WorkerSpec,
    /// Where children run: local processes or Slurm jobs.
    pub backend: Backend,
    /// Least time between two checks of one uid.
    pub update_interval: Duration,
    /// Time between two cleanups.
    pub clean_interval: Duration,
    /// Age below which an unreferenced model directory is kept.
    pub clean_grace: Duration,
    /// Limit of each chain, hub-metadata and dataset call.
    pub call_timeout: Duration,
    /// Limit of one model download (files listing, transfer, hash check).
    pub download_timeout: Duration,
    /// Limit of one evaluation step.
    pub step_timeout: Duration,
    /// Pause when there is nothing to evaluate or a step failed.
    pub idle_wait: Duration,
    /// The competitions by block (`--schedule`). Under the seed protocol
    /// the entry active at the current block holds one competition, whose
    /// repo size, parameter range, architectures and `eval_block_delay`
    /// gate every model; under the later one each model is checked against
    /// its own competition and each step evaluates one competition in turn.
    pub schedule: Schedule,
}

impl ValidatorConfig {
    /// The original's settings for `model_dir` and `worker`.
    pub fn new(netuid: u16, model_dir: PathBuf, worker: WorkerSpec) -> Self {
        Self {
            netuid,
            model_dir,
            competition: Tunables::default(),
            set_weights: true,
            max_steps: None,
            eval_workers: 1,
            worker,
            backend: Backend::Local,
            update_interval: Duration::from_secs(300),
            clean_interval: Duration::from_secs(300),
            clean_grace: Duration::from_secs(300),
            call_timeout: pretrain_core::constants::CHAIN_CALL_TIMEOUT,
            download_timeout: Duration::from_secs(20 * 60),
            step_timeout: Duration::from_secs(20 * 60),
            idle_wait: Duration::from_secs(60),
            schedule: Schedule::default_schedule(),
        }
    }

    /// The protocol the schedule runs.
    pub fn protocol(&self) -> Protocol {
        self.schedule.protocol()
    }

    /// Under `sn9-2024-01`, the competition active at `block`
    /// ([`rules::sn9_spec`]); `None` before the schedule's first entry.
    pub fn seed_spec(&self, block: u64) -> Option<&CompetitionSpec> {
        rules::sn9_spec(&self.schedule, block)
    }
}

/// Why the validator could not start.
#[derive(Debug, Error)]
pub enum ValidatorError {
    /// A chain call failed.
    #[error("chain")]
    Chain(#[from] ChainError),
    /// The hotkey is not registered on the subnet.
    #[error("hotkey {hotkey} is not registered on subnet {netuid}: register it first (`pretrain chain register`, or btcli on a real chain)")]
    NotRegistered {
        /// SS58 address.
        hotkey: String,
        /// Subnet.
        netuid: u16,
    },
    /// The hotkey has no validator permit.
    #[error("hotkey {hotkey} (uid {uid}) has no validator permit on subnet {netuid}: it needs stake (`pretrain chain stake` on the embedded chain)")]
    NoPermit {
        /// SS58 address.
        hotkey: String,
        /// Its uid.
        uid: u16,
        /// Subnet.
        netuid: u16,
    },
    /// A chain call did not answer in time.
    #[error("{0} did not answer within {1:?}")]
    Timeout(&'static str, Duration),
    /// The state file is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The tokenizer could not be loaded.
    #[error("tokenizer")]
    Data(#[from] pretrain_data::DataError),
    /// Another validator uses the same `--model_dir`.
    #[error(transparent)]
    Lock(#[from] pretrain_core::lock::LockError),
}

/// What the three loops share.
pub struct Shared {
    /// Settings.
    pub config: ValidatorConfig,
    /// The chain.
    pub chain: Arc<dyn Chain>,
    /// Where models come from.
    pub hub: Arc<dyn ModelHub>,
    /// Where text pages come from.
    pub source: Arc<dyn PageSource>,
    /// GPT-2 tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// `<model_dir>/models`.
    pub store: ModelStore,
    /// The validator's hotkey (`None` offline: weights are never set).
    pub hotkey: Option<Hotkey>,
    /// The persistent state; held only for short, non-blocking sections.
    pub state: Mutex<ValidatorState>,
    /// The latest metagraph.
    pub metagraph: RwLock<Metagraph>,
    /// Set once the update loop has checked every uid: the first step waits
    /// for it, so that it does not score a partial set of models.
    pub first_pass_done: AtomicBool,
    /// W&B and Prometheus, when the operator turned them on.
    pub observers: observe::Observers,
    /// One validator per `--model_dir`: two would interleave its metrics
    /// and overwrite each other's state.
    _lock: pretrain_core::lock::DirLock,
}

impl Shared {
    /// Path of the state file.
    pub fn state_path(&self) -> PathBuf {
        ValidatorState::path(&self.config.model_dir)
    }

    /// Path of the metrics file (one JSON line per step).
    pub fn metrics_path(&self) -> PathBuf {
        self.config.model_dir.join("metrics.jsonl")
    }

    /// Applies `f` to the state and saves it (atomically) before releasing it.
    pub fn update_state<T>(&self, f: impl FnOnce(&mut ValidatorState) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut s);
        if let Err(e) = s.save(&self.state_path()) {
            // Kept in memory; the next save writes it.
            warn!(
                "cannot save the validator state: {}",
                crate::error_chain(&e)
            );
        }
        out
    }

    /// A copy of the state.
    pub fn state_snapshot(&self) -> ValidatorState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A copy of the latest metagraph.
    pub fn metagraph_snapshot(&self) -> Metagraph {
        self.metagraph
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the metagraph again (with the call limit); forgets tracked
    /// models of hotkeys that left the subnet. Errors are logged, not fatal.
    pub async fn sync_metagraph(&self) {
        let netuid = self.config.netuid;
        match tokio::time::timeout(self.config.call_timeout, self.chain.metagraph(netuid)).await {
            Ok(Ok(g)) => {
                let hotkeys: std::collections::HashSet<String> =
                    g.neurons.iter().map(|n| n.hotkey.clone()).collect();
                *self.metagraph.write().unwrap_or_else(|p| p.into_inner()) = g;
                self.update_state(|s| {
                    s.tracked.retain(|hk, _| hotkeys.contains(hk.as_str()));
                    s.refused.retain(|hk, _| hotkeys.contains(hk.as_str()));
                });
            }
            Ok(Err(e)) => warn!(
                "metagraph sync failed: {}; keeping the previous one",
                crate::error_chain(&e)
            ),
            Err(_) => warn!(
                "metagraph sync did not answer within {:?}; keeping the previous one",
                self.config.call_timeout
            ),
        }
    }
}

/// Connects the pieces, checks the hotkey (unless offline), loads or
/// creates the state. `hotkey` is `None` when offline.
pub async fn start(
    config: ValidatorConfig,
    chain: Arc<dyn Chain>,
    hub: Arc<dyn ModelHub>,
    source: Arc<dyn PageSource>,
    hotkey: Option<Hotkey>,
) -> Result<Arc<Shared>, ValidatorError> {
    let netuid = config.netuid;
    let limit = config.call_timeout;
    let metagraph = tokio::time::timeout(limit, chain.metagraph(netuid))
        .await
        .map_err(|_| ValidatorError::Timeout("metagraph", limit))??;
    if let Some(hk) = &hotkey {
        check_permit(&metagraph, hk, netuid)?;
    }
    let lock = pretrain_core::lock::lock_dir(&config.model_dir, "pretrain validate")?;
    let chain_id = read_chain_id(chain.as_ref(), limit).await;
    let path = ValidatorState::path(&config.model_dir);
    let mut state = resume_or_new(&path, netuid, chain_id)?;
    fit_state_to_chain(&mut state, &metagraph, &config);
    state.save(&path)?;
    let tokenizer = Arc::new(Tokenizer::gpt2()?);
    let store = ModelStore::new(&config.model_dir);
    Ok(Arc::new(Shared {
        config,
        chain,
        hub,
        source,
        tokenizer,
        store,
        hotkey,
        state: Mutex::new(state),
        metagraph: RwLock::new(metagraph),
        first_pass_done: AtomicBool::new(false),
        observers: observe::Observers::default(),
        _lock: lock,
    }))
}

/// Refuses a hotkey that is not registered on the subnet, or has no
/// validator permit there.
fn check_permit(metagraph: &Metagraph, hk: &Hotkey, netuid: u16) -> Result<(), ValidatorError> {
    let uid = metagraph
        .neurons
        .iter()
        .find(|n| n.hotkey == hk.ss58)
        .ok_or_else(|| ValidatorError::NotRegistered {
            hotkey: hk.ss58.clone(),
            netuid,
        })?;
    if !uid.validator_permit {
        return Err(ValidatorError::NoPermit {
            hotkey: hk.ss58.clone(),
            uid: uid.uid,
            netuid,
        });
    }
    info!(uid = uid.uid, hotkey = %hk.ss58, "validator registered with a permit");
    Ok(())
}

/// The chain's identity, for the state kept against it; `None` (with a
/// warning when the chain refused) where it cannot be read in time.
async fn read_chain_id(chain: &dyn Chain, limit: Duration) -> Option<String> {
    match tokio::time::timeout(limit, chain.chain_id()).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => {
            warn!(
                "cannot read the chain's identity: {}",
                crate::error_chain(&e)
            );
            None
        }
        Err(_) => None,
    }
}

/// The state at `path` when there is one (refused when it is another
/// subnet's or chain's), else a fresh one; it keeps `chain_id` where it
/// names no chain yet.
fn resume_or_new(
    path: &Path,
    netuid: u16,
    chain_id: Option<String>,
) -> Result<ValidatorState, ValidatorError> {
    let loaded = ValidatorState::load(path)?;
    if let Some(s) = &loaded {
        failure::check_identity(path, s, netuid, chain_id.as_deref())?;
    }
    let mut state = match loaded {
        Some(s) => {
            info!(
                step = s.step,
                tracked = s.tracked.len(),
                uids_to_eval = ?s.uids_to_eval,
                pending = ?s.pending_uids,
                "resuming from {}",
                path.display()
            );
            s
        }
        None => ValidatorState::new(netuid),
    };
    if state.chain.is_none() {
        state.chain = chain_id;
    }
    Ok(state)
}

/// Brings a loaded state in line with the chain now: its epoch counted from
/// a block the chain has reached, and the competitions' state the schedule's.
fn fit_state_to_chain(state: &mut ValidatorState, metagraph: &Metagraph, config: &ValidatorConfig) {
    match state.last_epoch_block {
        None => state.last_epoch_block = Some(metagraph.block),
        // Blocks do not go back on one chain: weights would never be set.
        Some(b) if b > metagraph.block => {
            warn!(
                last_epoch_block = b,
                block = metagraph.block,
                "the state's last weight-setting block is ahead of the chain: the chain's clock went back or the state is not this chain's; counting the epoch from now"
            );
            state.last_epoch_block = Some(metagraph.block);
        }
        Some(_) => {}
    }
    let had_competitions = state.competitions.is_some();
    state.competitions = config
        .protocol()
        .competition_state(state.competitions.take(), metagraph.neurons.len());
    if had_competitions && state.competitions.is_none() {
        warn!("dropping the competitions' state: the schedule runs the sn9-2024-01 rules");
    }
}

/// Raises this process's soft limit of open files to its hard limit, as
/// servers do: the validator holds a pipe pair per worker, its state and
/// logs, and the metrics port's connections, and a low default (1024) is a
/// failure of its own that would otherwise reach the models. Returns the
/// limits before and after (`None` where there is no such limit).
// rlim_t is u64 on Linux but not on every unix.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write `lim`.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            let before = lim.rlim_cur as u64;
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    return Some((before, lim.rlim_max as u64));
                }
                warn!(
                    soft = before,
                    hard = lim.rlim_max as u64,
                    "cannot raise the open-file limit to its hard limit: {}",
                    std::io::Error::last_os_error()
                );
            }
            Some((before, before))
        }
    }
    #[cfg(not(unix))]
    None
}

/// Runs the three loops until `max_steps` steps are done (forever without it).
pub async fn run(shared: Arc<Shared>) {
    shared.config.backend.clean_up_earlier_runs().await;
    let updater = tokio::spawn(update::update_loop(shared.clone()));
    let cleaner = tokio::spawn(clean::clean_loop(shared.clone()));
    eval::eval_loop(shared.clone()).await;
    shared.config.backend.cancel_all().await;
    shared.observers.finish(Duration::from_secs(30)).await;
    updater.abort();
    cleaner.abort();
    info!("validator stopped after its steps");
}
