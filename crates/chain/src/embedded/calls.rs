//! The [`Chain`] calls on the file: metagraph and uid reads, commitments and
//! weights (each under its rate limit).

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use tracing::debug;

use super::metagraph::{compute, read_snapshot, uid_of};
use super::reveal::{reveal_due, settings};
use super::store::{commit, storage, subnet_params};
use super::{EmbeddedChain, MAX_COMMITMENT_BYTES};
use crate::timelock::COMMIT_REVEAL_VERSION;
use crate::{Chain, ChainError, Commitment, Hotkey, Hyperparameters, Metagraph, WeightsSubmission};

#[async_trait]
impl Chain for EmbeddedChain {
    async fn current_block(&self) -> Result<u64, ChainError> {
        Ok(self.clock.now())
    }

    async fn chain_id(&self) -> Result<Option<String>, ChainError> {
        Ok(self.id.clone())
    }

    async fn metagraph(&self, netuid: u16) -> Result<Metagraph, ChainError> {
        self.run(move |conn, clock, path| {
            // One read transaction: a consistent view while other processes write.
            let tx = conn.transaction().map_err(|e| storage(path, e))?;
            let mut snap = read_snapshot(&tx, netuid, path)?;
            let now = clock.now();
            reveal_due(&tx, &mut snap, now, path, false)?;
            let graph = compute(&snap, now);
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
        self.submit_weights(hotkey, netuid, uids, values, version_key)
            .await
            .map(|_| ())
    }

    async fn submit_weights(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<WeightsSubmission, ChainError> {
        crate::check_weights(uids, values)?;
        let cr = self.commit_reveal(netuid).await?;
        if cr.enabled {
            return self
                .commit_weights(hotkey, netuid, uids, values, version_key, cr)
                .await;
        }
        let hotkey = hotkey.ss58.clone();
        let pairs: Vec<(u16, u16)> = uids.iter().copied().zip(values.iter().copied()).collect();
        self.run(move |conn, clock, path| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| storage(path, e))?;
            let mut snap = read_snapshot(&tx, netuid, path)?;
            let block = clock.now();
            reveal_due(&tx, &mut snap, block, path, true)?;
            let cr = settings(&tx, netuid, path)?;
            if cr.enabled {
                // Switched on since this call looked: subtensor's `CommitRevealEnabled`.
                return Err(ChainError::Rejected(format!(
                    "commit-reveal is on on subnet {netuid}: weights must be committed"
                )));
            }
            if version_key < cr.weights_version_key {
                return Err(ChainError::Rejected(format!(
                    "version key {version_key} is below subnet {netuid}'s weights version key {}",
                    cr.weights_version_key
                )));
            }
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
            Ok(WeightsSubmission::Set { block })
        })
        .await
    }

    async fn weights_of(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>, ChainError> {
        Ok(self
            .weights(netuid)
            .await?
            .into_iter()
            .find(|r| r.0 == uid)
            .map(|r| r.1)
            .unwrap_or_default())
    }

    async fn hyperparameters(&self, netuid: u16) -> Result<Hyperparameters, ChainError> {
        let params = self.subnet(netuid).await?;
        let cr = self.commit_reveal(netuid).await?;
        Ok(Hyperparameters {
            netuid,
            tempo: cr.tempo,
            commit_reveal_weights_enabled: cr.enabled,
            commit_reveal_version: Some(COMMIT_REVEAL_VERSION),
            reveal_period_epochs: cr.reveal_period_epochs,
            weights_version_key: cr.weights_version_key,
            weights_rate_limit: params.weights_rate_limit,
            commit_rate_limit: Some(params.commit_rate_limit),
        })
    }
}
