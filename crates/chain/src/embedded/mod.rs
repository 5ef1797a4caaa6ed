//! The embedded chain (`--subtensor.network embedded`): a subnet kept in one
//! SQLite file under `--chain_dir`, for running the whole subnet on one
//! machine without a node.
//!
//! Several processes use the file at once: SQLite's WAL journal lets readers
//! run beside the single writer, every write is one `BEGIN IMMEDIATE`
//! transaction (so a process killed mid-write leaves the file as it was before
//! that write), and a call that finds the file busy runs again until its
//! deadline; past the deadline nothing is committed (a timed-out call never
//! lands later). Opening is serialised by [`LOCK_FILE`], since SQLite answers
//! "busy" without waiting while a fresh file is set up.
//!
//! Rules (also in the crate README):
//! - **Blocks** advance with wall time: `block = floor((now - genesis_time) /
//!   block_time)`; both are stored in the file when it is created, so every
//!   process agrees on the height.
//! - **Registration**: uids are handed out in order, `0..max_uids` (default 256).
//!   On a full subnet the newcomer replaces the neuron with the lowest
//!   incentive among those without a validator permit (validators earn no
//!   incentive here, so they would always go first); if every neuron has a
//!   permit, the lowest incentive of all; ties go to the lowest uid. There is no
//!   immunity period. The
//!   replaced neuron's own weights are deleted; weights that others set on its
//!   uid before the newcomer registered no longer count (as in subtensor).
//! - **Stake** belongs to a hotkey (not to a subnet) and only grows; only a registered
//!   hotkey can be staked, and no hotkey holds more than [`MAX_TOTAL_STAKE`].
//! - **Commitments**: at most [`MAX_COMMITMENT_BYTES`]; one per
//!   `commit_rate_limit` blocks (default 100, subtensor's) per hotkey and subnet.
//! - **Weights**: only neurons with a validator permit; one `set_weights` per
//!   `weights_rate_limit` blocks (default 100, subtensor's `WeightsSetRateLimit`).
//! - **Validator permit**: the `max_validators` (default 64) neurons with the
//!   most stake, among those with stake > 0; ties broken by the lowest uid.
//! - **Incentive** (computed when read, not Yuma consensus): for each permitted
//!   validator `i` with weights, its row `w_i` (self-weight and stale weights
//!   dropped) is normalised to sum 1; `incentive_j = sum_i stake_i * w_ij /
//!   sum_i stake_i`; the vector is then normalised to sum 1 (all zero when no
//!   validator has set weights).
//!
//! Split by concern: `store` (the SQLite file: opening, locking, schema,
//! deadlines and retries while busy), `registry` (subnets, registration,
//! stake), `metagraph` (permits and incentives) and `calls` (the `Chain`
//! impl: commitments and weights with their rate limits).

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::ChainError;

pub use reveal::{CommitReveal, DEFAULT_REVEAL_PERIOD_EPOCHS, DEFAULT_TEMPO, MAX_PENDING_COMMITS};

mod calls;
mod metagraph;
mod registry;
mod reveal;
mod store;
#[cfg(test)]
mod tests;

/// File name of the chain inside `--chain_dir`.
pub const DB_FILE: &str = "chain.sqlite3";
/// Seconds per block unless the chain was created with another value (subtensor's).
pub const DEFAULT_BLOCK_TIME: f64 = 12.0;
/// Uids per subnet unless the subnet was created with another value.
pub const DEFAULT_MAX_UIDS: u16 = 256;
/// Validator permits per subnet unless the subnet was created with another value.
pub const DEFAULT_MAX_VALIDATORS: u16 = 64;
/// Blocks between two commitments of one hotkey (the core constant, subtensor's).
pub use pretrain_core::constants::COMMIT_RATE_LIMIT_BLOCKS as DEFAULT_COMMIT_RATE_LIMIT;
/// Blocks between two `set_weights` of one hotkey (subtensor's default `WeightsSetRateLimit`).
pub const DEFAULT_WEIGHTS_RATE_LIMIT: u64 = 100;
/// Default limit for one call, as for a real node (the core constant).
pub use pretrain_core::constants::CHAIN_CALL_TIMEOUT as DEFAULT_CALL_TIMEOUT;
/// Largest commitment, as subtensor's `Data::Raw` field allows (the core constant).
pub use pretrain_core::constants::MAX_COMMITMENT_BYTES;
/// Shortest block time a chain can be created with (blocks must fit the file's 64-bit integers for ages).
pub const MIN_BLOCK_TIME: f64 = 0.001;
/// Longest block time a chain can be created with (one day).
pub const MAX_BLOCK_TIME: f64 = 86_400.0;
/// Most stake a hotkey can hold: all the TAO there will ever be.
pub const MAX_TOTAL_STAKE: f64 = 21_000_000.0;
/// File in `--chain_dir` that serialises the opening (and creation) of the chain between processes.
pub const LOCK_FILE: &str = "chain.lock";
// Internal marker: SQLite said "busy" (another process holds the lock); `run` retries the
// whole call until its deadline, so it never reaches a caller.
const BUSY: Duration = Duration::from_nanos(1);
// Extra time the async side waits for a blocking call that stops itself at its deadline.
const GRACE: Duration = Duration::from_secs(5);
const SCHEMA_VERSION: i64 = 1;

