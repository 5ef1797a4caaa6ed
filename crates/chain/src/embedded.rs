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

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::{Chain, ChainError, Commitment, Hotkey, Metagraph, Neuron};

/// File name of the chain inside `--chain_dir`.
pub const DB_FILE: &str = "chain.sqlite3";
/// Seconds per block unless the chain was created with another value (subtensor's).
pub const DEFAULT_BLOCK_TIME: f64 = 12.0;
/// Uids per subnet unless the subnet was created with another value.
pub const DEFAULT_MAX_UIDS: u16 = 256;
/// Validator permits per subnet unless the subnet was created with another value.
pub const DEFAULT_MAX_VALIDATORS: u16 = 64;
/// Blocks between two commitments of one hotkey (subtensor's Commitments rate limit).
pub const DEFAULT_COMMIT_RATE_LIMIT: u64 = 100;
/// Blocks between two `set_weights` of one hotkey (subtensor's default `WeightsSetRateLimit`).
pub const DEFAULT_WEIGHTS_RATE_LIMIT: u64 = 100;
/// Largest commitment, as subtensor's `Data::Raw` field allows.
pub const MAX_COMMITMENT_BYTES: usize = 128;
/// Default limit for one call, as for a real node.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
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
#[derive(Debug, Clone, Copy)]
struct Clock {
    genesis_time: f64,
    block_time: f64,
}

impl Clock {
    fn block_at(&self, unix_seconds: f64) -> u64 {
        let elapsed = unix_seconds - self.genesis_time;
        if elapsed <= 0.0 {
            0
        } else {
            (elapsed / self.block_time).floor() as u64
        }
    }

    fn now(&self) -> u64 {
        self.block_at(unix_now())
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

fn storage(path: &Path, e: rusqlite::Error) -> ChainError {
    if is_busy(&e) {
        return ChainError::Timeout(BUSY);
    }
    ChainError::Storage(format!("{}: {e}", path.display()))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(
        f.code,
        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
    ))
}

// Commits `tx` unless this call's deadline has passed (then it is rolled back: a caller
// told "timed out" must be able to rely on nothing having changed).
fn commit(tx: Transaction<'_>, path: &Path) -> Result<(), ChainError> {
    if let Some((deadline, limit)) = DEADLINE.with(Cell::get) {
        if Instant::now() >= deadline {
            drop(tx);
            return Err(ChainError::Timeout(limit));
        }
    }
    tx.commit().map_err(|e| storage(path, e))
}

// A short, jittered pause between two attempts of a call that found the file busy.
fn busy_pause(attempt: u32) -> Duration {
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) % 5_000)
        .unwrap_or(0);
    Duration::from_micros((1000u64 << attempt.min(6)) + jitter)
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

impl EmbeddedChain {
    /// Opens (creating if needed) the chain in `dir`; blocking, so call it off the async runtime
    /// (or through [`EmbeddedChain::open_async`]).
    pub fn open(dir: &Path, options: &EmbeddedOptions) -> Result<Self, ChainError> {
        Self::open_with(dir, options, true)
    }

    /// Opens the chain in `dir` only if it exists (nothing is created); a reader without
    /// write permission gets a read-only chain.
    pub fn open_existing(dir: &Path, options: &EmbeddedOptions) -> Result<Self, ChainError> {
        Self::open_with(dir, options, false)
    }

