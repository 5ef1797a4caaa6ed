//! The SQLite file: opening (serialised by the lock file), the schema, the
//! read-only fallback, and running a call on a blocking thread within its
//! deadline, again while the file is busy.

use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use tracing::{debug, warn};

use super::{
    check_block_time, unix_now, Clock, EmbeddedChain, EmbeddedOptions, SubnetParams, BUSY, DB_FILE,
    DEADLINE, DEFAULT_BLOCK_TIME, GRACE, LOCK_FILE, SCHEMA_VERSION,
};
use crate::timelock::Beacon;
use crate::ChainError;

pub(super) fn storage(path: &Path, e: rusqlite::Error) -> ChainError {
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
pub(super) fn commit(tx: Transaction<'_>, path: &Path) -> Result<(), ChainError> {
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
        check_open_target(dir, &path, create)?;
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
            read_only_clock(&mut conn, dir, &path)?
        } else {
            prepare_writable(&mut conn, &path, options.block_time)?
        };
        check_stored_block_time(&clock, options.block_time, dir, &path)?;
        let id = chain_id(&conn, !read_only).map_err(|e| storage(&path, e))?;
        check_clock_not_behind(&conn, &clock, &path)?;
        debug!(path = %path.display(), genesis_time = clock.genesis_time, block_time = clock.block_time, "embedded chain open");
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
            clock,
            call_timeout: options.call_timeout,
            id,
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
    pub(super) async fn run<T, F>(&self, mut f: F) -> Result<T, ChainError>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection, Clock, &Path) -> Result<T, ChainError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let clock = self.clock.clone();
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
                match f(&mut guard, clock.clone(), &path) {
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
}

// Refuses to open what is not a chain (no file, an empty file) unless this
// command may create one, and makes the directory when it may.
fn check_open_target(dir: &Path, path: &Path, create: bool) -> Result<(), ChainError> {
    if !create && !path.is_file() {
        return Err(ChainError::Storage(format!(
            "there is no embedded chain in {}: make one with `pretrain chain register` \
             (or point --chain_dir at an existing one)",
            dir.display()
        )));
    }
    // An empty file (a full disk, a truncated copy) is not a chain to
    // make afresh: only a command that may create one does.
    if !create && std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Err(ChainError::Storage(format!(
            "{} is empty, not a chain: restore it, or remove it and make a new chain with \
             `pretrain chain register`",
            path.display()
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
    Ok(())
}

// The clock of a chain that is not ours to write (permissions): read what the
// owner set up, through an immutable connection (replacing `conn`) when the
// WAL index cannot be made.
fn read_only_clock(conn: &mut Connection, dir: &Path, path: &Path) -> Result<Clock, ChainError> {
    debug!(path = %path.display(), "opening the embedded chain read-only");
    match read_clock(conn) {
        Ok(c) => Ok(c),
        Err(e) => {
            // A WAL file can only be read by someone who may create its `-shm` index,
            // unless nobody is writing: then (no `-wal` file) everything is in the main
            // file, and SQLite reads it as immutable, without the index.
            let wal = dir.join(format!("{DB_FILE}-wal"));
            if wal.exists() {
                return Err(storage(path, e));
            }
            *conn = open_immutable(path).map_err(|e| storage(path, e))?;
            read_clock(conn).map_err(|e| storage(path, e))
        }
    }
}

// Switches a writable chain file to WAL, sets its durability and makes (or
// reads) its schema and clock.
fn prepare_writable(
    conn: &mut Connection,
    path: &Path,
    block_time: Option<f64>,
) -> Result<Clock, ChainError> {
    // WAL is a property of the file: the first opener switches it, later ones see it.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| storage(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(ChainError::Storage(format!(
            "{}: cannot switch to WAL journal (got {mode})",
            path.display()
        )));
    }
    // NORMAL is durable against a crashed process (not against power loss) and keeps
    // commits cheap; the file is never corrupted either way.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| storage(path, e))?;
    init_schema(conn, block_time).map_err(|e| storage(path, e))
}

// Refuses a stored block time that cannot be used, and warns when the one
// asked for differs (the chain keeps the one it was created with).
fn check_stored_block_time(
    clock: &Clock,
    requested: Option<f64>,
    dir: &Path,
    path: &Path,
) -> Result<(), ChainError> {
    check_block_time(clock.block_time).map_err(|_| {
        ChainError::Storage(format!(
            "{}: the stored block time {} is unusable; this chain cannot be used, remove {} to start a new one",
            path.display(),
            clock.block_time,
            dir.display()
        ))
    })?;
    if let Some(bt) = requested {
        if (bt - clock.block_time).abs() > 1e-9 {
            warn!(
                requested = bt,
                stored = clock.block_time,
                "the embedded chain in {} keeps the block time it was created with",
                dir.display()
            );
        }
    }
    Ok(())
}

