//! The `local:DIR` hub: round trip, content addressing, several processes.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use pretrain_core::hash_of_directory;
use pretrain_store::{open_hub, HubError, HubOptions, LocalHub, ModelHub};

#[tokio::test]
async fn upload_list_download_round_trip() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let commit = hub
        .upload(&reference_model_dir(), "alice/tiny-gpt2")
        .await
        .unwrap();
    assert_eq!(commit.len(), 40);
    assert!(commit
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(
        hub.head("alice/tiny-gpt2").unwrap().as_deref(),
        Some(commit.as_str())
    );

    let listed: Vec<(String, u64)> = hub
        .files_at("alice/tiny-gpt2", &commit)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.size))
        .collect();
    assert_eq!(listed, reference_files());

    let dest = tempfile::tempdir().unwrap();
    let dir = hub
        .download("alice/tiny-gpt2", &commit, dest.path())
        .await
        .unwrap();
    assert_eq!(
        dir,
        dest.path()
            .join("models--alice--tiny-gpt2/snapshots")
            .join(&commit)
    );
    assert_eq!(hash_of_directory(&dir).unwrap(), reference_hash());
    // Downloading again is a no-op returning the same place.
    assert_eq!(
        hub.download("alice/tiny-gpt2", &commit, dest.path())
            .await
            .unwrap(),
        dir
    );
}

#[tokio::test]
async fn same_content_same_sha_other_content_other_sha() {
    let root = tempfile::tempdir().unwrap();
    let hub = open_hub(
        &format!("local:{}", root.path().display()),
        HubOptions::default(),
    )
    .unwrap();
    let a = hub
        .upload(&reference_model_dir(), "alice/one")
        .await
        .unwrap();
    let b = hub
        .upload(&reference_model_dir(), "alice/one")
        .await
        .unwrap();
    let c = hub
        .upload(&reference_model_dir(), "bob/other")
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c, "the sha depends on the content only");

    let changed = tempfile::tempdir().unwrap();
    copy_dir(&reference_model_dir(), changed.path());
    std::fs::write(changed.path().join("generation_config.json"), b"{}").unwrap();
    let d = hub.upload(changed.path(), "alice/one").await.unwrap();
    assert_ne!(a, d);
    // Both commits stay readable; the head moved.
    assert_eq!(hub.files_at("alice/one", &a).await.unwrap().len(), 3);
    assert_eq!(hub.files_at("alice/one", &d).await.unwrap()[1].size, 2);
}

#[tokio::test]
async fn errors_are_typed() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let err = hub.files_at("alice/none", missing).await.unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("repo alice/none"), "{err}");
    hub.upload(&reference_model_dir(), "alice/some")
        .await
        .unwrap();
    let err = hub.files_at("alice/some", missing).await.unwrap_err();
    assert!(err.to_string().contains("commit 0123456789abcdef"), "{err}");
    let err = hub.files_at("alice/some", "main").await.unwrap_err();
    assert!(matches!(err, HubError::InvalidCommit(_)), "{err}");
    let err = hub
        .upload(Path::new("/nonexistent/dir"), "alice/x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dir"), "{err}");
}

/// A tampered hub directory (manifest naming `../..`, a symlinked file)
/// cannot make a download write or read outside its places.
#[tokio::test]
async fn tampered_local_hub_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let commit = hub.upload(&reference_model_dir(), "alice/t").await.unwrap();
    let commit_dir = root.path().join("repos/alice/t/commits").join(&commit);
    let manifest_path = commit_dir.join("manifest.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();

    std::fs::write(
        &manifest_path,
        original.replace("\"config.json\"", "\"../../../../evil.json\""),
    )
    .unwrap();
    let err = hub.files_at("alice/t", &commit).await.unwrap_err();
    assert!(matches!(err, HubError::UnsafePath { .. }), "{err}");

    std::fs::write(&manifest_path, &original).unwrap();
    let secret = root.path().join("secret.txt");
    std::fs::write(&secret, b"outside").unwrap();
    let f = commit_dir.join("files/config.json");
    std::fs::remove_file(&f).unwrap();
    std::os::unix::fs::symlink(&secret, &f).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let err = hub
        .download("alice/t", &commit, dest.path())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(!dest
        .path()
        .join("models--alice--t/snapshots")
        .join(&commit)
        .exists());
}

/// Not a test: the body of each child process of
/// `concurrent_uploads_from_two_processes` (this test binary re-run).
#[tokio::test]
#[ignore = "helper process of concurrent_uploads_from_two_processes"]
async fn child_uploader() {
    let root =
        std::env::var("STORE_TEST_HUB").expect("run by concurrent_uploads_from_two_processes");
    let which =
        std::env::var("STORE_TEST_CHILD").expect("run by concurrent_uploads_from_two_processes");
    let hub = LocalHub::open(&root).unwrap();
    let work = tempfile::tempdir().unwrap();
    for i in 0..6 {
        // Every round both processes upload the reference model, and each a variant of its own.
        hub.upload(&reference_model_dir(), "shared/repo")
            .await
            .unwrap();
        let own = work.path().join(format!("v{i}"));
        copy_dir(&reference_model_dir(), &own);
        std::fs::write(
            own.join("generation_config.json"),
            format!("{{\"v\": \"{which}-{i}\"}}"),
        )
        .unwrap();
        hub.upload(&own, "shared/repo").await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_uploads_from_two_processes() {
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|which| {
            Command::new(&exe)
                .args(["--exact", "child_uploader", "--ignored", "--test-threads=1"])
                .stdout(Stdio::null())
                .env("STORE_TEST_HUB", root.path())
                .env("STORE_TEST_CHILD", which)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }

    let hub = LocalHub::open(root.path()).unwrap();
    let commits: Vec<String> = std::fs::read_dir(root.path().join("repos/shared/repo/commits"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // One reference commit and 6 variants from each process.
    assert_eq!(commits.len(), 13, "{commits:?}");
    let reference = hub
        .upload(&reference_model_dir(), "shared/repo")
        .await
        .unwrap();
    assert!(commits.contains(&reference));
    let dest = tempfile::tempdir().unwrap();
    for c in &commits {
        // Every commit is complete and intact (download checks sizes and sha256s).
        let dir = hub.download("shared/repo", c, dest.path()).await.unwrap();
        let files = hub.files_at("shared/repo", c).await.unwrap();
        assert_eq!(files.len(), 3);
        if c == &reference {
            assert_eq!(hash_of_directory(&dir).unwrap(), reference_hash());
        }
    }
    // Nothing staged is left behind.
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
    let head = hub.head("shared/repo").unwrap().unwrap();
    assert!(commits.contains(&head));
}
