//! Commit-reveal v4 against drand quicknet's real signatures
//! (`testdata/chain/timelock.json`, from subtensor's own tests): a commit we
//! encrypt for round 1000 (and 2000) opens with that round's signature to
//! the exact payload bytes; another round's signature is refused; the
//! payload's SCALE bytes are the ones written out by hand. Property tests:
//! any bytes as ciphertext or signature are refused with a reason, never a
//! panic.

#![allow(clippy::unwrap_used)]

use pretrain_chain::timelock::{
    commit_payload, commit_payload_v3, decrypt, encrypt, encrypt_seeded,
    first_reveal_block_indexed, first_reveal_block_legacy, quicknet_public_key, quicknet_round_at,
    reveal_payload, reveal_round_for, round_message, verify_signature, Beacon, TimelockError,
    WeightsTlockPayload, QUICKNET_GENESIS_TIME, QUICKNET_PUBLIC_KEY,
};
use proptest::prelude::*;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/chain/timelock.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn signature(v: &Value, round: u64) -> Vec<u8> {
    let pulse = v["pulses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["round"] == round)
        .unwrap();
    hex::decode(pulse["signature"].as_str().unwrap()).unwrap()
}

fn payload(v: &Value) -> (WeightsTlockPayload, Vec<u8>) {
    let p = &v["payload"];
    let list = |k: &str| -> Vec<u16> {
        p[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u16)
            .collect()
    };
    (
        WeightsTlockPayload {
            hotkey: hex::decode(p["hotkey_public_key"].as_str().unwrap()).unwrap(),
            uids: list("uids"),
            values: list("values"),
            version_key: p["version_key"].as_u64().unwrap(),
        },
        hex::decode(p["scale"].as_str().unwrap()).unwrap(),
    )
}

#[test]
fn the_constant_key_is_the_vectors_key() {
    let v = vectors();
    assert_eq!(QUICKNET_PUBLIC_KEY, v["public_key"].as_str().unwrap());
    assert_eq!(quicknet_public_key().len(), 96);
    assert_eq!(QUICKNET_GENESIS_TIME, v["genesis_time"].as_u64().unwrap());
}

#[test]
fn payload_encodes_as_weights_tlock_payload() {
    let (p, scale) = payload(&vectors());
    assert_eq!(p.to_scale(), scale);
    assert_eq!(WeightsTlockPayload::from_scale(&scale).unwrap(), p);
    // Cut short: refused with a reason.
    let e = WeightsTlockPayload::from_scale(&scale[..scale.len() - 1]).unwrap_err();
    assert!(matches!(e, TimelockError::Payload(_)), "{e:?}");
}

#[test]
fn real_quicknet_signatures_verify_under_quicknet_key() {
    let v = vectors();
    let pk = quicknet_public_key();
    for round in [1000u64, 2000] {
        verify_signature(&pk, round, &signature(&v, round)).unwrap();
    }
    // A signature of another round is not this round's (mock.rs says "round 20000" for the
    // second one: it is round 2000's).
    assert_eq!(
        verify_signature(&pk, 20000, &signature(&v, 2000)),
        Err(TimelockError::WrongSignature)
    );
    assert_eq!(
        verify_signature(&pk, 1000, &signature(&v, 2000)),
        Err(TimelockError::WrongSignature)
    );
}

#[test]
fn our_commit_opens_with_the_real_signature_of_its_round() {
    let v = vectors();
    let (p, scale) = payload(&v);
    let pk = quicknet_public_key();
    for round in [1000u64, 2000] {
        let commit = commit_payload(&p, &pk, round).unwrap();
        // Decrypts to the exact payload bytes, and they decode to the payload.
        assert_eq!(decrypt(&commit, &signature(&v, round)).unwrap(), scale);
        assert_eq!(reveal_payload(&commit, &signature(&v, round)).unwrap(), p);
    }
}

#[test]
fn our_v3_commit_opens_to_the_payload_without_its_hotkey() {
    // v3's WeightsTlockPayload is {uids, values, version_key}: the v4 bytes
    // after the hotkey (its compact length 0x80 and 32 bytes).
    let v = vectors();
    let (p, scale) = payload(&v);
    assert_eq!(scale[0], 0x80);
    let commit = commit_payload_v3(&p, &quicknet_public_key(), 1000).unwrap();
    assert_eq!(decrypt(&commit, &signature(&v, 1000)).unwrap(), scale[33..]);
}

#[test]
fn a_wrong_signature_is_refused() {
    let v = vectors();
    let (p, _) = payload(&v);
    let commit = commit_payload(&p, &quicknet_public_key(), 1000).unwrap();
    assert_eq!(
        reveal_payload(&commit, &signature(&v, 2000)),
        Err(TimelockError::WrongSignature)
    );
    // Round 1000's commit under round 2000's identity is not opened by round 1000's signature.
    let other = commit_payload(&p, &quicknet_public_key(), 2000).unwrap();
    assert_eq!(
        decrypt(&other, &signature(&v, 1000)),
        Err(TimelockError::WrongSignature)
    );
}

#[test]
fn seeded_encryption_is_deterministic_and_fresh_encryption_is_not() {
    let pk = quicknet_public_key();
    let a = encrypt_seeded(&pk, 1000, b"x", 7).unwrap();
    assert_eq!(a, encrypt_seeded(&pk, 1000, b"x", 7).unwrap());
    assert_ne!(a, encrypt_seeded(&pk, 1000, b"x", 8).unwrap());
    assert_ne!(
        encrypt(&pk, 1000, b"x").unwrap(),
        encrypt(&pk, 1000, b"x").unwrap()
    );
}

#[test]
fn the_round_identity_is_sha256_of_the_big_endian_round() {
    // sha256 of 00 00 00 00 00 00 03 e8 (1000), computed independently with Python's hashlib.
    assert_eq!(
        hex::encode(round_message(1000)),
        "f652498d092acd949bad74e40683bf3824fb817980504a0c7e6722cfc5a9c0a3"
    );
}

#[test]
fn beacon_pulses_open_commits_to_its_key_and_verify_like_drand() {
    let beacon = Beacon::from_seed([5u8; 32]).unwrap();
    let pk = beacon.public_key();
    assert_eq!(pk.len(), 96);
    let (p, scale) = payload(&vectors());
    let commit = commit_payload(&p, &pk, 42).unwrap();
    let sig = beacon.sign(42);
    assert_eq!(sig.len(), 48);
    verify_signature(&pk, 42, &sig).unwrap();
    assert_eq!(decrypt(&commit, &sig).unwrap(), scale);
    assert_eq!(
        decrypt(&commit, &beacon.sign(43)),
        Err(TimelockError::WrongSignature)
    );
    // Another key's signature of the same round does not open it.
    let other = Beacon::from_seed([6u8; 32]).unwrap();
    assert_eq!(
        decrypt(&commit, &other.sign(42)),
        Err(TimelockError::WrongSignature)
    );
    let pulse = beacon.pulse(42);
    assert_eq!(pulse.signature, hex::encode(&sig));
    assert!(Beacon::from_seed([0u8; 32]).is_err());
}

#[test]
fn reveal_rounds_follow_the_sdk() {
    // bittensor-drand generate_commit: tempo 360, netuid 1, block 1000, reveal period 1:
    // epoch (1000 + 2) / 361 = 2, first reveal block 3 * 361 - 2 = 1081.
    assert_eq!(first_reveal_block_legacy(1000, 1, 360, 1), 1081);
    assert_eq!(first_reveal_block_legacy(1000, 1, 360, 3), 1803);
    // Indexed epochs: the next epoch starts at 1100, each 360 blocks long.
    assert_eq!(first_reveal_block_indexed(1100, 360, 1), 1100);
    assert_eq!(first_reveal_block_indexed(1100, 360, 2), 1460);
    // Round of a time: genesis + 3 s is round 1; before genesis, round 1.
    let g = QUICKNET_GENESIS_TIME as f64;
    assert_eq!(quicknet_round_at(g + 3.0), 1);
    assert_eq!(quicknet_round_at(g + 3000.5), 1000);
    assert_eq!(quicknet_round_at(0.0), 1);
    // 84 blocks of 12 s (1081 + 3 - 1000) after genesis + 3000 s: (3000 + 1008) / 3.
    assert_eq!(reveal_round_for(1081, 1000, 12.0, g + 3000.0), 1336);
}

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(64)
}

