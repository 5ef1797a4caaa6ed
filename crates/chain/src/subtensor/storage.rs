//! Storage reads at a block: raw values, values with the entry's default,
//! and the registration and stake lookups built on them.

use subxt::dynamic::Value;
use subxt::error::StorageError;
use subxt::ext::frame_decode::storage::{IntoEncodableValues, StorageTypeInfo};
use tracing::debug;

use super::errors::{storage_err, ErrorClass, TxContext};
use super::scale::{as_bool, as_list, as_uint, decode_storage_value, has_storage, storage_key};
use super::{AtBlock, SUBTENSOR};
use crate::ChainError;

/// Raw value at `key`, `None` if unset.
pub(super) async fn fetch_raw(
    at: &AtBlock,
    key: Vec<u8>,
    what: &str,
) -> Result<Option<Vec<u8>>, ChainError> {
    match at.storage().fetch_raw(key).await {
        Ok(v) => Ok(Some(v)),
        Err(StorageError::NoValueFound) => Ok(None),
        Err(e) => Err(storage_err(what, e)),
    }
}

/// Value of `pallet.entry(keys)`, falling back to the entry's default; `None` if the
/// runtime has no such entry.
pub(super) async fn fetch_value<K: IntoEncodableValues>(
    at: &AtBlock,
    pallet: &str,
    entry: &str,
    keys: K,
) -> Result<Option<Value<u32>>, ChainError> {
    let metadata = at.metadata();
    if !has_storage(&metadata, pallet, entry) {
        debug!(pallet, entry, "storage entry not in this runtime");
        return Ok(None);
    }
    let what = format!("{pallet}.{entry}");
    let key = storage_key(&metadata, pallet, entry, keys)?;
    let bytes = match fetch_raw(at, key, &what).await? {
        Some(b) => b,
        None => match metadata
            .storage_info(pallet, entry)
            .ok()
            .and_then(|i| i.default_value.map(|d| d.to_vec()))
        {
            Some(d) => d,
            None => return Ok(None),
        },
    };
    decode_storage_value(&metadata, pallet, entry, &bytes).map(Some)
}

pub(super) async fn subnet_exists(at: &AtBlock, netuid: u16) -> Result<bool, ChainError> {
    match fetch_value(at, SUBTENSOR, "NetworksAdded", (netuid,)).await? {
        Some(v) => Ok(as_bool(&v).unwrap_or(false)),
        // Without the entry we cannot tell; let the other reads decide.
        None => Ok(true),
    }
}

/// Refuses a transaction from a hotkey with no uid on an existing subnet
/// before it is sent: the pallets would only give a vaguer error.
pub(super) async fn ensure_registered(
    at: &AtBlock,
    account: &[u8; 32],
    ctx: &TxContext<'_>,
) -> Result<(), ChainError> {
    if !subnet_exists(at, ctx.netuid).await? {
        return Err(ChainError::NoSuchSubnet(ctx.netuid));
    }
    match uid_at(at, ctx.netuid, account).await? {
        Some(_) => Ok(()),
        None => Err(ctx.error(ErrorClass::NotRegistered, String::new())),
    }
}

pub(super) async fn uid_at(
    at: &AtBlock,
    netuid: u16,
    account: &[u8; 32],
) -> Result<Option<u16>, ChainError> {
    let metadata = at.metadata();
    let key = storage_key(&metadata, SUBTENSOR, "Uids", (netuid, *account))?;
    match fetch_raw(at, key, "SubtensorModule.Uids").await? {
        None => Ok(None),
        Some(bytes) => {
            let v = decode_storage_value(&metadata, SUBTENSOR, "Uids", &bytes)?;
            let uid = as_uint(&v).and_then(|u| u16::try_from(u).ok());
            uid.map(Some).ok_or_else(|| {
                ChainError::BadResponse(format!("SubtensorModule.Uids: not a u16: {v}"))
            })
        }
    }
}

/// Stake of a hotkey in RAO, from whatever this runtime keeps.
pub(super) async fn stake_of(
    at: &AtBlock,
    netuid: u16,
    account: [u8; 32],
) -> Result<u128, ChainError> {
    // dTAO runtimes: stake on the subnet, in alpha; older ones: the hotkey's total TAO.
    let found = match fetch_value(at, SUBTENSOR, "TotalHotkeyAlpha", (account, netuid)).await {
        Ok(Some(v)) => Ok(Some(v)),
        Ok(None) => fetch_value(at, SUBTENSOR, "TotalHotkeyStake", (account,)).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(Some(v)) => Ok(as_uint(&v).unwrap_or(0)),
        Ok(None) => {
            debug!("no stake entry in this runtime; stake reads as 0");
            Ok(0)
        }
        Err(e @ ChainError::Network(_)) => Err(e),
        // A runtime that reshaped its stake entries must not cost us the metagraph.
        Err(e) => {
            debug!(error = %e, "cannot read stake; stake reads as 0");
            Ok(0)
        }
    }
}

pub(super) fn uints(v: Option<Value<u32>>) -> Vec<u128> {
    v.as_ref()
        .and_then(as_list)
        .map(|l| l.into_iter().map(|x| as_uint(x).unwrap_or(0)).collect())
        .unwrap_or_default()
}

pub(super) fn bools(v: Option<Value<u32>>) -> Vec<bool> {
    v.as_ref()
        .and_then(as_list)
        .map(|l| l.into_iter().map(|x| as_bool(x).unwrap_or(false)).collect())
        .unwrap_or_default()
}
