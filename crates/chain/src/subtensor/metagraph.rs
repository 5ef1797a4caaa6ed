//! A subnet's metagraph read from storage: uids, hotkeys, owners, stake,
//! incentive and validator permits.

use std::collections::BTreeMap;

use subxt::dynamic::Value;
use subxt::ext::futures::{stream, StreamExt, TryStreamExt};

use super::errors::storage_err;
use super::scale::{account_from_bytes, as_uint, ss58_of, storage_key};
use super::storage::{bools, fetch_raw, fetch_value, stake_of, subnet_exists, uints};
use super::{AtBlock, SUBTENSOR};
use crate::{ChainError, Metagraph, Neuron};

/// RAO per TAO.
const RAO_PER_TAO: f64 = 1e9;
/// Concurrent storage reads while building a metagraph.
const READ_CONCURRENCY: usize = 16;

pub(super) async fn read_metagraph(at: &AtBlock, netuid: u16) -> Result<Metagraph, ChainError> {
    if !subnet_exists(at, netuid).await? {
        return Err(ChainError::NoSuchSubnet(netuid));
    }
    let metadata = at.metadata();
    let n = fetch_value(at, SUBTENSOR, "SubnetworkN", (netuid,))
        .await?
        .as_ref()
        .and_then(as_uint)
        .unwrap_or(0);

    // Every uid -> hotkey in one paged read rather than n point reads.
    let mut hotkeys: BTreeMap<u16, [u8; 32]> = BTreeMap::new();
    let keys_addr = subxt::dynamic::storage::<(u16, u16), Value>(SUBTENSOR, "Keys");
    let mut entries = at
        .storage()
        .iter(keys_addr, (netuid,))
        .await
        .map_err(|e| storage_err("SubtensorModule.Keys", e))?;
    while let Some(kv) = entries.next().await {
        let kv = kv.map_err(|e| storage_err("SubtensorModule.Keys", e))?;
        let key = kv.key_bytes();
        // Keys(Identity(netuid), Identity(uid)): the uid is the key's last two bytes.
        let uid = key
            .len()
            .checked_sub(2)
            .map(|i| u16::from_le_bytes([key[i], key[i + 1]]))
            .ok_or_else(|| ChainError::BadResponse("SubtensorModule.Keys: short key".into()))?;
        if u128::from(uid) >= n {
            continue;
        }
        hotkeys.insert(
            uid,
            account_from_bytes(kv.value().bytes(), "SubtensorModule.Keys")?,
        );
    }

    let incentive = uints(fetch_value(at, SUBTENSOR, "Incentive", (netuid,)).await?);
    let permits = bools(fetch_value(at, SUBTENSOR, "ValidatorPermit", (netuid,)).await?);

    let details: Vec<([u8; 32], u128)> = stream::iter(hotkeys.values().copied())
        .map(|hk| {
            let metadata = metadata.clone();
            async move {
                let owner_key = storage_key(&metadata, SUBTENSOR, "Owner", (hk,))?;
                let owner = match fetch_raw(at, owner_key, "SubtensorModule.Owner").await? {
                    Some(b) => account_from_bytes(&b, "SubtensorModule.Owner")?,
                    None => [0u8; 32],
                };
                let stake = stake_of(at, netuid, hk).await?;
                Ok::<_, ChainError>((owner, stake))
            }
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;

    let neurons = hotkeys
        .iter()
        .zip(details)
        .map(|((&uid, hotkey), (coldkey, stake))| Neuron {
            uid,
            hotkey: ss58_of(hotkey),
            coldkey: ss58_of(&coldkey),
            stake: stake as f64 / RAO_PER_TAO,
            incentive: incentive
                .get(usize::from(uid))
                .map_or(0.0, |&i| i as f64 / f64::from(u16::MAX)),
            validator_permit: permits.get(usize::from(uid)).copied().unwrap_or(false),
        })
        .collect();
    Ok(Metagraph {
        netuid,
        block: at.block_number(),
        neurons,
    })
}
