//! Golden vectors of calls, keys and values for two runtimes, error
//! classes, signing, reconnection.

use std::time::Duration;

use subxt::Metadata;
use subxt_signer::sr25519::Keypair;

use super::client::drops_connection;
use super::extrinsics::keypair_of;
use super::*;
use crate::{ChainError, Hotkey};

const V16: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/chain/subtensor_devnet_metadata_v16.scale"
);
const V15: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/chain/subtensor_spec218_metadata_v15.scale"
);
const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/chain/vectors.json"
);

fn vectors() -> serde_json::Value {
    let text = std::fs::read_to_string(VECTORS).expect("vectors.json");
    serde_json::from_str(&text).expect("vectors.json parses")
}

fn metadatas() -> Vec<(&'static str, Metadata)> {
    [("v16 devnet", V16), ("v15 spec218", V15)]
        .into_iter()
        .map(|(name, path)| {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            (
                name,
                load_metadata(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        })
        .collect()
}

fn vector(section: &str, prefix: &str) -> Vec<u8> {
    let v = vectors();
    let map = v[section].as_object().expect("section");
    let (_, hex_str) = map
        .iter()
        .find(|(k, _)| k.starts_with(prefix))
        .expect("vector present");
    hex::decode(hex_str.as_str().expect("hex").trim_start_matches("0x")).expect("hex decodes")
}

fn hotkey_account() -> [u8; 32] {
    let v = vectors();
    let ss58 = v["hotkey_ss58"].as_str().expect("ss58");
    let account = account_of(ss58).expect("ss58 decodes");
    assert_eq!(
        hex::encode(account),
        v["hotkey_public_hex"].as_str().expect("hex")
    );
    assert_eq!(ss58_of(&account), ss58);
    account
}

#[test]
fn endpoints() {
    assert_eq!(
        endpoint_for("finney"),
        Some("wss://entrypoint-finney.opentensor.ai:443")
    );
    assert_eq!(
        endpoint_for("test"),
        Some("wss://test.finney.opentensor.ai:443")
    );
    assert_eq!(endpoint_for("local"), Some("ws://127.0.0.1:9944"));
    assert_eq!(endpoint_for("embedded"), None);
}

#[test]
fn set_commitment_call_data_matches_vectors() {
    let want = vector("calls", "Commitments.set_commitment");
    let call = set_commitment_call(2, b"namespace:name:commit:hash").expect("call");
    for (name, md) in metadatas() {
        assert_eq!(
            encode_call_data(&md, &call).expect("encodes"),
            want,
            "{name}"
        );
    }
}

#[test]
fn set_weights_call_data_matches_vectors() {
    let want = vector("calls", "SubtensorModule.set_weights");
    let call = set_weights_call(2, &[0, 1], &[65535, 32768], 0);
    for (name, md) in metadatas() {
        assert_eq!(
            encode_call_data(&md, &call).expect("encodes"),
            want,
            "{name}"
        );
    }
}

#[test]
fn storage_keys_match_vectors() {
    let account = hotkey_account();
    let want_commitment = vector("storage_keys", "Commitments.CommitmentOf");
    let want_keys = vector("storage_keys", "SubtensorModule.Keys");
    for (name, md) in metadatas() {
        assert_eq!(
            commitment_of_key(&md, 2, &account).expect("key"),
            want_commitment,
            "{name}"
        );
        assert_eq!(keys_key(&md, 2, 0).expect("key"), want_keys, "{name}");
    }
}

#[test]
fn commitment_value_decodes() {
    let v = vectors();
    let (_, case) = v["storage_values"]
        .as_object()
        .expect("storage_values")
        .iter()
        .next()
        .expect("one value");
    let raw =
        hex::decode(case["raw"].as_str().expect("raw").trim_start_matches("0x")).expect("hex");
    for (name, md) in metadatas() {
        let got = decode_commitment_of(&md, &raw).expect("decodes");
        assert_eq!(got.block, case["block"].as_u64().expect("block"), "{name}");
        assert_eq!(
            got.deposit,
            u128::from(case["deposit"].as_u64().expect("deposit")),
            "{name}"
        );
        assert_eq!(
            String::from_utf8(got.data).expect("utf8"),
            case["text"].as_str().expect("text"),
            "{name}"
        );
    }
}

#[test]
fn commitment_round_trips_every_length() {
    // A value the way the pallet stores it: deposit u64, block u32, fields [Raw<N>].
    for (name, md) in metadatas() {
        for len in [0usize, 1, 31, 32, 33, 127, 128] {
            let data: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut raw = Vec::new();
            raw.extend_from_slice(&7u64.to_le_bytes());
            raw.extend_from_slice(&99u32.to_le_bytes());
            raw.push(4); // compact(1) field
            raw.push(1 + len as u8); // Raw<len> is variant 1 + len
            raw.extend_from_slice(&data);
            let got =
                decode_commitment_of(&md, &raw).unwrap_or_else(|e| panic!("{name} len {len}: {e}"));
            assert_eq!(
                (got.deposit, got.block, got.data),
                (7, 99, data),
                "{name} len {len}"
            );
        }
    }
}

/// Found by the property tests: a few bytes with a huge length prefix made
/// the dynamic decoder reserve room for every element first (79 GB: abort).
#[test]
fn a_huge_length_prefix_is_refused_without_allocating() {
    // Compact u32::MAX (big-integer mode: 0b11, then 4 little-endian bytes), 3 bytes behind it.
    let huge = [0x03, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
    let mut commitment = Vec::new();
    commitment.extend_from_slice(&7u64.to_le_bytes());
    commitment.extend_from_slice(&99u32.to_le_bytes());
    commitment.extend_from_slice(&huge);
    for (name, md) in metadatas() {
        let e = decode_commitment_of(&md, &commitment).unwrap_err();
        assert!(matches!(e, ChainError::BadResponse(_)), "{name}: {e:?}");
        let e = decode_storage_value(&md, SUBTENSOR, "Incentive", &huge).unwrap_err();
        assert!(matches!(e, ChainError::BadResponse(_)), "{name}: {e:?}");
    }
}

#[test]
fn signed_transactions_build_for_both_runtimes() {
    // The runtime's transaction extensions must all be ones subxt can fill (or empty
    // ones it skips), or signing fails on the live chain; check it offline for both.
    use subxt::config::substrate::{SpecVersionForRange, SubstrateConfigBuilder};
    use subxt::config::SubstrateExtrinsicParamsBuilder;
    use subxt::OfflineClient;
    let signer = Keypair::from_secret_key([7; 32]).expect("keypair");
    for (name, md) in metadatas() {
        let config = SubstrateConfigBuilder::new()
            .set_genesis_hash(Default::default())
            .set_spec_version_for_block_ranges([SpecVersionForRange {
                block_range: 0..u64::MAX,
                spec_version: 1,
                transaction_version: 1,
            }])
            .set_metadata_for_spec_versions([(1, md.arc())])
            .build();
        let client = OfflineClient::new_with_config(config);
        let at = client.at_block(0u64).expect("offline client");
        let calls = [
            set_commitment_call(2, b"namespace:name:commit:hash").expect("call"),
            set_weights_call(2, &[0, 1], &[65535, 32768], 2002),
        ];
        for call in calls {
            let params = SubstrateExtrinsicParamsBuilder::new().build();
            let mut tx = at
                .transactions()
                .create_signable_offline(&call, params)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let signed = tx.sign(&signer).unwrap_or_else(|e| panic!("{name}: {e}"));
            let call_data = encode_call_data(&at.metadata(), &call).expect("call data");
            let bytes = signed.encoded();
            assert!(
                bytes
                    .windows(call_data.len())
                    .any(|w| w == call_data.as_slice()),
                "{name}: the signed extrinsic carries our call data"
            );
        }
    }
}

#[test]
fn oversize_commitment_is_refused() {
    assert!(matches!(
        set_commitment_call(9, &[b'x'; 129]),
        Err(ChainError::Rejected(_))
    ));
    assert!(set_commitment_call(9, &[b'x'; 128]).is_ok());
}

#[test]
fn metadata_has_what_we_read() {
    for (name, md) in metadatas() {
        for entry in [
            "Keys",
            "Uids",
            "Owner",
            "Incentive",
            "ValidatorPermit",
            "SubnetworkN",
            "NetworksAdded",
        ] {
            assert!(has_storage(&md, SUBTENSOR, entry), "{name}: {entry}");
        }
        assert!(has_storage(&md, COMMITMENTS, "CommitmentOf"), "{name}");
        let stake = has_storage(&md, SUBTENSOR, "TotalHotkeyAlpha")
            || has_storage(&md, SUBTENSOR, "TotalHotkeyStake");
        assert!(stake, "{name}: no stake entry");
        assert!(!has_storage(&md, SUBTENSOR, "NoSuchEntry"));
        // Every key the live client builds encodes under this runtime.
        let a = [1u8; 32];
        storage_key(&md, SUBTENSOR, "Uids", (2u16, a)).expect("Uids");
        storage_key(&md, SUBTENSOR, "Owner", (a,)).expect("Owner");
        for entry in [
            "Incentive",
            "ValidatorPermit",
            "SubnetworkN",
            "NetworksAdded",
            "CommitRevealWeightsEnabled",
        ] {
            storage_key(&md, SUBTENSOR, entry, (2u16,))
                .unwrap_or_else(|e| panic!("{name}: {entry}: {e}"));
        }
        if has_storage(&md, SUBTENSOR, "TotalHotkeyAlpha") {
            storage_key(&md, SUBTENSOR, "TotalHotkeyAlpha", (a, 2u16)).expect("alpha");
        }
        if has_storage(&md, SUBTENSOR, "TotalHotkeyStake") {
            storage_key(&md, SUBTENSOR, "TotalHotkeyStake", (a,)).expect("stake");
        }
    }
}

#[test]
fn error_classes() {
    assert_eq!(
        classify_module_error("CommitmentSetRateLimitExceeded"),
        ErrorClass::RateLimited
    );
    assert_eq!(
        classify_module_error("SettingWeightsTooFast"),
        ErrorClass::RateLimited
    );
    assert_eq!(
        classify_module_error("TxRateLimitExceeded"),
        ErrorClass::RateLimited
    );
    assert_eq!(
        classify_module_error("HotKeyNotRegisteredInSubNet"),
        ErrorClass::NotRegistered
    );
    assert_eq!(
        classify_module_error("AccountNotAllowedCommit"),
        ErrorClass::NotRegistered
    );
    assert_eq!(
        classify_module_error("SubNetworkDoesNotExist"),
        ErrorClass::NoSuchSubnet
    );
    assert_eq!(
        classify_module_error("IncorrectWeightVersionKey"),
        ErrorClass::Other
    );
    assert_eq!(
        classify_pool_message("Invalid Transaction: Custom error: 6"),
        ErrorClass::RateLimited
    );
    assert_eq!(
        classify_pool_message("Custom error: 10"),
        ErrorClass::NotRegistered
    );
    assert_eq!(
        classify_pool_message("Priority is too low"),
        ErrorClass::Other
    );
}

#[test]
fn keypair_must_match_address() {
    let v = vectors();
    let ss58 = v["hotkey_ss58"].as_str().expect("ss58");
    // The fixture hotkey's mini secret (testdata/wallet/fixture/hotkeys/default).
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/wallet/fixture/hotkeys/default"
    ))
    .expect("fixture hotkey");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let seed: [u8; 32] = hex::decode(
        json["secretSeed"]
            .as_str()
            .expect("seed")
            .trim_start_matches("0x"),
    )
    .expect("hex")
    .try_into()
    .expect("32 bytes");
    assert!(keypair_of(&Hotkey::from_secret_seed(ss58, seed)).is_ok());
    let other = "5EPCUjPxiHAcNooYipQFWr9NmmXJKpNG5RhcntXwbtUySrgH";
    assert!(matches!(
        keypair_of(&Hotkey::from_secret_seed(other, seed)),
        Err(ChainError::Rejected(_))
    ));
    assert!(matches!(
        keypair_of(&Hotkey::address_only(ss58)),
        Err(ChainError::Rejected(_))
    ));
}

#[test]
fn timeouts_and_network_errors_reconnect_refusals_do_not() {
    assert!(drops_connection(&ChainError::Timeout(Duration::from_secs(
        60
    ))));
    assert!(drops_connection(&ChainError::Network("reset".into())));
    assert!(!drops_connection(&ChainError::RateLimited("later".into())));
    assert!(!drops_connection(&ChainError::Rejected("no".into())));
}

#[tokio::test]
async fn unreachable_node_is_a_network_error() {
    // Port 9 (discard) on localhost: nothing listens, the connection is refused fast.
    match SubtensorChain::connect("ws://127.0.0.1:9", Duration::from_secs(10)).await {
        Err(ChainError::Network(_)) | Err(ChainError::Timeout(_)) => {}
        other => panic!("expected a network error, got {other:?}"),
    }
    assert!(matches!(
        SubtensorChain::connect("http://example.invalid", Duration::from_secs(1)).await,
        Err(ChainError::Network(_))
    ));
}
