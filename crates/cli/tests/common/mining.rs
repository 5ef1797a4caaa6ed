//! The miner tests' helpers: the fixture wallet on an embedded chain, the
//! tiny reference GPT-2, a slice of the sample corpus and the `pretrain`
//! command. Included by `mine.rs` and `mine_later.rs` (`#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::common::ok_json;

pub const WALLETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/wallet");
// From testdata/wallet/README.md.
pub const HOT_SS58: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";

pub fn tiny_model() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/models/tiny-gpt2/model"
    ))
}

pub fn pretrain(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("HF_ACCESS_TOKEN")
        .env_remove("RUST_LOG")
        .output()
        .expect("run pretrain")
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

pub fn chain_flags(chain_dir: &Path) -> Vec<String> {
    wallet_chain_flags(chain_dir, "fixture")
}

pub fn wallet_chain_flags(chain_dir: &Path, wallet: &str) -> Vec<String> {
    s(&[
        "--wallet.path",
        WALLETS,
        "--wallet.name",
        wallet,
        "--wallet.hotkey",
        "default",
        "--chain_dir",
        chain_dir.to_str().unwrap(),
        "--block_time",
        "0.05",
    ])
}

pub fn register(chain_dir: &Path) {
    let mut args = s(&["chain", "register", "--commit_rate_limit", "1"]);
    args.extend(chain_flags(chain_dir));
    ok_json(&pretrain(&args));
}

/// A small slice of the sample corpus (110 documents cut to 100
/// characters: pages 0..=10 of 100 rows), so training takes seconds.
pub fn corpus_slice(dir: &Path) -> String {
    if !dir.join("slice.jsonl").is_file() {
        let sample = pretrain_data::LocalSource::open(pretrain_data::sample_corpus_dir()).unwrap();
        let mut docs = sample.read_page(0).unwrap();
        docs.extend(sample.read_page(100).unwrap());
        let mut text = String::new();
        for d in docs.iter().take(110) {
            let cut: String = d.chars().take(100).collect();
            text.push_str(&serde_json::json!({ "content": cut }).to_string());
            text.push('\n');
        }
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("slice.jsonl"), text).unwrap();
    }
    format!("local:{}", dir.display())
}
