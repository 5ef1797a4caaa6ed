//! `pretrain rules KIND FILE|-` on every case of `testdata/later/vectors.json`
//! (transcribed from upstream taoverse e350d5e / pretraining 42328de): the
//! command sees only a case's inputs and must print the expected outputs.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn vectors() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/later/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn pretrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(args)
        .output()
        .expect("run pretrain")
}

/// Writes `case` without the `outputs` keys and runs `pretrain rules KIND file`.
fn replay(dir: &Path, kind: &str, case: &Value, outputs: &[&str], extra: &[&str]) -> Value {
    let mut input = case.clone();
    for k in outputs {
        input.as_object_mut().expect("object").remove(*k);
    }
    let path: PathBuf = dir.join(format!("{kind}.json"));
    std::fs::write(&path, serde_json::to_vec(&input).expect("json")).expect("write");
    let mut args = vec!["rules", kind, path.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    let out = pretrain(&args);
    assert!(out.status.success(), "{kind} {case}: {out:?}");
    let got: Value = serde_json::from_slice(&out.stdout).expect("stdout is json");
    // Inputs come back unchanged.
    for (k, v) in input.as_object().expect("object") {
        assert_eq!(&got[k], v, "{kind}: input field {k}");
    }
    got
}

fn cases<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    let list = v[key].as_array().expect("section");
    assert!(!list.is_empty(), "{key} has no cases");
    list
}

/// Relative tolerance; float32 subnormals upstream (below 1e-30) absolute 1e-44.
fn close(got: &Value, want: &Value, rel: f64) -> bool {
    let (g, w) = (
        got.as_f64().expect("number"),
        want.as_f64().expect("number"),
    );
    if w.abs() < 1e-30 {
        (g - w).abs() <= 1e-44
    } else {
        (g - w).abs() <= rel * w.abs()
    }
}

fn assert_close_list(got: &Value, want: &Value, rel: f64, what: &str) {
    let (g, w) = (
        got.as_array().expect("list"),
        want.as_array().expect("list"),
    );
    assert_eq!(g.len(), w.len(), "{what}: {got} vs {want}");
    for (g, w) in g.iter().zip(w) {
        match w {
            // [uid, value] pairs
            Value::Array(pair) => {
                assert_eq!(g[0], pair[0], "{what}");
                assert!(close(&g[1], &pair[1], rel), "{what}: {got} vs {want}");
            }
            _ => assert!(close(g, w, rel), "{what}: {got} vs {want}"),
        }
    }
}

#[test]
fn secure_hash_cases() {
    let v = vectors();
    let tmp = tempfile::tempdir().expect("tempdir");
    for case in cases(&v, "secure_hash") {
        let got = replay(
            tmp.path(),
            "secure-hash",
            case,
            &["secure_hash", "preimage_utf8"],
            &[],
        );
        assert_eq!(got["secure_hash"], case["secure_hash"], "{case}");
        if case.get("preimage_utf8").is_some() {
            assert_eq!(got["preimage_utf8"], case["preimage_utf8"]);
        }
    }
}

#[test]
fn model_id_cases() {
    let v = vectors();
    let tmp = tempfile::tempdir().expect("tempdir");
    let list = v["model_id_parse"]["cases"].as_array().expect("cases");
    assert!(list.len() >= 4);
    for case in list {
        let outputs = ["parsed", "roundtrip", "len_bytes", "error"];
        let got = replay(tmp.path(), "model-id", case, &outputs, &[]);
        if case.get("error").is_some() {
            assert_eq!(got["error"], case["error"], "{case}");
            assert!(got["parsed"].is_null());
        } else {
            for k in ["parsed", "roundtrip", "len_bytes"] {
                assert_eq!(got[k], case[k], "{k} of {case}");
            }
            assert!(got["error"].is_null());
        }
    }
}

#[test]
fn hash_check_cases() {
    let v = vectors();
    let tmp = tempfile::tempdir().expect("tempdir");
    for case in cases(&v, "validator_hash_check") {
        let got = replay(tmp.path(), "hash-check", case, &["accepted"], &[]);
        assert_eq!(got["accepted"], case["accepted"], "{}", case["label"]);
        // A refusal says why; an acceptance does not.
        assert_eq!(got["reason"].is_null(), case["accepted"] == true, "{got}");
    }
}

