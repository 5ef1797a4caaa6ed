//! `pretrain rules timelock-commit -` / `timelock-reveal -` with drand
//! quicknet's real signatures (`testdata/chain/timelock.json`): a commit made
//! for round 1000 opens with round 1000's signature to the payload given; a
//! wrong signature or a malformed commit is one error line and a non-zero exit.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn vectors() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/chain/timelock.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn signature(v: &Value, round: u64) -> String {
    v["pulses"]
        .as_array()
        .expect("pulses")
        .iter()
        .find(|p| p["round"] == round)
        .expect("round")["signature"]
        .as_str()
        .expect("hex")
        .to_string()
}

fn rules(kind: &str, input: &Value) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(["rules", kind, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pretrain");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

fn one_json_line(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout.clone()).expect("utf-8");
    assert_eq!(text.lines().count(), 1, "{text}");
    serde_json::from_str(&text).expect("json")
}

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8(out.stderr.clone()).expect("utf-8");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}

fn commit_case(v: &Value, round: u64) -> Value {
    let p = &v["payload"];
    json!({
        "hotkey": p["hotkey"], "uids": p["uids"], "values": p["values"],
        "version_key": p["version_key"], "reveal_round": round,
    })
}

#[test]
fn commit_then_reveal_with_the_real_signature() {
    let v = vectors();
    for round in [1000u64, 2000] {
        let made = one_json_line(&rules("timelock-commit", &commit_case(&v, round)));
        let keys: Vec<&String> = made.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 3, "{made}");
        assert_eq!(made["reveal_round"], round);
        assert_eq!(made["payload"], v["payload"]["scale"]);
        let opened = one_json_line(&rules(
            "timelock-reveal",
            &json!({"commit": made["commit"], "signature": signature(&v, round)}),
        ));
        let p = &v["payload"];
        assert_eq!(
            opened,
            json!({"hotkey": p["hotkey"], "uids": p["uids"], "values": p["values"], "version_key": p["version_key"]})
        );
    }
}

#[test]
fn a_wrong_signature_is_one_error_line() {
    let v = vectors();
    let made = one_json_line(&rules("timelock-commit", &commit_case(&v, 1000)));
    let line = one_error_line(&rules(
        "timelock-reveal",
        &json!({"commit": made["commit"], "signature": signature(&v, 2000)}),
    ));
    assert!(line.contains("does not open"), "{line}");
}

#[test]
fn malformed_inputs_are_one_error_line() {
    let v = vectors();
    for (kind, input) in [
        (
            "timelock-reveal",
            json!({"commit": "00", "signature": signature(&v, 1000)}),
        ),
        (
            "timelock-reveal",
            json!({"commit": "zz", "signature": signature(&v, 1000)}),
        ),
        (
            "timelock-reveal",
            json!({"commit": "00", "signature": "1234"}),
        ),
        (
            "timelock-commit",
            json!({"hotkey": "nope", "uids": [1], "values": [1], "version_key": 1, "reveal_round": 1}),
        ),
        (
            "timelock-commit",
            json!({"hotkey": v["payload"]["hotkey"], "uids": [1, 2], "values": [1], "version_key": 1, "reveal_round": 1}),
        ),
    ] {
        let line = one_error_line(&rules(kind, &input));
        assert!(line.len() > "error: ".len(), "{kind} {input}: {line}");
    }
}