fn reason(e: &TimelockError) -> bool {
    !e.to_string().trim().is_empty()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_as_ciphertext_are_refused_with_a_reason(ct in proptest::collection::vec(any::<u8>(), 0..600)) {
        let v = vectors();
        match decrypt(&ct, &signature(&v, 1000)) {
            Ok(_) => prop_assert!(false, "random bytes decrypted"),
            Err(e) => prop_assert!(reason(&e), "{e:?}"),
        }
    }

    #[test]
    fn any_bytes_as_signature_are_refused_with_a_reason(sig in proptest::collection::vec(any::<u8>(), 0..100)) {
        let v = vectors();
        let (p, _) = payload(&v);
        let commit = commit_payload(&p, &quicknet_public_key(), 1000).unwrap();
        prop_assume!(sig != signature(&v, 1000));
        match decrypt(&commit, &sig) {
            Ok(_) => prop_assert!(false, "a random signature opened the commit"),
            Err(e) => prop_assert!(reason(&e), "{e:?}"),
        }
    }

    #[test]
    fn a_commit_with_any_byte_changed_is_refused_or_opens_to_the_payload(
        at in any::<prop::sample::Index>(), xor in 1u8..=255,
    ) {
        let v = vectors();
        let (p, scale) = payload(&v);
        let mut commit = commit_payload(&p, &quicknet_public_key(), 1000).unwrap();
        let i = at.index(commit.len());
        commit[i] ^= xor;
        match decrypt(&commit, &signature(&v, 1000)) {
            // Only bytes nobody authenticates (the cipher suite label is checked, so none).
            Ok(plain) => prop_assert_eq!(plain, scale),
            Err(e) => prop_assert!(reason(&e), "{e:?}"),
        }
    }

    #[test]
    fn any_valid_ciphertext_structure_with_long_header_fields_is_refused(v_len in 0usize..80, w_len in 0usize..80) {
        prop_assume!(v_len != 32 || w_len != 32);
        // A TLECiphertext as ark-serialize writes it: U (96 bytes), v and w (u64 length + bytes),
        // body and cipher suite (u64 length + bytes).
        let v = vectors();
        let (p, _) = payload(&v);
        let good = commit_payload(&p, &quicknet_public_key(), 1000).unwrap();
        let mut ct = good[..96].to_vec();
        ct.extend_from_slice(&(v_len as u64).to_le_bytes());
        ct.extend(std::iter::repeat_n(1u8, v_len));
        ct.extend_from_slice(&(w_len as u64).to_le_bytes());
        ct.extend(std::iter::repeat_n(2u8, w_len));
        ct.extend_from_slice(&0u64.to_le_bytes());
        ct.extend_from_slice(&8u64.to_le_bytes());
        ct.extend_from_slice(b"AES_GCM_");
        match decrypt(&ct, &signature(&v, 1000)) {
            Ok(_) => prop_assert!(false, "decrypted"),
            Err(e) => prop_assert!(matches!(e, TimelockError::Ciphertext(_)), "{e:?}"),
        }
    }

    #[test]
    fn any_payload_round_trips_through_a_beacon(
        uids in proptest::collection::vec(any::<u16>(), 0..40),
        version_key in any::<u64>(), round in 1u64..1_000_000,
    ) {
        let beacon = Beacon::from_seed([9u8; 32]).unwrap();
        let p = WeightsTlockPayload {
            hotkey: vec![7u8; 32],
            values: uids.iter().map(|u| u.wrapping_mul(3)).collect(),
            uids,
            version_key,
        };
        let commit = commit_payload(&p, &beacon.public_key(), round).unwrap();
        prop_assert_eq!(reveal_payload(&commit, &beacon.sign(round)).unwrap(), p);
    }
}
