//! The `hf` backend against a hub stand-in on 127.0.0.1 (tests/common/fake_hf.rs).

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

mod common;

use std::time::Duration;

use common::fake_hf::FakeHub;
use common::*;
use pretrain_core::{hash_of_directory, ModelId};
use pretrain_store::{HfHub, HfOptions, HubError, ModelHub, ModelStore, Visibility};

const TOKEN: &str = "hf_test_token";

fn hub(server: &FakeHub, token: Option<&str>, retries: u32) -> HfHub {
    HfHub::new(HfOptions {
        endpoint: server.url.clone(),
        token: token.map(str::to_string),
        progress: false,
        retries,
        retry_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

fn resolve_gets(server: &FakeHub) -> Vec<common::fake_hf::Seen> {
    server
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.contains("/resolve/"))
        .collect()
}

#[tokio::test]
async fn upload_list_download_round_trip() {
    let server = FakeHub::start(TOKEN);
    let hf = hub(&server, Some(TOKEN), 2);
    let commit = hf
        .upload(&reference_model_dir(), &repo("alice/tiny-gpt2"))
        .await
        .unwrap();
    assert_eq!(commit.as_str().len(), 40);

    // The hub's initial `.gitattributes` is kept (it was deleted
    // before): the commit is the directory and it.
    let listed: Vec<(String, u64)> = hf
        .files_at(&repo("alice/tiny-gpt2"), &commit)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.size))
        .collect();
    assert_eq!(listed, with_hub_gitattributes(reference_files()));

    // The safetensors went through LFS, without our token leaking to the storage URL.
    let seen = server.seen();
    let put = seen
        .iter()
        .find(|s| s.method == "PUT" && s.path.starts_with("/lfs-upload/"))
        .unwrap();
    assert_eq!(
        put.path,
        "/lfs-upload/6f3605b644e0b039ebd3713c87f7a5cf297b41028c036f4ba804ab5510782e35"
    );
    assert!(!put.headers.contains_key("authorization"));
    assert_eq!(
        put.headers.get("x-amz-fake").map(String::as_str),
        Some("yes")
    );
    assert!(seen.iter().any(|s| s.path == "/lfs-verify"));

    let dest = tempfile::tempdir().unwrap();
    let dir = hf
        .download(&repo("alice/tiny-gpt2"), &commit, dest.path())
        .await
        .unwrap();
    assert_eq!(
        dir,
        dest.path()
            .join("models--alice--tiny-gpt2")
            .join("snapshots")
            .join(&commit)
    );
    assert_eq!(hash_of_directory(&dir).unwrap(), reference_hash());
    // Only the snapshot remains: the staging directory is gone.
    let left: Vec<_> = std::fs::read_dir(dest.path().join("models--alice--tiny-gpt2"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, vec!["snapshots".to_string()]);

    // A second upload of the same directory creates a new commit (as git does) with the same files.
    let again = hf
        .upload(&reference_model_dir(), &repo("alice/tiny-gpt2"))
        .await
        .unwrap();
    assert_ne!(again, commit);
    let n = server
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/lfs-upload/"))
        .count();
    assert_eq!(n, 1, "an LFS object already on the hub is not sent again");
}

#[tokio::test]
async fn multipart_lfs_upload() {
    let server = FakeHub::start(TOKEN);
    server.state.lock().unwrap().multipart_chunk = Some(4 * 1024 * 1024);
    let hf = hub(&server, Some(TOKEN), 2);
    let commit = hf
        .upload(&reference_model_dir(), &repo("alice/multi"))
        .await
        .unwrap();
    let parts = server
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/lfs-part/"))
        .count();
    assert_eq!(parts, 2, "6,668,456 bytes in 4 MiB parts");
    let dest = tempfile::tempdir().unwrap();
    let dir = hf
        .download(&repo("alice/multi"), &commit, dest.path())
        .await
        .unwrap();
    assert_eq!(hash_of_directory(&dir).unwrap(), reference_hash());
}

#[tokio::test]
async fn unauthorised() {
    let server = FakeHub::start(TOKEN);
    let err = hub(&server, Some("hf_wrong"), 2)
        .upload(&reference_model_dir(), &repo("alice/tiny"))
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Unauthorized(_)), "{err}");
    assert!(err.to_string().contains("401"), "{err}");

    // Without a token nothing is even sent.
    let before = server.seen().len();
    let err = hub(&server, None, 2)
        .upload(&reference_model_dir(), &repo("alice/tiny"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HF_ACCESS_TOKEN"), "{err}");
    assert_eq!(server.seen().len(), before);

    // A gated repo cannot be listed or downloaded without the token.
    let commit = commit_id(&server.add_repo("corp/gated", &[("config.json", b"{}")], true));
    let err = hub(&server, None, 2)
        .files_at(&repo("corp/gated"), &commit)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Unauthorized(_)), "{err}");
    let files = hub(&server, Some(TOKEN), 2)
        .files_at(&repo("corp/gated"), &commit)
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
}

