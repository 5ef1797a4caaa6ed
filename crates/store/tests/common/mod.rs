#![allow(dead_code)]

pub mod fake_hf;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use pretrain_chain::{Chain, ChainError, Commitment, Hotkey, Metagraph};
use serde_json::Value;

/// The reference tiny GPT-2 `save_pretrained` directory.
pub fn reference_model_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/reference/models/tiny-gpt2/model"
    ))
}

/// The reference's expected values for that model.
pub fn reference_expected() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/reference/models/tiny-gpt2/expected.json"
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

/// Copies a flat directory.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// A chain that keeps commitments in memory and refuses the first
/// `rate_limited` commits as subtensor's rate limit does.
pub struct FakeChain {
    pub rate_limited: Mutex<u32>,
    pub registered: bool,
    pub commits: Mutex<Vec<(String, u16, Vec<u8>)>>,
    pub attempts: Mutex<u32>,
}

impl FakeChain {
    pub fn new(rate_limited: u32, registered: bool) -> Self {
        Self {
            rate_limited: Mutex::new(rate_limited),
            registered,
            commits: Mutex::new(Vec::new()),
            attempts: Mutex::new(0),
        }
    }
}

#[async_trait]
impl Chain for FakeChain {
    async fn current_block(&self) -> Result<u64, ChainError> {
        Ok(1000)
    }
    async fn metagraph(&self, netuid: u16) -> Result<Metagraph, ChainError> {
        Ok(Metagraph {
            netuid,
            block: 1000,
            neurons: vec![],
        })
    }
    async fn uid_of(&self, _netuid: u16, _hotkey: &str) -> Result<Option<u16>, ChainError> {
        Ok(self.registered.then_some(0))
    }
    async fn commit(&self, hotkey: &Hotkey, netuid: u16, data: &[u8]) -> Result<u64, ChainError> {
        *self.attempts.lock().unwrap() += 1;
        if !self.registered {
            return Err(ChainError::NotRegistered {
                hotkey: hotkey.ss58.clone(),
                netuid,
            });
        }
        let mut left = self.rate_limited.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return Err(ChainError::RateLimited(
                "Commitments: TooManyFieldsInCommitmentInfo / rate limit".into(),
            ));
        }
        let mut commits = self.commits.lock().unwrap();
        commits.push((hotkey.ss58.clone(), netuid, data.to_vec()));
        Ok(1000 + commits.len() as u64)
    }
    async fn commitment(
        &self,
        netuid: u16,
        hotkey: &str,
    ) -> Result<Option<Commitment>, ChainError> {
        Ok(self
            .commits
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|c| c.0 == hotkey && c.1 == netuid)
            .map(|c| Commitment {
                hotkey: c.0.clone(),
                block: 1001,
                data: c.2.clone(),
            }))
    }
    async fn commitments(&self, _netuid: u16) -> Result<Vec<Commitment>, ChainError> {
        Ok(vec![])
    }
    async fn set_weights(
        &self,
        _hotkey: &Hotkey,
        _netuid: u16,
        _uids: &[u16],
        _values: &[u16],
        _version_key: u64,
    ) -> Result<(), ChainError> {
        Ok(())
    }
}
