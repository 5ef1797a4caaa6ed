//! The validator's update loop: one repo whose download stalls (a hostile or
//! broken hub) does not hold the others of the same pass, which are fetched
//! and tracked beside it.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{reference_model_dir, repo};
use pretrain_chain::embedded::{EmbeddedChain, EmbeddedOptions, SubnetParams};
use pretrain_chain::wallet::KeyPair;
use pretrain_chain::{Chain, Hotkey};
use pretrain_core::rules::Protocol;
use pretrain_core::{CommitId, HotkeyAddress, RepoId};
use pretrain_neurons::validator::update::update_loop;
use pretrain_neurons::validator::{start, ValidatorConfig, WorkerSpec};
use pretrain_neurons::{push_model, PushOptions};
use pretrain_store::{HubError, LocalHub, ModelHub, RepoFile, Visibility};

const NETUID: u16 = 9;

/// A local hub whose downloads of repos named `stall*` never finish; every
/// download asked for is recorded.
struct Stalling {
    inner: LocalHub,
    asked: Mutex<Vec<String>>,
}

#[async_trait]
impl ModelHub for Stalling {
    async fn upload_as(
        &self,
        dir: &Path,
        repo: &RepoId,
        visibility: Visibility,
    ) -> Result<CommitId, HubError> {
        self.inner.upload_as(dir, repo, visibility).await
    }

    async fn set_visibility(&self, repo: &RepoId, visibility: Visibility) -> Result<(), HubError> {
        self.inner.set_visibility(repo, visibility).await
    }

    async fn files_at(&self, repo: &RepoId, commit: &CommitId) -> Result<Vec<RepoFile>, HubError> {
        self.inner.files_at(repo, commit).await
    }

    async fn download(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        dest: &Path,
    ) -> Result<PathBuf, HubError> {
        self.asked.lock().unwrap().push(repo.to_string());
        if repo.to_string().contains("/stall") {
            std::future::pending::<()>().await;
        }
        self.inner.download(repo, commit, dest).await
    }
}

fn hotkey(i: u8) -> String {
    KeyPair::from_secret_seed([i + 1; 32]).unwrap().ss58()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_does_not_hold_the_other_uids_of_the_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = Arc::new(
        EmbeddedChain::open(
            &tmp.path().join("chain"),
            &EmbeddedOptions {
                block_time: Some(0.01),
                ..EmbeddedOptions::default()
            },
        )
        .unwrap(),
    );
    chain
        .create_subnet(NETUID, SubnetParams::default())
        .await
        .unwrap();
    let hub = Arc::new(Stalling {
        inner: LocalHub::open(tmp.path().join("hub")).unwrap(),
        asked: Mutex::new(Vec::new()),
    });
    // Three stalled repos, one fewer than the checks the loop runs at once,
    // and the honest one: whatever uid the loop starts at, the honest one waits
    // behind at most the stalled ones' first tries.
    let names = ["stall-a", "stall-b", "stall-c", "honest"];
    for (i, name) in names.iter().enumerate() {
        let hk = hotkey(i as u8);
        chain.register(NETUID, &hk, &hk).await.unwrap();
        push_model(
            &hub.inner,
            chain.as_ref(),
            &Hotkey::address_only(hk),
            &reference_model_dir(),
            &repo(&format!("miner/{name}")),
            Protocol::Sn9Rules2024,
            0,
            &PushOptions {
                netuid: NETUID,
                ..PushOptions::default()
            },
        )
        .await
        .unwrap();
    }
    let worker = WorkerSpec {
        program: PathBuf::from("/bin/false"),
        args: Vec::new(),
        device: "cpu".into(),
        mem_limit: None,
        load_timeout: Duration::from_secs(5),
        eval_timeout: Duration::from_secs(5),
        threads: Some(1),
    };
    let mut config = ValidatorConfig::new(NETUID, tmp.path().join("validator"), worker);
    config.set_weights = false;
    config.update_interval = Duration::from_millis(200);
    config.idle_wait = Duration::from_millis(100);
    let source = pretrain_data::open_source(&format!(
        "local:{}",
        pretrain_data::sample_corpus_dir().display()
    ))
    .unwrap();
    let shared = start(
        config,
        chain.clone() as Arc<dyn Chain>,
        hub.clone() as Arc<dyn ModelHub>,
        source,
        None,
    )
    .await
    .unwrap();
    let loop_task = tokio::spawn(update_loop(shared.clone()));

    let honest: HotkeyAddress = hotkey(3).parse().unwrap();
    let t0 = Instant::now();
    while !shared.state.lock().unwrap().tracked.contains_key(&honest) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the honest repo was never tracked; downloads asked: {:?}",
            hub.asked.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tracked = shared.state.lock().unwrap().tracked.len();
    assert_eq!(tracked, 1, "only the honest model is tracked");
    loop_task.abort();
    // The stalled downloads were under way the whole time; each asked for at most once
    // (a uid being checked is never started twice).
    let asked = hub.asked.lock().unwrap().clone();
    for name in &names[..3] {
        let n = asked.iter().filter(|r| r.ends_with(name)).count();
        assert!(n <= 1, "{name} asked {n} times: {asked:?}");
    }
}
