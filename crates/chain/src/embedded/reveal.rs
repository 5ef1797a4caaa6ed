//! Commit-reveal weights on the embedded chain, as subtensor does them (v4):
//! a subnet with commit-reveal on takes only timelocked commits; each is
//! stored with the epoch it was made in and decrypted `reveal_period` epochs
//! later with the chain's own beacon (a BLS key kept in the file,
//! signing round numbers as drand quicknet does; round `r` is published at
//! block `r`), by the same `tle`/`tld` code subtensor runs. Only then do the
//! weights count, so incentive appears after the reveal.
//!
//! Epochs follow subtensor's older shape: block `b` is in epoch
//! `(b + netuid + 1) / (tempo + 1)`.
//!
//! Reveals happen when the chain is next read or written: a reader applies
//! due commits to what it computes (nothing written, so read-only users see
//! the same metagraph), and the next write stores them as weights and drops
//! them. A commit that fails at the reveal (wrong key, another hotkey inside,
//! stale version key, no permit, unknown uids) is dropped with a warning,
//! as subtensor drops it: its weights never apply.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::metagraph::{compute, read_snapshot, Snapshot, WeightRow};
use super::store::{commit, storage, subnet_params};
use super::EmbeddedChain;
use crate::subtensor::account_of;
use crate::timelock::{
    commit_payload, reveal_payload, Beacon, Pulse, WeightsTlockPayload, COMMIT_REVEAL_VERSION,
    MAX_COMMIT_BYTES,
};
use crate::{ChainError, Hotkey, WeightsSubmission};

/// Blocks per epoch (minus one) unless a subnet is set up with another (subtensor's default).
pub const DEFAULT_TEMPO: u64 = 360;
/// Epochs between a commit and its reveal unless set (subtensor's `RevealPeriodEpochs`).
pub const DEFAULT_REVEAL_PERIOD_EPOCHS: u64 = 1;
/// Unrevealed commits one hotkey may hold on a subnet (subtensor's limit).
pub const MAX_PENDING_COMMITS: u64 = 10;
// Blocks after the first block of the reveal epoch that a commit's round is aimed at
// (bittensor-drand's SECURITY_BLOCK_OFFSET).
const ROUND_OFFSET_BLOCKS: u64 = 3;

/// A subnet's commit-reveal settings and epoch length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitReveal {
    /// `CommitRevealWeightsEnabled`.
    pub enabled: bool,
    /// `RevealPeriodEpochs`.
    pub reveal_period_epochs: u64,
    /// `Tempo`: an epoch is `tempo + 1` blocks.
    pub tempo: u64,
    /// `WeightsVersionKey`: weights with a lower version key are refused.
    pub weights_version_key: u64,
}

impl Default for CommitReveal {
    fn default() -> Self {
        Self {
            enabled: false,
            reveal_period_epochs: DEFAULT_REVEAL_PERIOD_EPOCHS,
            tempo: DEFAULT_TEMPO,
            weights_version_key: 0,
        }
    }
}

impl CommitReveal {
    /// The epoch of `block` on subnet `netuid`.
    pub fn epoch_of(&self, netuid: u16, block: u64) -> u64 {
        (block + u64::from(netuid) + 1) / (self.tempo + 1)
    }

    /// First block of epoch `epoch` on subnet `netuid`.
    pub fn epoch_start(&self, netuid: u16, epoch: u64) -> u64 {
        epoch
            .saturating_mul(self.tempo + 1)
            .saturating_sub(u64::from(netuid) + 1)
    }
}

// Whether the file has the commit-reveal tables (a chain made by an older version and
// opened read-only has not).
fn has_tables(conn: &Connection, path: &Path) -> Result<bool, ChainError> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('commit_reveal', 'timelocked_commits')",
        [],
        |r| r.get::<_, u32>(0),
    )
    .map(|n| n == 2)
    .map_err(|e| storage(path, e))
}

fn beacon(conn: &Connection, path: &Path) -> Result<Beacon, ChainError> {
    let seed: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'beacon_seed'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| storage(path, e))?;
    let bad = || ChainError::Storage(format!("{}: the beacon key is unreadable", path.display()));
    let seed = seed.ok_or_else(bad)?;
    let bytes: [u8; 32] = hex::decode(seed)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    Beacon::from_seed(bytes).map_err(|_| bad())
}