// Blocks never go back: a clock behind the chain's own records
// (genesis_time edited, the system clock stepped back) is refused.
fn check_clock_not_behind(conn: &Connection, clock: &Clock, path: &Path) -> Result<(), ChainError> {
    let recorded = latest_recorded_block(conn).map_err(|e| storage(path, e))?;
    let now = clock.now();
    if recorded > now {
        return Err(ChainError::Storage(format!(
            "{}: the chain's clock says block {now}, but it already holds block {recorded}: \
             its genesis_time was changed or the system clock went back; fix the clock \
             (blocks must not go backwards)",
            path.display()
        )));
    }
    Ok(())
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
    create_commit_reveal_tables(&tx)?;
    let get = |key: &str| -> rusqlite::Result<Option<String>> {
        tx.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
            r.get(0)
        })
        .optional()
    };
    let stored_genesis = get("genesis_time")?;
    let stored_block_time = get("block_time")?;
    let clock = match (stored_genesis, stored_block_time) {
        (Some(g), Some(b)) => Clock::new(
            g.parse().map_err(|_| bad_meta("genesis_time", &g))?,
            b.parse().map_err(|_| bad_meta("block_time", &b))?,
        ),
        _ => {
            let clock = Clock::new(unix_now(), block_time.unwrap_or(DEFAULT_BLOCK_TIME));
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

// The commit-reveal tables and the beacon's seed (kept here with the rest of the
// schema, so that opening the file needs nothing from the modules that use it).
fn create_commit_reveal_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS commit_reveal (
             netuid INTEGER PRIMARY KEY,
             enabled INTEGER NOT NULL,
             reveal_period INTEGER NOT NULL,
             tempo INTEGER NOT NULL,
             weights_version_key INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS timelocked_commits (
             netuid INTEGER NOT NULL,
             hotkey TEXT NOT NULL,
             block INTEGER NOT NULL,
             epoch INTEGER NOT NULL,
             reveal_round INTEGER NOT NULL,
             ciphertext BLOB NOT NULL,
             PRIMARY KEY (netuid, hotkey, block));",
    )?;
    // The beacon's key, made once with the chain (or on the first open by this version).
    let has: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'beacon_seed'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if has.is_none() {
        let (_, seed) =
            Beacon::generate().map_err(|e| rusqlite::Error::InvalidParameterName(e.to_string()))?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('beacon_seed', ?1)",
            params![hex::encode(seed)],
        )?;
    }
    Ok(())
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
    Ok(Clock::new(
        g.parse().map_err(|_| bad_meta("genesis_time", &g))?,
        b.parse().map_err(|_| bad_meta("block_time", &b))?,
    ))
}

// Takes the directory's lock file (blocking until other openers are done); `None` where the
// directory is not writable, i.e. for a read-only user, who changes nothing.
fn lock_dir(dir: &Path) -> Result<Option<std::fs::File>, ChainError> {
    let path = dir.join(LOCK_FILE);
    // The core's lock opener: a link, FIFO or hard link planted at the path is refused.
    let file = match pretrain_core::lock::open_lock_file(&path) {
        Ok(f) => f,
        Err(pretrain_core::lock::LockError::Io { source: e, .. })
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(30) /* EROFS */ =>
        {
            return Ok(None)
        }
        Err(e @ pretrain_core::lock::LockError::Io { .. }) => {
            let why = std::error::Error::source(&e).map(|s| s.to_string());
            return Err(ChainError::Storage(format!("{e}: {}", why.unwrap_or_default())));
        }
        Err(e) => return Err(ChainError::Storage(e.to_string())),
    };
    file.lock()
        .map_err(|e| ChainError::Storage(format!("cannot lock {}: {e}", path.display())))?;
    Ok(Some(file))
}

// The chain's identity, made once at random (`embedded:<hex>`): a state
// file written against one chain is told from another's. A read-only
// opener of a chain made before identities existed gets `None`.
fn chain_id(conn: &Connection, writable: bool) -> rusqlite::Result<Option<String>> {
    if writable {
        let fresh = format!("embedded:{:032x}", rand::random::<u128>());
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('chain_id', ?1)",
            params![fresh],
        )?;
    }
    conn.query_row("SELECT value FROM meta WHERE key = 'chain_id'", [], |r| {
        r.get(0)
    })
    .optional()
}

// The highest block the chain has written anything at.
fn latest_recorded_block(conn: &Connection) -> rusqlite::Result<u64> {
    let b: Option<i64> = conn.query_row(
        "SELECT MAX(b) FROM (SELECT MAX(block) AS b FROM commitments
             UNION ALL SELECT MAX(block) FROM weights
             UNION ALL SELECT MAX(registered_block) FROM neurons
             UNION ALL SELECT MAX(created_block) FROM subnets)",
        [],
        |r| r.get(0),
    )?;
    Ok(b.map_or(0, |b| u64::try_from(b).unwrap_or(0)))
}

fn bad_meta(key: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidParameterName(format!("stored {key} {value:?} is not a number"))
}

pub(super) fn insert_subnet(
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

pub(super) fn subnet_params(
    conn: &Connection,
    netuid: u16,
    path: &Path,
) -> Result<SubnetParams, ChainError> {
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
