//! `pretrain hash` and `pretrain score` against the reference vectors.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn reference(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
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
        let out = pretrain(&["hash", "--all_files", dir.to_str().expect("utf-8 path")]);
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

/// A cloned Hub repo holds more than the model: by default `hash` is what the
/// miner committed for it (the files `from_pretrained` fetches), the original's
/// hash of the `save_pretrained` directory; `--all_files` hashes the whole tree.
#[test]
fn hash_of_a_cloned_repo_is_the_committed_hash_unless_all_files() {
    let model = reference(TINY_GPT2);
    let expected = read_json(&model.join("../expected.json"));
    let want = format!(
        "{}\n",
        expected["hash_of_directory"].as_str().expect("hash")
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let clone = tmp.path().join("clone");
    std::fs::create_dir_all(clone.join(".git/refs")).expect("mkdir");
    for e in std::fs::read_dir(&model).expect("model dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), clone.join(e.file_name())).expect("copy");
    }
    let hash = |extra: &[&str]| {
        let mut args = vec!["hash"];
        args.extend_from_slice(extra);
        args.push(clone.to_str().expect("utf-8"));
        let out = pretrain(&args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    // A plain save_pretrained directory: both are the original's hash.
    assert_eq!(hash(&[]), want);
    assert_eq!(hash(&["--all_files"]), want);
    // What a clone adds, file by file: none changes the default hash, each the whole one.
    let mut whole = vec![want.clone()];
    for (path, body) in [
        (
            ".gitattributes",
            "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        ),
        ("README.md", "# tiny-gpt2\n"),
        (".git/HEAD", "ref: refs/heads/main\n"),
        ("notes/train.log", "step 1 loss 10.8\n"),
        ("pytorch_model.bin.txt", "not weights\n"),
    ] {
        if let Some(parent) = clone.join(path).parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(clone.join(path), body).expect("write");
        assert_eq!(hash(&[]), want, "after adding {path}");
        let all = hash(&["--all_files"]);
        assert!(!whole.contains(&all), "after adding {path}: {all}");
        whole.push(all);
    }
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

// ---- Hostile inputs (classes 2, 3, 4, 7) ----

const TINY_GPT2: &str = "models/tiny-gpt2/model";

/// Runs `pretrain` with stdout a pipe whose reader is already gone.
fn with_closed_stdout(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(common::closed_pipe())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child.wait_with_output().expect("wait")
}

fn assert_quiet_broken_pipe(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_ne!(out.status.code(), Some(101), "{what}: {err}");
    assert_eq!(out.status.code(), Some(141), "{what}: {err}");
    assert!(!err.contains("error:"), "{what}: {err}");
}

/// Hostile input, class 4: `hash DIR | true` panicked (rc 101); so did inspect and
/// score. Each now exits quietly with 141 (128 + SIGPIPE, as a Unix filter).
#[test]
fn closed_stdout_is_a_quiet_exit_not_a_panic() {
    let model = reference(TINY_GPT2);
    let model = model.to_str().unwrap();
    let cases = reference("scoring/cases.json");
    let tmp = tempfile::tempdir().unwrap();
    let step = tmp.path().join("step.json");
    let all = read_json(&cases);
    std::fs::write(&step, all["steps"][0].to_string()).unwrap();
    for args in [
        vec!["hash", model],
        vec!["inspect", model],
        vec!["score", step.to_str().unwrap()],
    ] {
        assert_quiet_broken_pipe(&with_closed_stdout(&args), &args.join(" "));
    }
}

#[cfg(unix)]
fn mkfifo(p: &Path) {
    assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
}

/// A copy of the tiny GPT-2 model directory to spoil.
fn model_copy(tmp: &Path) -> PathBuf {
    let dst = tmp.join("model");
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(reference(TINY_GPT2)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// Hostile input, class 2: a FIFO or a link to /dev/zero in a model directory made
/// `hash` and `inspect` hang, and `config.json` linked to /dev/zero made `eval`
/// read until memory ran out. Each is now a one-line error, quickly.
#[cfg(unix)]
#[test]
fn special_files_in_a_model_directory_are_errors_not_hangs() {
    use std::os::unix::fs::symlink;
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.json");
    std::fs::write(&tokens, "[[1, 2, 3]]").unwrap();
    for (case, spoil) in [
        ("fifo", 0),
        ("zero-link", 1),
        ("config-zero", 2),
        ("config-fifo", 3),
        ("weights-fifo", 4),
    ] {
        let sub = tmp.path().join(case);
        std::fs::create_dir(&sub).unwrap();
        let dir = model_copy(&sub);
        match spoil {
            0 => mkfifo(&dir.join("extra.bin")),
            1 => symlink("/dev/zero", dir.join("extra.bin")).unwrap(),
            2 => {
                std::fs::remove_file(dir.join("config.json")).unwrap();
                symlink("/dev/zero", dir.join("config.json")).unwrap();
            }
            3 => {
                std::fs::remove_file(dir.join("config.json")).unwrap();
                mkfifo(&dir.join("config.json"));
            }
            _ => {
                std::fs::remove_file(dir.join("model.safetensors")).unwrap();
                mkfifo(&dir.join("model.safetensors"));
            }
        }
        let d = dir.to_str().unwrap();
        if spoil < 2 {
            // extra.bin is no file `from_pretrained` fetches: the model's hash never opens it.
            let out = pretrain(&["hash", d]);
            assert!(out.status.success(), "{case}: {out:?}");
            let want = read_json(&reference("models/tiny-gpt2/expected.json"));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                want["hash_of_directory"].as_str().unwrap(),
                "{case}"
            );
        }
        let mut runs = vec![
            vec!["hash", "--all_files", d],
            vec!["inspect", d],
            vec!["eval", "--model", d, "--tokens", tokens.to_str().unwrap()],
        ];
        if spoil >= 2 {
            // A model file itself is special: the default hash refuses it too.
            runs.push(vec!["hash", d]);
        }
        for args in runs {
            let out = pretrain(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            if args[0] == "inspect" && out.status.success() {
                // inspect reports an invalid model as JSON with a reason.
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(v["valid"], false, "{case}: {v}");
                continue;
            }
            assert!(!out.status.success(), "{case} {}: succeeded", args[0]);
            assert!(
                err.contains("not a regular file"),
                "{case} {}: {err}",
                args[0]
            );
            assert_eq!(err.trim().lines().count(), 1, "{case}: {err}");
        }
    }
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
}

/// Hostile input, class 3: small inputs asking for huge allocations are refused
/// with a reason before anything is allocated.
#[test]
fn sizes_from_outside_are_bounded_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let all = read_json(&reference("scoring/cases.json"));
    let base = all["steps"][0].clone();
    for (field, value) in [
        ("n_total_uids", serde_json::json!(u64::MAX)),
        ("n_total_uids", serde_json::json!(1_000_000_000_000u64)),
        ("n_batches", serde_json::json!(1_000_000_000_000u64)),
        ("sample_min", serde_json::json!(u64::MAX)),
    ] {
        let mut step = base.clone();
        step[field] = value.clone();
        let p = tmp.path().join("step.json");
        std::fs::write(&p, step.to_string()).unwrap();
        let out = pretrain(&["score", p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{field}={value}: {err}");
        assert!(err.contains("over the limit"), "{field}={value}: {err}");
    }
    let model = reference(TINY_GPT2);
    let model = model.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["eval", "--model", model, "--pages", "1000000000000"],
            "--pages",
        ),
        (
            vec!["bench", "eval", "--batch_size", "4294967295"],
            "--batch_size",
        ),
        (
            vec!["bench", "eval", "--batch-size", "4294967295"],
            "--batch_size",
        ),
        (
            vec!["bench", "train", "--seq_len", "100000000"],
            "--seq_len",
        ),
        (
            vec!["bench", "eval", "--iters", "18446744073709551615"],
            "--iters",
        ),
        (
            vec!["bench", "tokenize", "--threads", "100000"],
            "--threads",
        ),
    ] {
        let out = pretrain(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(needle) && err.contains("over the limit"),
            "{args:?}: {err}"
        );
    }
    // A config.json with 16M layers is refused by its bound, fast.
    let cfg = tmp.path().join("config.json");
    let mut c = read_json(&reference(&format!("{TINY_GPT2}/config.json")));
    c["n_layer"] = serde_json::json!(16_000_000);
    std::fs::write(&cfg, c.to_string()).unwrap();
    let t0 = std::time::Instant::now();
    let out = pretrain(&["bench", "eval", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("n_layer"), "{err}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
}

/// Hostile input, class 3: `eval` refuses a model `inspect` calls invalid for its
/// size (over 1 GiB) instead of loading it; here a symlinked 1.1 GiB sparse
/// file next to the weights, which `inspect` must count too.
#[test]
fn eval_refuses_what_inspect_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_copy(tmp.path());
    let big = tmp.path().join("big.bin");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len((1u64 << 30) + (100 << 20)).unwrap();
    std::os::unix::fs::symlink(&big, dir.join("big.bin")).unwrap();
    let d = dir.to_str().unwrap();
    let out = pretrain(&["inspect", d]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("too large"), "{v}");
    let tokens = tmp.path().join("tokens.json");
    std::fs::write(&tokens, "[[1, 2, 3]]").unwrap();
    let out = pretrain(&["eval", "--model", d, "--tokens", tokens.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a model the validator accepts"), "{err}");
}
