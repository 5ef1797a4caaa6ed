//! Repos as the Python original's miner leaves them are fetched
//! and hashed as the original's validator does (only what `from_pretrained`
//! fetches), and the Hub client behaves as huggingface_hub 0.26.5 where the
//! Hub is strict (403 on create, Retry-After, a commit that landed, empty
//! files, `shouldIgnore`, 409 "conflicting operation").

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::fake_hf::FakeHub;
use common::*;
use pretrain_core::{hash_of_directory, ModelId};
use pretrain_store::pretrained::HUB_GITATTRIBUTES;
use pretrain_store::{HfHub, HfOptions, HubError, LocalHub, ModelHub, ModelStore, StoreError};

const TOKEN: &str = "hf_test_token";
const HOTKEY: &str = "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX";
const README: &[u8] = b"---\nlicense: mit\n---\n# A model pushed with transformers\n";

fn hub(server: &FakeHub, retries: u32) -> HfHub {
    HfHub::new(HfOptions {
        endpoint: server.url.clone(),
        token: Some(TOKEN.to_string()),
        progress: false,
        retries,
        retry_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

/// The reference model's files, read.
fn reference_model() -> Vec<(String, Vec<u8>)> {
    reference_files()
        .into_iter()
        .map(|(p, _)| {
            let bytes = std::fs::read(reference_model_dir().join(&p)).unwrap();
            (p, bytes)
        })
        .collect()
}

/// The repo as the original's miner (`push_to_hub`) leaves it: the Hub's
/// `.gitattributes` from the repo's creation, a model card, the model.
fn original_layout() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        (
            ".gitattributes".to_string(),
            HUB_GITATTRIBUTES.as_bytes().to_vec(),
        ),
        ("README.md".to_string(), README.to_vec()),
    ];
    files.extend(reference_model());
    files
}

fn as_refs(files: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect()
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn model_names() -> Vec<String> {
    reference_files().into_iter().map(|(p, _)| p).collect()
}

#[tokio::test]
async fn original_miner_repo_is_fetched_and_hashed_as_the_original_does() {
    let server = FakeHub::start(TOKEN);
    let layout = original_layout();
    let commit = server.add_repo("orig/miner", &as_refs(&layout), false);
    // The original's hash: `hash_of_directory` of the from_pretrained
    // snapshot (config.json, generation_config.json, model.safetensors), as
    // the reference computed it for these three files.
    let id = ModelId {
        namespace: "orig".into(),
        name: "miner".into(),
        commit: Some(commit.clone().into()),
        hash: Some(reference_hash().into()),
    };
    let model_dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(model_dir.path());
    let got = store
        .fetch(
            &hub(&server, 1),
            &hk(HOTKEY),
            &id,
            pretrain_core::constants::MAX_MODEL_BYTES,
        )
        .await
        .unwrap();
    assert_eq!(got.hash, reference_hash());
    assert_eq!(names_in(&got.path), model_names());
    assert_eq!(got.size, reference_files().iter().map(|f| f.1).sum::<u64>());
    // Neither the attributes nor the model card was even downloaded.
    let fetched: Vec<String> = server
        .seen()
        .into_iter()
        .filter(|s| s.path.contains("/resolve/"))
        .map(|s| s.path)
        .collect();
    assert_eq!(fetched.len(), 3, "{fetched:?}");
    assert!(fetched
        .iter()
        .all(|p| !p.ends_with(".gitattributes") && !p.ends_with("README.md")));

    // The size limit counts every file of the repo (the original sums
    // model_info(...).siblings): the model alone fits, the repo does not.
    let model_bytes: u64 = reference_files().iter().map(|f| f.1).sum();
    let all_bytes: u64 = layout.iter().map(|(_, c)| c.len() as u64).sum();
    let other = tempfile::tempdir().unwrap();
    let err = ModelStore::new(other.path())
        .fetch(&hub(&server, 1), &hk(HOTKEY), &id, model_bytes + 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "holds {all_bytes} bytes, more than the limit of {}",
            model_bytes + 1
        )),
        "{err}"
    );
}

