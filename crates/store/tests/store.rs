//! The validator's model store: fetch, verify, path-escape refusals, cleanup.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use pretrain_core::constants::MAX_MODEL_BYTES;
use pretrain_core::ModelId;
use pretrain_store::{
    CommitId, HotkeyAddress, HubError, LocalHub, ModelHub, ModelStore, RepoFile, RepoId,
    StoreError, Visibility,
};

const HOTKEY: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
const OTHER: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";

fn id(repo: &str, commit: &str, hash: &str) -> ModelId {
    let (ns, name) = repo.split_once('/').unwrap();
    ModelId {
        namespace: ns.into(),
        name: name.into(),
        commit: Some(commit.into()),
        hash: Some(hash.into()),
    }
}

async fn local_with_reference() -> (tempfile::TempDir, LocalHub, String) {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let commit = hub
        .upload(&reference_model_dir(), &repo("alice/tiny-gpt2"))
        .await
        .unwrap();
    (root, hub, commit.to_string())
}

#[tokio::test]
async fn fetch_places_and_verifies_the_model() {
    let (_root, hub, commit) = local_with_reference().await;
    let model_dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(model_dir.path());
    let got = store
        .fetch(
            &hub,
            &hk(HOTKEY),
            &id("alice/tiny-gpt2", &commit, &reference_hash()),
            MAX_MODEL_BYTES,
        )
        .await
        .unwrap();
    let expected = model_dir
        .path()
        .join("models")
        .join(HOTKEY)
        .join("models--alice--tiny-gpt2/snapshots")
        .join(&commit);
    assert_eq!(got.path, expected);
    assert_eq!(got.hash, reference_hash());
    assert_eq!(got.size, reference_files().iter().map(|f| f.1).sum::<u64>());
    // Fetching again verifies what is there without a new copy.
    let again = store
        .fetch(
            &hub,
            &hk(HOTKEY),
            &id("alice/tiny-gpt2", &commit, &reference_hash()),
            MAX_MODEL_BYTES,
        )
        .await
        .unwrap();
    assert_eq!(again, got);

    let mid = id("alice/tiny-gpt2", &commit, &reference_hash());
    assert!(store.remove_model(&hk(HOTKEY), &mid).unwrap());
    assert!(!got.path.exists());
    assert!(!store.remove_model(&hk(HOTKEY), &mid).unwrap());
}

#[tokio::test]
async fn tampered_download_is_rejected_and_deleted() {
    let (root, hub, _) = local_with_reference().await;
    // The hub holds a model whose weights differ by one byte from the committed hash's.
    let tampered = root.path().join("tampered");
    copy_dir(&reference_model_dir(), &tampered);
    let weights = tampered.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let commit = hub.upload(&tampered, &repo("mallory/model")).await.unwrap();

    let model_dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(model_dir.path());
    let mid = id("mallory/model", commit.as_str(), &reference_hash());
    let err = store
        .fetch(&hub, &hk(HOTKEY), &mid, MAX_MODEL_BYTES)
        .await
        .unwrap_err();
    match &err {
        StoreError::HashMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &reference_hash());
            assert_ne!(actual, &reference_hash());
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    assert!(
        !store.model_path(&hk(HOTKEY), &mid).unwrap().exists(),
        "the download is deleted"
    );
}

#[tokio::test]
async fn size_limit_is_checked_before_downloading() {
    let (_root, hub, commit) = local_with_reference().await;
    let model_dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(model_dir.path());
    let mid = id("alice/tiny-gpt2", &commit, &reference_hash());
    // Every file of the repo counts, the Hub's .gitattributes too.
    let total: u64 = with_hub_gitattributes(reference_files())
        .iter()
        .map(|f| f.1)
        .sum();
    let err = store
        .fetch(&hub, &hk(HOTKEY), &mid, total - 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Hub(HubError::TooLarge { size, .. }) if size == total),
        "{err}"
    );
    assert!(!model_dir.path().join("models").join(HOTKEY).exists());
    store.fetch(&hub, &hk(HOTKEY), &mid, total).await.unwrap();
}