pub(super) fn settings(
    conn: &Connection,
    netuid: u16,
    path: &Path,
) -> Result<CommitReveal, ChainError> {
    if !has_tables(conn, path)? {
        return Ok(CommitReveal::default());
    }
    Ok(conn
        .query_row(
            "SELECT enabled, reveal_period, tempo, weights_version_key FROM commit_reveal WHERE netuid = ?1",
            params![netuid],
            |r| {
                Ok(CommitReveal {
                    enabled: r.get(0)?,
                    reveal_period_epochs: r.get(1)?,
                    tempo: r.get(2)?,
                    weights_version_key: r.get::<_, i64>(3)? as u64,
                })
            },
        )
        .optional()
        .map_err(|e| storage(path, e))?
        .unwrap_or_default())
}

struct Pending {
    hotkey: String,
    reveal_round: u64,
    ciphertext: Vec<u8>,
}

/// A stored commit's place in the file: how its row is found again (the
/// hotkey and block as stored, even where they are not what they should be).
struct RowKey {
    hotkey: rusqlite::types::Value,
    block: rusqlite::types::Value,
}

/// A stored commit as read, before its ciphertext: nothing in the file is
/// trusted (an older version, a hand edit or a bad disk may have left it).
struct Stored {
    key: RowKey,
    /// The commit, or why its row cannot be one.
    row: Result<(String, u64, u64, u64), String>,
}

