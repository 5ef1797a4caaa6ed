//! Subnets, registration (replacing the weakest neuron of a full subnet)
//! and stake.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tracing::info;

use super::metagraph::{compute, read_snapshot};
use super::store::{commit, insert_subnet, storage, subnet_params};
use super::{check_ss58, EmbeddedChain, Registration, SubnetParams, MAX_TOTAL_STAKE};
use crate::ChainError;

impl EmbeddedChain {
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
            // Due reveals land before the neurons change (a replaced uid's commit is its own).
            let mut before = read_snapshot(&tx, netuid, path)?;
            super::reveal::reveal_due(&tx, &mut before, block, path, true)?;
            if let Some((uid, block)) = registered_at(&tx, netuid, &hotkey, path)? {
                return Ok(Registration {
                    netuid,
                    uid,
                    hotkey: hotkey.clone(),
                    block,
                    already_registered: true,
                    replaced: None,
                });
            }
            let new = NewNeuron { netuid, hotkey: &hotkey, coldkey: &coldkey, block };
            let (uid, replaced) = take_uid(&tx, &new, params.max_uids, path)?;
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
        self.run(move |conn, clock, path| {
            subnet_params(conn, netuid, path)?;
            let mut snap = read_snapshot(conn, netuid, path)?;
            super::reveal::reveal_due(conn, &mut snap, clock.now(), path, false)?;
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

// The uid and registration block of `hotkey` on the subnet, if registered.
fn registered_at(
    conn: &Connection,
    netuid: u16,
    hotkey: &str,
    path: &Path,
) -> Result<Option<(u16, u64)>, ChainError> {
    conn.query_row(
        "SELECT uid, registered_block FROM neurons WHERE netuid = ?1 AND hotkey = ?2",
        params![netuid, hotkey],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(|e| storage(path, e))
}

// A hotkey being registered: where, whose, and when.
struct NewNeuron<'a> {
    netuid: u16,
    hotkey: &'a str,
    coldkey: &'a str,
    block: u64,
}

// Gives the new neuron the next free uid, or, on a full subnet, the weakest
// neuron's (see [`weakest`]); returns the uid and the hotkey it replaced.
fn take_uid(
    conn: &Connection,
    new: &NewNeuron<'_>,
    max_uids: u16,
    path: &Path,
) -> Result<(u16, Option<String>), ChainError> {
    let NewNeuron {
        netuid,
        hotkey,
        coldkey,
        block,
    } = *new;
    let count: u32 = conn
        .query_row(
            "SELECT COUNT(*) FROM neurons WHERE netuid = ?1",
            params![netuid],
            |r| r.get(0),
        )
        .map_err(|e| storage(path, e))?;
    if count < u32::from(max_uids) {
        let uid = count as u16;
        conn.execute(
            "INSERT INTO neurons (netuid, uid, hotkey, coldkey, registered_block) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![netuid, uid, hotkey, coldkey, block],
        )
        .map_err(|e| storage(path, e))?;
        return Ok((uid, None));
    }
    let (uid, old) = weakest(conn, netuid, block, path)?;
    conn.execute(
        "UPDATE neurons SET hotkey = ?3, coldkey = ?4, registered_block = ?5 WHERE netuid = ?1 AND uid = ?2",
        params![netuid, uid, hotkey, coldkey, block],
    )
    .map_err(|e| storage(path, e))?;
    conn.execute(
        "DELETE FROM weights WHERE netuid = ?1 AND uid = ?2",
        params![netuid, uid],
    )
    .map_err(|e| storage(path, e))?;
    Ok((uid, Some(old)))
}

// The neuron a registration on a full subnet replaces: one without a
// validator permit first, then the lowest incentive, then the lowest uid.
fn weakest(
    conn: &Connection,
    netuid: u16,
    block: u64,
    path: &Path,
) -> Result<(u16, String), ChainError> {
    let snapshot = read_snapshot(conn, netuid, path)?;
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
    Ok((victim.uid, victim.hotkey.clone()))
}
