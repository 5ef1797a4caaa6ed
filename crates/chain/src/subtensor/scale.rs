//! Storage keys and SCALE decoding of storage values, as plain functions of
//! a [`Metadata`]; account and SS58 conversions.

use std::str::FromStr;

use subxt::dynamic::Value;
use subxt::ext::frame_decode;
use subxt::ext::frame_decode::storage::{IntoEncodableValues, StorageTypeInfo};
use subxt::ext::scale_decode::visitor::{decode_with_visitor, IgnoreVisitor};
use subxt::ext::scale_value::ValueDef;
use subxt::utils::AccountId32;
use subxt::Metadata;

use super::SUBTENSOR;
use crate::ChainError;

/// Decodes runtime metadata (`RuntimeMetadataPrefixed`, V14-V16, as returned by
/// `state_getMetadata` / `Metadata_metadata_at_version`).
pub fn load_metadata(bytes: &[u8]) -> Result<Metadata, ChainError> {
    // subxt-metadata 0.51's `decode_runtime_metadata`, when neither the
    // prefixed nor the bare decode succeeds, calls itself on the *same*
    // input whenever the input's SCALE compact prefix equals the input's
    // length: endless recursion, a stack overflow, an aborted process. One
    // trailing zero byte (SCALE decoding ignores what follows) takes such
    // input out of that branch without changing what it decodes to.
    let padded;
    let bytes = if compact_prefix(bytes) == Some(bytes.len() as u64) {
        padded = [bytes, &[0]].concat();
        padded.as_slice()
    } else {
        bytes
    };
    Metadata::decode_from(bytes).map_err(|e| ChainError::BadResponse(format!("metadata: {e}")))
}

