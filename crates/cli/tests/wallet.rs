//! `pretrain wallet new|list|show` against the bittensor fixture wallet.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};


const ROOT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/reference/wallet"
);
// From shared/reference/wallet/README.md.
const COLD_SS58: &str = "5EPCUjPxiHAcNooYipQFWr9NmmXJKpNG5RhcntXwbtUySrgH";
const HOT_SS58: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";

fn pretrain(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pretrain"));
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("PRETRAIN_COLDKEY_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pretrain")
}

mod common;
use common::ok_json;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn show_and_list_read_the_fixture() {
    let v = ok_json(&pretrain(
        &[
            "wallet",
            "show",
            "--wallet.path",
            ROOT,
            "--wallet.name",
            "fixture",
            "--json",
        ],
        &[],
    ));
    assert_eq!(v["name"], "fixture");
    assert_eq!(v["coldkeypub"], COLD_SS58);
    assert_eq!(v["coldkey_encrypted"], true);
    assert_eq!(
        v["hotkeys"],
        serde_json::json!([{"name": "default", "ss58": HOT_SS58}])
    );

    let v = ok_json(&pretrain(
        &["wallet", "list", "--wallet.path", ROOT, "--json"],
        &[],
    ));
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["fixture"]);

    // The table names both addresses.
    let out = pretrain(&["wallet", "list", "--wallet.path", ROOT], &[]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains(COLD_SS58) && table.contains(HOT_SS58),
        "{table}"
    );
}

#[test]
fn show_of_a_missing_wallet_fails_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let out = pretrain(
        &[
            "wallet",
            "show",
            "--wallet.path",
            root,
            "--wallet.name",
            "ghost",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && err.contains("ghost"), "{err}");
}

#[test]
fn new_creates_a_bittensor_wallet_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let base = [
        "wallet",
        "new",
        "--wallet.path",
        root,
        "--wallet.name",
        "w1",
    ];

    let v = ok_json(&pretrain(&[&base[..], &["--no_password"]].concat(), &[]));
    let cold = v["coldkey"]["ss58"].as_str().unwrap().to_string();
    let hot = v["hotkey"]["ss58"].as_str().unwrap().to_string();
    assert_eq!(v["coldkey"]["encrypted"], false);
    assert_eq!(
        v["hotkey"]["mnemonic"].as_str().unwrap().split(' ').count(),
        12
    );
    let dir = tmp.path().join("w1");
    for rel in [
        "coldkey",
        "coldkeypub.txt",
        "hotkeys/default",
        "hotkeys/defaultpub.txt",
    ] {
        assert_eq!(mode(&dir.join(rel)), 0o600, "{rel}");
    }
    // What we wrote reads back, as bittensor would read it.
    let shown = ok_json(&pretrain(
        &[
            "wallet",
            "show",
            "--wallet.path",
            root,
            "--wallet.name",
            "w1",
            "--json",
        ],
        &[],
    ));
    assert_eq!(shown["coldkeypub"], cold.as_str());
    assert_eq!(shown["hotkeys"][0]["ss58"], hot.as_str());

    // Again: refused, nothing changed, one line on stderr.
    let before = std::fs::read(dir.join("coldkey")).unwrap();
    let out = pretrain(&[&base[..], &["--no_password"]].concat(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(dir.join("coldkey")).unwrap(), before);

    // A second hotkey for the same coldkey.
    let v = ok_json(&pretrain(
        &[&base[..], &["--hotkey_only", "--wallet.hotkey", "h2"]].concat(),
        &[],
    ));
    assert!(v["coldkey"].is_null());
    assert!(dir.join("hotkeys/h2").is_file() && dir.join("hotkeys/h2pub.txt").is_file());
    assert_eq!(std::fs::read(dir.join("coldkey")).unwrap(), before);
}

#[test]
fn new_encrypts_the_coldkey_with_the_password_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let v = ok_json(&pretrain(
        &[
            "wallet",
            "new",
            "--wallet.path",
            root,
            "--wallet.name",
            "enc",
        ],
        &[("PRETRAIN_COLDKEY_PASSWORD", "correct horse")],
    ));
    assert_eq!(v["coldkey"]["encrypted"], true);
    let coldkey = std::fs::read(tmp.path().join("enc/coldkey")).unwrap();
    assert!(coldkey.starts_with(b"$NACL"));
    // It opens with that password and gives the address it printed.
    let w = pretrain_chain::Wallet::new(tmp.path(), "enc", "default");
    assert_eq!(
        w.coldkey("correct horse").unwrap().ss58(),
        v["coldkey"]["ss58"].as_str().unwrap()
    );
}
