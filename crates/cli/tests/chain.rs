//! `pretrain chain ...` on the embedded chain, several processes at once.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::path::Path;
use std::process::{Command, Output, Stdio};

use pretrain_chain::embedded::{EmbeddedChain, EmbeddedOptions};
use pretrain_chain::wallet::KeyPair;
use pretrain_chain::{Chain, Hotkey};

const WALLETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/wallet");
// From testdata/wallet/README.md.
const COLD_SS58: &str = "5EPCUjPxiHAcNooYipQFWr9NmmXJKpNG5RhcntXwbtUySrgH";
const HOT_SS58: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";

fn addr(i: u8) -> String {
    KeyPair::from_secret_seed([i; 32]).unwrap().ss58()
}

fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretrain"));
    c.arg("chain")
        .args(args)
        .args(["--chain_dir", dir.to_str().unwrap(), "--block_time", "0.05"])
        .stdin(Stdio::null());
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    cmd(dir, args).output().expect("run pretrain")
}

mod common;
use common::{fails_with, ok_json};

#[test]
fn a_newcomer_sets_up_a_subnet_with_register_and_stake() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Reading a chain that is not there is an error, and creates nothing.
    let missing = dir.join("typo");
    fails_with(&run(&missing, &["metagraph"]), "no embedded chain");
    assert!(!missing.exists());

    // The fixture wallet's hotkey, owned by its coldkey.
    let wallet = [
        "--wallet.path",
        WALLETS,
        "--wallet.name",
        "fixture",
        "--wallet.hotkey",
        "default",
    ];
    let r = ok_json(&run(dir, &[&["register"][..], &wallet].concat()));
    assert_eq!(
        (r["uid"].as_u64(), r["hotkey"].as_str()),
        (Some(0), Some(HOT_SS58))
    );
    assert_eq!(r["already_registered"], false);
    let r = ok_json(&run(dir, &[&["register"][..], &wallet].concat()));
    assert_eq!(
        (r["uid"].as_u64(), r["already_registered"].as_bool()),
        (Some(0), Some(true))
    );

    let s = ok_json(&run(
        dir,
        &[&["stake", "--amount", "12.5"][..], &wallet].concat(),
    ));
    assert_eq!(s["stake"], 12.5);
    let a1 = addr(1);
    ok_json(&run(dir, &["register", "--hotkey", &a1]));

    let g = ok_json(&run(dir, &["metagraph", "--json"]));
    assert_eq!(g["netuid"], 9);
    let n = g["neurons"].as_array().unwrap();
    assert_eq!(n.len(), 2);
    assert_eq!(
        (n[0]["hotkey"].as_str(), n[0]["coldkey"].as_str()),
        (Some(HOT_SS58), Some(COLD_SS58))
    );
    assert_eq!(
        (n[0]["stake"].as_f64(), n[0]["validator_permit"].as_bool()),
        (Some(12.5), Some(true))
    );
    assert_eq!(
        (n[1]["hotkey"].as_str(), n[1]["validator_permit"].as_bool()),
        (Some(a1.as_str()), Some(false))
    );

    let table = String::from_utf8(run(dir, &["metagraph"]).stdout).unwrap();
    assert!(
        table.contains(HOT_SS58) && table.contains("12.5000"),
        "{table}"
    );

    // Bad input is a one-line error.
    fails_with(
        &run(dir, &["register", "--hotkey", "5notanaddress"]),
        "not an SS58 address",
    );
    fails_with(
        &run(dir, &["stake", "--hotkey", &a1, "--amount=-3"]),
        "positive",
    );
    fails_with(
        &run(dir, &["metagraph", "--subtensor.network", "mainnet"]),
        "unknown network",
    );
    fails_with(
        &run(
            dir,
            &[
                "stake",
                "--hotkey",
                &a1,
                "--amount",
                "1",
                "--subtensor.network",
                "finney",
            ],
        ),
        "needs the embedded chain",
    );
}