    fn open_with(dir: &Path, options: &EmbeddedOptions, create: bool) -> Result<Self, ChainError> {
        let deadline = Instant::now() + options.call_timeout;
        let mut attempt = 0u32;
        loop {
            match Self::open_once(dir, options, create) {
                Err(ChainError::Timeout(BUSY)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ChainError::Timeout(options.call_timeout));
                    }
                    attempt += 1;
                    std::thread::sleep(busy_pause(attempt).min(left));
                }
                other => return other,
            }
        }
    }

    fn open_once(dir: &Path, options: &EmbeddedOptions, create: bool) -> Result<Self, ChainError> {
        if let Some(bt) = options.block_time {
            check_block_time(bt)?;
        }
        let path = dir.join(DB_FILE);
        if !create && !path.is_file() {
            return Err(ChainError::Storage(format!(
                "there is no embedded chain in {}: make one with `pretrain chain register` \
                 (or point --chain_dir at an existing one)",
                dir.display()
            )));
        }
        if create {
            std::fs::create_dir_all(dir).map_err(|e| {
                ChainError::Storage(format!(
                    "cannot create chain directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        // One process at a time creates the file, switches it to WAL and sets up the schema:
        // done concurrently on a fresh file, SQLite answers "busy" at once (no busy wait).
        // Released when dropped, at the end of this function.
        let _lock = lock_dir(dir)?;
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut conn = Connection::open_with_flags(&path, flags).map_err(|e| storage(&path, e))?;
        conn.busy_timeout(options.call_timeout)
            .map_err(|e| storage(&path, e))?;
        let read_only = conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false);
        let clock = if read_only {
            // Not ours to write (permissions): read what the owner set up.
            debug!(path = %path.display(), "opening the embedded chain read-only");
            match read_clock(&conn) {
                Ok(c) => c,
                Err(e) => {
                    // A WAL file can only be read by someone who may create its `-shm` index,
                    // unless nobody is writing: then (no `-wal` file) everything is in the main
                    // file, and SQLite reads it as immutable, without the index.
                    let wal = dir.join(format!("{DB_FILE}-wal"));
                    if wal.exists() {
                        return Err(storage(&path, e));
                    }
                    conn = open_immutable(&path).map_err(|e| storage(&path, e))?;
                    read_clock(&conn).map_err(|e| storage(&path, e))?
                }
            }
        } else {
            // WAL is a property of the file: the first opener switches it, later ones see it.
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(|e| storage(&path, e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(ChainError::Storage(format!(
                    "{}: cannot switch to WAL journal (got {mode})",
                    path.display()
                )));
            }
            // NORMAL is durable against a crashed process (not against power loss) and keeps
            // commits cheap; the file is never corrupted either way.
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| storage(&path, e))?;
            init_schema(&mut conn, options.block_time).map_err(|e| storage(&path, e))?
        };
        check_block_time(clock.block_time).map_err(|_| {
            ChainError::Storage(format!(
                "{}: the stored block time {} is unusable; this chain cannot be used, remove {} to start a new one",
                path.display(),
                clock.block_time,
                dir.display()
            ))
        })?;
        if let Some(bt) = options.block_time {
            if (bt - clock.block_time).abs() > 1e-9 {
                warn!(
                    requested = bt,
                    stored = clock.block_time,
                    "the embedded chain in {} keeps the block time it was created with",
                    dir.display()
                );
            }
        }
        debug!(path = %path.display(), genesis_time = clock.genesis_time, block_time = clock.block_time, "embedded chain open");
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
            clock,
            call_timeout: options.call_timeout,
        })
    }

    /// [`EmbeddedChain::open`] on a blocking thread, with the call timeout.
    pub async fn open_async(dir: &Path, options: &EmbeddedOptions) -> Result<Self, ChainError> {
        Self::open_async_with(dir, options, true).await
    }

    /// [`EmbeddedChain::open_existing`] on a blocking thread, with the call timeout.
    pub async fn open_existing_async(
        dir: &Path,
        options: &EmbeddedOptions,
    ) -> Result<Self, ChainError> {
        Self::open_async_with(dir, options, false).await
    }

    async fn open_async_with(
        dir: &Path,
        options: &EmbeddedOptions,
        create: bool,
    ) -> Result<Self, ChainError> {
        let dir = dir.to_path_buf();
        let opts = options.clone();
        let timeout = options.call_timeout;
        match tokio::time::timeout(
            timeout + GRACE,
            tokio::task::spawn_blocking(move || Self::open_with(&dir, &opts, create)),
        )
        .await
        {
            Err(_) => Err(ChainError::Timeout(timeout)),
            Ok(Err(e)) => Err(ChainError::Storage(format!(
                "opening the chain failed: {e}"
            ))),
            Ok(Ok(Err(ChainError::Timeout(BUSY)))) => Err(ChainError::Timeout(timeout)),
            Ok(Ok(r)) => r,
        }
    }

    /// Path of the SQLite file.
    pub fn db_path(&self) -> &Path {
        &self.path
    }

    /// Seconds per block.
    pub fn block_time(&self) -> f64 {
        self.clock.block_time
    }

    /// Unix time (seconds) of block 0.
    pub fn genesis_time(&self) -> f64 {
        self.clock.genesis_time
    }

    // Runs `f` on a blocking thread with this chain's connection, within the call timeout.
    // `f` may run more than once: a call that found the file busy is run again (its
    // transaction was rolled back) until it gets through or the deadline passes.
    async fn run<T, F>(&self, mut f: F) -> Result<T, ChainError>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection, Clock, &Path) -> Result<T, ChainError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let clock = self.clock;
        let path = self.path.clone();
        let limit = self.call_timeout;
        let deadline = Instant::now() + limit;
        let task = tokio::task::spawn_blocking(move || {
            // A panic in an earlier call rolled its transaction back; the connection is fine.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            DEADLINE.with(|d| d.set(Some((deadline, limit))));
            let mut attempt = 0u32;
            let result = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break Err(ChainError::Timeout(limit));
                }
                if let Err(e) = guard.busy_timeout(left) {
                    break Err(storage(&path, e));
                }
                match f(&mut guard, clock, &path) {
                    Err(ChainError::Timeout(BUSY)) => {
                        attempt += 1;
                        std::thread::sleep(busy_pause(attempt).min(left));
                    }
                    other => break other,
                }
            };
            DEADLINE.with(|d| d.set(None));
            result
        });
        // The blocking call stops itself at the deadline; this outer limit only guards against
        // a wedged thread (and even then `commit` keeps a late write from landing).
        match tokio::time::timeout(limit + GRACE, task).await {
            Err(_) => Err(ChainError::Timeout(limit)),
            Ok(Err(e)) => Err(ChainError::Storage(format!("chain call failed: {e}"))),
            Ok(Ok(r)) => r,
        }
    }

    /// Creates subnet `netuid` with `params`; false if it already existed (its params are kept).
    pub async fn create_subnet(
        &self,
        netuid: u16,
        params: SubnetParams,
    ) -> Result<bool, ChainError> {
        if params.max_uids == 0 || params.max_validators == 0 {
            return Err(ChainError::Rejected(
                "a subnet needs max_uids >= 1 and max_validators >= 1".into(),
            ));
        }
        self.run(move |conn, clock, path| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| storage(path, e))?;
            let created =
                insert_subnet(&tx, netuid, params, clock.now()).map_err(|e| storage(path, e))?;
            commit(tx, path)?;
            if created {
                info!(netuid, ?params, "created subnet on the embedded chain");
            }
            Ok(created)
        })
        .await
    }

    /// The subnet's parameters.
    pub async fn subnet(&self, netuid: u16) -> Result<SubnetParams, ChainError> {
        self.run(move |conn, _, path| subnet_params(conn, netuid, path))
            .await
    }

    /// Registers `hotkey` (owned by `coldkey`) on the subnet, creating the subnet with default
    /// params if it does not exist. Registering a registered hotkey changes nothing.
    pub async fn register(
        &self,
        netuid: u16,
        hotkey: &str,
        coldkey: &str,
    ) -> Result<Registration, ChainError> {
        let hotkey = check_ss58(hotkey)?;
        let coldkey = check_ss58(coldkey)?;
        self.run(move |conn, clock, path| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| storage(path, e))?;
            let block = clock.now();
            if insert_subnet(&tx, netuid, SubnetParams::default(), block).map_err(|e| storage(path, e))? {
                info!(netuid, "created subnet on the embedded chain (default params)");
            }
            let params = subnet_params(&tx, netuid, path)?;
            let existing: Option<(u16, u64)> = tx
                .query_row(
                    "SELECT uid, registered_block FROM neurons WHERE netuid = ?1 AND hotkey = ?2",
                    params![netuid, hotkey],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| storage(path, e))?;
            if let Some((uid, block)) = existing {
                return Ok(Registration {
                    netuid,
                    uid,
                    hotkey: hotkey.clone(),
                    block,
                    already_registered: true,
                    replaced: None,
                });
            }
            let count: u32 = tx
                .query_row("SELECT COUNT(*) FROM neurons WHERE netuid = ?1", params![netuid], |r| r.get(0))
                .map_err(|e| storage(path, e))?;
            let (uid, replaced) = if count < u32::from(params.max_uids) {
                let uid = count as u16;
                tx.execute(
                    "INSERT INTO neurons (netuid, uid, hotkey, coldkey, registered_block) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![netuid, uid, hotkey, coldkey, block],
                )
                .map_err(|e| storage(path, e))?;
                (uid, None)
            } else {
                let snapshot = read_snapshot(&tx, netuid, path)?;
                let graph = compute(&snapshot, block);
                let victim = graph
                    .neurons
                    .iter()
                    .min_by(|a, b| {
                        a.validator_permit
                            .cmp(&b.validator_permit)
                            .then(a.incentive.total_cmp(&b.incentive))
                            .then(a.uid.cmp(&b.uid))
                    })
                    .ok_or_else(|| ChainError::Storage("full subnet without neurons".into()))?;
                let (uid, old) = (victim.uid, victim.hotkey.clone());
                tx.execute(
                    "UPDATE neurons SET hotkey = ?3, coldkey = ?4, registered_block = ?5 WHERE netuid = ?1 AND uid = ?2",
                    params![netuid, uid, hotkey, coldkey, block],
                )
                .map_err(|e| storage(path, e))?;
                tx.execute(
                    "DELETE FROM weights WHERE netuid = ?1 AND uid = ?2",
                    params![netuid, uid],
                )
                .map_err(|e| storage(path, e))?;
                (uid, Some(old))
            };
            commit(tx, path)?;
            info!(netuid, uid, %hotkey, block, replaced = ?replaced, "registered on the embedded chain");
            Ok(Registration {
                netuid,
                uid,
                hotkey: hotkey.clone(),
                block,
                already_registered: false,
                replaced,
            })
        })
        .await
    }

    /// Adds `amount` TAO of stake to `hotkey`, which must be registered on some subnet (as
    /// on subtensor); returns its new total, which may not pass [`MAX_TOTAL_STAKE`].
    pub async fn add_stake(&self, hotkey: &str, amount: f64) -> Result<f64, ChainError> {
        let hotkey = check_ss58(hotkey)?;
        if !(amount.is_finite() && amount > 0.0 && amount <= MAX_TOTAL_STAKE) {
            return Err(ChainError::Rejected(format!(
                "stake must be a positive amount of at most {MAX_TOTAL_STAKE} TAO, got {amount}"
            )));
        }
        self.run(move |conn, _, path| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| storage(path, e))?;
            let registered: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM neurons WHERE hotkey = ?1)",
                    params![hotkey],
                    |r| r.get(0),
                )
                .map_err(|e| storage(path, e))?;
            if !registered {
                return Err(ChainError::Rejected(format!(
                    "hotkey {hotkey} is not registered on any subnet: register it before staking"
                )));
            }
            let before: f64 = tx
                .query_row(
                    "SELECT COALESCE((SELECT stake FROM stakes WHERE hotkey = ?1), 0.0)",
                    params![hotkey],
                    |r| r.get(0),
                )
                .map_err(|e| storage(path, e))?;
            // (`before` is finite: every stored total passed this check.)
            if before + amount > MAX_TOTAL_STAKE {
                return Err(ChainError::Rejected(format!(
                    "hotkey {hotkey} has {before} TAO staked; adding {amount} would pass the total supply of {MAX_TOTAL_STAKE} TAO"
                )));
            }
            tx.execute(
                "INSERT INTO stakes (hotkey, stake) VALUES (?1, ?2)
                 ON CONFLICT(hotkey) DO UPDATE SET stake = stake + excluded.stake",
                params![hotkey, amount],
            )
            .map_err(|e| storage(path, e))?;
            let total: f64 = tx
                .query_row(
                    "SELECT stake FROM stakes WHERE hotkey = ?1",
                    params![hotkey],
                    |r| r.get(0),
                )
                .map_err(|e| storage(path, e))?;
            commit(tx, path)?;
            info!(%hotkey, amount, total, "added stake on the embedded chain");
            Ok(total)
        })
        .await
    }

    /// The weights each uid last set on the subnet: `(uid, [(target uid, value)])`, by uid.
    pub async fn weights(&self, netuid: u16) -> Result<Vec<(u16, Vec<(u16, u16)>)>, ChainError> {
        self.run(move |conn, _, path| {
            subnet_params(conn, netuid, path)?;
            let snap = read_snapshot(conn, netuid, path)?;
            let mut rows: Vec<(u16, Vec<(u16, u16)>)> = snap
                .weights
                .into_iter()
                .map(|(uid, w)| (uid, w.pairs))
                .collect();
            rows.sort_by_key(|r| r.0);
            Ok(rows)
        })
        .await
    }
}

