//! Property tests of the chain's parsers of outside data: commitment values
//! as a node stores them (SCALE, decoded with the runtime's metadata), the
//! runtime metadata itself, the commitment call, and keyfile JSON read from
//! a wallet. Arbitrary input never panics and is either accepted or refused
//! with a reason; round trips hold where there are any.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::sync::OnceLock;

use pretrain_chain::subtensor::{
    decode_commitment_of, encode_call_data, load_metadata, set_commitment_call,
    MAX_COMMITMENT_BYTES,
};
use pretrain_chain::{ChainError, Wallet, WalletError};
use pretrain_core::ModelId;
use proptest::prelude::*;
use serde_json::Value;
use subxt::Metadata;

const V16: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/chain/subtensor_devnet_metadata_v16.scale"
);
const V15: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/chain/subtensor_spec218_metadata_v15.scale"
);
const HOTKEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/wallet/fixture/hotkeys/default"
);

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// Both runtimes' metadata, decoded once.
fn metadatas() -> &'static [(&'static str, Metadata)] {
    static MD: OnceLock<Vec<(&'static str, Metadata)>> = OnceLock::new();
    MD.get_or_init(|| {
        [("v16 devnet", V16), ("v15 spec218", V15)]
            .into_iter()
            .map(|(name, path)| {
                let bytes = std::fs::read(path).expect("metadata file");
                (name, load_metadata(&bytes).expect("metadata decodes"))
            })
            .collect()
    })
}

/// A reason is a non-empty text.
fn has_reason(e: &dyn std::error::Error) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(!text.trim().is_empty(), "empty reason: {:?}", text);
    Ok(())
}

/// `Commitments.CommitmentOf` as the pallet stores it (`Registration`):
/// deposit `u64`, block `u32`, `info.fields` a vector of `Data`, here one
/// `Raw<len>` field (variant `1 + len`).
fn stored_commitment(deposit: u64, block: u32, data: &[u8]) -> Vec<u8> {
    assert!(data.len() <= MAX_COMMITMENT_BYTES);
    let mut raw = Vec::new();
    raw.extend_from_slice(&deposit.to_le_bytes());
    raw.extend_from_slice(&block.to_le_bytes());
    raw.push(4); // compact(1): one field
    raw.push(1 + data.len() as u8);
    raw.extend_from_slice(data);
    raw
}

fn part() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{0,40}"
}

fn model_id() -> impl Strategy<Value = ModelId> {
    (
        part(),
        part(),
        proptest::option::of("[0-9a-f]{40}"),
        proptest::option::of("[A-Za-z0-9+/=]{44}"),
    )
        .prop_map(|(namespace, name, commit, hash)| ModelId {
            namespace: namespace.into(),
            name: name.into(),
            commit: commit.map(Into::into),
            hash: hash.map(Into::into),
        })
}

