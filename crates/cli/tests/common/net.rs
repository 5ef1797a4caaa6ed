//! The validator tests' network: an embedded chain with the fixture wallet
//! registered and staked as the validator, a local hub, a short corpus and
//! the `pretrain validate` command line over them; the seed's way of
//! committing a model, and tiny models of known different quality. Included
//! (`#[path]`) by the validator tests, which may add their own ways of
//! committing models.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::Device;
use pretrain_chain::embedded::{EmbeddedChain, EmbeddedOptions};
use pretrain_chain::wallet::KeyPair;
use pretrain_chain::{Chain, Hotkey};
use pretrain_core::scoring::Uid;
use pretrain_core::{hash_of_directory, CommitId, ModelId, RepoId};
use pretrain_model::{Model, TrainConfig, Trainer};
use pretrain_store::{LocalHub, ModelHub, Visibility};
use serde_json::Value;

use super::common::ok_json;

pub const WALLETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/wallet");
// From testdata/wallet/README.md.
pub const VALIDATOR_SS58: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";
pub const NETUID: u16 = 9;
/// The tiny reference GPT-2 (untrained).
pub const TINY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/models/tiny-gpt2/model"
);

fn pretrain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pretrain")
}

pub struct Net {
    pub tmp: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub chain: EmbeddedChain,
    pub hub: LocalHub,
}

impl Net {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let chain_dir = tmp.path().join("chain");
        let wallet = [
            "--wallet.path",
            WALLETS,
            "--wallet.name",
            "fixture",
            "--wallet.hotkey",
            "default",
            "--chain_dir",
            chain_dir.to_str().unwrap(),
            "--block_time",
            "0.2",
        ];
        let mut reg = vec!["chain", "register", "--weights_rate_limit", "0"];
        reg.extend(wallet);
        ok_json(&pretrain(&reg));
        let mut stake = vec!["chain", "stake", "--amount", "1000"];
        stake.extend(wallet);
        ok_json(&pretrain(&stake));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let chain = rt
            .block_on(EmbeddedChain::open_async(
                &chain_dir,
                &EmbeddedOptions::default(),
            ))
            .unwrap();
        let hub = LocalHub::open(tmp.path().join("hub")).unwrap();
        Net {
            tmp,
            rt,
            chain,
            hub,
        }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A registered miner hotkey; returns its address and uid.
    pub fn miner(&self, seed: u8) -> (String, Uid) {
        let ss58 = KeyPair::from_secret_seed([seed; 32]).unwrap().ss58();
        let reg = self
            .rt
            .block_on(self.chain.register(NETUID, &ss58, &ss58))
            .unwrap();
        (ss58, reg.uid)
    }

    pub fn commit_raw(&self, ss58: &str, data: &[u8]) -> u64 {
        let hk = Hotkey::address_only(ss58);
        self.rt
            .block_on(self.chain.commit(&hk, NETUID, data))
            .unwrap()
    }

    /// Uploads `dir` to `repo` and commits it (with `hash`, default the true one).
    /// A corpus of short documents (the sample corpus's first 150, cut to
    /// 250 bytes or so): a page is a few batches of 1024 tokens, so a tiny
    /// model is evaluated in seconds.
    pub fn small_corpus(&self) -> PathBuf {
        self.corpus("corpus", 250)
    }