#[tokio::test]
async fn unsafe_repo_ids_hotkeys_and_commits_are_refused() {
    let (_root, hub, commit) = local_with_reference().await;
    let model_dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(model_dir.path());
    let h = reference_hash();
    let cases: Vec<(ModelId, &str)> = vec![
        (id("../tiny-gpt2", &commit, &h), "would leave the directory"),
        (id("alice/..", &commit, &h), "would leave the directory"),
        (
            ModelId {
                namespace: "/etc".into(),
                name: "x".into(),
                commit: Some(commit.clone().into()),
                hash: Some(h.clone().into()),
            },
            "format",
        ),
        (
            id(
                "alice/tiny-gpt2",
                "../../../../../../../../../../../../../x",
                &h,
            ),
            "40 lowercase hex",
        ),
        (
            ModelId {
                commit: None,
                ..id("alice/tiny-gpt2", &commit, &h)
            },
            "has no commit",
        ),
    ];
    for (mid, why) in cases {
        let err = store
            .fetch(&hub, &hk(HOTKEY), &mid, MAX_MODEL_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Id(_)), "{mid}: {err}");
        assert!(err.to_string().contains(why), "{mid}: {err}");
    }
    // A hotkey that would name a path elsewhere cannot be built at all.
    for bad in ["../escape", "/abs", "", "a.b"] {
        let err = bad.parse::<HotkeyAddress>().unwrap_err().to_string();
        assert!(err.contains("SS58 address"), "{bad}: {err}");
    }
    let none: Vec<_> = std::fs::read_dir(model_dir.path()).unwrap().collect();
    assert!(none.is_empty(), "nothing was written");
}

/// A hub double that lists given files and "downloads" by running a closure.
struct ScriptedHub {
    files: Vec<RepoFile>,
    make: Box<dyn Fn(&Path) + Send + Sync>,
}

#[async_trait]
impl ModelHub for ScriptedHub {
    async fn upload_as(
        &self,
        _dir: &Path,
        _repo: &RepoId,
        _visibility: Visibility,
    ) -> Result<CommitId, HubError> {
        unimplemented!()
    }
    async fn set_visibility(
        &self,
        _repo: &RepoId,
        _visibility: Visibility,
    ) -> Result<(), HubError> {
        unimplemented!()
    }
    async fn files_at(
        &self,
        _repo: &RepoId,
        _commit: &CommitId,
    ) -> Result<Vec<RepoFile>, HubError> {
        Ok(self.files.clone())
    }
    async fn download(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        dest: &Path,
    ) -> Result<PathBuf, HubError> {
        let dir = dest.join(repo.folder_name()).join("snapshots").join(commit);
        std::fs::create_dir_all(&dir).unwrap();
        (self.make)(&dir);
        Ok(dir)
    }
}

const COMMIT: &str = "00112233445566778899aabbccddeeff00112233";

#[tokio::test]
async fn listed_file_names_that_escape_are_refused() {
    for bad in ["../../../evil", "/etc/passwd", "a/../../b", "a\\..\\b"] {
        let model_dir = tempfile::tempdir().unwrap();
        let hub = ScriptedHub {
            files: vec![RepoFile {
                path: bad.into(),
                size: 1,
            }],
            make: Box::new(|_| panic!("must not download")),
        };
        let err = ModelStore::new(model_dir.path())
            .fetch(
                &hub,
                &hk(HOTKEY),
                &id("alice/tiny-gpt2", COMMIT, &reference_hash()),
                MAX_MODEL_BYTES,
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("refusing unsafe path"),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn symlinks_out_of_the_store_are_refused_and_inside_ones_resolved() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.bin");
    std::fs::write(&secret, b"not yours").unwrap();

    let model_dir = tempfile::tempdir().unwrap();
    let s = secret.clone();
    let hub = ScriptedHub {
        files: vec![RepoFile {
            path: "model.safetensors".into(),
            size: 9,
        }],
        make: Box::new(move |dir| {
            std::os::unix::fs::symlink(&s, dir.join("model.safetensors")).unwrap()
        }),
    };
    let store = ModelStore::new(model_dir.path());
    let mid = id("alice/tiny-gpt2", COMMIT, &reference_hash());
    let err = store
        .fetch(&hub, &hk(HOTKEY), &mid, MAX_MODEL_BYTES)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("symlink points outside the store"),
        "{err}"
    );
    assert!(
        !store.model_path(&hk(HOTKEY), &mid).unwrap().exists(),
        "the snapshot is deleted"
    );
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        b"not yours",
        "the target is untouched"
    );

    // The huggingface_hub layout: snapshot files are links into ../../blobs.
    let reference = reference_model_dir();
    let hub = ScriptedHub {
        files: reference_files()
            .into_iter()
            .map(|(path, size)| RepoFile { path, size })
            .collect(),
        make: Box::new(move |dir| {
            let blobs = dir.parent().unwrap().parent().unwrap().join("blobs");
            std::fs::create_dir_all(&blobs).unwrap();
            for (name, _) in reference_files() {
                std::fs::copy(reference.join(&name), blobs.join(format!("blob-{name}"))).unwrap();
                std::os::unix::fs::symlink(format!("../../blobs/blob-{name}"), dir.join(&name))
                    .unwrap();
            }
        }),
    };
    let got = store
        .fetch(&hub, &hk(HOTKEY), &mid, MAX_MODEL_BYTES)
        .await
        .unwrap();
    assert_eq!(got.hash, reference_hash());
    for (name, _) in reference_files() {
        let meta = std::fs::symlink_metadata(got.path.join(&name)).unwrap();
        assert!(meta.is_file(), "{name} is now a real file");
    }
}

