//! Mixed networks: our validator accepts and scores a model whose
//! repo is laid out as the Python original's miner leaves it (the Hub's
//! `.gitattributes` from the repo's creation, a model card, the model files),
//! committed with the hash the original computes (over what
//! `from_pretrained` downloads: the model files alone).

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use pretrain_core::ModelId;
use pretrain_store::ModelHub;
use serde_json::Value;

mod common;
#[path = "common/net.rs"]
mod net;
use net::Net;

const TINY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/models/tiny-gpt2/model"
);

/// `hash_of_directory` of the reference model, as the original computed it.
fn original_hash() -> String {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/models/tiny-gpt2/expected.json"
    );
    let v: Value = serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap();
    v["hash_of_directory"].as_str().unwrap().to_string()
}

#[test]
fn original_miners_repo_is_accepted_and_scored() {
    let net = Net::new();
    let dir = net.dir("original-miner");
    fs::create_dir_all(&dir).unwrap();
    for e in fs::read_dir(TINY).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    fs::write(dir.join("README.md"), "---\nlicense: mit\n---\n").unwrap();
    let repo: pretrain_core::RepoId = "orig/miner".parse().unwrap();
    let commit = net.rt.block_on(net.hub.upload(&dir, &repo)).unwrap();
    let listed: Vec<String> = net
        .rt
        .block_on(net.hub.files_at(&repo, &commit))
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(
        listed,
        [
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors"
        ]
    );
    let (hk, uid) = net.miner(31);
    let id = ModelId::at(&repo, &commit, original_hash());
    net.commit_raw(&hk, &id.to_chain_bytes().unwrap());

    let log = net.dir("validate.log");
    let mut child = net
        .validate_cmd(&["--max_steps", "1"])
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while net.metrics().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no step: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    let line = &net.metrics()[0];
    let row = line["uids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["uid"] == uid)
        .cloned()
        .unwrap_or_else(|| panic!("uid {uid} not scored: {line}\n{stderr}"));
    // An untrained GPT-2 scores near ln 50257 = 10.8, and it is the only model.
    let loss = row["mean_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 5.0 && loss < 12.0, "{row}");
    let tracked = &net.state()["tracked"][hk.as_str()];
    assert!(tracked.is_object(), "not tracked: {}", net.state());
    // What it evaluated is the from_pretrained snapshot: no attributes, no card.
    let snapshot = net
        .dir("validator/models")
        .join(&hk)
        .join("models--orig--miner/snapshots")
        .join(commit.as_str());
    let mut names: Vec<String> = fs::read_dir(&snapshot)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["config.json", "generation_config.json", "model.safetensors"]
    );
    assert!(Path::new(&snapshot).is_dir());
}