#[tokio::test]
async fn not_found() {
    let server = FakeHub::start(TOKEN);
    let hf = hub(&server, Some(TOKEN), 2);
    let missing = &commit_id("0123456789abcdef0123456789abcdef01234567");
    let err = hf
        .files_at(&repo("alice/nothing"), missing)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("Repository not found"), "{err}");
    server.add_repo("alice/some", &[("a.txt", b"a")], false);
    let err = hf.files_at(&repo("alice/some"), missing).await.unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    let dest = tempfile::tempdir().unwrap();
    let err = hf
        .download(&repo("alice/some"), missing, dest.path())
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn rate_limited_then_ok_and_persistently() {
    let server = FakeHub::start(TOKEN);
    let commit = commit_id(&server.add_repo("alice/rl", &[("a.txt", b"hello")], false));
    server.fail("GET", "/api/models/alice/rl", 429, 2);
    let files = hub(&server, None, 3)
        .files_at(&repo("alice/rl"), &commit)
        .await
        .unwrap();
    assert_eq!(files[0].size, 5);
    let listings = server
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/api/models/alice/rl"))
        .count();
    assert_eq!(listings, 3);

    server.fail("GET", "/api/models/alice/rl", 429, 100);
    let err = hub(&server, None, 2)
        .files_at(&repo("alice/rl"), &commit)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::RateLimited(_)), "{err}");

    // A 429 on a download is retried too.
    server.state.lock().unwrap().failures.clear();
    server.fail("GET", "/alice/rl/resolve/", 429, 1);
    let dest = tempfile::tempdir().unwrap();
    let dir = hub(&server, None, 3)
        .download(&repo("alice/rl"), &commit, dest.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"hello");
}

#[tokio::test]
async fn truncated_download_resumes_with_range() {
    let server = FakeHub::start(TOKEN);
    let hf = hub(&server, Some(TOKEN), 3);
    let commit = hf
        .upload(&reference_model_dir(), &repo("alice/trunc"))
        .await
        .unwrap();
    server
        .state
        .lock()
        .unwrap()
        .truncate
        .insert("model.safetensors".into(), (1, 1_000_000));
    let dest = tempfile::tempdir().unwrap();
    let dir = hf
        .download(&repo("alice/trunc"), &commit, dest.path())
        .await
        .unwrap();
    assert_eq!(hash_of_directory(&dir).unwrap(), reference_hash());
    let gets: Vec<_> = resolve_gets(&server)
        .into_iter()
        .filter(|s| s.path.ends_with("model.safetensors"))
        .collect();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[0].headers.get("range"), None);
    assert_eq!(
        gets[1].headers.get("range").map(String::as_str),
        Some("bytes=1000000-")
    );
}

#[tokio::test]
async fn interrupted_download_resumes_in_a_later_call() {
    let server = FakeHub::start(TOKEN);
    let commit = hub(&server, Some(TOKEN), 0)
        .upload(&reference_model_dir(), &repo("alice/later"))
        .await
        .unwrap();
    server
        .state
        .lock()
        .unwrap()
        .truncate
        .insert("model.safetensors".into(), (1, 3_000_000));
    let dest = tempfile::tempdir().unwrap();
    let err = hub(&server, None, 0)
        .download(&repo("alice/later"), &commit, dest.path())
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Network(_)), "{err}");
    assert!(
        err.to_string().contains("at 3000000 of 6668456 bytes"),
        "{err}"
    );
    assert!(!dest
        .path()
        .join("models--alice--later/snapshots")
        .join(&commit)
        .exists());

    let dir = hub(&server, None, 0)
        .download(&repo("alice/later"), &commit, dest.path())
        .await
        .unwrap();
    assert_eq!(hash_of_directory(&dir).unwrap(), reference_hash());
    let last = resolve_gets(&server).into_iter().last().unwrap();
    assert_eq!(
        last.headers.get("range").map(String::as_str),
        Some("bytes=3000000-")
    );
}