#[tokio::test]
async fn hotkey_directory_symlinked_elsewhere_is_refused() {
    let (_root, hub, commit) = local_with_reference().await;
    let model_dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(model_dir.path().join("models")).unwrap();
    std::os::unix::fs::symlink(outside.path(), model_dir.path().join("models").join(HOTKEY))
        .unwrap();
    let err = ModelStore::new(model_dir.path())
        .fetch(
            &hub,
            &hk(HOTKEY),
            &id("alice/tiny-gpt2", &commit, &reference_hash()),
            MAX_MODEL_BYTES,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a symlink"), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn cleanup_removes_only_unreferenced_and_stale() {
    let (root, hub, commit) = local_with_reference().await;
    let changed = root.path().join("changed");
    copy_dir(&reference_model_dir(), &changed);
    std::fs::write(changed.join("generation_config.json"), b"{}").unwrap();
    let commit2 = hub
        .upload(&changed, &repo("alice/tiny-gpt2"))
        .await
        .unwrap();
    let hash2 = pretrain_core::hash_of_directory(&changed).unwrap();

    let model_dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(model_dir.path());
    let keep = id("alice/tiny-gpt2", &commit, &reference_hash());
    let old = id("alice/tiny-gpt2", commit2.as_str(), &hash2);
    let kept = store
        .fetch(&hub, &hk(HOTKEY), &keep, MAX_MODEL_BYTES)
        .await
        .unwrap()
        .path;
    let old_path = store
        .fetch(&hub, &hk(HOTKEY), &old, MAX_MODEL_BYTES)
        .await
        .unwrap()
        .path;
    let other_hotkey = store
        .fetch(&hub, &hk(OTHER), &keep, MAX_MODEL_BYTES)
        .await
        .unwrap()
        .path;
    let abandoned = store
        .hotkey_dir(&hk(HOTKEY))
        .join("models--alice--tiny-gpt2/.partial-x");
    std::fs::create_dir_all(&abandoned).unwrap();
    let other_repo = store.hotkey_dir(&hk(HOTKEY)).join("models--bob--old");
    std::fs::create_dir_all(other_repo.join("snapshots")).unwrap();
    // Things the clean loop must never touch: a symlink out of the root
    // named like a hotkey, and a name that is not a hotkey.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep.txt"), b"x").unwrap();
    let link = store
        .root()
        .join("5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy");
    std::os::unix::fs::symlink(outside.path(), &link).unwrap();
    let stray = store.root().join("not-a-hotkey");
    std::fs::create_dir_all(&stray).unwrap();

    let tracked: HashMap<_, ModelId> = [(hk(HOTKEY), keep.clone())].into();

    // Inside the grace period nothing goes.
    let report = store
        .delete_unreferenced(&tracked, Duration::from_secs(3600))
        .unwrap();
    assert!(report.removed.is_empty(), "{:?}", report.removed);
    assert!(old_path.exists() && other_hotkey.exists());

    let report = store.delete_unreferenced(&tracked, Duration::ZERO).unwrap();
    let mut removed = report.removed.clone();
    removed.sort();
    let mut expected = vec![
        old_path.clone(),
        store.hotkey_dir(&hk(OTHER)),
        abandoned.clone(),
        other_repo.clone(),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    assert!(kept.exists());
    assert_eq!(
        pretrain_core::hash_of_directory(&kept).unwrap(),
        reference_hash()
    );
    assert!(outside.path().join("keep.txt").exists());
    assert!(std::fs::symlink_metadata(&link).is_ok());
    assert!(stray.exists());
}
