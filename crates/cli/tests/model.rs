//! `pretrain eval`, `pretrain inspect` and `pretrain bench eval|train` end to end.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

mod common;

fn models_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/models"
    ))
}

fn expected(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(models_dir().join(name).join("expected.json")).unwrap())
        .unwrap()
}

fn pretrain(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn eval_prints_the_reference_loss() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let exp = expected(name);
        let tmp = tempfile::tempdir().unwrap();
        let tokens = tmp.path().join("tokens.json");
        let b = &exp["batches"][1];
        std::fs::write(&tokens, b["input_ids"].to_string()).unwrap();
        let model = models_dir().join(name).join("model");
        let (ok, out, err) = pretrain(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        let loss = v["loss"].as_f64().unwrap();
        assert!(
            (loss - b["loss"].as_f64().unwrap()).abs() < 1e-4,
            "{name}: {loss}"
        );
    }
}

#[test]
fn eval_rejects_bad_tokens_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.json");
    std::fs::write(&tokens, "[[1, 2], [3]]").unwrap();
    let model = models_dir().join("tiny-gpt2/model");
    let (ok, out, err) = pretrain(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(out.is_empty());
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.starts_with("error: computing the loss: bad input: rows must have equal length"),
        "{err}"
    );
}

#[test]
fn inspect_reports_a_reference_model() {
    let exp = expected("tiny-gpt2");
    let dir = models_dir().join("tiny-gpt2/model");
    let (ok, out, err) = pretrain(&["inspect", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["architecture"], "GPT2LMHeadModel");
    assert_eq!(v["params"], exp["param_count"]);
    let size: u64 = exp["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["size"].as_u64().unwrap())
        .sum();
    assert_eq!(v["size_bytes"].as_u64().unwrap(), size);
    assert_eq!(v["hash"], exp["hash_of_directory"]);
    assert_eq!(v["valid"], true);
    assert!(v["reason"].is_null());
}

#[test]
fn inspect_gives_the_reason_of_an_invalid_model() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        models_dir().join("tiny-llama/model/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"not a pickle").unwrap();
    let (ok, out, err) = pretrain(&["inspect", tmp.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["architecture"], "LlamaForCausalLM");
    assert_eq!(v["params"], 3_235_040);
    assert_eq!(v["valid"], false);
    assert_eq!(
        v["reason"],
        "pickle weights are not accepted (found pytorch_model.bin); only safetensors"
    );
}

#[test]
fn bench_prints_throughput_json() {
    let config = models_dir().join("tiny-gpt2/model/config.json");
    for what in ["eval", "train"] {
        let (ok, out, err) = pretrain(&[
            "bench",
            what,
            "--config",
            config.to_str().unwrap(),
            "--seq-len",
            "32",
            "--iters",
            "1",
            "--threads",
            "1",
        ]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0, "{out}");
        assert!(v["peak_rss_bytes"].as_u64().unwrap() > 1_000_000, "{out}");
    }
}

#[test]
fn eval_of_a_missing_model_fails_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.json");
    std::fs::write(&tokens, "[[1, 2, 3]]").unwrap();
    let missing = tmp.path().join("no-model");
    let (ok, out, err) = pretrain(&[
        "eval",
        "--model",
        missing.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(out.is_empty());
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    // The validator's checks run before loading, so they are what finds it missing.
    assert!(
        line.starts_with("error: ")
            && line.contains(missing.to_str().unwrap())
            && line.ends_with("No such file or directory (os error 2)"),
        "{line}"
    );
}

#[test]
fn eval_on_pages_is_seeded_and_matches_eval_on_the_same_tokens() {
    // A small local dataset (JSON Lines, `content` as RefinedWeb): 120 rows,
    // so there are pages to draw and each holds a few batches.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let rows: String = (0..120)
        .map(|i| {
            let text = format!("Document {i}. ").repeat(40 + i % 7) + "The end.";
            format!("{}\n", serde_json::json!({ "content": text }))
        })
        .collect();
    std::fs::write(data.join("rows.jsonl"), rows).unwrap();
    let dataset = format!("local:{}", data.display());
    let model = models_dir().join("tiny-gpt2").join("model");
    let run = || {
        let (ok, out, err) = pretrain(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--pages",
            "1",
            "--seed",
            "7",
            "--dataset",
            &dataset,
        ]);
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(out.trim()).unwrap()
    };
    let a = run();
    assert_eq!(a, run(), "the same seed gives the same pages and losses");
    assert_eq!(a["seed"], 7);
    let page = a["pages"][0].as_u64().unwrap();
    let losses = a["losses"].as_array().unwrap();
    assert!(!losses.is_empty());

    // The first batch rebuilt by hand: the page's documents, each with the
    // dataset rule, then the first 1024 tokens.
    let source = pretrain_data::LocalSource::open(&data).unwrap();
    let tokenizer = pretrain_data::Tokenizer::gpt2().unwrap();
    let mut buffer = Vec::new();
    for doc in source.read_page(page).unwrap() {
        buffer.extend(tokenizer.encode_document(&doc).unwrap());
    }
    assert_eq!(losses.len(), buffer.len() / 1024);
    let tokens = tmp.path().join("tokens.json");
    std::fs::write(&tokens, serde_json::to_string(&[&buffer[..1024]]).unwrap()).unwrap();
    let (ok, out, err) = pretrain(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let single: Value = serde_json::from_str(out.trim()).unwrap();
    let l0 = losses[0].as_f64().unwrap();
    assert!(
        (single["loss"].as_f64().unwrap() - l0).abs() < 1e-6,
        "{l0} vs {single}"
    );
    let mean = losses.iter().map(|l| l.as_f64().unwrap()).sum::<f64>() / losses.len() as f64;
    assert!((a["loss"].as_f64().unwrap() - mean).abs() < 1e-9);
}

#[test]
fn eval_needs_tokens_or_pages() {
    let model = models_dir().join("tiny-gpt2").join("model");
    let (ok, _, err) = pretrain(&["eval", "--model", model.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("--tokens") || err.contains("--pages"), "{err}");
}

// ---- Hostile input, class 7 ----

/// `eval --tokens` takes `tokenize`'s output (JSON Lines, one row per line)
/// as well as one JSON array, with the same loss.
#[test]
fn eval_takes_tokenize_output() {
    let exp = expected("tiny-gpt2");
    let b = &exp["batches"][1];
    let rows = b["input_ids"].as_array().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let lines = tmp.path().join("tokens.jsonl");
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&lines, text).unwrap();
    let model = models_dir().join("tiny-gpt2/model");
    let (ok, out, err) = pretrain(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        lines.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert!((v["loss"].as_f64().unwrap() - b["loss"].as_f64().unwrap()).abs() < 1e-4);
    // A bad line is named.
    std::fs::write(&lines, format!("{}\n[1, -2]\n", rows[0])).unwrap();
    let (ok, _, err) = pretrain(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        lines.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("line 2"), "{err}");
}

/// `eval` with neither input names both; `--device cuda` on a build
/// without CUDA names the feature to build with; logs written to a file
/// carry no colour codes; `eval --pages` logs progress off a terminal;
/// every JSON output is one compact line.
#[test]
fn cli_messages_and_output_are_consistent() {
    let model = models_dir().join("tiny-gpt2/model");
    let m = model.to_str().unwrap();
    let (ok, _, err) = pretrain(&["eval", "--model", m]);
    assert!(!ok);
    assert!(err.contains("--tokens") && err.contains("--pages"), "{err}");

    if !cfg!(feature = "cuda") {
        let (ok, _, err) = pretrain(&["eval", "--model", m, "--pages", "1", "--device", "cuda"]);
        assert!(!ok);
        assert!(err.contains("--features cuda"), "{err}");
    }

    let (ok, out, err) = pretrain(&["eval", "--model", m, "--pages", "1", "--seed", "3"]);
    assert!(ok, "{err}");
    assert!(
        !err.contains('\x1b'),
        "colour codes in a non-terminal log: {err:?}"
    );
    assert!(err.contains("evaluated"), "no progress in the log: {err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    serde_json::from_str::<Value>(&out).unwrap();

    let (ok, out, _) = pretrain(&["inspect", m]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    // Old kebab-case bench flags still work (hidden aliases) but help shows snake_case.
    let (ok, help, _) = pretrain(&["bench", "eval", "--help"]);
    assert!(ok);
    assert!(
        help.contains("--batch_size") && help.contains("--seq_len"),
        "{help}"
    );
    assert!(!help.contains("--batch-size"), "{help}");
}

/// Whether this CPU runs `--dtype bf16` (the model crate's bf16 GEMM).
fn cpu_has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `eval --dtype bf16` on the CPU: the reference losses within 2e-2 where
/// the CPU has AVX512-BF16, else refused with the reason (one line, exit 1);
/// `bench eval|train --dtype bf16` likewise; `--kernels portable --dtype
/// bf16` is refused on the CPU either way.
#[test]
fn eval_and_bench_in_bf16_on_the_cpu() {
    let has = cpu_has_avx512_bf16();
    for name in ["tiny-gpt2", "tiny-llama"] {
        let exp = expected(name);
        let tmp = tempfile::tempdir().unwrap();
        let tokens = tmp.path().join("tokens.json");
        let b = &exp["batches"][1];
        std::fs::write(&tokens, b["input_ids"].to_string()).unwrap();
        let model = models_dir().join(name).join("model");
        let (m, t) = (model.to_str().unwrap(), tokens.to_str().unwrap());
        let (ok, out, err) = pretrain(&["eval", "--model", m, "--tokens", t, "--dtype", "bf16"]);
        if has {
            assert!(ok, "{err}");
            let v: Value = serde_json::from_str(out.trim()).unwrap();
            let loss = v["loss"].as_f64().unwrap();
            let want = b["loss"].as_f64().unwrap();
            assert!((loss - want).abs() < 2e-2, "{name}: {loss} vs {want}");
        } else {
            assert!(!ok && out.is_empty());
            assert!(err.contains("needs AVX512-BF16"), "{err}");
        }
        let (ok, _, err) = pretrain(&[
            "eval",
            "--model",
            m,
            "--tokens",
            t,
            "--dtype",
            "bf16",
            "--kernels",
            "portable",
        ]);
        assert!(!ok);
        assert!(err.contains("--kernels auto"), "{err}");
    }
    let config = models_dir().join("tiny-gpt2/model/config.json");
    for what in ["eval", "train"] {
        let (ok, out, err) = pretrain(&[
            "bench",
            what,
            "--config",
            config.to_str().unwrap(),
            "--seq-len",
            "32",
            "--iters",
            "1",
            "--threads",
            "1",
            "--dtype",
            "bf16",
        ]);
        if has {
            assert!(ok, "{err}");
            let v: Value = serde_json::from_str(out.trim()).unwrap();
            assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0, "{out}");
        } else {
            assert!(!ok);
            assert!(err.contains("needs AVX512-BF16"), "{err}");
        }
    }
}

/// A weight that is not finite: `inspect` says invalid with the tensor's name, and `eval`
/// refuses it as the validator does (+inf on every batch), on one batch or on pages. The
/// largest finite values are still a valid model.
#[test]
fn non_finite_weights_are_invalid_and_not_evaluated() {
    let exp = expected("tiny-gpt2");
    let src = models_dir().join("tiny-gpt2/model");
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.json");
    std::fs::write(&tokens, exp["batches"][0]["input_ids"].to_string()).unwrap();
    let cases = [
        ("transformer.h.0.attn.c_attn.weight", 0, f32::NAN),
        ("transformer.h.1.mlp.c_fc.weight", 777, f32::NEG_INFINITY),
        ("transformer.ln_f.bias", 31, f32::INFINITY),
        ("transformer.wte.weight", 5000, -f32::NAN),
    ];
    for (i, (name, index, value)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("bad{i}"));
        common::copy_with_weight(&src, &dir, name, index, value);
        let d = dir.to_str().unwrap();
        let (ok, out, err) = pretrain(&["inspect", d]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["valid"], false, "{name}: {v}");
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.contains(name) && reason.contains("non-finite"),
            "{reason}"
        );
        for args in [
            vec!["eval", "--model", d, "--tokens", tokens.to_str().unwrap()],
            vec!["eval", "--model", d, "--pages", "1", "--seed", "3"],
        ] {
            let (ok, out, err) = pretrain(&args);
            assert!(!ok, "{args:?} printed {out}");
            assert!(out.is_empty(), "{out}");
            assert!(err.contains(name) && err.contains("+inf"), "{err}");
        }
    }
    // f32's extremes are finite: still valid, and still the reference loss's model.
    let dir = tmp.path().join("extreme");
    common::copy_with_weight(&src, &dir, "transformer.h.0.ln_1.bias", 3, f32::MAX);
    let (ok, out, err) = pretrain(&["inspect", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["valid"], true, "{v}");
}