#[test]
fn commitments_read_back_by_uid_and_hotkey() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for i in 0..2u8 {
        ok_json(&run(dir, &["register", "--hotkey", &addr(i)]));
    }
    fails_with(
        &run(dir, &["commitment", "--uid", "0"]),
        "has no commitment",
    );
    // A miner (this process) commits while the CLI reads.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = "alice:gpt2-small:0123456789abcdef0123456789abcdef01234567:aGFzaA==";
    let block = rt.block_on(async {
        let chain = EmbeddedChain::open(dir, &EmbeddedOptions::default()).unwrap();
        chain
            .commit(&Hotkey::address_only(addr(1)), 9, data.as_bytes())
            .await
            .unwrap()
    });
    let c = ok_json(&run(dir, &["commitment", "--uid", "1"]));
    assert_eq!(c["uid"], 1);
    assert_eq!(c["hotkey"], addr(1).as_str());
    assert_eq!(c["block"].as_u64(), Some(block));
    assert_eq!(c["data"], data);
    assert_eq!(c["model_id"]["namespace"], "alice");
    assert_eq!(
        c["model_id"]["commit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    let by_hotkey = ok_json(&run(dir, &["commitment", "--hotkey", &addr(1)]));
    assert_eq!(by_hotkey, c);
    let all = ok_json(&run(dir, &["commitment"]));
    assert_eq!(all, serde_json::json!([c]));
    fails_with(
        &run(dir, &["commitment", "--uid", "7"]),
        "uid 7 does not exist",
    );
}

/// Hostile input, class 5: many processes on a fresh chain directory (no file
/// yet), each registering a hotkey and then staking it, all at once; repeated
/// on new directories. No write is ever lost.
#[test]
fn processes_register_and_stake_at_once() {
    for round in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fresh");
        let threads: Vec<_> = (10..22u8)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let a = addr(i);
                    for args in [
                        vec!["register", "--hotkey", &a],
                        vec!["stake", "--hotkey", &a, "--amount", "2"],
                    ] {
                        let out = run(&dir, &args);
                        assert!(
                            out.status.success(),
                            "round {round}, {args:?}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let g = ok_json(&run(&dir, &["metagraph", "--json"]));
        let n = g["neurons"].as_array().unwrap();
        let uids: Vec<u64> = n.iter().map(|x| x["uid"].as_u64().unwrap()).collect();
        assert_eq!(uids, (0..12).collect::<Vec<u64>>());
        let mut hotkeys: Vec<String> = n
            .iter()
            .map(|x| x["hotkey"].as_str().unwrap().to_string())
            .collect();
        hotkeys.sort();
        let mut expected: Vec<String> = (10..22u8).map(addr).collect();
        expected.sort();
        assert_eq!(hotkeys, expected, "round {round}");
        assert!(n
            .iter()
            .all(|x| x["stake"] == 2.0 && x["validator_permit"] == true));
    }
}

/// Hostile input, class 5 through the command line: `register --block_time 1e-300`
/// failed and left the directory unusable; now it is refused before anything
/// is written and the next command works. Same for other unusable numbers,
/// and for `--chain_timeout 1e300` (it panicked).
#[test]
fn bad_numbers_are_refused_and_leave_the_chain_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let d = dir.to_str().unwrap();
    let a1 = addr(1);
    for extra in [
        "--block_time=1e-300",
        "--block_time=-1",
        "--block_time=inf",
        "--chain_timeout=1e300",
        "--chain_timeout=nan",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pretrain"))
            .args(["chain", "register", "--hotkey", &a1, "--chain_dir", d])
            .arg(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!dir.exists(), "{extra:?} left {}", dir.display());
    }
    ok_json(&run(&dir, &["register", "--hotkey", &a1]));
    // Stake: an unregistered hotkey is refused; 1e308 twice never stores infinity.
    fails_with(
        &run(&dir, &["stake", "--hotkey", &addr(2), "--amount", "1"]),
        "not registered",
    );
    for _ in 0..2 {
        fails_with(
            &run(&dir, &["stake", "--hotkey", &a1, "--amount=1e308"]),
            "at most 21000000",
        );
    }
    let s = ok_json(&run(&dir, &["stake", "--hotkey", &a1, "--amount", "3"]));
    assert_eq!(s["stake"], 3.0);
    let g = ok_json(&run(&dir, &["metagraph", "--json"]));
    assert_eq!(g["neurons"][0]["stake"], 3.0);
}

/// Hostile input, class 4: `chain metagraph | true` panicked; now a quiet 141.
#[test]
fn metagraph_to_a_closed_stdout_is_quiet() {
    let tmp = tempfile::tempdir().unwrap();
    ok_json(&run(tmp.path(), &["register", "--hotkey", &addr(1)]));
    for extra in [&[][..], &["--json"][..]] {
        let child = cmd(tmp.path(), &[&["metagraph"][..], extra].concat())
            .stdout(common::closed_pipe())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