// Reads the subnet's stored commits without their ciphertexts (a stored blob may be any size),
// checking every column: a row that cannot be a commit is an `Err` with the reason.
fn stored_commits(
    conn: &Connection,
    netuid: u16,
    cr: &CommitReveal,
    now: u64,
    path: &Path,
) -> Result<Vec<Stored>, ChainError> {
    use rusqlite::types::Value;
    let mut stmt = conn
        .prepare(
            "SELECT hotkey, block, epoch, reveal_round, typeof(ciphertext), length(ciphertext)
             FROM timelocked_commits WHERE netuid = ?1 ORDER BY block, hotkey",
        )
        .map_err(|e| storage(path, e))?;
    let raw = stmt
        .query_map(params![netuid], |r| {
            Ok((
                r.get::<_, Value>(0)?,
                r.get::<_, Value>(1)?,
                r.get::<_, Value>(2)?,
                r.get::<_, Value>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| storage(path, e))?;
    let current_epoch = cr.epoch_of(netuid, now);
    Ok(raw
        .into_iter()
        .map(|(hotkey, block, epoch, round, kind, len)| {
            let int = |what: &str, v: &Value| match v {
                Value::Integer(i) if *i >= 0 => Ok(*i as u64),
                other => Err(format!("its {what} {other:?} is not a block number")),
            };
            let row = (|| {
                let Value::Text(h) = &hotkey else {
                    return Err(format!("its hotkey {hotkey:?} is not text"));
                };
                let (b, e, r) = (
                    int("block", &block)?,
                    int("epoch", &epoch)?,
                    int("reveal round", &round)?,
                );
                if b > now || e > current_epoch {
                    return Err(format!(
                        "it is from block {b} (epoch {e}), after the chain's block {now}"
                    ));
                }
                let len = len.unwrap_or(0);
                if kind != "blob" || len == 0 || len as u64 > MAX_COMMIT_BYTES as u64 {
                    return Err(format!(
                        "its ciphertext is a {kind} of {len} bytes (a commit is 1..={MAX_COMMIT_BYTES})"
                    ));
                }
                Ok((h.clone(), b, e, r))
            })();
            Stored {
                key: RowKey { hotkey, block },
                row,
            }
        })
        .collect())
}

// Removes one stored commit (a revealed, dropped or malformed one).
fn delete_row(conn: &Connection, netuid: u16, key: &RowKey, path: &Path) -> Result<(), ChainError> {
    conn.execute(
        "DELETE FROM timelocked_commits WHERE netuid = ?1 AND hotkey = ?2 AND block = ?3",
        params![netuid, key.hotkey, key.block],
    )
    .map_err(|e| storage(path, e))?;
    Ok(())
}

/// Where a stored commit stands at block `now`.
enum Due {
    /// Its reveal epoch has not come, or its round's pulse is not out yet.
    Waiting,
    /// Its round's pulse is out in its reveal epoch: it reveals at this block.
    Reveal(u64),
    /// It can never reveal (its round is past its reveal epoch): dropped once that epoch has come.
    Never(String),
}

fn due_at(cr: &CommitReveal, netuid: u16, epoch: u64, round: u64, now: u64) -> Due {
    let reveal_epoch = epoch.saturating_add(cr.reveal_period_epochs);
    if cr.epoch_of(netuid, now) < reveal_epoch {
        return Due::Waiting;
    }
    if cr.epoch_of(netuid, round) > reveal_epoch {
        return Due::Never(format!(
            "its round {round} comes after its reveal epoch {reveal_epoch}"
        ));
    }
    // The pulse of the commit's round is out at block `round`.
    let at = cr.epoch_start(netuid, reveal_epoch).max(round);
    if at > now {
        Due::Waiting
    } else {
        Due::Reveal(at)
    }
}

// Why a due commit did not apply.
fn open_commit(
    beacon: &Beacon,
    p: &Pending,
    snap: &Snapshot,
    cr: &CommitReveal,
    at: u64,
) -> Result<(u16, WeightsTlockPayload), String> {
    let payload =
        reveal_payload(&p.ciphertext, &beacon.sign(p.reveal_round)).map_err(|e| e.to_string())?;
    let account = account_of(&p.hotkey).map_err(|e| e.to_string())?;
    if payload.hotkey != account {
        return Err("the payload's hotkey is not the committer".into());
    }
    let Some(me) = snap
        .neurons
        .iter()
        .find(|r| r.hotkey == p.hotkey)
        .map(|r| r.uid)
    else {
        return Err("the committer is no longer registered".into());
    };
    crate::check_weights(&payload.uids, &payload.values).map_err(|e| e.to_string())?;
    if let Some(bad) = payload
        .uids
        .iter()
        .find(|u| usize::from(**u) >= snap.neurons.len())
    {
        return Err(format!("uid {bad} does not exist"));
    }
    if payload.version_key < cr.weights_version_key {
        return Err(format!(
            "version key {} is below the subnet's {}",
            payload.version_key, cr.weights_version_key
        ));
    }
    if !compute(snap, at).neurons[usize::from(me)].validator_permit {
        return Err("the committer has no validator permit".into());
    }
    Ok((me, payload))
}

/// Applies the subnet's due commits to `snap` (as of block `now`); with `write`, stores
/// their weights and removes them from the file (`conn` is then a write transaction).
pub(super) fn reveal_due(
    conn: &Connection,
    snap: &mut Snapshot,
    now: u64,
    path: &Path,
    write: bool,
) -> Result<(), ChainError> {
    let netuid = snap.netuid;
    if !has_tables(conn, path)? {
        return Ok(());
    }
    let cr = settings(conn, netuid, path)?;
    let mut beacon_key = None;
    for stored in stored_commits(conn, netuid, &cr, now, path)? {
        let (hotkey, block, epoch, reveal_round) = match stored.row {
            Ok(row) => row,
            Err(why) => {
                // Skipped, never fatal: one bad row must not stop every read of the chain.
                if write {
                    warn!(
                        netuid,
                        "a stored timelocked commit is malformed and dropped: {why}"
                    );
                    delete_row(conn, netuid, &stored.key, path)?;
                } else {
                    warn!(
                        netuid,
                        "a stored timelocked commit is malformed and skipped: {why}"
                    );
                }
                continue;
            }
        };
        let outcome = match due_at(&cr, netuid, epoch, reveal_round, now) {
            Due::Waiting => continue,
            Due::Never(why) => Err(why),
            Due::Reveal(at) => {
                let ciphertext: Vec<u8> = conn
                    .query_row(
                        "SELECT ciphertext FROM timelocked_commits WHERE netuid = ?1 AND hotkey = ?2 AND block = ?3",
                        params![netuid, stored.key.hotkey, stored.key.block],
                        |r| r.get(0),
                    )
                    .map_err(|e| storage(path, e))?;
                let p = Pending {
                    hotkey: hotkey.clone(),
                    reveal_round,
                    ciphertext,
                };
                // Read once, and only where some commit is due.
                let b = match &mut beacon_key {
                    Some(b) => &*b,
                    slot @ None => &*slot.insert(beacon(conn, path)?),
                };
                open_commit(b, &p, snap, &cr, at).map(|r| (at, r))
            }
        };
        match outcome {
            Ok((at, (uid, payload))) => {
                let pairs: Vec<(u16, u16)> = payload.uids.into_iter().zip(payload.values).collect();
                if write {
                    let json = serde_json::to_string(&pairs)
                        .map_err(|e| ChainError::Storage(format!("cannot encode weights: {e}")))?;
                    conn.execute(
                        "INSERT OR REPLACE INTO weights (netuid, uid, block, version_key, pairs) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![netuid, uid, at, payload.version_key as i64, json],
                    )
                    .map_err(|e| storage(path, e))?;
                    info!(netuid, uid, %hotkey, commit_block = block, reveal_block = at, n = pairs.len(), "timelocked weights revealed");
                }
                snap.weights.insert(uid, WeightRow { block: at, pairs });
            }
            Err(why) => {
                if write {
                    warn!(netuid, %hotkey, commit_block = block, "timelocked commit dropped at its reveal: {why}");
                } else {
                    debug!(netuid, %hotkey, commit_block = block, "timelocked commit fails at its reveal: {why}");
                }
            }
        }
        if write {
            delete_row(conn, netuid, &stored.key, path)?;
        }
    }
    Ok(())
}

impl EmbeddedChain {
    /// Sets subnet `netuid`'s commit-reveal settings and tempo (the subnet must exist).
    pub async fn set_commit_reveal(
        &self,
        netuid: u16,
        settings: CommitReveal,
    ) -> Result<(), ChainError> {
        if settings.tempo == 0 || settings.tempo > u64::from(u16::MAX) {
            return Err(ChainError::Rejected(format!(
                "tempo must be 1..={}, got {}",
                u16::MAX,
                settings.tempo
            )));
        }
        if settings.reveal_period_epochs == 0 || settings.reveal_period_epochs > 100 {
            return Err(ChainError::Rejected(format!(
                "reveal_period_epochs must be 1..=100, got {}",
                settings.reveal_period_epochs
            )));
        }
        self.run(move |conn, clock, path| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| storage(path, e))?;
            subnet_params(&tx, netuid, path)?;
            // Commits made under the old settings reveal under them first.
            let mut snap = read_snapshot(&tx, netuid, path)?;
            reveal_due(&tx, &mut snap, clock.now(), path, true)?;
            tx.execute(
                "INSERT OR REPLACE INTO commit_reveal (netuid, enabled, reveal_period, tempo, weights_version_key) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    netuid,
                    settings.enabled,
                    settings.reveal_period_epochs,
                    settings.tempo,
                    settings.weights_version_key as i64
                ],
            )
            .map_err(|e| storage(path, e))?;
            commit(tx, path)?;
            info!(netuid, ?settings, "commit-reveal settings of the embedded chain");
            Ok(())
        })
        .await
    }

    /// Subnet `netuid`'s commit-reveal settings and tempo.
    pub async fn commit_reveal(&self, netuid: u16) -> Result<CommitReveal, ChainError> {
        self.run(move |conn, _, path| {
            subnet_params(conn, netuid, path)?;
            settings(conn, netuid, path)
        })
        .await
    }

    /// The beacon's public key (compressed G2): what commits are encrypted under.
    pub async fn beacon_public_key(&self) -> Result<Vec<u8>, ChainError> {
        self.run(move |conn, _, path| Ok(beacon(conn, path)?.public_key()))
            .await
    }

    /// The beacon's pulse of `round`, once published (at block `round`).
    pub async fn pulse(&self, round: u64) -> Result<Option<Pulse>, ChainError> {
        self.run(move |conn, clock, path| {
            if round > clock.now() {
                return Ok(None);
            }
            Ok(Some(beacon(conn, path)?.pulse(round)))
        })
        .await
    }

    /// Unrevealed commits on the subnet: `(hotkey, commit block, reveal round)`, oldest first.
    /// Malformed rows are skipped (with a warning), and commits whose reveal is due are not
    /// pending any more, revealed or dropped at the next write.
    pub async fn pending_commits(
        &self,
        netuid: u16,
    ) -> Result<Vec<(String, u64, u64)>, ChainError> {
        self.run(move |conn, clock, path| {
            if !has_tables(conn, path)? {
                return Ok(Vec::new());
            }
            let now = clock.now();
            let cr = settings(conn, netuid, path)?;
            let mut out = Vec::new();
            for stored in stored_commits(conn, netuid, &cr, now, path)? {
                match stored.row {
                    Ok((hotkey, block, epoch, round)) => {
                        if matches!(due_at(&cr, netuid, epoch, round, now), Due::Waiting) {
                            out.push((hotkey, block, round));
                        }
                    }
                    Err(why) => {
                        warn!(
                            netuid,
                            "a stored timelocked commit is malformed and skipped: {why}"
                        )
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// The chain side of `commit_timelocked_weights`: stores `ciphertext` for its reveal.
    pub async fn commit_timelocked_weights(
        &self,
        hotkey: &str,
        netuid: u16,
        ciphertext: &[u8],
        reveal_round: u64,
        commit_reveal_version: u16,
    ) -> Result<u64, ChainError> {
        if commit_reveal_version != COMMIT_REVEAL_VERSION {
            return Err(ChainError::Rejected(format!(
                "commit_reveal_version {commit_reveal_version} is not the chain's {COMMIT_REVEAL_VERSION}"
            )));
        }
        if ciphertext.len() > MAX_COMMIT_BYTES {
            return Err(ChainError::Rejected(format!(
                "a commit of {} bytes is over the chain's {MAX_COMMIT_BYTES}",
                ciphertext.len()
            )));
        }
        let hotkey = hotkey.to_string();
        let ciphertext = ciphertext.to_vec();
        self.run(move |conn, clock, path| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| storage(path, e))?;
            let block = clock.now();
            let mut snap = read_snapshot(&tx, netuid, path)?;
            reveal_due(&tx, &mut snap, block, path, true)?;
            let cr = settings(&tx, netuid, path)?;
            if !cr.enabled {
                return Err(ChainError::Rejected(format!(
                    "commit-reveal is off on subnet {netuid}: set weights directly"
                )));
            }
            if !snap.neurons.iter().any(|r| r.hotkey == hotkey) {
                return Err(ChainError::NotRegistered { hotkey: hotkey.clone(), netuid });
            }
            let (pending, last): (u64, Option<u64>) = tx
                .query_row(
                    "SELECT COUNT(*), MAX(block) FROM timelocked_commits WHERE netuid = ?1 AND hotkey = ?2",
                    params![netuid, hotkey],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|e| storage(path, e))?;
            check_round(&cr, netuid, block, reveal_round)?;
            if pending >= MAX_PENDING_COMMITS {
                return Err(ChainError::RateLimited(format!(
                    "hotkey {hotkey} has {pending} unrevealed commits on subnet {netuid} (the most allowed)"
                )));
            }
            if let Some(last) = last {
                let next = last.saturating_add(snap.params.weights_rate_limit);
                if block < next {
                    return Err(ChainError::RateLimited(format!(
                        "hotkey {hotkey} committed weights on subnet {netuid} at block {last}; the next commit is allowed in {} blocks (at block {next})",
                        next - block
                    )));
                }
            }
            tx.execute(
                "INSERT INTO timelocked_commits (netuid, hotkey, block, epoch, reveal_round, ciphertext) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![netuid, hotkey, block, cr.epoch_of(netuid, block), reveal_round, ciphertext],
            )
            .map_err(|e| storage(path, e))?;
            commit(tx, path)?;
            debug!(netuid, %hotkey, block, reveal_round, "timelocked commit stored");
            Ok(block)
        })
        .await
    }

    /// The validator's side with commit-reveal on: the pre-checks a reveal would make
    /// (registered, permit, uids, lengths, version key), then the payload encrypted to the
    /// round of the reveal epoch under the beacon's key, and committed.
    pub(super) async fn commit_weights(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
        cr: CommitReveal,
    ) -> Result<WeightsSubmission, ChainError> {
        let ss58 = hotkey.ss58.clone();
        let (uids_v, values_v) = (uids.to_vec(), values.to_vec());
        let (block, public_key) = self
            .run(move |conn, clock, path| {
                let block = clock.now();
                let mut snap = read_snapshot(conn, netuid, path)?;
                reveal_due(conn, &mut snap, block, path, false)?;
                let Some(me) = snap
                    .neurons
                    .iter()
                    .find(|r| r.hotkey == ss58)
                    .map(|r| r.uid)
                else {
                    return Err(ChainError::NotRegistered {
                        hotkey: ss58.clone(),
                        netuid,
                    });
                };
                check_before_commit(&snap, &cr, me, &uids_v, &values_v, version_key, block)?;
                Ok((block, beacon(conn, path)?.public_key()))
            })
            .await?;
        let reveal_epoch = cr.epoch_of(netuid, block) + cr.reveal_period_epochs;
        let reveal_block = cr.epoch_start(netuid, reveal_epoch);
        // Rounds are blocks here; aimed a few blocks into the reveal epoch, as the SDK aims.
        let reveal_round = reveal_block + ROUND_OFFSET_BLOCKS.min(cr.tempo);
        let payload = WeightsTlockPayload {
            hotkey: account_of(&hotkey.ss58)?.to_vec(),
            uids: uids.to_vec(),
            values: values.to_vec(),
            version_key,
        };
        let ct = commit_payload(&payload, &public_key, reveal_round)
            .map_err(|e| ChainError::Rejected(e.to_string()))?;
        let block = self
            .commit_timelocked_weights(
                &hotkey.ss58,
                netuid,
                &ct,
                reveal_round,
                COMMIT_REVEAL_VERSION,
            )
            .await?;
        Ok(WeightsSubmission::Committed {
            block,
            reveal_round,
            reveal_block: reveal_round,
        })
    }
}

// A round the commit could reveal at: inside the reveal epoch of a commit made at `block`,
// or before it (the pulse is then out when that epoch starts). A later one could never
// reveal and would sit among the hotkey's pending commits until its reveal epoch.
fn check_round(cr: &CommitReveal, netuid: u16, block: u64, round: u64) -> Result<(), ChainError> {
    let reveal_epoch = cr.epoch_of(netuid, block) + cr.reveal_period_epochs;
    if round > i64::MAX as u64 || cr.epoch_of(netuid, round) > reveal_epoch {
        let last = cr.epoch_start(netuid, reveal_epoch + 1).saturating_sub(1);
        return Err(ChainError::Rejected(format!(
            "reveal round {round} is after the reveal epoch {reveal_epoch} of a commit at block {block} (its last round is {last}): it could never reveal"
        )));
    }
    Ok(())
}

// What the reveal would refuse, refused before anything is sent.
fn check_before_commit(
    snap: &Snapshot,
    cr: &CommitReveal,
    me: u16,
    uids: &[u16],
    values: &[u16],
    version_key: u64,
    block: u64,
) -> Result<(), ChainError> {
    let netuid = snap.netuid;
    if version_key < cr.weights_version_key {
        return Err(ChainError::Rejected(format!(
            "version key {version_key} is below subnet {netuid}'s weights version key {}: the reveal would drop these weights (update the validator)",
            cr.weights_version_key
        )));
    }
    if let Some(bad) = uids.iter().find(|u| usize::from(**u) >= snap.neurons.len()) {
        return Err(ChainError::Rejected(format!(
            "uid {bad} does not exist on subnet {netuid} ({} neurons)",
            snap.neurons.len()
        )));
    }
    crate::check_weights(uids, values)?;
    if !compute(snap, block).neurons[usize::from(me)].validator_permit {
        return Err(ChainError::Rejected(format!(
            "uid {me} has no validator permit on subnet {netuid}: it needs stake (`pretrain chain stake`)"
        )));
    }
    Ok(())
}
