//! `pretrain tokenize` and `pretrain bench tokenize` end to end.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata");

fn pretrain(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn cases() -> Vec<Value> {
    std::fs::read_to_string(format!("{REFERENCE}/tokenizer/cases.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tokenize_gives_the_reference_ids_with_and_without_document() {
    let cases = cases();
    // Alternate the two accepted line forms: a JSON string and {"text": ...}.
    let input: String = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let text = c["text"].clone();
            let line = if i % 2 == 0 {
                text
            } else {
                serde_json::json!({ "text": text })
            };
            format!("{line}\n")
        })
        .collect();
    for (flag, field) in [(None, "ids"), (Some("--document"), "ids_trunc_eos")] {
        let mut args = vec!["tokenize"];
        args.extend(flag);
        let out = pretrain(&args, &input);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), cases.len());
        for (got, case) in lines.iter().zip(&cases) {
            assert_eq!(got, &case[field], "{} {field}", case["name"]);
        }
    }
}

#[test]
fn tokenize_rejects_a_bad_line_with_one_line_reason() {
    let out = pretrain(&["tokenize"], "\"ok\"\n{\"txt\": 1}\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: line 2:"), "{stderr}");
}

#[test]
fn bench_tokenize_prints_throughput_json() {
    let out = pretrain(
        &["bench", "tokenize", "--repeat", "1", "--threads", "2"],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(json["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(json["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["threads"], 2);
    // The corpus is ~4 MB of text; GPT-2 makes about one id per 3.5 bytes of English.
    let ratio = json["bytes"].as_f64().unwrap() / json["tokens"].as_f64().unwrap();
    assert!((3.0..5.0).contains(&ratio), "{ratio} bytes per id");
}

/// Hostile input, class 7: `tokenize` dropped blank lines, so output line N no
/// longer belonged to input line N. Now a blank line (empty or spaces) gives
/// `[]`, with and without --document, and the line count always matches.
#[test]
fn tokenize_keeps_one_output_line_per_input_line() {
    let input = "\"Hello world\"\n\n   \n{\"text\": \"Hello world\"}\n\n";
    // Reference ids of "Hello world" (tokenizer/cases.jsonl, case008).
    for (extra, ids) in [
        (&[][..], vec![15496u32, 995]),
        (&["--document"][..], vec![15496u32, 995, 50256]),
    ] {
        let out = pretrain(&[&["tokenize"][..], extra].concat(), input);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), input.lines().count(), "{text}");
        assert_eq!(lines[1], "[]");
        assert_eq!(lines[2], "[]");
        assert_eq!(lines[4], "[]");
        for i in [0, 3] {
            let got: Vec<u32> = serde_json::from_str(lines[i]).unwrap();
            assert_eq!(got, ids);
        }
    }
}

/// Hostile input, class 4 for tokenize: a closed stdout is a quiet 141, no panic.
#[test]
fn tokenize_to_a_closed_stdout_is_quiet() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .arg("tokenize")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    // Enough lines that the output cannot sit in a buffer until exit.
    let line = "\"hello world, again and again\"\n".repeat(20_000);
    let _ = stdin.write_all(line.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