#[test]
fn epsilon_cases() {
    let v = vectors();
    let tmp = tempfile::tempdir().expect("tempdir");
    for case in cases(&v, "epsilon") {
        let got = replay(tmp.path(), "epsilon", case, &["epsilon"], &[]);
        // The same float64 arithmetic as upstream: equal to the last bit.
        assert_eq!(got["epsilon"], case["epsilon"], "{case}");
    }
}

#[test]
fn wins_cases() {
    let v = vectors();
    let tmp = tempfile::tempdir().expect("tempdir");
    let rel = v["meta"]["weights_rel_tolerance"].as_f64().expect("tol");
    let temperature = v["meta"]["temperature"].to_string();
    for case in cases(&v, "compute_wins") {
        let label = case["label"].as_str().expect("label");
        let outputs = [
            "competitive_uids",
            "wins",
            "win_rate",
            "softmax_step_weights",
        ];
        let got = replay(
            tmp.path(),
            "wins",
            case,
            &outputs,
            &["--temperature", &temperature],
        );
        for k in ["competitive_uids", "wins", "win_rate"] {
            assert_eq!(got[k], case[k], "{label}: {k}");
        }
        if let Some(want) = case.get("softmax_step_weights") {
            assert_close_list(&got["softmax_step_weights"], want, rel, label);
        }
    }
}

#[test]
fn weights_cases() {
    let v = vectors();
    let tmp = tempfile::tempdir().expect("tempdir");
    let rel = v["meta"]["weights_rel_tolerance"].as_f64().expect("tol");
    for case in cases(&v, "weight_combination") {
        let label = case["label"].as_str().expect("label");
        let got = replay(
            tmp.path(),
            "weights",
            case,
            &["per_competition", "subnet_weights"],
            &[],
        );
        let want = case["per_competition"].as_object().expect("map");
        let per = got["per_competition"].as_object().expect("map");
        assert_eq!(
            per.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{label}"
        );
        for (id, w) in want {
            assert_close_list(&per[id], w, rel, label);
        }
        assert_close_list(&got["subnet_weights"], &case["subnet_weights"], rel, label);
    }
}

#[test]
fn schedule_cases() {
    let v = vectors();
    let tmp = tempfile::tempdir().expect("tempdir");
    for case in cases(&v, "schedule_lookup_head") {
        let got = replay(
            tmp.path(),
            "schedule",
            case,
            &["competitions"],
            &["--schedule", "sn9-later"],
        );
        let (g, w) = (
            got["competitions"].as_array().expect("list"),
            case["competitions"].as_array().expect("list"),
        );
        assert_eq!(g.len(), w.len(), "block {}", case["block"]);
        for (g, w) in g.iter().zip(w) {
            for k in ["id", "name", "reward_percentage", "epsilon"] {
                assert_eq!(g[k], w[k], "block {}: {k}", case["block"]);
            }
            // Xenova/gpt-4 and E2TTS are kept in the table and refused with a reason.
            assert!(g["refused"].is_string(), "{g}");
        }
    }
}

#[test]
fn stdin_and_the_default_schedule() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(["rules", "schedule", "-", "--schedule", "sn9-2024-01"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(br#"{"block": 123}"#)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    let got: Value = serde_json::from_slice(&out.stdout).expect("json");
    let comps = got["competitions"].as_array().expect("list");
    assert_eq!(comps.len(), 1);
    assert_eq!(comps[0]["constraints"]["max_parameters"], 122_268_040);
    assert_eq!(comps[0]["epsilon"]["epsilon"], 0.01);
    assert_eq!(comps[0]["scoring"]["temperature"], 0.25);
    assert_eq!(comps[0]["scoring"]["alpha"], 0.9);
    assert!(comps[0]["refused"].is_null());
}

fn one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Log lines may come first; the reason is the last line, and the only error.
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(errors[0]),
        "{stderr}"
    );
    assert!(errors[0].contains(needle), "{needle:?} not in {stderr}");
}