#[tokio::test]
async fn over_one_gib_is_refused_before_any_download() {
    let server = FakeHub::start(TOKEN);
    let commit = server.add_repo(
        "alice/huge",
        &[
            ("config.json", b"{}"),
            ("model.safetensors", b"not really big"),
        ],
        false,
    );
    server
        .state
        .lock()
        .unwrap()
        .size_override
        .insert("model.safetensors".into(), 1024 * 1024 * 1024);
    let hf = hub(&server, None, 1);
    let files = hf
        .files_at(&repo("alice/huge"), &commit_id(&commit))
        .await
        .unwrap();
    assert_eq!(
        files.iter().map(|f| f.size).sum::<u64>(),
        1024 * 1024 * 1024 + 2
    );

    let model_dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(model_dir.path());
    let id = ModelId {
        namespace: "alice".into(),
        name: "huge".into(),
        commit: Some(commit.into()),
        hash: Some(reference_hash().into()),
    };
    let err = store
        .fetch(
            &hf,
            &hk("5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX"),
            &id,
            pretrain_core::constants::MAX_MODEL_BYTES,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("1073741826 bytes, more than the limit of 1073741824"),
        "{err}"
    );
    assert!(
        resolve_gets(&server).is_empty(),
        "nothing may be downloaded"
    );
}

#[tokio::test]
async fn hostile_file_names_are_refused() {
    for name in ["../../evil.txt", "/etc/evil", "a/../../evil"] {
        let server = FakeHub::start(TOKEN);
        let commit = commit_id(&server.add_repo("alice/evil", &[("config.json", b"{}")], false));
        server
            .state
            .lock()
            .unwrap()
            .extra_siblings
            .push((name.to_string(), 4));
        let dest = tempfile::tempdir().unwrap();
        let inner = dest.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        let err = hub(&server, None, 1)
            .download(&repo("alice/evil"), &commit, &inner)
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::UnsafePath { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
        assert!(resolve_gets(&server).is_empty());
        assert!(!dest.path().join("evil.txt").exists());
    }
}

#[tokio::test]
async fn server_sending_more_than_listed_is_cut_off() {
    let server = FakeHub::start(TOKEN);
    let commit = commit_id(&server.add_repo("alice/liar", &[("a.bin", &[7u8; 1000])], false));
    server
        .state
        .lock()
        .unwrap()
        .size_override
        .insert("a.bin".into(), 10);
    let dest = tempfile::tempdir().unwrap();
    let err = hub(&server, None, 1)
        .download(&repo("alice/liar"), &commit, dest.path())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("more than the 10 bytes it listed"),
        "{err}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_and_then_reported() {
    let server = FakeHub::start(TOKEN);
    server.fail("POST", "/api/models/alice/flaky/commit/main", 503, 1);
    let commit = hub(&server, Some(TOKEN), 2)
        .upload(&reference_model_dir(), &repo("alice/flaky"))
        .await
        .unwrap();
    let commits = server
        .seen()
        .iter()
        .filter(|s| s.path == "/api/models/alice/flaky/commit/main")
        .count();
    assert_eq!(commits, 2, "one 503, then the commit");
    assert_eq!(
        server.state.lock().unwrap().repos["alice/flaky"]
            .commits
            .last()
            .unwrap()
            .0,
        commit.as_str()
    );

    server.fail("GET", "/api/models/alice/flaky", 500, 100);
    let err = hub(&server, Some(TOKEN), 1)
        .files_at(&repo("alice/flaky"), &commit)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Network(_)), "{err}");
    assert!(err.to_string().contains("500"), "{err}");
}