fn init_schema(conn: &mut Connection, block_time: Option<f64>) -> rusqlite::Result<Clock> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS subnets (
             netuid INTEGER PRIMARY KEY,
             max_uids INTEGER NOT NULL,
             max_validators INTEGER NOT NULL,
             commit_rate_limit INTEGER NOT NULL,
             weights_rate_limit INTEGER NOT NULL,
             created_block INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS neurons (
             netuid INTEGER NOT NULL,
             uid INTEGER NOT NULL,
             hotkey TEXT NOT NULL,
             coldkey TEXT NOT NULL,
             registered_block INTEGER NOT NULL,
             PRIMARY KEY (netuid, uid),
             UNIQUE (netuid, hotkey));
         CREATE TABLE IF NOT EXISTS stakes (hotkey TEXT PRIMARY KEY, stake REAL NOT NULL);
         CREATE TABLE IF NOT EXISTS commitments (
             netuid INTEGER NOT NULL,
             hotkey TEXT NOT NULL,
             block INTEGER NOT NULL,
             data BLOB NOT NULL,
             PRIMARY KEY (netuid, hotkey));
         CREATE TABLE IF NOT EXISTS weights (
             netuid INTEGER NOT NULL,
             uid INTEGER NOT NULL,
             block INTEGER NOT NULL,
             version_key INTEGER NOT NULL,
             pairs TEXT NOT NULL,
             PRIMARY KEY (netuid, uid));",
    )?;
    let get = |key: &str| -> rusqlite::Result<Option<String>> {
        tx.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()
    };
    let stored_genesis = get("genesis_time")?;
    let stored_block_time = get("block_time")?;
    let clock = match (stored_genesis, stored_block_time) {
        (Some(g), Some(b)) => Clock {
            genesis_time: g.parse().map_err(|_| bad_meta("genesis_time", &g))?,
            block_time: b.parse().map_err(|_| bad_meta("block_time", &b))?,
        },
        _ => {
            let clock = Clock {
                genesis_time: unix_now(),
                block_time: block_time.unwrap_or(DEFAULT_BLOCK_TIME),
            };
            for (k, v) in [
                ("schema_version", SCHEMA_VERSION.to_string()),
                ("genesis_time", clock.genesis_time.to_string()),
                ("block_time", clock.block_time.to_string()),
            ] {
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                    params![k, v],
                )?;
            }
            clock
        }
    };
    if !(clock.block_time.is_finite() && clock.block_time > 0.0) {
        return Err(bad_meta("block_time", &clock.block_time.to_string()));
    }
    tx.commit()?;
    Ok(clock)
}