/// The value of the SCALE compact integer at the start of `bytes`, if one
/// fits in a `u64` (as `Compact::<u64>::decode` reads it).
fn compact_prefix(bytes: &[u8]) -> Option<u64> {
    let b0 = *bytes.first()?;
    let le = |n: usize| -> Option<u64> {
        let raw = bytes.get(..n)?;
        Some(
            raw.iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    };
    match b0 & 0b11 {
        0 => Some(u64::from(b0 >> 2)),
        1 => le(2).map(|v| v >> 2),
        2 => le(4).map(|v| v >> 2),
        _ => {
            let n = usize::from(b0 >> 2) + 4;
            if n > 8 {
                return None;
            }
            let raw = bytes.get(1..1 + n)?;
            Some(
                raw.iter()
                    .rev()
                    .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
            )
        }
    }
}

/// Whether the runtime has storage entry `pallet.entry`.
pub fn has_storage(metadata: &Metadata, pallet: &str, entry: &str) -> bool {
    metadata
        .pallet_by_name(pallet)
        .and_then(|p| p.storage())
        .and_then(|s| s.entry_by_name(entry))
        .is_some()
}

/// Full storage key of `pallet.entry(keys...)` (hashers from the metadata).
pub fn storage_key<K: IntoEncodableValues>(
    metadata: &Metadata,
    pallet: &str,
    entry: &str,
    keys: K,
) -> Result<Vec<u8>, ChainError> {
    frame_decode::storage::encode_storage_key(pallet, entry, keys, metadata, metadata.types())
        .map_err(|e| ChainError::BadResponse(format!("cannot encode key of {pallet}.{entry}: {e}")))
}

/// Key of `SubtensorModule.Keys(netuid, uid)` (the hotkey at a uid).
pub fn keys_key(metadata: &Metadata, netuid: u16, uid: u16) -> Result<Vec<u8>, ChainError> {
    storage_key(metadata, SUBTENSOR, "Keys", (netuid, uid))
}

/// Decodes a raw value of `pallet.entry` into a dynamic value.
pub fn decode_storage_value(
    metadata: &Metadata,
    pallet: &str,
    entry: &str,
    bytes: &[u8],
) -> Result<Value<u32>, ChainError> {
    let info = metadata
        .storage_info(pallet, entry)
        .map_err(|e| ChainError::BadResponse(format!("{pallet}.{entry}: {e}")))?;
    // Checked first without building anything: length prefixes come from the node, and
    // the dynamic decoder reserves room for a whole sequence before reading it (a
    // 200-byte value asked for 79 GB). Skipping reads every element, so a length past
    // the end of the bytes is refused here, after at most `bytes.len()` elements.
    let mut probe = bytes;
    decode_with_visitor(
        &mut probe,
        info.value_id,
        metadata.types(),
        IgnoreVisitor::new(),
    )
    .map_err(|e| ChainError::BadResponse(format!("cannot decode {pallet}.{entry}: {e}")))?;
    let mut cursor = bytes;
    let value = subxt::ext::scale_value::scale::decode_as_type(
        &mut cursor,
        info.value_id,
        metadata.types(),
    )
    .map_err(|e| ChainError::BadResponse(format!("cannot decode {pallet}.{entry}: {e}")))?;
    if !cursor.is_empty() {
        return Err(ChainError::BadResponse(format!(
            "{pallet}.{entry}: {} trailing bytes after the value",
            cursor.len()
        )));
    }
    Ok(value)
}

/// An unsigned integer, looking through newtype wrappers (`NetUid(u16)`, `AlphaCurrency(u64)`, ...).
pub(super) fn as_uint<T>(v: &Value<T>) -> Option<u128> {
    match &v.value {
        ValueDef::Primitive(p) => p.as_u128(),
        ValueDef::Composite(c) if c.len() == 1 => c.values().next().and_then(as_uint),
        _ => None,
    }
}

/// A bool, looking through newtype wrappers.
pub(super) fn as_bool<T>(v: &Value<T>) -> Option<bool> {
    match &v.value {
        ValueDef::Primitive(p) => p.as_bool(),
        ValueDef::Composite(c) if c.len() == 1 => c.values().next().and_then(as_bool),
        _ => None,
    }
}

/// The elements of a sequence, looking through `BoundedVec`-style wrappers.
pub(super) fn as_list<T>(v: &Value<T>) -> Option<Vec<&Value<T>>> {
    match &v.value {
        ValueDef::Composite(c) => {
            if c.len() == 1 {
                if let Some(inner) = c.values().next() {
                    if matches!(inner.value, ValueDef::Composite(_)) {
                        return as_list(inner);
                    }
                }
            }
            Some(c.values().collect())
        }
        _ => None,
    }
}

/// Bytes of a `[u8; N]` / `Vec<u8>` value.
pub(super) fn as_bytes<T>(v: &Value<T>) -> Option<Vec<u8>> {
    as_list(v)?
        .into_iter()
        .map(|b| as_uint(b).and_then(|b| u8::try_from(b).ok()))
        .collect()
}

/// SS58 (prefix 42) of a 32-byte account.
pub fn ss58_of(account: &[u8; 32]) -> String {
    AccountId32(*account).to_string()
}

/// The 32-byte account of an SS58 address.
pub fn account_of(ss58: &str) -> Result<[u8; 32], ChainError> {
    AccountId32::from_str(ss58)
        .map(|a| a.0)
        .map_err(|e| ChainError::Rejected(format!("invalid SS58 address {ss58:?}: {e}")))
}

pub(super) fn account_from_bytes(bytes: &[u8], what: &str) -> Result<[u8; 32], ChainError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        ChainError::BadResponse(format!(
            "{what}: expected a 32-byte account, got {} bytes",
            bytes.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_prefix_reads_scale_compact_integers() {
        // The SCALE codec's documented encodings of each mode's edges.
        let cases: &[(&[u8], u64)] = &[
            (&[0x00], 0),
            (&[0x04], 1),
            (&[0xfc], 63),
            (&[0x01, 0x01], 64),
            (&[0xfd, 0xff], 16383),
            (&[0x02, 0x00, 0x01, 0x00], 16384),
            (&[0xfe, 0xff, 0xff, 0xff], (1 << 30) - 1),
            (&[0x03, 0x00, 0x00, 0x00, 0x40], 1 << 30),
            (
                &[0x13, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                u64::MAX,
            ),
        ];
        for (bytes, v) in cases {
            assert_eq!(compact_prefix(bytes), Some(*v), "{bytes:02x?}");
        }
        assert_eq!(compact_prefix(&[]), None);
        assert_eq!(compact_prefix(&[0x01]), None, "two-byte mode, one byte");
        assert_eq!(
            compact_prefix(&[0x17, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "over 64 bits"
        );
    }

    /// subxt-metadata recursed forever on these (found by the proptest of
    /// `load_metadata`): a stack overflow aborted the whole process.
    #[test]
    fn bytes_whose_length_prefix_is_their_own_length_are_refused() {
        for bytes in [vec![0x14, 0, 0, 0, 0], vec![0x04], {
            let mut b = vec![0x01, 0x01];
            b.resize(64, 7);
            b
        }] {
            let err = load_metadata(&bytes).unwrap_err().to_string();
            assert!(
                err.starts_with("bad response from chain: metadata: "),
                "{err}"
            );
        }
    }
}
