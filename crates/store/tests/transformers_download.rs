//! Opt-in: the original's side, checked with the original's own
//! libraries. transformers 4.34.1's `from_pretrained` (through
//! huggingface_hub, `HF_ENDPOINT` at our fake Hub) downloads a repo laid out
//! as the original's miner leaves it, and one our uploader made; what lands
//! in its cache snapshot, and that snapshot's hash by the original's
//! `get_hash_of_directory`, are what our validator fetches and hashes.
//! `PRETRAIN_PYTHON` picks the interpreter (default `python3`).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::fake_hf::FakeHub;
use common::*;
use pretrain_core::ModelId;
use pretrain_store::pretrained::HUB_GITATTRIBUTES;
use pretrain_store::{HfHub, HfOptions, ModelHub, ModelStore};
use serde_json::Value;

const TOKEN: &str = "hf_test_token";
const HOTKEY: &str = "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX";

/// Runs the original's download in Python; its JSON answer.
fn original_download(server: &FakeHub, repo_id: &str, commit: &str) -> Value {
    let python = std::env::var("PRETRAIN_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/original_download.py");
    let cache = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .arg(script)
        .arg(repo_id)
        .arg(commit)
        .arg(cache.path())
        .env("HF_ENDPOINT", &server.url)
        .env("HF_HOME", home.path())
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (set PRETRAIN_PYTHON): {e}"));
    assert_ne!(
        out.status.code(),
        Some(3),
        "{python} lacks torch or transformers: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

async fn ours(hf: &HfHub, repo_id: &str, commit: &str) -> (Vec<String>, String) {
    let (ns, name) = repo_id.split_once('/').unwrap();
    let id = ModelId {
        namespace: ns.into(),
        name: name.into(),
        commit: Some(commit.into()),
        hash: Some(reference_hash().into()),
    };
    let dir = tempfile::tempdir().unwrap();
    let got = ModelStore::new(dir.path())
        .fetch(
            hf,
            &hk(HOTKEY),
            &id,
            pretrain_core::constants::MAX_MODEL_BYTES,
        )
        .await
        .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&got.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    (names, got.hash)
}

#[test]
#[ignore = "needs Python with torch and transformers 4.34.1 (PRETRAIN_PYTHON); run with --ignored"]
fn transformers_from_pretrained_fetches_and_hashes_what_we_do() {
    let server = FakeHub::start(TOKEN);
    let mut layout: Vec<(String, Vec<u8>)> = vec![
        (
            ".gitattributes".into(),
            HUB_GITATTRIBUTES.as_bytes().to_vec(),
        ),
        ("README.md".into(), b"---\nlicense: mit\n---\n".to_vec()),
    ];
    for (p, _) in reference_files() {
        layout.push((
            p.clone(),
            std::fs::read(reference_model_dir().join(&p)).unwrap(),
        ));
    }
    let refs: Vec<(&str, &[u8])> = layout
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let original_commit = server.add_repo("orig/miner", &refs, false);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let hf = HfHub::new(HfOptions {
        endpoint: server.url.clone(),
        token: Some(TOKEN.into()),
        retry_delay: Duration::from_millis(10),
        ..HfOptions::default()
    })
    .unwrap();
    let our_commit = rt
        .block_on(hf.upload(&reference_model_dir(), &repo("ours/miner")))
        .unwrap();

    let model_files: Vec<String> = reference_files().into_iter().map(|f| f.0).collect();
    for (repo_id, commit, listed) in [
        (
            "orig/miner",
            original_commit.clone(),
            layout.iter().map(|(_, c)| c.len() as u64).sum::<u64>(),
        ),
        (
            "ours/miner",
            our_commit.to_string(),
            reference_files().iter().map(|f| f.1).sum::<u64>() + HUB_GITATTRIBUTES.len() as u64,
        ),
    ] {
        let theirs = original_download(&server, repo_id, &commit);
        assert_eq!(theirs["transformers"], "4.34.1", "{theirs}");
        let files: Vec<String> = serde_json::from_value(theirs["files"].clone()).unwrap();
        assert_eq!(files, model_files, "{repo_id}: {theirs}");
        assert_eq!(theirs["hash"], reference_hash().as_str(), "{repo_id}");
        assert_eq!(theirs["listed_size"], listed, "{repo_id}");
        let (names, hash) = rt.block_on(ours(&hf, repo_id, &commit));
        assert_eq!(names, files, "{repo_id}");
        assert_eq!(hash, theirs["hash"].as_str().unwrap(), "{repo_id}");
    }
}