// A read-only connection to a chain file that nobody may change while it is open.
fn open_immutable(path: &Path) -> rusqlite::Result<Connection> {
    let mut uri = String::from("file:");
    for ch in path.to_string_lossy().chars() {
        match ch {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

// The clock of an existing chain, read without writing anything.
fn read_clock(conn: &Connection) -> rusqlite::Result<Clock> {
    let get = |key: &str| -> rusqlite::Result<String> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
    };
    let (g, b) = (get("genesis_time")?, get("block_time")?);
    Ok(Clock {
        genesis_time: g.parse().map_err(|_| bad_meta("genesis_time", &g))?,
        block_time: b.parse().map_err(|_| bad_meta("block_time", &b))?,
    })
}

// Takes the directory's lock file (blocking until other openers are done); `None` where the
// directory is not writable, i.e. for a read-only user, who changes nothing.
fn lock_dir(dir: &Path) -> Result<Option<std::fs::File>, ChainError> {
    let path = dir.join(LOCK_FILE);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) if e.raw_os_error() == Some(30) => return Ok(None), // EROFS
        Err(e) => {
            return Err(ChainError::Storage(format!(
                "cannot open {}: {e}",
                path.display()
            )))
        }
    };
    file.lock()
        .map_err(|e| ChainError::Storage(format!("cannot lock {}: {e}", path.display())))?;
    Ok(Some(file))
}

