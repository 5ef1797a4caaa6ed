//! `pretrain wallet new|list|show` against the bittensor fixture wallet.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/wallet");
// From testdata/wallet/README.md.
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

// ---- Hostile inputs ----

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_under(&p));
        }
    }
    out.sort();
    out
}

/// Hostile input, class 1: `--wallet.name ../escaped` wrote keys next to the root;
/// `--wallet.hotkey ../../../hot`, absolute names and an empty name did the
/// same. Each is refused at parsing (usage error, exit 2), nothing written.
#[test]
fn wallet_names_that_leave_the_root_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let r = root.to_str().unwrap();
    let abs = tmp.path().join("abs");
    let abs = abs.to_str().unwrap();
    for (flag, value) in [
        ("--wallet.name", "../escaped"),
        ("--wallet.name", abs),
        ("--wallet.name", ""),
        ("--wallet.name", ".."),
        ("--wallet.name", "a/b"),
        ("--wallet.hotkey", "../../../hot"),
        ("--wallet.hotkey", abs),
        ("--wallet.hotkey", ""),
        ("--wallet.hotkey", "x/../../y"),
        ("--wallet.hotkey", "defaultpub.txt"),
    ] {
        for sub in ["new", "show"] {
            let mut args = vec!["wallet", sub, "--wallet.path", r, flag, value];
            if sub == "new" {
                args.push("--no_password");
            }
            let out = pretrain(&args, &[]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{sub} {flag} {value:?}: {err}");
            assert!(
                err.contains("is not allowed"),
                "{sub} {flag} {value:?}: {err}"
            );
        }
    }
    assert_eq!(files_under(tmp.path()), vec![root.clone()]);
    // The same names are refused by the commands that only read keys.
    let out = pretrain(
        &[
            "chain",
            "register",
            "--chain_dir",
            tmp.path().join("c").to_str().unwrap(),
            "--wallet.path",
            r,
            "--wallet.name",
            "../escaped",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!tmp.path().join("c").exists());
}

/// Hostile input, class 4: `wallet new` panicked on a closed stdout after writing
/// its keys, so the mnemonic was lost. Now the keys are shown first: with
/// stdout closed, it fails saying so and writes no key at all.
#[test]
fn wallet_new_with_a_closed_stdout_writes_no_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args([
            "wallet",
            "new",
            "--wallet.path",
            root,
            "--wallet.name",
            "w",
            "--no_password",
        ])
        .stdin(Stdio::null())
        .stdout(common::closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("no key was written"), "{err}");
    assert!(
        files_under(tmp.path()).is_empty(),
        "{:?}",
        files_under(tmp.path())
    );

    // `list` and `show` exit quietly (141) on a closed stdout, no panic.
    for args in [
        vec!["wallet", "list", "--wallet.path", ROOT],
        vec!["wallet", "list", "--wallet.path", ROOT, "--json"],
        vec![
            "wallet",
            "show",
            "--wallet.path",
            ROOT,
            "--wallet.name",
            "fixture",
        ],
    ] {
        let child = Command::new(env!("CARGO_BIN_EXE_pretrain"))
            .args(&args)
            .stdout(common::closed_pipe())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Hostile input, class 7: `wallet show --wallet.hotkey X` shows only X (it
/// listed every hotkey), a missing X is an error, and a corrupt key file
/// is an error naming it (it exited 0 with `null`).
#[test]
fn show_selects_the_hotkey_and_fails_on_corrupt_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    let base = [
        "wallet",
        "new",
        "--wallet.path",
        root,
        "--wallet.name",
        "w",
        "--no_password",
    ];
    ok_json(&pretrain(&base, &[]));
    ok_json(&pretrain(
        &[&base[..], &["--hotkey_only", "--wallet.hotkey", "h2"]].concat(),
        &[],
    ));
    let show = |extra: &[&str]| {
        pretrain(
            &[
                &[
                    "wallet",
                    "show",
                    "--wallet.path",
                    root,
                    "--wallet.name",
                    "w",
                    "--json",
                ][..],
                extra,
            ]
            .concat(),
            &[],
        )
    };
    let all = ok_json(&show(&[]));
    assert_eq!(all["hotkeys"].as_array().unwrap().len(), 2);
    let one = ok_json(&show(&["--wallet.hotkey", "h2"]));
    let names: Vec<&str> = one["hotkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["h2"]);
    common::fails_with(&show(&["--wallet.hotkey", "nope"]), "no hotkey \"nope\"");
    // Corrupt h2's public file: showing h2 (or the whole wallet) fails, naming it;
    // showing the other hotkey still works.
    let h2pub = tmp.path().join("w/hotkeys/h2pub.txt");
    std::fs::write(&h2pub, b"{not json").unwrap();
    common::fails_with(&show(&["--wallet.hotkey", "h2"]), "h2pub.txt");
    common::fails_with(&show(&[]), "h2pub.txt");
    ok_json(&show(&["--wallet.hotkey", "default"]));
    // A hotkey whose name is a prefix of the corrupt one's is not blamed for it.
    ok_json(&pretrain(
        &[&base[..], &["--hotkey_only", "--wallet.hotkey", "h"]].concat(),
        &[],
    ));
    ok_json(&show(&["--wallet.hotkey", "h"]));
    // A corrupt coldkeypub.txt is an error too.
    std::fs::write(tmp.path().join("w/coldkeypub.txt"), b"\x00\x01").unwrap();
    common::fails_with(&show(&["--wallet.hotkey", "default"]), "coldkeypub.txt");
}
