//! Wallets against the bittensor fixture in `testdata/wallet`.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pretrain_chain::wallet::{KeyPair, Wallet, WalletError};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/wallet");

// Values from testdata/wallet/README.md.
const COLD_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
const COLD_PASSWORD: &str = "fixture-password-123";
const COLD_SS58: &str = "5EPCUjPxiHAcNooYipQFWr9NmmXJKpNG5RhcntXwbtUySrgH";
const COLD_PUBLIC: &str = "66933bd1f37070ef87bd1198af3dacceb095237f803f3d32b173e6b425ed7972";
const COLD_SEED: &str = "4ed8d4b17698ddeaa1f1559f152f87b5d472f725ca86d341bd0276f1b61197e2";
const HOT_MNEMONIC: &str =
    "legal winner thank year wave sausage worth useful legal winner thank yellow";
const HOT_SS58: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";
const HOT_PUBLIC: &str = "625e25364c7b68e0a83065ccb40afed43f8fe933e669b24f3d69a57eddb3b715";

fn fixture() -> Wallet {
    Wallet::new(ROOT, "fixture", "default")
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn keys_of(path: &Path) -> BTreeSet<String> {
    json_of(path).as_object().unwrap().keys().cloned().collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn fixture_hotkey_and_coldkeypub_load() {
    let w = fixture();
    let hotkey = w.hotkey().unwrap();
    assert_eq!(hotkey.ss58, HOT_SS58);
    assert!(hotkey.secret_seed().is_some());
    let pair = w.hotkey_keypair().unwrap();
    assert_eq!(hex::encode(pair.public_key().unwrap()), HOT_PUBLIC);
    assert_eq!(pair.mnemonic().as_deref(), Some(HOT_MNEMONIC));
    assert_eq!(w.hotkey_ss58().unwrap(), HOT_SS58);
    assert_eq!(w.coldkeypub().unwrap(), COLD_SS58);
    assert!(w.coldkey_is_encrypted().unwrap());
}

#[test]
fn fixture_coldkey_decrypts_and_rejects_a_wrong_password() {
    let w = fixture();
    let cold = w.coldkey(COLD_PASSWORD).unwrap();
    assert_eq!(cold.ss58(), COLD_SS58);
    assert_eq!(hex::encode(cold.public_key().unwrap()), COLD_PUBLIC);
    assert_eq!(hex::encode(cold.secret_seed().unwrap()), COLD_SEED);
    assert_eq!(cold.mnemonic().as_deref(), Some(COLD_MNEMONIC));

    let err = w.coldkey("not-the-password").unwrap_err();
    assert!(matches!(err, WalletError::WrongPassword { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("wrong password for coldkey "), "{msg}");
    assert!(msg.contains("fixture/coldkey"), "{msg}");
}

#[test]
fn the_fixture_mnemonics_regenerate_the_fixture_keyfiles() {
    // Same derivation and same JSON as bittensor: every field of the fixture's hotkey file.
    let hot = KeyPair::from_mnemonic(HOT_MNEMONIC).unwrap();
    let ours: serde_json::Value = serde_json::from_slice(&hot.to_keyfile_json().unwrap()).unwrap();
    assert_eq!(ours, json_of(&fixture().hotkey_path()));
    let public: serde_json::Value = serde_json::from_slice(&hot.to_public_json().unwrap()).unwrap();
    assert_eq!(public, json_of(&fixture().hotkeypub_path()));

    let cold = KeyPair::from_mnemonic(COLD_MNEMONIC).unwrap();
    assert_eq!(cold.ss58(), COLD_SS58);
    assert_eq!(hex::encode(cold.secret_seed().unwrap()), COLD_SEED);
    let public: serde_json::Value =
        serde_json::from_slice(&cold.to_public_json().unwrap()).unwrap();
    assert_eq!(public, json_of(&fixture().coldkeypub_path()));
}

#[test]
fn missing_and_malformed_files_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let w = Wallet::new(tmp.path(), "nobody", "default");
    let err = w.hotkey().unwrap_err();
    assert!(matches!(err, WalletError::Missing { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains(&w.hotkey_path().display().to_string()));

    std::fs::create_dir_all(w.hotkey_path().parent().unwrap()).unwrap();
    std::fs::write(w.hotkey_path(), b"{\"secretPhrase\": ").unwrap();
    let err = w.hotkey().unwrap_err();
    assert!(matches!(err, WalletError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("hotkeys/default"), "{err}");

    // An address that does not belong to the key is caught, not trusted.
    let mut v = json_of(&fixture().hotkey_path());
    v["ss58Address"] = serde_json::json!(COLD_SS58);
    std::fs::write(w.hotkey_path(), serde_json::to_vec(&v).unwrap()).unwrap();
    let err = w.hotkey().unwrap_err();
    assert!(matches!(err, WalletError::Malformed { .. }), "{err:?}");

    // A truncated encrypted coldkey is an error, not a panic.
    std::fs::write(w.coldkey_path(), b"$NACL\x01\x02").unwrap();
    let err = w.coldkey("x").unwrap_err();
    assert!(matches!(err, WalletError::Malformed { .. }), "{err:?}");
}

fn relative_files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for e in walk(dir) {
        out.insert(e.strip_prefix(dir).unwrap().to_path_buf());
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_all(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn created_wallet_has_the_fixture_layout_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let w = Wallet::new(tmp.path(), "fixture", "default");
    let password = "a-new-password";
    let cold = w.create_coldkey(None, Some(password), false).unwrap();
    let hot = w.create_hotkey(None, false).unwrap();

    // Same files, same JSON fields, secrets 0600.
    assert_eq!(relative_files(&w.dir()), relative_files(&fixture().dir()));
    for rel in [
        "coldkeypub.txt",
        "hotkeys/default",
        "hotkeys/defaultpub.txt",
    ] {
        assert_eq!(
            keys_of(&w.dir().join(rel)),
            keys_of(&fixture().dir().join(rel)),
            "{rel}"
        );
    }
    for rel in [
        "coldkey",
        "coldkeypub.txt",
        "hotkeys/default",
        "hotkeys/defaultpub.txt",
    ] {
        assert_eq!(mode(&w.dir().join(rel)), 0o600, "{rel}");
    }
    assert!(std::fs::read(w.coldkey_path())
        .unwrap()
        .starts_with(b"$NACL"));

    // Keys re-derive from their mnemonics, and read back through the wallet.
    assert_eq!(
        KeyPair::from_mnemonic(&cold.mnemonic).unwrap().ss58(),
        cold.ss58
    );
    assert_eq!(
        KeyPair::from_mnemonic(&hot.mnemonic).unwrap().ss58(),
        hot.ss58
    );
    assert_eq!(cold.mnemonic.split(' ').count(), 12);
    assert_eq!(w.coldkeypub().unwrap(), cold.ss58);
    assert_eq!(w.hotkey().unwrap().ss58, hot.ss58);
    let unlocked = w.coldkey(password).unwrap();
    assert_eq!(unlocked.ss58(), cold.ss58);
    assert_eq!(unlocked.mnemonic().as_deref(), Some(cold.mnemonic.as_str()));

    // No overwrite unless asked; the files stay as they were.
    let before = std::fs::read(w.hotkey_path()).unwrap();
    let err = w.create_hotkey(None, false).unwrap_err();
    assert!(matches!(err, WalletError::AlreadyExists { .. }), "{err:?}");
    let err = w.create_coldkey(None, None, false).unwrap_err();
    assert!(matches!(err, WalletError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(std::fs::read(w.hotkey_path()).unwrap(), before);
    let again = w.create_hotkey(None, true).unwrap();
    assert_ne!(again.ss58, hot.ss58);
    assert_eq!(w.hotkey().unwrap().ss58, again.ss58);

    // Listing sees it.
    let list = Wallet::list(tmp.path()).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].coldkeypub.as_deref(), Some(cold.ss58.as_str()));
    assert_eq!(list[0].coldkey_encrypted, Some(true));
    assert_eq!(list[0].hotkeys.len(), 1);
    assert_eq!(
        list[0].hotkeys[0].ss58.as_deref(),
        Some(again.ss58.as_str())
    );
}

#[test]
fn an_unencrypted_coldkey_needs_no_password() {
    let tmp = tempfile::tempdir().unwrap();
    let w = Wallet::new(tmp.path(), "plain", "default");
    let cold = w.create_coldkey(Some(COLD_MNEMONIC), None, false).unwrap();
    // `create` refuses as a whole: the coldkey exists, so no hotkey appears either.
    let err = w.create(None, false).unwrap_err();
    assert!(matches!(err, WalletError::AlreadyExists { .. }), "{err:?}");
    assert!(!w.hotkey_path().exists());
    assert_eq!(cold.ss58, COLD_SS58);
    assert!(!w.coldkey_is_encrypted().unwrap());
    assert_eq!(w.coldkey("").unwrap().ss58(), COLD_SS58);
    assert_eq!(
        keys_of(&w.coldkey_path()),
        keys_of(&fixture().hotkey_path())
    );
}

/// A wallet or hotkey name that would leave the wallets
/// root (`../escaped`, `../../../hot`, an absolute path, empty, `.`, a
/// separator inside, a hidden name, a hotkey named like a public file) is
/// refused before any file is touched, and nothing is written anywhere.
#[test]
fn names_that_leave_the_root_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let abs = tmp.path().join("abs").display().to_string();
    let bad_wallets = [
        "../escaped",
        "..",
        ".",
        "",
        abs.as_str(),
        "a/b",
        "a\\b",
        ".hidden",
        "nul\0byte",
        "new\nline",
    ];
    for name in bad_wallets {
        let w = Wallet::new(&root, name, "default");
        let err = w.create(None, false).unwrap_err();
        assert!(
            matches!(err, WalletError::BadName { kind: "wallet", .. }),
            "{name:?}: {err}"
        );
        assert!(matches!(
            w.create_coldkey(None, None, false),
            Err(WalletError::BadName { .. })
        ));
        assert!(matches!(w.coldkeypub(), Err(WalletError::BadName { .. })));
        assert!(matches!(w.info(), Err(WalletError::BadName { .. })));
        assert!(Wallet::try_new(&root, name, "default").is_err());
    }
    let long = "x".repeat(129);
    for hotkey in [
        "../../../hot",
        "../hot",
        abs.as_str(),
        "",
        "..",
        "h/../../x",
        ".h",
        "defaultpub.txt",
        long.as_str(),
    ] {
        let w = Wallet::new(&root, "w", hotkey);
        let err = w.create_hotkey(None, false).unwrap_err();
        assert!(
            matches!(err, WalletError::BadName { kind: "hotkey", .. }),
            "{hotkey:?}: {err}"
        );
        assert!(matches!(w.hotkey(), Err(WalletError::BadName { .. })));
        assert!(matches!(w.hotkey_ss58(), Err(WalletError::BadName { .. })));
        assert!(matches!(
            w.create(None, false),
            Err(WalletError::BadName { .. })
        ));
    }
    // Nothing was created anywhere under tmp but the empty root.
    let all: Vec<_> = walk_all(tmp.path());
    assert_eq!(all, vec![root.clone()], "{all:?}");
    // Ordinary names still work, including dots and dashes inside.
    let w = Wallet::try_new(&root, "my.wallet-1", "hot_key.2").unwrap();
    w.create(None, false).unwrap();
    assert!(root.join("my.wallet-1/hotkeys/hot_key.2").is_file());
}

fn walk_all(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() {
            out.extend(walk_all(&p));
        }
    }
    out.sort();
    out
}

/// A key file that is a FIFO or a link to a
/// device is an error (no hang, no endless read); a huge file is refused.
#[test]
fn special_key_files_are_errors_not_hangs() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let w = Wallet::new(tmp.path(), "w", "default");
    std::fs::create_dir_all(w.dir().join("hotkeys")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(w.hotkey_path())
        .status()
        .unwrap()
        .success());
    let e = w.hotkey().unwrap_err().to_string();
    assert!(e.contains("FIFO"), "{e}");
    symlink("/dev/zero", w.coldkey_path()).unwrap();
    let e = w.coldkey("pw").unwrap_err().to_string();
    assert!(e.contains("character device"), "{e}");
    std::fs::write(w.coldkeypub_path(), vec![b' '; 1 << 20]).unwrap();
    let e = w.coldkeypub().unwrap_err().to_string();
    assert!(e.contains("over the limit"), "{e}");
    // `info` reports each as a problem instead of a silent `null`.
    let info = w.info().unwrap();
    assert_eq!(info.problems.len(), 3, "{:?}", info.problems);
    assert!(info.coldkeypub.is_none());
}