#[tokio::test]
async fn original_miner_layout_on_the_local_hub() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path().join("hub")).unwrap();
    let dir = root.path().join("upload");
    copy_dir(&reference_model_dir(), &dir);
    std::fs::write(dir.join("README.md"), README).unwrap();
    let r = repo("orig/local");
    let commit = hub.upload(&dir, &r).await.unwrap();
    let listed: Vec<String> = hub
        .files_at(&r, &commit)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    // The local hub writes the Hub's .gitattributes at creation, as the Hub does.
    let mut expected = vec![".gitattributes".to_string(), "README.md".to_string()];
    expected.extend(model_names());
    assert_eq!(listed, expected);
    let id = ModelId::at(&r, &commit, reference_hash());
    let model_dir = tempfile::tempdir().unwrap();
    let got = ModelStore::new(model_dir.path())
        .fetch(
            &hub,
            &hk(HOTKEY),
            &id,
            pretrain_core::constants::MAX_MODEL_BYTES,
        )
        .await
        .unwrap();
    assert_eq!(got.hash, reference_hash());
    assert_eq!(names_in(&got.path), model_names());

    // A second commit keeps the repo's .gitattributes (the head's), and one
    // from the directory replaces it.
    let head_attrs = || {
        let c = hub.head(&r).unwrap().unwrap();
        std::fs::read(
            hub.root()
                .join("repos/orig/local/commits")
                .join(c.as_str())
                .join("files/.gitattributes"),
        )
        .unwrap()
    };
    assert_eq!(head_attrs(), HUB_GITATTRIBUTES.as_bytes());
    std::fs::write(dir.join(".gitattributes"), "*.safetensors filter=lfs\n").unwrap();
    hub.upload(&dir, &r).await.unwrap();
    assert_eq!(head_attrs(), b"*.safetensors filter=lfs\n");
    std::fs::remove_file(dir.join(".gitattributes")).unwrap();
    hub.upload(&dir, &r).await.unwrap();
    assert_eq!(head_attrs(), b"*.safetensors filter=lfs\n");
}

/// A sharded safetensors model: `from_pretrained` takes the index and the
/// shards it names, not a stale shard or the rest of the repo.
#[tokio::test]
async fn sharded_model_is_fetched_as_from_pretrained_does() {
    let index: &[u8] = b"{\"metadata\": {\"total_size\": 41}, \"weight_map\": {\"h.0.w\": \"model-00001-of-00002.safetensors\", \"h.1.w\": \"model-00002-of-00002.safetensors\", \"wte\": \"model-00001-of-00002.safetensors\"}}\n";
    let files: Vec<(&str, &[u8])> = vec![
        (".gitattributes", HUB_GITATTRIBUTES.as_bytes()),
        ("README.md", README),
        ("config.json", b"{\"model_type\": \"gpt2\"}\n"),
        ("generation_config.json", b"{\"bos_token_id\": 50256}\n"),
        ("model-00001-of-00002.safetensors", b"shard one bytes"),
        (
            "model-00002-of-00002.safetensors",
            b"shard two, a little longer",
        ),
        (
            "model-00001-of-00003.safetensors",
            b"a stale shard of an older save",
        ),
        ("model.safetensors.index.json", index),
    ];
    // The original's get_hash_of_directory (model/storage/disk/utils.py),
    // run in Python over a folder holding only the five files
    // from_pretrained fetches (config, generation config, index, two shards).
    let original_hash = "s1JFPf6UF+kyIZoM2XP03dsxqu2fIpRs/ArAviMHH5s=";

    let server = FakeHub::start(TOKEN);
    let commit = server.add_repo("orig/sharded", &files, false);
    let id = ModelId {
        namespace: "orig".into(),
        name: "sharded".into(),
        commit: Some(commit.into()),
        hash: Some(original_hash.into()),
    };
    let model_dir = tempfile::tempdir().unwrap();
    let got = ModelStore::new(model_dir.path())
        .fetch(&hub(&server, 1), &hk(HOTKEY), &id, 1 << 30)
        .await
        .unwrap();
    assert_eq!(got.hash, original_hash);
    assert_eq!(
        names_in(&got.path),
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );

    // The same on the local hub.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("sharded");
    std::fs::create_dir(&dir).unwrap();
    for (p, c) in files.iter().filter(|(p, _)| !p.starts_with('.')) {
        std::fs::write(dir.join(p), c).unwrap();
    }
    // The miner's hash of such a directory is the original's too.
    assert_eq!(
        pretrain_store::pretrained::hash_of_model_dir(&dir).unwrap(),
        original_hash
    );
    let local = LocalHub::open(root.path().join("hub")).unwrap();
    let r = repo("orig/sharded");
    let commit = local.upload(&dir, &r).await.unwrap();
    let got = ModelStore::new(root.path().join("validator"))
        .fetch(
            &local,
            &hk(HOTKEY),
            &ModelId::at(&r, &commit, original_hash.to_string()),
            1 << 30,
        )
        .await
        .unwrap();
    assert_eq!(got.hash, original_hash);
}