/// A JSON value of any shape (keyfile fields among the keys).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "0x[0-9a-f]{0,130}".prop_map(Value::from),
        "5[1-9A-HJ-NP-Za-km-z]{47}".prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("ss58Address".to_string()),
        Just("accountId".to_string()),
        Just("cryptoType".to_string()),
        Just("secretSeed".to_string()),
        Just("publicKey".to_string()),
        Just("privateKey".to_string()),
        Just("secretPhrase".to_string()),
        "[a-zA-Z]{1,10}",
    ];
    leaf.prop_recursive(2, 16, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(key.clone(), inner, 0..7)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn fixture_hotkey() -> Value {
    serde_json::from_str(&std::fs::read_to_string(HOTKEY).expect("fixture hotkey"))
        .expect("fixture is JSON")
}

/// Puts `data` where the hotkey file of a fresh wallet goes and reads it as
/// a wallet would: accepted keys are consistent with what the file says.
fn read_as_hotkey(data: &[u8]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = Wallet::new(tmp.path(), "w", "h");
    std::fs::create_dir_all(w.hotkey_path().parent().expect("hotkeys dir")).expect("mkdir");
    std::fs::write(w.hotkey_path(), data).expect("write");
    match w.hotkey() {
        Ok(hotkey) => {
            prop_assert!(
                bittensor_wallet::utils::is_valid_ss58_address(&hotkey.ss58),
                "{}",
                hotkey.ss58
            );
            prop_assert!(hotkey.secret_seed().is_some());
            // A stored address must be the key's own.
            if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(data) {
                if let Some(Value::String(stored)) = o.get("ss58Address") {
                    prop_assert_eq!(stored, &hotkey.ss58);
                }
            }
        }
        Err(e) => {
            prop_assert!(
                !matches!(e, WalletError::Missing { .. } | WalletError::BadName { .. }),
                "{:?}",
                e
            );
            has_reason(&e)?;
        }
    }
    // The public-address path (`wallet list`/`show`) reads the same file.
    if let Err(e) = w.hotkey_ss58() {
        has_reason(&e)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_stored_value_decodes_or_is_refused_with_a_reason(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            // Plausible heads (deposit, block, one field) with an arbitrary rest.
            (any::<u64>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..160))
                .prop_map(|(d, b, rest)| {
                    let mut v = d.to_le_bytes().to_vec();
                    v.extend_from_slice(&b.to_le_bytes());
                    v.push(4);
                    v.extend(rest);
                    v
                }),
        ],
    ) {
        for (name, md) in metadatas() {
            match decode_commitment_of(md, &bytes) {
                Ok(raw) => prop_assert!(raw.data.len() <= bytes.len(), "{}", name),
                Err(e) => {
                    prop_assert!(matches!(e, ChainError::BadResponse(_)), "{}: {:?}", name, e);
                    has_reason(&e)?;
                }
            }
        }
    }

    #[test]
    fn stored_commitments_round_trip(
        deposit in any::<u64>(),
        block in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..=MAX_COMMITMENT_BYTES),
        extra in proptest::collection::vec(any::<u8>(), 1..4),
    ) {
        let raw = stored_commitment(deposit, block, &data);
        for (name, md) in metadatas() {
            let got = decode_commitment_of(md, &raw).unwrap_or_else(|e| panic!("{name}: {e}"));
            prop_assert_eq!(got.deposit, u128::from(deposit), "{}", name);
            prop_assert_eq!(got.block, u64::from(block), "{}", name);
            prop_assert_eq!(&got.data, &data, "{}", name);
            // Bytes after the value are refused, not ignored.
            let mut longer = raw.clone();
            longer.extend_from_slice(&extra);
            let e = decode_commitment_of(md, &longer).unwrap_err();
            prop_assert!(matches!(e, ChainError::BadResponse(_)), "{}: {:?}", name, e);
            has_reason(&e)?;
        }
    }

    #[test]
    fn model_ids_round_trip_through_a_stored_commitment(id in model_id(), block in any::<u32>()) {
        // What the miner commits is what the validator reads back.
        let Ok(bytes) = id.to_chain_bytes() else {
            prop_assert!(id.to_compressed_str().len() > MAX_COMMITMENT_BYTES);
            return Ok(());
        };
        for (name, md) in metadatas() {
            let call = set_commitment_call(9, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            encode_call_data(md, &call).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = decode_commitment_of(md, &stored_commitment(0, block, &bytes))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            prop_assert_eq!(&ModelId::from_chain_bytes(&got.data).unwrap(), &id, "{}", name);
        }
    }

    #[test]
    fn commitment_calls_take_at_most_the_limit(
        data in proptest::collection::vec(any::<u8>(), 0..=2 * MAX_COMMITMENT_BYTES),
        netuid in any::<u16>(),
    ) {
        match set_commitment_call(netuid, &data) {
            Ok(call) => {
                prop_assert!(data.len() <= MAX_COMMITMENT_BYTES);
                for (name, md) in metadatas() {
                    let encoded = encode_call_data(md, &call).unwrap_or_else(|e| panic!("{name}: {e}"));
                    // The data travels verbatim, at the end of the call.
                    prop_assert!(encoded.ends_with(&data), "{}", name);
                }
            }
            Err(e) => {
                prop_assert!(data.len() > MAX_COMMITMENT_BYTES);
                prop_assert!(matches!(e, ChainError::Rejected(_)), "{:?}", e);
                has_reason(&e)?;
            }
        }
    }

    #[test]
    fn any_bytes_as_metadata_never_panic_and_a_refusal_has_a_reason(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            // The `meta` magic and a version byte, then anything.
            (12u8..17, proptest::collection::vec(any::<u8>(), 0..256)).prop_map(|(v, rest)| {
                let mut b = b"meta".to_vec();
                b.push(v);
                b.extend(rest);
                b
            }),
        ],
    ) {
        match load_metadata(&bytes) {
            Ok(_) => {}
            Err(e) => has_reason(&e)?,
        }
    }

    #[test]
    fn any_json_as_a_key_file_is_read_or_refused_with_a_reason(value in any_json()) {
        read_as_hotkey(&serde_json::to_vec(&value).unwrap())?;
    }

    #[test]
    fn the_fixture_key_file_with_one_field_changed_is_read_or_refused(
        field in prop_oneof![
            Just("ss58Address"), Just("accountId"), Just("cryptoType"), Just("secretSeed"),
            Just("publicKey"), Just("privateKey"), Just("secretPhrase"),
        ],
        value in prop_oneof![any_json(), Just(Value::Null)],
        remove in any::<bool>(),
    ) {
        let mut key = fixture_hotkey();
        if remove {
            key.as_object_mut().unwrap().remove(field);
        } else {
            key[field] = value;
        }
        read_as_hotkey(&serde_json::to_vec(&key).unwrap())?;
    }

    #[test]
    fn any_bytes_as_a_key_file_are_read_or_refused_with_a_reason(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        read_as_hotkey(&bytes)?;
    }
}

#[test]
fn the_unchanged_fixture_key_file_is_read() {
    // The mutation test above starts from a valid key file: check that it is.
    let key = fixture_hotkey();
    let tmp = tempfile::tempdir().unwrap();
    let w = Wallet::new(tmp.path(), "w", "h");
    std::fs::create_dir_all(w.hotkey_path().parent().unwrap()).unwrap();
    std::fs::write(w.hotkey_path(), serde_json::to_vec(&key).unwrap()).unwrap();
    assert_eq!(
        w.hotkey().unwrap().ss58,
        key["ss58Address"].as_str().unwrap()
    );
}
