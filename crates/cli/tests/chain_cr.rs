//! `pretrain chain register --commit_reveal_weights ... --tempo N` and
//! `pretrain chain hyperparameters` on the embedded chain: the settings given
//! are the ones the chain reports (table and `--json`), and later registers
//! without the flags keep them.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::path::Path;
use std::process::{Command, Output, Stdio};

use pretrain_chain::wallet::KeyPair;
use serde_json::Value;

fn addr(i: u8) -> String {
    KeyPair::from_secret_seed([i; 32]).expect("key").ss58()
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .arg("chain")
        .args(args)
        .args([
            "--chain_dir",
            dir.to_str().expect("utf-8"),
            "--block_time",
            "0.05",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run pretrain")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

#[test]
fn register_sets_commit_reveal_and_hyperparameters_reports_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    ok(&run(
        dir,
        &[
            "register",
            "--hotkey",
            &addr(1),
            "--commit_reveal_weights",
            "true",
            "--reveal_period_epochs",
            "2",
            "--tempo",
            "30",
            "--weights_version_key",
            "7",
        ],
    ));
    // Another register without the flags changes nothing.
    ok(&run(dir, &["register", "--hotkey", &addr(2)]));
    let h: Value =
        serde_json::from_str(&ok(&run(dir, &["hyperparameters", "--json"]))).expect("json");
    assert_eq!(h["netuid"], 9);
    assert_eq!(h["tempo"], 30);
    assert_eq!(h["commit_reveal_weights_enabled"], true);
    assert_eq!(h["commit_reveal_version"], 4);
    assert_eq!(h["reveal_period_epochs"], 2);
    assert_eq!(h["weights_version_key"], 7);
    assert_eq!(h["weights_rate_limit"], 100);
    let table = ok(&run(dir, &["hyperparameters"]));
    let row = |k: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("no {k} in {table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row("commit_reveal_weights_enabled"),
        ["commit_reveal_weights_enabled", "true"]
    );
    assert_eq!(row("tempo"), ["tempo", "30"]);
    // Switched off again; a bad value is refused.
    ok(&run(
        dir,
        &[
            "register",
            "--hotkey",
            &addr(2),
            "--commit_reveal_weights",
            "false",
        ],
    ));
    let h: Value =
        serde_json::from_str(&ok(&run(dir, &["hyperparameters", "--json"]))).expect("json");
    assert_eq!(h["commit_reveal_weights_enabled"], false);
    assert_eq!(h["tempo"], 30);
    let bad = run(dir, &["register", "--hotkey", &addr(2), "--tempo", "0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tempo"));
}