#[test]
fn bad_input_is_a_clear_one_line_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("utf-8").to_string()
    };
    let f = write("missing.json", r#"{"model_hash": "x"}"#);
    one_line_error(&pretrain(&["rules", "secure-hash", &f]), "hotkey");
    let f = write("notjson.json", "not json");
    one_line_error(
        &pretrain(&["rules", "epsilon", &f]),
        "not a valid epsilon case",
    );
    let f = write(
        "decay0.json",
        r#"{"func": {"kind": "LinearDecay", "start_epsilon": 0.005, "end_epsilon": 0.001, "decay_blocks": 0}, "current_block": 1, "model_block": 0}"#,
    );
    one_line_error(&pretrain(&["rules", "epsilon", &f]), "decay_blocks");
    let f = write(
        "wins.json",
        r#"{"uids": [1, 2], "uid_to_score": [[1, 2.0]], "uid_to_block": [[1, 5], [2, 6]], "epsilon_func": {"kind": "FixedEpsilon", "epsilon": 0.005}, "current_block": 10}"#,
    );
    one_line_error(&pretrain(&["rules", "wins", &f]), "uid_to_score");
    let bad = write(
        "bad.toml",
        r#"
name = "bad"
[competitions.A]
id = 1
constraints = { max_parameters = 10, max_bytes = 100, architectures = ["GPT2LMHeadModel"], sequence_length = 8, epsilon = { kind = "FixedEpsilon", epsilon = 0.01 } }
scoring = { temperature = 0.01, alpha = 0.5, sample_min = 5, wins = "mean_loss_competitive" }
[[entries]]
start_block = 0
competitions = [{ competition = "A", share = 0.9 }]
"#,
    );
    let f = write("block.json", r#"{"block": 0}"#);
    one_line_error(
        &pretrain(&["rules", "schedule", &f, "--schedule", &bad]),
        "sum to 0.9, not 1",
    );
    one_line_error(
        &pretrain(&["rules", "schedule", &f, "--schedule", "sn9-nonexistent"]),
        "not a built-in schedule",
    );
    // Many competitions over a large metagraph: refused before allocating.
    let steps: Vec<String> = (0..300)
        .map(|k| format!(r#"{{"competition_id": {k}, "weights": []}}"#))
        .collect();
    let f = write(
        "wide.json",
        &format!(
            r#"{{"num_neurons": 65536, "alpha": 0.5, "recorded_steps": [{}], "active_competitions": []}}"#,
            steps.join(",")
        ),
    );
    one_line_error(
        &pretrain(&["rules", "weights", &f]),
        "more than 16777216 weights",
    );
    one_line_error(
        &pretrain(&["rules", "epsilon", "/nonexistent/case.json"]),
        "/nonexistent/case.json",
    );
}

/// `--schedule` on `mine` and `validate`: a bad schedule, one this build
/// cannot run, or a model outside the active competition's limits stops them
/// before any work, with the reason on one line.
#[test]
fn schedule_flag_refuses_what_this_build_cannot_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = |name: &str| tmp.path().join(name).display().to_string();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        ONE_COMPETITION
            .replace("SHARE", "0.9")
            .replace("MAXP", "1000"),
    )
    .expect("write");
    let bad = bad.display().to_string();
    one_line_error(
        &pretrain(&[
            "validate",
            "--offline",
            "--schedule",
            &bad,
            "--model_dir",
            &dir("v"),
        ]),
        "sum to 0.9, not 1",
    );
    one_line_error(
        &pretrain(&[
            "mine",
            "--offline",
            "--schedule",
            &bad,
            "--model_dir",
            &dir("m"),
        ]),
        "sum to 0.9, not 1",
    );
    // Offline, the latest entry of sn9-later applies: three competitions.
    one_line_error(
        &pretrain(&[
            "mine",
            "--offline",
            "--schedule",
            "sn9-later",
            "--model_dir",
            &dir("m"),
        ]),
        "runs 3 competitions",
    );
    // One competition of at most 1000 parameters: the tiny GPT-2 does not fit.
    let small = tmp.path().join("small.toml");
    std::fs::write(
        &small,
        ONE_COMPETITION
            .replace("SHARE", "1.0")
            .replace("MAXP", "1000"),
    )
    .expect("write");
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/models/tiny-gpt2/model");
    one_line_error(
        &pretrain(&[
            "mine",
            "--offline",
            "--schedule",
            small.to_str().expect("utf-8"),
            "--load_model_dir",
            tiny.to_str().expect("utf-8"),
            "--num_epochs",
            "0",
            "--model_dir",
            &dir("m2"),
        ]),
        "outside competition 0's range 0..=1000",
    );
}

const ONE_COMPETITION: &str = r#"
name = "one"
[competitions.TINY]
id = 0
constraints = { max_parameters = MAXP, max_bytes = 1000000000, architectures = ["GPT2LMHeadModel"], sequence_length = 1024, epsilon = { kind = "FixedEpsilon", epsilon = 0.01 } }
scoring = { temperature = 0.25, alpha = 0.9, sample_min = 30, wins = "per_batch" }
[[entries]]
start_block = 0
competitions = [{ competition = "TINY", share = SHARE }]
"#;
