#![allow(dead_code)]

//! Helpers of the neurons' tests. The fake Hugging Face server is the store
//! crate's own, shared rather than copied.

#[path = "../../../store/tests/common/mod.rs"]
mod store_common;

// Each test binary uses a different subset of these.
#[allow(unused_imports)]
pub use store_common::{
    commit_id, copy_dir, fake_hf, hk, reference_expected, reference_files, reference_hash,
    reference_model_dir, repo,
};

use std::sync::Mutex;

use async_trait::async_trait;
use pretrain_chain::{Chain, ChainError, Commitment, Hotkey, Metagraph};

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

/// A copy of the model directory `src` in `dst` with element `index` of the F32
/// tensor `name` set to `value` (a diverged run's NaN, say).
pub fn copy_with_weight(
    src: &std::path::Path,
    dst: &std::path::Path,
    name: &str,
    index: usize,
    value: f32,
) {
    copy_dir(src, dst);
    let path = dst.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[name]["dtype"], "F32", "{name}");
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + start + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}