fn bad_meta(key: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidParameterName(format!("stored {key} {value:?} is not a number"))
}

fn insert_subnet(
    conn: &Connection,
    netuid: u16,
    p: SubnetParams,
    block: u64,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO subnets (netuid, max_uids, max_validators, commit_rate_limit, weights_rate_limit, created_block)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![netuid, p.max_uids, p.max_validators, p.commit_rate_limit, p.weights_rate_limit, block],
    )?;
    Ok(n == 1)
}

fn subnet_params(conn: &Connection, netuid: u16, path: &Path) -> Result<SubnetParams, ChainError> {
    conn.query_row(
        "SELECT max_uids, max_validators, commit_rate_limit, weights_rate_limit FROM subnets WHERE netuid = ?1",
        params![netuid],
        |r| {
            Ok(SubnetParams {
                max_uids: r.get(0)?,
                max_validators: r.get(1)?,
                commit_rate_limit: r.get(2)?,
                weights_rate_limit: r.get(3)?,
            })
        },
    )
    .optional()
    .map_err(|e| storage(path, e))?
    .ok_or(ChainError::NoSuchSubnet(netuid))
}

struct NeuronRow {
    uid: u16,
    hotkey: String,
    coldkey: String,
    registered_block: u64,
    stake: f64,
}

struct WeightRow {
    block: u64,
    pairs: Vec<(u16, u16)>,
}

// Everything the metagraph is computed from, read in one transaction.
struct Snapshot {
    netuid: u16,
    params: SubnetParams,
    neurons: Vec<NeuronRow>,
    weights: HashMap<u16, WeightRow>,
}

