//! `pretrain hash` and `pretrain score` against the reference vectors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn reference(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference")
        .join(rel)
}

fn pretrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(args)
        .output()
        .expect("run pretrain")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "nan" => f64::NAN,
        v => v.as_f64().expect("number"),
    }
}

#[test]
fn hash_prints_the_reference_hash_of_every_shipped_tree() {
    let cases = read_json(&reference("hash/cases.json"));
    let mut checked = 0;
    for tree in cases["trees"].as_array().expect("trees") {
        let name = tree["name"].as_str().expect("name");
        let dir = reference("hash/trees").join(name);
        if !dir.is_dir() {
            continue; // trees with empty directories are not shipped as folders
        }
        let out = pretrain(&["hash", dir.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "{name}: {out:?}");
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        assert_eq!(
            stdout,
            format!("{}\n", tree["hash_of_directory"].as_str().expect("hash")),
            "{name}"
        );
        checked += 1;
    }
    assert!(checked > 0, "no reference tree found");
}

#[test]
fn hash_of_a_missing_directory_is_a_one_line_error() {
    let out = pretrain(&["hash", "/nonexistent/model/dir"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/model/dir"), "{stderr}");
}

#[test]
fn score_reproduces_every_reference_step() {
    let cases = read_json(&reference("scoring/cases.json"));
    let tmp = tempfile::tempdir().expect("tempdir");
    for step in cases["steps"].as_array().expect("steps") {
        let name = step["name"].as_str().expect("name");
        // Inputs only: the command must not see the expected values.
        let mut input = step.clone();
        input.as_object_mut().expect("object").remove("expected");
        let path = tmp.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&input).expect("json")).expect("write");
        let out = pretrain(&["score", path.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "{name}: {out:?}");
        let got: Value = serde_json::from_slice(&out.stdout).expect("stdout is json");
        let want = &step["expected"];
        for key in ["wins", "uids_to_eval_next", "emit_uids", "emit_u16"] {
            assert_eq!(got[key], want[key], "{name}: {key}");
        }
        for (uid, rate) in want["win_rate"].as_object().expect("win_rate") {
            assert_eq!(
                num(&got["win_rate"][uid]),
                num(rate),
                "{name}: win_rate {uid}"
            );
        }
        for key in [
            "step_weights",
            "new_weights_scattered_normalized",
            "weights",
        ] {
            let g = got[key].as_array().expect(key);
            let w = want[key].as_array().expect(key);
            assert_eq!(g.len(), w.len(), "{name}: {key}");
            for (a, b) in g.iter().zip(w) {
                assert!((num(a) - num(b)).abs() <= 1e-6, "{name}: {key} {a} vs {b}");
            }
        }
    }
}

#[test]
fn score_rejects_malformed_files_with_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases = read_json(&reference("scoring/cases.json"));
    let good = cases["steps"][2].clone();
    let mut missing = good.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("losses_per_uid");
    let mut bad_loss = good.clone();
    bad_loss["losses_per_uid"][good["uids"][0].to_string()][0] = Value::from("lots");
    let mut wrong_batches = good.clone();
    wrong_batches["n_batches"] = Value::from(99);
    for (label, body, needle) in [
        (
            "not json",
            b"{ not json".to_vec(),
            "not a valid scoring step",
        ),
        (
            "missing field",
            serde_json::to_vec(&missing).unwrap(),
            "losses_per_uid",
        ),
        ("bad loss", serde_json::to_vec(&bad_loss).unwrap(), "lots"),
        (
            "wrong batches",
            serde_json::to_vec(&wrong_batches).unwrap(),
            "99",
        ),
    ] {
        let path = tmp.path().join("step.json");
        std::fs::write(&path, body).expect("write");
        let out = pretrain(&["score", path.to_str().expect("utf-8 path")]);
        assert!(!out.status.success(), "{label} accepted");
        assert!(out.stdout.is_empty(), "{label}: stdout not empty");
        let stderr = String::from_utf8(out.stderr).expect("utf-8");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{label}: {stderr}");
        assert!(stderr.contains(needle), "{label}: {stderr}");
    }
}