thread_local! {
    // The deadline (and the limit it came from) of the call running on this thread: `commit`
    // refuses to land a write after it, so a call reported as timed out never lands later.
    static DEADLINE: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// Checks a block time: finite, within [`MIN_BLOCK_TIME`]..=[`MAX_BLOCK_TIME`] seconds.
pub fn check_block_time(bt: f64) -> Result<f64, ChainError> {
    if bt.is_finite() && (MIN_BLOCK_TIME..=MAX_BLOCK_TIME).contains(&bt) {
        Ok(bt)
    } else {
        Err(ChainError::Rejected(format!(
            "block time must be between {MIN_BLOCK_TIME} and {MAX_BLOCK_TIME} seconds, got {bt}"
        )))
    }
}

/// Parameters of one subnet, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetParams {
    /// Most neurons the subnet holds.
    pub max_uids: u16,
    /// Most neurons with a validator permit.
    pub max_validators: u16,
    /// Blocks between two commitments of one hotkey.
    pub commit_rate_limit: u64,
    /// Blocks between two `set_weights` of one hotkey.
    pub weights_rate_limit: u64,
}

impl Default for SubnetParams {
    fn default() -> Self {
        Self {
            max_uids: DEFAULT_MAX_UIDS,
            max_validators: DEFAULT_MAX_VALIDATORS,
            commit_rate_limit: DEFAULT_COMMIT_RATE_LIMIT,
            weights_rate_limit: DEFAULT_WEIGHTS_RATE_LIMIT,
        }
    }
}

/// How to open an embedded chain.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Seconds per block for a new chain; an existing chain keeps its own.
    pub block_time: Option<f64>,
    /// Limit for one call.
    pub call_timeout: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            block_time: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// The outcome of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Subnet.
    pub netuid: u16,
    /// The hotkey's uid.
    pub uid: u16,
    /// Hotkey SS58 address.
    pub hotkey: String,
    /// Block of the registration (of the earlier one if it was already registered).
    pub block: u64,
    /// True when the hotkey was registered before this call (nothing changed).
    pub already_registered: bool,
    /// The hotkey this one replaced on a full subnet.
    pub replaced: Option<String>,
}

// Block clock shared by every process: stored in the file at creation.
#[derive(Debug, Clone)]
struct Clock {
    genesis_time: f64,
    block_time: f64,
    // The highest block this process has handed out: a system clock stepped
    // back while it runs holds the block there instead of moving it back.
    highest: Arc<AtomicU64>,
}

impl Clock {
    fn new(genesis_time: f64, block_time: f64) -> Self {
        Self {
            genesis_time,
            block_time,
            highest: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `block`, or the highest block already handed out if that is later.
    fn monotonic(&self, block: u64) -> u64 {
        let before = self.highest.fetch_max(block, Ordering::Relaxed);
        if block < before {
            tracing::warn!(
                block,
                highest = before,
                "the system clock went back: the embedded chain holds its block until it catches up"
            );
            before
        } else {
            block
        }
    }

    fn block_at(&self, unix_seconds: f64) -> u64 {
        let elapsed = unix_seconds - self.genesis_time;
        if elapsed <= 0.0 {
            0
        } else {
            (elapsed / self.block_time).floor() as u64
        }
    }

    fn now(&self) -> u64 {
        self.monotonic(self.block_at(unix_now()))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A chain kept in one SQLite file; cheap to clone, safe to share between tasks and processes.
#[derive(Clone)]
pub struct EmbeddedChain {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    clock: Clock,
    call_timeout: Duration,
    /// `embedded:<random hex>`, made with the chain.
    id: Option<String>,
}

impl std::fmt::Debug for EmbeddedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChain")
            .field("path", &self.path)
            .field("genesis_time", &self.clock.genesis_time)
            .field("block_time", &self.clock.block_time)
            .finish()
    }
}

/// Checks that `address` is an SS58 address with prefix 42.
pub fn check_ss58(address: &str) -> Result<String, ChainError> {
    if bittensor_wallet::utils::is_valid_ss58_address(address) {
        Ok(address.to_string())
    } else {
        Err(ChainError::Rejected(format!(
            "{address:?} is not an SS58 address (prefix 42)"
        )))
    }
}