#[tokio::test]
async fn private_upload_then_made_public_through_the_settings_api() {
    let server = FakeHub::start(TOKEN);
    let owner = hub(&server, Some(TOKEN), 2);
    let r = repo("alice/secret");
    let commit = owner
        .upload_as(&reference_model_dir(), &r, Visibility::Private)
        .await
        .unwrap();
    // The repo was created private (huggingface_hub's create_repo(private=True)).
    let create = server
        .seen()
        .into_iter()
        .find(|s| s.method == "POST" && s.path == "/api/repos/create")
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&create.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"name": "secret", "organization": "alice", "private": true})
    );
    // A stranger gets 404; the owner lists it.
    let stranger = hub(&server, None, 2);
    let err = stranger.files_at(&r, &commit).await.unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    let own = owner.files_at_as_owner(&r, &commit).await.unwrap();
    let own: Vec<(String, u64)> = own.into_iter().map(|f| (f.path, f.size)).collect();
    // And the Hub's .gitattributes, kept.
    assert_eq!(own, with_hub_gitattributes(reference_files()));

    // One 503 on the settings call is retried; the request is
    // PUT /api/models/{repo}/settings {"private": false} with the token.
    server.fail("PUT", "/api/models/alice/secret/settings", 503, 1);
    owner.set_visibility(&r, Visibility::Public).await.unwrap();
    let puts: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT" && s.path == "/api/models/alice/secret/settings")
        .collect();
    assert_eq!(puts.len(), 2, "one 503, then the change");
    let last = puts.last().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&last.body).unwrap(),
        serde_json::json!({"private": false})
    );
    assert_eq!(
        last.headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let dest = tempfile::tempdir().unwrap();
    let dir = stranger.download(&r, &commit, dest.path()).await.unwrap();
    assert_eq!(hash_of_directory(&dir).unwrap(), reference_hash());

    // A later upload does not make it private again (create_repo -> 409, unchanged).
    owner
        .upload_as(&reference_model_dir(), &r, Visibility::Private)
        .await
        .unwrap();
    assert!(!server.state.lock().unwrap().repos["alice/secret"].private);

    // Back to private: {"private": true}.
    owner.set_visibility(&r, Visibility::Private).await.unwrap();
    assert!(server.state.lock().unwrap().repos["alice/secret"].private);
    let last = server.seen().into_iter().last().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&last.body).unwrap(),
        serde_json::json!({"private": true})
    );

    // A missing repo is NotFound; no token, no request.
    let err = owner
        .set_visibility(&repo("alice/nothing"), Visibility::Public)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    let before = server.seen().len();
    let err = stranger
        .set_visibility(&r, Visibility::Public)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Unauthorized(_)), "{err}");
    assert_eq!(server.seen().len(), before);
}

#[tokio::test]
async fn a_resolve_url_that_redirects_to_itself_fails_at_once_and_is_not_retried() {
    let server = FakeHub::start(TOKEN);
    let files: Vec<(String, Vec<u8>)> = reference_files()
        .iter()
        .map(|(f, _)| {
            (
                f.clone(),
                std::fs::read(reference_model_dir().join(f)).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(f, c)| (f.as_str(), c.as_slice()))
        .collect();
    let loop_sha = server.add_repo("evil/loop", &refs, false);
    let good_sha = server.add_repo("alice/good", &refs, false);
    server.redirect_loop("/evil/loop/resolve/");
    // Five retries, as the validator's default: a loop retried would cost
    // 6 x 10 redirects.
    let hf = hub(&server, None, 5);
    let dest = tempfile::tempdir().unwrap();
    let err = hf
        .download(&repo("evil/loop"), &commit_id(&loop_sha), dest.path())
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        !err.is_permanent(),
        "a loop is not the model's content: {err}"
    );
    assert!(err.to_string().contains("redirect loop"), "{err}");
    let looped = resolve_gets(&server)
        .into_iter()
        .filter(|s| s.path.starts_with("/evil/loop/"))
        .count();
    // One first request and reqwest's 10 redirects, once: no retry.
    assert!(looped <= 11, "{looped} requests to the loop");
    assert!(looped >= 2, "{looped}");
    // The same client fetches an honest repo right after.
    let dir = hf
        .download(&repo("alice/good"), &commit_id(&good_sha), dest.path())
        .await
        .unwrap();
    assert_eq!(hash_of_directory(&dir).unwrap(), reference_hash());
}