    /// The sample corpus's first 150 documents, each cut to about `bytes`.
    pub fn corpus(&self, name: &str, bytes: usize) -> PathBuf {
        let dir = self.dir(name);
        if dir.exists() {
            return dir;
        }
        let sample = pretrain_data::LocalSource::open(pretrain_data::sample_corpus_dir()).unwrap();
        let docs = pretrain_data::read_all_documents(&sample).unwrap();
        let mut text = String::new();
        for d in docs.iter().take(150) {
            let mut end = d.len().min(bytes);
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            text.push_str(&serde_json::json!({ "content": &d[..end] }).to_string());
            text.push('\n');
        }
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("docs.jsonl"), text).unwrap();
        dir
    }

    pub fn validate_cmd(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pretrain"));
        c.arg("validate");
        if !extra.contains(&"--dataset") {
            c.arg("--dataset")
                .arg(format!("local:{}", self.small_corpus().display()));
        }
        c.args([
            "--wallet.path",
            WALLETS,
            "--wallet.name",
            "fixture",
            "--wallet.hotkey",
            "default",
            "--chain_dir",
            self.dir("chain").to_str().unwrap(),
            "--hub",
            &format!("local:{}", self.dir("hub").display()),
            "--model_dir",
            self.dir("validator").to_str().unwrap(),
            "--pages_per_eval",
            "1",
            "--blocks_per_epoch",
            "0",
            "--update_interval",
            "0.3",
            "--idle_wait",
            "0.3",
        ])
        .args(extra)
        .stdin(Stdio::null());
        c
    }

    pub fn state(&self) -> Value {
        serde_json::from_slice(&fs::read(self.dir("validator/validator_state.json")).unwrap())
            .unwrap()
    }

    pub fn metrics(&self) -> Vec<Value> {
        fs::read_to_string(self.dir("validator/metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn chain_weights(&self) -> Vec<(u16, u16)> {
        let rows = self.rt.block_on(self.chain.weights(NETUID)).unwrap();
        let me = self
            .rt
            .block_on(self.chain.uid_of(NETUID, VALIDATOR_SS58))
            .unwrap()
            .unwrap();
        rows.into_iter()
            .find(|r| r.0 == me)
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// Uploads `dir` to `repo` on the local hub.
    pub fn upload_as(&self, dir: &std::path::Path, repo: &str, visibility: Visibility) -> CommitId {
        let repo: RepoId = repo.parse().unwrap();
        self.rt
            .block_on(self.hub.upload_as(dir, &repo, visibility))
            .unwrap()
    }

    /// The chain's current block.
    pub fn block(&self) -> u64 {
        self.rt.block_on(self.chain.current_block()).unwrap()
    }
}

impl Net {
    /// Uploads `dir` to the local hub and commits it the seed's way (a
    /// 4-field id with the raw hash: `hash`, else the directory's).
    pub fn push_seed(
        &self,
        ss58: &str,
        dir: &Path,
        repo: &str,
        hash: Option<String>,
    ) -> (ModelId, u64) {
        let repo: RepoId = repo.parse().unwrap();
        let commit = self.rt.block_on(self.hub.upload(dir, &repo)).unwrap();
        let id = ModelId::at(
            &repo,
            &commit,
            hash.unwrap_or_else(|| hash_of_directory(dir).unwrap()),
        );
        let block = self.commit_raw(ss58, &id.to_chain_bytes().unwrap());
        (id, block)
    }
}

/// Copies the files (not folders) of `src` into `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// Training batches from the sample corpus: pages 0 and 100, 4 x 128 tokens.
pub fn train_batches() -> Vec<Vec<Vec<u32>>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = pretrain_data::open_source(&format!(
        "local:{}",
        pretrain_data::sample_corpus_dir().display()
    ))
    .unwrap();
    let tok = pretrain_data::Tokenizer::gpt2().unwrap();
    rt.block_on(pretrain_data::load_batches(
        source.as_ref(),
        &tok,
        &[0, 100],
        4,
        128,
    ))
    .unwrap()
}

/// The tiny reference model after `steps` AdamW steps at a high rate.
pub fn trained(dst: &Path, steps: usize, batches: &[Vec<Vec<u32>>]) {
    let model = Model::load(Path::new(TINY), &Device::Cpu).unwrap();
    let cfg = TrainConfig {
        lr: 1e-2,
        accumulation_steps: 1,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(model, cfg).unwrap();
    for b in batches.iter().cycle().take(steps) {
        t.micro_step(b).unwrap();
    }
    t.save(dst).unwrap();
}
