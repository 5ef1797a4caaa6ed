//! Weights on subtensor: set directly where commit-reveal is off, committed
//! timelocked where it is on (v4, `commit_timelocked_weights`; v3,
//! `commit_crv3_weights`, on runtimes that predate v4), after the
//! checks the reveal would make (a payload that fails there is only logged by
//! the runtime, and the weights silently never apply).
//!
//! The reveal round is the SDK's: the drand round of the time of the reveal
//! epoch's first block plus 3 blocks. Where that block is depends on the
//! runtime: newer runtimes run epochs at `LastEpochBlock + tempo` (they have
//! `SubnetEpochIndex`), older ones when `(block + netuid + 1) % (tempo + 1)
//! == 0`. The shape is chosen from the metadata.

use subxt::dynamic::Value;
use subxt::ext::scale_value::Composite;
use subxt::Metadata;
use tracing::info;

use super::scale::{as_bool, as_list, as_uint, has_storage};
use super::storage::fetch_value;
use super::{AtBlock, CallPayload, SUBTENSOR};
use crate::timelock::{
    commit_payload, commit_payload_v3, first_reveal_block_indexed, first_reveal_block_legacy,
    quicknet_public_key, reveal_round_for, WeightsTlockPayload, COMMIT_REVEAL_VERSION,
    COMMIT_REVEAL_VERSION_V3,
};
use crate::{ChainError, Hyperparameters};

/// Seconds per block where the runtime does not say (finney's).
pub const DEFAULT_BLOCK_TIME: f64 = 12.0;

/// `SubtensorModule.commit_timelocked_weights(netuid, commit, reveal_round, commit_reveal_version)`.
pub fn commit_timelocked_weights_call(
    netuid: u16,
    commit: &[u8],
    reveal_round: u64,
    commit_reveal_version: u16,
) -> CallPayload {
    subxt::dynamic::tx(
        SUBTENSOR,
        "commit_timelocked_weights",
        Composite::named([
            ("netuid", Value::u128(netuid.into())),
            ("commit", Value::from_bytes(commit)),
            ("reveal_round", Value::u128(reveal_round.into())),
            (
                "commit_reveal_version",
                Value::u128(commit_reveal_version.into()),
            ),
        ]),
    )
}

/// `SubtensorModule.commit_crv3_weights(netuid, commit, reveal_round)` (v3).
pub fn commit_crv3_weights_call(netuid: u16, commit: &[u8], reveal_round: u64) -> CallPayload {
    subxt::dynamic::tx(
        SUBTENSOR,
        "commit_crv3_weights",
        Composite::named([
            ("netuid", Value::u128(netuid.into())),
            ("commit", Value::from_bytes(commit)),
            ("reveal_round", Value::u128(reveal_round.into())),
        ]),
    )
}

/// Which timelocked commit a runtime takes: v4 where it has
/// `commit_timelocked_weights`, else v3 where it has `commit_crv3_weights`.
pub fn commit_version(metadata: &Metadata) -> Option<u16> {
    if has_call(metadata, SUBTENSOR, "commit_timelocked_weights") {
        Some(COMMIT_REVEAL_VERSION)
    } else if has_call(metadata, SUBTENSOR, "commit_crv3_weights") {
        Some(COMMIT_REVEAL_VERSION_V3)
    } else {
        None
    }
}

/// Whether the runtime has call `pallet.call`.
pub fn has_call(metadata: &Metadata, pallet: &str, call: &str) -> bool {
    metadata
        .pallet_by_name(pallet)
        .and_then(|p| p.call_variant_by_name(call))
        .is_some()
}

/// How a runtime schedules epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochShape {
    /// At `(block + netuid + 1) % (tempo + 1) == 0` (runtimes before `SubnetEpochIndex`).
    Legacy,
    /// At `LastEpochBlock + tempo` (or an owner's earlier `PendingEpochAt`).
    Indexed,
}

/// The epoch shape of the runtime with `metadata`.
pub fn epoch_shape(metadata: &Metadata) -> EpochShape {
    if has_storage(metadata, SUBTENSOR, "SubnetEpochIndex")
        && has_storage(metadata, SUBTENSOR, "LastEpochBlock")
    {
        EpochShape::Indexed
    } else {
        EpochShape::Legacy
    }
}