#[tokio::test]
async fn our_upload_keeps_the_hubs_gitattributes() {
    let server = FakeHub::start(TOKEN);
    let hf = hub(&server, 2);
    let r = repo("alice/keep");
    for _ in 0..2 {
        let commit = hf.upload(&reference_model_dir(), &r).await.unwrap();
        let listed: Vec<(String, u64)> = hf
            .files_at(&r, &commit)
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.path, f.size))
            .collect();
        let mut expected = vec![(".gitattributes".to_string(), HUB_GITATTRIBUTES.len() as u64)];
        expected.extend(reference_files());
        assert_eq!(listed, expected);
        let id = ModelId::at(&r, &commit, reference_hash());
        let model_dir = tempfile::tempdir().unwrap();
        let got = ModelStore::new(model_dir.path())
            .fetch(
                &hf,
                &hk(HOTKEY),
                &id,
                pretrain_core::constants::MAX_MODEL_BYTES,
            )
            .await
            .unwrap();
        assert_eq!(hash_of_directory(&got.path).unwrap(), reference_hash());
    }
    // No commit ever deleted it.
    assert!(!server
        .seen()
        .iter()
        .any(|s| String::from_utf8_lossy(&s.body).contains("deletedFile")));
}

#[tokio::test]
async fn fine_grained_token_403_on_create_then_the_repo_exists() {
    let server = FakeHub::start(TOKEN);
    server.add_repo(
        "alice/granted",
        &[(".gitattributes", HUB_GITATTRIBUTES.as_bytes())],
        false,
    );
    server.state.lock().unwrap().forbid_create = true;
    let hf = hub(&server, 1);
    let commit = hf
        .upload(&reference_model_dir(), &repo("alice/granted"))
        .await
        .unwrap();
    let seen = server.seen();
    let create = seen
        .iter()
        .position(|s| s.method == "POST" && s.path == "/api/repos/create")
        .unwrap();
    // huggingface_hub's create_repo(exist_ok=True): 403, then repo_info.
    assert_eq!(seen[create + 1].method, "GET");
    assert_eq!(seen[create + 1].path, "/api/models/alice/granted");
    assert_eq!(
        server.state.lock().unwrap().repos["alice/granted"]
            .commits
            .last()
            .unwrap()
            .0,
        commit.as_str()
    );

    // A repo that does not exist: the 403 stands.
    let err = hf
        .upload(&reference_model_dir(), &repo("alice/other"))
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Unauthorized(_)), "{err}");
    assert!(err.to_string().contains("403"), "{err}");
}

