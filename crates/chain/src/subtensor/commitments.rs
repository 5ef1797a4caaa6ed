//! Commitments: the `CommitmentOf` key and value, and reading one or all of
//! a subnet's.

use subxt::dynamic::{At, Value};
use subxt::ext::scale_value::ValueDef;
use subxt::Metadata;
use tracing::warn;

use super::errors::storage_err;
use super::scale::{
    account_from_bytes, account_of, as_bytes, as_list, as_uint, decode_storage_value, ss58_of,
    storage_key,
};
use super::storage::fetch_raw;
use super::{AtBlock, COMMITMENTS};
use crate::{ChainError, Commitment};

/// Key of `Commitments.CommitmentOf(netuid, account)`.
pub fn commitment_of_key(
    metadata: &Metadata,
    netuid: u16,
    account: &[u8; 32],
) -> Result<Vec<u8>, ChainError> {
    storage_key(metadata, COMMITMENTS, "CommitmentOf", (netuid, *account))
}

/// A decoded `Commitments.CommitmentOf` value (`Registration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCommitment {
    /// Deposit held for the commitment (RAO).
    pub deposit: u128,
    /// Block the commitment was made at.
    pub block: u64,
    /// Bytes of the first `Raw` field (empty if there is none).
    pub data: Vec<u8>,
}

/// Decodes a raw `Commitments.CommitmentOf` value.
pub fn decode_commitment_of(
    metadata: &Metadata,
    bytes: &[u8],
) -> Result<RawCommitment, ChainError> {
    let value = decode_storage_value(metadata, COMMITMENTS, "CommitmentOf", bytes)?;
    let bad =
        |what: &str| ChainError::BadResponse(format!("Commitments.CommitmentOf: {what} ({value})"));
    let block = value
        .at("block")
        .and_then(as_uint)
        .ok_or_else(|| bad("no block"))?;
    let deposit = value.at("deposit").and_then(as_uint).unwrap_or(0);
    let fields = value
        .at("info")
        .and_then(|i| i.at("fields"))
        .and_then(as_list)
        .ok_or_else(|| bad("no info.fields"))?;
    // bittensor reads the first field; we take the first `Raw` one, which is the same
    // for everything the subnet writes and skips exotic leading fields.
    let data = fields
        .iter()
        .find_map(|field| match &field.value {
            ValueDef::Variant(v) if v.name.starts_with("Raw") => v
                .values
                .values()
                .next()
                .map(as_bytes)
                .unwrap_or(Some(Vec::new())),
            _ => None,
        })
        .unwrap_or_default();
    Ok(RawCommitment {
        deposit,
        block: u64::try_from(block).map_err(|_| bad("block out of range"))?,
        data,
    })
}

pub(super) async fn commitment_at(
    at: &AtBlock,
    netuid: u16,
    hotkey: &str,
) -> Result<Option<Commitment>, ChainError> {
    let metadata = at.metadata();
    let key = commitment_of_key(&metadata, netuid, &account_of(hotkey)?)?;
    match fetch_raw(at, key, "Commitments.CommitmentOf").await? {
        None => Ok(None),
        Some(bytes) => {
            let raw = decode_commitment_of(&metadata, &bytes)?;
            Ok(Some(Commitment {
                hotkey: hotkey.to_string(),
                block: raw.block,
                data: raw.data,
            }))
        }
    }
}

pub(super) async fn commitments_at(
    at: &AtBlock,
    netuid: u16,
) -> Result<Vec<Commitment>, ChainError> {
    let metadata = at.metadata();
    let addr = subxt::dynamic::storage::<(u16, [u8; 32]), Value>(COMMITMENTS, "CommitmentOf");
    let mut entries = at
        .storage()
        .iter(addr, (netuid,))
        .await
        .map_err(|e| storage_err("Commitments.CommitmentOf", e))?;
    let mut out = Vec::new();
    while let Some(kv) = entries.next().await {
        let kv = kv.map_err(|e| storage_err("Commitments.CommitmentOf", e))?;
        // Twox64Concat(AccountId32): the account is the key's last 32 bytes.
        let key = kv.key_bytes();
        let account = key
            .len()
            .checked_sub(32)
            .map(|i| &key[i..])
            .ok_or_else(|| ChainError::BadResponse("Commitments.CommitmentOf: short key".into()))
            .and_then(|b| account_from_bytes(b, "Commitments.CommitmentOf key"))?;
        match decode_commitment_of(&metadata, kv.value().bytes()) {
            Ok(raw) => out.push(Commitment {
                hotkey: ss58_of(&account),
                block: raw.block,
                data: raw.data,
            }),
            // One odd entry must not hide everybody else's commitments.
            Err(e) => {
                warn!(hotkey = %ss58_of(&account), error = %e, "skipping undecodable commitment")
            }
        }
    }
    out.sort_by(|a, b| a.hotkey.cmp(&b.hotkey));
    Ok(out)
}