/// Seconds per block: twice `Timestamp.MinimumPeriod` (Aura's slot), else 12.
pub fn block_time(metadata: &Metadata) -> f64 {
    metadata
        .pallet_by_name("Timestamp")
        .and_then(|p| p.constant_by_name("MinimumPeriod"))
        .and_then(|c| <[u8; 8]>::try_from(c.value()).ok())
        .map(u64::from_le_bytes)
        .filter(|ms| *ms > 0)
        .map_or(DEFAULT_BLOCK_TIME, |ms| 2.0 * ms as f64 / 1000.0)
}

async fn uint(at: &AtBlock, entry: &str, netuid: Option<u16>) -> Result<Option<u128>, ChainError> {
    let v = match netuid {
        Some(n) => fetch_value(at, SUBTENSOR, entry, (n,)).await?,
        None => fetch_value(at, SUBTENSOR, entry, ()).await?,
    };
    Ok(v.as_ref().and_then(as_uint))
}

/// The subnet's weight-setting parameters at `at`.
pub(super) async fn hyperparameters_at(
    at: &AtBlock,
    netuid: u16,
) -> Result<Hyperparameters, ChainError> {
    let enabled = fetch_value(at, SUBTENSOR, "CommitRevealWeightsEnabled", (netuid,))
        .await?
        .as_ref()
        .and_then(as_bool)
        .unwrap_or(false);
    Ok(Hyperparameters {
        netuid,
        tempo: uint(at, "Tempo", Some(netuid)).await?.unwrap_or(0) as u64,
        commit_reveal_weights_enabled: enabled,
        commit_reveal_version: uint(at, "CommitRevealWeightsVersion", None)
            .await?
            .map(|v| v as u16),
        reveal_period_epochs: uint(at, "RevealPeriodEpochs", Some(netuid))
            .await?
            .unwrap_or(1) as u64,
        weights_version_key: uint(at, "WeightsVersionKey", Some(netuid))
            .await?
            .unwrap_or(0) as u64,
        weights_rate_limit: uint(at, "WeightsSetRateLimit", Some(netuid))
            .await?
            .unwrap_or(0) as u64,
        commit_rate_limit: None,
    })
}

/// The first block of the epoch a commit made at `at` is revealed in.
async fn first_reveal_block(
    at: &AtBlock,
    netuid: u16,
    tempo: u64,
    reveal_period: u64,
) -> Result<u64, ChainError> {
    let block = at.block_number();
    match epoch_shape(&at.metadata()) {
        EpochShape::Legacy => Ok(first_reveal_block_legacy(
            block,
            netuid,
            tempo,
            reveal_period,
        )),
        EpochShape::Indexed => {
            // The runtime API `get_next_epoch_start_block`'s own definition, from storage.
            let last = uint(at, "LastEpochBlock", Some(netuid)).await?.unwrap_or(0) as u64;
            let mut next = last.saturating_add(tempo);
            let pending = uint(at, "PendingEpochAt", Some(netuid)).await?.unwrap_or(0) as u64;
            if pending > 0 {
                next = next.min(pending);
            }
            // An overdue epoch fires at the next block.
            next = next.max(block + 1);
            Ok(first_reveal_block_indexed(next, tempo, reveal_period))
        }
    }
}

/// Everything a timelocked commit needs, after the reveal's own checks.
pub(super) struct TimelockedCommit {
    /// The call to submit.
    pub call: CallPayload,
    /// Its name, for logs and errors.
    pub call_name: &'static str,
    /// Its round.
    pub reveal_round: u64,
    /// The first block of the reveal epoch.
    pub reveal_block: u64,
}