fn read_snapshot(conn: &Connection, netuid: u16, path: &Path) -> Result<Snapshot, ChainError> {
    let params = subnet_params(conn, netuid, path)?;
    let mut stmt = conn
        .prepare(
            "SELECT n.uid, n.hotkey, n.coldkey, n.registered_block, COALESCE(s.stake, 0.0)
             FROM neurons n LEFT JOIN stakes s ON s.hotkey = n.hotkey
             WHERE n.netuid = ?1 ORDER BY n.uid",
        )
        .map_err(|e| storage(path, e))?;
    let neurons = stmt
        .query_map(params![netuid], |r| {
            Ok(NeuronRow {
                uid: r.get(0)?,
                hotkey: r.get(1)?,
                coldkey: r.get(2)?,
                registered_block: r.get(3)?,
                stake: r.get(4)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| storage(path, e))?;
    let mut stmt = conn
        .prepare("SELECT uid, block, pairs FROM weights WHERE netuid = ?1")
        .map_err(|e| storage(path, e))?;
    let raw = stmt
        .query_map(params![netuid], |r| {
            Ok((
                r.get::<_, u16>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| storage(path, e))?;
    let mut weights = HashMap::new();
    for (uid, block, pairs) in raw {
        let pairs: Vec<(u16, u16)> = serde_json::from_str(&pairs).map_err(|e| {
            ChainError::Storage(format!(
                "{}: weights of uid {uid} unreadable: {e}",
                path.display()
            ))
        })?;
        weights.insert(uid, WeightRow { block, pairs });
    }
    Ok(Snapshot {
        netuid,
        params,
        neurons,
        weights,
    })
}

// Validator permits and incentives, by the rules in the module docs.
fn compute(snap: &Snapshot, block: u64) -> Metagraph {
    let n = snap.neurons.len();
    let mut by_stake: Vec<&NeuronRow> = snap.neurons.iter().filter(|r| r.stake > 0.0).collect();
    by_stake.sort_by(|a, b| b.stake.total_cmp(&a.stake).then(a.uid.cmp(&b.uid)));
    let mut permit = vec![false; n];
    for r in by_stake
        .iter()
        .take(usize::from(snap.params.max_validators))
    {
        permit[usize::from(r.uid)] = true;
    }
    let mut incentive = vec![0.0f64; n];
    let mut total_stake = 0.0;
    for r in &snap.neurons {
        let i = usize::from(r.uid);
        if !permit[i] {
            continue;
        }
        let Some(row) = snap.weights.get(&r.uid) else {
            continue;
        };
        // Drop self-weights and weights set before the target's current owner registered.
        let kept: Vec<(usize, f64)> = row
            .pairs
            .iter()
            .map(|&(j, v)| (usize::from(j), f64::from(v)))
            .filter(|&(j, v)| {
                j != i && j < n && v > 0.0 && row.block > snap.neurons[j].registered_block
            })
            .collect();
        let sum: f64 = kept.iter().map(|p| p.1).sum();
        if sum <= 0.0 {
            continue;
        }
        total_stake += r.stake;
        for (j, v) in kept {
            incentive[j] += r.stake * v / sum;
        }
    }
    if total_stake > 0.0 {
        for x in &mut incentive {
            *x /= total_stake;
        }
    }
    let total: f64 = incentive.iter().sum();
    if total > 0.0 {
        for x in &mut incentive {
            *x /= total;
        }
    }
    Metagraph {
        netuid: snap.netuid,
        block,
        neurons: snap
            .neurons
            .iter()
            .map(|r| Neuron {
                uid: r.uid,
                hotkey: r.hotkey.clone(),
                coldkey: r.coldkey.clone(),
                stake: r.stake,
                incentive: incentive[usize::from(r.uid)],
                validator_permit: permit[usize::from(r.uid)],
            })
            .collect(),
    }
}

fn uid_of(
    conn: &Connection,
    netuid: u16,
    hotkey: &str,
    path: &Path,
) -> Result<Option<u16>, ChainError> {
    conn.query_row(
        "SELECT uid FROM neurons WHERE netuid = ?1 AND hotkey = ?2",
        params![netuid, hotkey],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| storage(path, e))
}

#[async_trait]
impl Chain for EmbeddedChain {
    async fn current_block(&self) -> Result<u64, ChainError> {
        Ok(self.clock.now())
    }

    async fn metagraph(&self, netuid: u16) -> Result<Metagraph, ChainError> {
        self.run(move |conn, clock, path| {
            // One read transaction: a consistent view while other processes write.
            let tx = conn.transaction().map_err(|e| storage(path, e))?;
            let snap = read_snapshot(&tx, netuid, path)?;
            let graph = compute(&snap, clock.now());
            tx.finish().map_err(|e| storage(path, e))?;
            Ok(graph)
        })
        .await
    }

    async fn uid_of(&self, netuid: u16, hotkey: &str) -> Result<Option<u16>, ChainError> {
        let hotkey = hotkey.to_string();
        self.run(move |conn, _, path| {
            subnet_params(conn, netuid, path)?;
            uid_of(conn, netuid, &hotkey, path)
        })
        .await
    }

    async fn commit(&self, hotkey: &Hotkey, netuid: u16, data: &[u8]) -> Result<u64, ChainError> {
        if data.len() > MAX_COMMITMENT_BYTES {
            return Err(ChainError::Rejected(format!(
                "commitment of {} bytes is over the chain's limit of {MAX_COMMITMENT_BYTES}",
                data.len()
            )));
        }
        let hotkey = hotkey.ss58.clone();
        let data = data.to_vec();
        self.run(move |conn, clock, path| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| storage(path, e))?;
            let params = subnet_params(&tx, netuid, path)?;
            if uid_of(&tx, netuid, &hotkey, path)?.is_none() {
                return Err(ChainError::NotRegistered { hotkey: hotkey.clone(), netuid });
            }
            let block = clock.now();
            let last: Option<u64> = tx
                .query_row(
                    "SELECT block FROM commitments WHERE netuid = ?1 AND hotkey = ?2",
                    params![netuid, hotkey],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| storage(path, e))?;
            if let Some(last) = last {
                let next = last.saturating_add(params.commit_rate_limit);
                if block < next {
                    return Err(ChainError::RateLimited(format!(
                        "hotkey {hotkey} committed on subnet {netuid} at block {last}; the next commitment is allowed in {} blocks (at block {next})",
                        next - block
                    )));
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO commitments (netuid, hotkey, block, data) VALUES (?1, ?2, ?3, ?4)",
                params![netuid, hotkey, block, data],
            )
            .map_err(|e| storage(path, e))?;
            commit(tx, path)?;
            debug!(netuid, %hotkey, block, bytes = data.len(), "commitment stored");
            Ok(block)
        })
        .await
    }

    async fn commitment(
        &self,
        netuid: u16,
        hotkey: &str,
    ) -> Result<Option<Commitment>, ChainError> {
        let hotkey = hotkey.to_string();
        self.run(move |conn, _, path| {
            subnet_params(conn, netuid, path)?;
            conn.query_row(
                "SELECT block, data FROM commitments WHERE netuid = ?1 AND hotkey = ?2",
                params![netuid, hotkey],
                |r| {
                    Ok(Commitment {
                        hotkey: hotkey.clone(),
                        block: r.get(0)?,
                        data: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| storage(path, e))
        })
        .await
    }

    async fn commitments(&self, netuid: u16) -> Result<Vec<Commitment>, ChainError> {
        self.run(move |conn, _, path| {
            subnet_params(conn, netuid, path)?;
            // Only hotkeys that hold a uid now: a replaced neuron's commitment is not the subnet's.
            let mut stmt = conn
                .prepare(
                    "SELECT c.hotkey, c.block, c.data FROM commitments c
                     JOIN neurons n ON n.netuid = c.netuid AND n.hotkey = c.hotkey
                     WHERE c.netuid = ?1 ORDER BY n.uid",
                )
                .map_err(|e| storage(path, e))?;
            let rows = stmt
                .query_map(params![netuid], |r| {
                    Ok(Commitment {
                        hotkey: r.get(0)?,
                        block: r.get(1)?,
                        data: r.get(2)?,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| storage(path, e))?;
            Ok(rows)
        })
        .await
    }

    async fn set_weights(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<(), ChainError> {
        crate::check_weights(uids, values)?;
        let hotkey = hotkey.ss58.clone();
        let pairs: Vec<(u16, u16)> = uids.iter().copied().zip(values.iter().copied()).collect();
        self.run(move |conn, clock, path| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| storage(path, e))?;
            let snap = read_snapshot(&tx, netuid, path)?;
            let block = clock.now();
            let Some(me) = snap.neurons.iter().find(|r| r.hotkey == hotkey).map(|r| r.uid) else {
                return Err(ChainError::NotRegistered { hotkey: hotkey.clone(), netuid });
            };
            if let Some(bad) = pairs.iter().find(|p| usize::from(p.0) >= snap.neurons.len()) {
                return Err(ChainError::Rejected(format!(
                    "uid {} does not exist on subnet {netuid} ({} neurons)",
                    bad.0,
                    snap.neurons.len()
                )));
            }
            let graph = compute(&snap, block);
            if !graph.neurons[usize::from(me)].validator_permit {
                return Err(ChainError::Rejected(format!(
                    "hotkey {hotkey} (uid {me}) has no validator permit on subnet {netuid}: it needs stake (`pretrain chain stake`)"
                )));
            }
            if let Some(last) = snap.weights.get(&me).map(|w| w.block) {
                let next = last.saturating_add(snap.params.weights_rate_limit);
                if block < next {
                    return Err(ChainError::RateLimited(format!(
                        "hotkey {hotkey} set weights on subnet {netuid} at block {last}; the next set_weights is allowed in {} blocks (at block {next})",
                        next - block
                    )));
                }
            }
            let json = serde_json::to_string(&pairs)
                .map_err(|e| ChainError::Storage(format!("cannot encode weights: {e}")))?;
            tx.execute(
                "INSERT OR REPLACE INTO weights (netuid, uid, block, version_key, pairs) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![netuid, me, block, version_key as i64, json],
            )
            .map_err(|e| storage(path, e))?;
            commit(tx, path)?;
            debug!(netuid, uid = me, block, n = pairs.len(), "weights stored");
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neuron(uid: u16, stake: f64, registered_block: u64) -> NeuronRow {
        NeuronRow {
            uid,
            hotkey: format!("h{uid}"),
            coldkey: "c".into(),
            registered_block,
            stake,
        }
    }

    #[test]
    fn incentive_is_stake_weighted_and_normalised() {
        let mut weights = HashMap::new();
        // uid 0 (stake 3) puts all on uid 2; uid 1 (stake 1) splits 1:1 between 2 and 3.
        weights.insert(
            0,
            WeightRow {
                block: 10,
                pairs: vec![(2, 65535)],
            },
        );
        weights.insert(
            1,
            WeightRow {
                block: 10,
                pairs: vec![(2, 100), (3, 100), (1, 65535)],
            },
        );
        let snap = Snapshot {
            netuid: 1,
            params: SubnetParams::default(),
            neurons: vec![
                neuron(0, 3.0, 0),
                neuron(1, 1.0, 0),
                neuron(2, 0.0, 0),
                neuron(3, 0.0, 0),
            ],
            weights,
        };
        let g = compute(&snap, 11);
        let inc: Vec<f64> = g.neurons.iter().map(|n| n.incentive).collect();
        // (3*1 + 1*0.5)/4 = 0.875 and (1*0.5)/4 = 0.125; self-weight of uid 1 ignored.
        assert!((inc[2] - 0.875).abs() < 1e-12, "{inc:?}");
        assert!((inc[3] - 0.125).abs() < 1e-12, "{inc:?}");
        assert_eq!(inc[0], 0.0);
        assert_eq!(inc[1], 0.0);
        let permits: Vec<bool> = g.neurons.iter().map(|n| n.validator_permit).collect();
        assert_eq!(permits, vec![true, true, false, false]);
    }

    #[test]
    fn weights_set_before_registration_do_not_count() {
        let mut weights = HashMap::new();
        weights.insert(
            0,
            WeightRow {
                block: 5,
                pairs: vec![(1, 1), (2, 1)],
            },
        );
        let snap = Snapshot {
            netuid: 1,
            params: SubnetParams::default(),
            neurons: vec![neuron(0, 1.0, 0), neuron(1, 0.0, 0), neuron(2, 0.0, 7)],
            weights,
        };
        let g = compute(&snap, 8);
        assert_eq!(g.neurons[1].incentive, 1.0);
        assert_eq!(g.neurons[2].incentive, 0.0);
    }

    #[test]
    fn permits_go_to_the_top_stakes_then_lowest_uid() {
        let snap = Snapshot {
            netuid: 1,
            params: SubnetParams {
                max_validators: 2,
                ..SubnetParams::default()
            },
            neurons: vec![
                neuron(0, 1.0, 0),
                neuron(1, 5.0, 0),
                neuron(2, 1.0, 0),
                neuron(3, 0.0, 0),
            ],
            weights: HashMap::new(),
        };
        let g = compute(&snap, 1);
        let permits: Vec<bool> = g.neurons.iter().map(|n| n.validator_permit).collect();
        assert_eq!(permits, vec![true, true, false, false]);
        assert!(g.neurons.iter().all(|n| n.incentive == 0.0));
    }

    #[test]
    fn blocks_follow_wall_time() {
        let c = Clock {
            genesis_time: 1000.0,
            block_time: 12.0,
        };
        assert_eq!(c.block_at(999.0), 0);
        assert_eq!(c.block_at(1011.9), 0);
        assert_eq!(c.block_at(1012.0), 1);
        assert_eq!(c.block_at(1000.0 + 12.0 * 100.0 + 5.0), 100);
    }
}
