//! The metagraph computed from the file: validator permits by stake and
//! incentives from the permitted validators' weights.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::store::{storage, subnet_params};
use super::SubnetParams;
use crate::{ChainError, Metagraph, Neuron};

pub(super) struct NeuronRow {
    pub(super) uid: u16,
    pub(super) hotkey: String,
    pub(super) coldkey: String,
    pub(super) registered_block: u64,
    pub(super) stake: f64,
}

pub(super) struct WeightRow {
    pub(super) block: u64,
    pub(super) pairs: Vec<(u16, u16)>,
}

// Everything the metagraph is computed from, read in one transaction.
pub(super) struct Snapshot {
    pub(super) netuid: u16,
    pub(super) params: SubnetParams,
    pub(super) neurons: Vec<NeuronRow>,
    pub(super) weights: HashMap<u16, WeightRow>,
}

pub(super) fn read_snapshot(
    conn: &Connection,
    netuid: u16,
    path: &Path,
) -> Result<Snapshot, ChainError> {
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
pub(super) fn compute(snap: &Snapshot, block: u64) -> Metagraph {
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

pub(super) fn uid_of(
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
