#![allow(dead_code)]
// Test helpers: a failure here is a failed test.
#![allow(clippy::unwrap_used)]

pub mod fake_hf;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The reference tiny GPT-2 `save_pretrained` directory.
pub fn reference_model_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/models/tiny-gpt2/model"
    ))
}

/// The reference's expected values for that model.
pub fn reference_expected() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/models/tiny-gpt2/expected.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// `hash_of_directory` of the reference model, as the original computed it.
pub fn reference_hash() -> String {
    reference_expected()["hash_of_directory"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `(path, size)` of the reference model's files, as the original listed them.
pub fn reference_files() -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = reference_expected()["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `files` with the `.gitattributes` the Hub writes into a new repo, sorted.
pub fn with_hub_gitattributes(mut files: Vec<(String, u64)>) -> Vec<(String, u64)> {
    files.push((
        ".gitattributes".to_string(),
        pretrain_store::pretrained::HUB_GITATTRIBUTES.len() as u64,
    ));
    files.sort();
    files
}

/// Copies a flat directory.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// A repo id known to be valid.
pub fn repo(s: &str) -> pretrain_core::RepoId {
    s.parse().unwrap()
}

/// A commit id known to be valid.
pub fn commit_id(s: &str) -> pretrain_core::CommitId {
    s.parse().unwrap()
}

/// A hotkey known to be valid.
pub fn hk(s: &str) -> pretrain_core::HotkeyAddress {
    s.parse().unwrap()
}

/// An error and its sources joined with ": ", as the CLI prints them.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