#[tokio::test]
async fn conflicting_operation_409_is_retried_plain_409_is_exists() {
    let server = FakeHub::start(TOKEN);
    server.state.lock().unwrap().create_conflicts = 2;
    let hf = hub(&server, 3);
    hf.upload(&reference_model_dir(), &repo("alice/busy"))
        .await
        .unwrap();
    let creates = server
        .seen()
        .iter()
        .filter(|s| s.path == "/api/repos/create")
        .count();
    assert_eq!(creates, 3, "two conflicts, then created");
    // The repo exists now: a plain 409, and the upload goes on.
    hf.upload(&reference_model_dir(), &repo("alice/busy"))
        .await
        .unwrap();
    assert_eq!(
        server.state.lock().unwrap().repos["alice/busy"]
            .commits
            .len(),
        3,
        "the Hub's creation commit and two uploads"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = FakeHub::start(TOKEN);
    let commit = commit_id(&server.add_repo("alice/ra", &[("a.txt", b"hello")], false));
    {
        let mut st = server.state.lock().unwrap();
        st.retry_after = Some("5".into());
    }
    server.fail("GET", "/api/models/alice/ra", 429, 1);
    let start = Instant::now();
    let files = hub(&server, 2)
        .files_at(&repo("alice/ra"), &commit)
        .await
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(files[0].size, 5);
    assert!(waited >= Duration::from_secs(5), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(9), "waited {waited:?}");

    // A 503 on a download with Retry-After: 1.
    server.state.lock().unwrap().retry_after = Some("1".into());
    server.fail("GET", "/alice/ra/resolve/", 503, 1);
    let dest = tempfile::tempdir().unwrap();
    let start = Instant::now();
    hub(&server, 2)
        .download(&repo("alice/ra"), &commit, dest.path())
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_commit_that_landed_before_its_answer_was_lost_succeeds_once() {
    let server = FakeHub::start(TOKEN);
    server.state.lock().unwrap().land_then_fail = Some((1, 503));
    let hf = hub(&server, 3);
    let r = repo("alice/landed");
    let commit = hf.upload(&reference_model_dir(), &r).await.unwrap();
    let st = server.state.lock().unwrap();
    let commits = &st.repos["alice/landed"].commits;
    assert_eq!(
        commits.len(),
        2,
        "the creation commit and exactly one upload"
    );
    assert_eq!(commits.last().unwrap().0, commit.as_str());
    let posts = st
        .seen
        .iter()
        .filter(|s| s.method == "POST" && s.path == "/api/models/alice/landed/commit/main")
        .count();
    assert_eq!(posts, 1, "the commit was not sent again");
}

#[tokio::test]
async fn empty_files_go_as_regular_and_ignored_files_are_left_out() {
    let server = FakeHub::start(TOKEN);
    server.state.lock().unwrap().ignored = vec!["notes.txt".into()];
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("m");
    copy_dir(&reference_model_dir(), &dir);
    std::fs::write(dir.join("empty.safetensors"), b"").unwrap();
    std::fs::write(dir.join("notes.txt"), b"local notes").unwrap();
    let hf = hub(&server, 1);
    let r = repo("alice/edge");
    let commit = hf.upload(&dir, &r).await.unwrap();
    let seen = server.seen();
    let body = seen
        .iter()
        .find(|s| s.path == "/api/models/alice/edge/commit/main")
        .map(|s| String::from_utf8(s.body.clone()).unwrap())
        .unwrap();
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let line_of = |path: &str| {
        lines
            .iter()
            .find(|l| l["value"]["path"] == path)
            .map(|l| l["key"].as_str().unwrap().to_string())
    };
    assert_eq!(line_of("empty.safetensors").as_deref(), Some("file"));
    assert_eq!(line_of("model.safetensors").as_deref(), Some("lfsFile"));
    assert_eq!(line_of("notes.txt"), None);
    // No LFS object of 0 bytes was asked for.
    let batch = seen
        .iter()
        .find(|s| s.path.ends_with("/info/lfs/objects/batch"))
        .unwrap();
    let batch: serde_json::Value = serde_json::from_slice(&batch.body).unwrap();
    assert!(batch["objects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["size"].as_u64() != Some(0)));
    let listed: Vec<(String, u64)> = hf
        .files_at(&r, &commit)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.size))
        .collect();
    assert!(listed.contains(&("empty.safetensors".to_string(), 0)));
    assert!(!listed.iter().any(|f| f.0 == "notes.txt"));
}

/// A store error names what went wrong (used by the validator's refusal).
#[tokio::test]
async fn index_naming_a_missing_shard_is_refused_not_deferred() {
    let server = FakeHub::start(TOKEN);
    let commit = server.add_repo(
        "orig/broken",
        &[
            ("config.json", b"{}"),
            (
                "model.safetensors.index.json",
                b"{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\"}}",
            ),
        ],
        false,
    );
    let id = ModelId {
        namespace: "orig".into(),
        name: "broken".into(),
        commit: Some(commit.into()),
        hash: Some(reference_hash().into()),
    };
    let model_dir = tempfile::tempdir().unwrap();
    let err = ModelStore::new(model_dir.path())
        .fetch(&hub(&server, 1), &hk(HOTKEY), &id, 1 << 30)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Hub(HubError::BadResponse(_))),
        "{err}"
    );
    assert!(err.to_string().contains("does not hold"), "{err}");
}