/// Refuses what the reveal would drop, then encrypts the payload to the reveal
/// round (`round`, or where `None` the SDK's round of the reveal epoch).
#[allow(clippy::too_many_arguments)]
pub(super) async fn prepare_commit(
    at: &AtBlock,
    hp: &Hyperparameters,
    uid: u16,
    account: &[u8; 32],
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    version_key: u64,
    round: Option<u64>,
) -> Result<TimelockedCommit, ChainError> {
    let metadata = at.metadata();
    let Some(version) = commit_version(&metadata) else {
        return Err(ChainError::Rejected(format!(
            "subnet {netuid} has commit-reveal on, and this runtime has neither commit_timelocked_weights (v4) nor commit_crv3_weights (v3)"
        )));
    };
    // v3 runtimes have no CommitRevealWeightsVersion; where it is stored it must match.
    match hp.commit_reveal_version {
        None => {}
        Some(v) if v == version => {}
        Some(v) => {
            return Err(ChainError::Rejected(format!(
                "subnet {netuid} has commit-reveal on with CommitRevealWeightsVersion {v}, but this runtime's call is version {version}; this client commits versions {COMMIT_REVEAL_VERSION_V3} and {COMMIT_REVEAL_VERSION} by their calls"
            )))
        }
    }
    if version_key < hp.weights_version_key {
        return Err(ChainError::Rejected(format!(
            "version key {version_key} is below subnet {netuid}'s WeightsVersionKey {}: the reveal would drop these weights (update the validator)",
            hp.weights_version_key
        )));
    }
    let n = uint(at, "SubnetworkN", Some(netuid)).await?.unwrap_or(0);
    if let Some(bad) = uids.iter().find(|u| u128::from(**u) >= n) {
        return Err(ChainError::Rejected(format!(
            "uid {bad} is not registered on subnet {netuid} ({n} neurons)"
        )));
    }
    // The runtime's check_validator_permit: one weight on oneself needs no permit.
    let self_weight = uids == [uid] && values.len() == 1;
    let permits = fetch_value(at, SUBTENSOR, "ValidatorPermit", (netuid,)).await?;
    let permitted = permits
        .as_ref()
        .and_then(as_list)
        .and_then(|l| l.get(usize::from(uid)).and_then(|v| as_bool(v)));
    if permitted == Some(false) && !self_weight {
        return Err(ChainError::Rejected(format!(
            "uid {uid} has no validator permit on subnet {netuid}: the reveal would drop these weights"
        )));
    }
    if let Some(threshold) = uint(at, "StakeThreshold", None).await? {
        let stake = match fetch_value(at, SUBTENSOR, "TotalHotkeyAlpha", (*account, netuid)).await?
        {
            Some(v) => as_uint(&v),
            None => None,
        };
        if let Some(stake) = stake {
            if stake < threshold {
                return Err(ChainError::Rejected(format!(
                    "the hotkey's stake {stake} is below StakeThreshold {threshold}: the reveal would drop these weights"
                )));
            }
        }
    }
    let reveal_block = first_reveal_block(at, netuid, hp.tempo, hp.reveal_period_epochs).await?;
    let reveal_round = match round {
        Some(r) => r,
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            reveal_round_for(reveal_block, at.block_number(), block_time(&metadata), now)
        }
    };
    let payload = WeightsTlockPayload {
        hotkey: account.to_vec(),
        uids: uids.to_vec(),
        values: values.to_vec(),
        version_key,
    };
    let (call, call_name) = if version == COMMIT_REVEAL_VERSION {
        let commit = commit_payload(&payload, &quicknet_public_key(), reveal_round)
            .map_err(|e| ChainError::Rejected(e.to_string()))?;
        (
            commit_timelocked_weights_call(netuid, &commit, reveal_round, version),
            "commit_timelocked_weights",
        )
    } else {
        let commit = commit_payload_v3(&payload, &quicknet_public_key(), reveal_round)
            .map_err(|e| ChainError::Rejected(e.to_string()))?;
        (
            commit_crv3_weights_call(netuid, &commit, reveal_round),
            "commit_crv3_weights",
        )
    };
    info!(
        netuid,
        version,
        reveal_round,
        reveal_block,
        shape = ?epoch_shape(&metadata),
        "weights timelocked for the reveal epoch"
    );
    Ok(TimelockedCommit {
        call,
        call_name,
        reveal_round,
        reveal_block,
    })
}
