//! The `local:DIR` hub: round trip, content addressing, several processes.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly; that is its job

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use pretrain_core::hash_of_directory;
use pretrain_store::{open_hub, HubError, HubOptions, LocalHub, ModelHub, Visibility};

#[tokio::test]
async fn upload_list_download_round_trip() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let commit = hub
        .upload(&reference_model_dir(), &repo("alice/tiny-gpt2"))
        .await
        .unwrap();
    assert_eq!(commit.as_str().len(), 40);
    assert!(commit
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(
        hub.head(&repo("alice/tiny-gpt2")).unwrap().as_ref(),
        Some(&commit)
    );

    let listed: Vec<(String, u64)> = hub
        .files_at(&repo("alice/tiny-gpt2"), &commit)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.size))
        .collect();
    // With the .gitattributes the Hub writes at creation.
    assert_eq!(listed, with_hub_gitattributes(reference_files()));

    let dest = tempfile::tempdir().unwrap();
    let dir = hub
        .download(&repo("alice/tiny-gpt2"), &commit, dest.path())
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
        hub.download(&repo("alice/tiny-gpt2"), &commit, dest.path())
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
        .upload(&reference_model_dir(), &repo("alice/one"))
        .await
        .unwrap();
    let b = hub
        .upload(&reference_model_dir(), &repo("alice/one"))
        .await
        .unwrap();
    let c = hub
        .upload(&reference_model_dir(), &repo("bob/other"))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c, "the sha depends on the content only");

    let changed = tempfile::tempdir().unwrap();
    copy_dir(&reference_model_dir(), changed.path());
    std::fs::write(changed.path().join("generation_config.json"), b"{}").unwrap();
    let d = hub
        .upload(changed.path(), &repo("alice/one"))
        .await
        .unwrap();
    assert_ne!(a, d);
    // Both commits stay readable; the head moved.
    // Each commit also holds the Hub's .gitattributes (sorted first).
    assert_eq!(hub.files_at(&repo("alice/one"), &a).await.unwrap().len(), 4);
    assert_eq!(
        hub.files_at(&repo("alice/one"), &d).await.unwrap()[2].size,
        2
    );
}

#[tokio::test]
async fn errors_are_typed() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let missing = &commit_id("0123456789abcdef0123456789abcdef01234567");
    let err = hub
        .files_at(&repo("alice/none"), missing)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("repo alice/none"), "{err}");
    hub.upload(&reference_model_dir(), &repo("alice/some"))
        .await
        .unwrap();
    let err = hub
        .files_at(&repo("alice/some"), missing)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("commit 0123456789abcdef"), "{err}");
    // A branch name is not a commit: it cannot even be asked for.
    assert!("main".parse::<pretrain_store::CommitId>().is_err());
    let err = hub
        .upload(Path::new("/nonexistent/dir"), &repo("alice/x"))
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
    let commit = hub
        .upload(&reference_model_dir(), &repo("alice/t"))
        .await
        .unwrap();
    let commit_dir = root.path().join("repos/alice/t/commits").join(&commit);
    let manifest_path = commit_dir.join("manifest.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();

    std::fs::write(
        &manifest_path,
        original.replace("\"config.json\"", "\"../../../../evil.json\""),
    )
    .unwrap();
    let err = hub.files_at(&repo("alice/t"), &commit).await.unwrap_err();
    assert!(matches!(err, HubError::UnsafePath { .. }), "{err}");

    std::fs::write(&manifest_path, &original).unwrap();
    let secret = root.path().join("secret.txt");
    std::fs::write(&secret, b"outside").unwrap();
    let f = commit_dir.join("files/config.json");
    std::fs::remove_file(&f).unwrap();
    std::os::unix::fs::symlink(&secret, &f).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let err = hub
        .download(&repo("alice/t"), &commit, dest.path())
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
        hub.upload(&reference_model_dir(), &repo("shared/repo"))
            .await
            .unwrap();
        let own = work.path().join(format!("v{i}"));
        copy_dir(&reference_model_dir(), &own);
        std::fs::write(
            own.join("generation_config.json"),
            format!("{{\"v\": \"{which}-{i}\"}}"),
        )
        .unwrap();
        hub.upload(&own, &repo("shared/repo")).await.unwrap();
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
    let commits: Vec<pretrain_store::CommitId> =
        std::fs::read_dir(root.path().join("repos/shared/repo/commits"))
            .unwrap()
            .map(|e| commit_id(&e.unwrap().file_name().into_string().unwrap()))
            .collect();
    // One reference commit and 6 variants from each process.
    assert_eq!(commits.len(), 13, "{commits:?}");
    let reference = hub
        .upload(&reference_model_dir(), &repo("shared/repo"))
        .await
        .unwrap();
    assert!(commits.contains(&reference));
    let dest = tempfile::tempdir().unwrap();
    for c in &commits {
        // Every commit is complete and intact (download checks sizes and sha256s).
        let dir = hub
            .download(&repo("shared/repo"), c, dest.path())
            .await
            .unwrap();
        let files = hub.files_at(&repo("shared/repo"), c).await.unwrap();
        assert_eq!(files.len(), 4, "the model and the Hub's .gitattributes");
        if c == &reference {
            assert_eq!(hash_of_directory(&dir).unwrap(), reference_hash());
        }
    }
    // Nothing staged is left behind.
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
    let head = hub.head(&repo("shared/repo")).unwrap().unwrap();
    assert!(commits.contains(&head));
}

// ---- Hostile files in a model directory ----

fn model_copy(into: &Path) -> std::path::PathBuf {
    let dst = into.join("model");
    copy_dir(&reference_model_dir(), &dst);
    dst
}

/// A symlink pointing outside the model directory uploaded
/// its target; `.env` and `.git/` were uploaded. Each is now refused before
/// anything reaches the hub (no commit, no ref, nothing staged left), and so
/// are other hidden files, FIFOs and links to devices.
#[tokio::test]
async fn uploads_refuse_secrets_links_out_and_special_files() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, "hf_SECRET").unwrap();
    type Spoil<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Spoil, &str)> = vec![
        (
            "link-out",
            Box::new(|d: &Path| {
                symlink(tmp.path().join("secret.txt"), d.join("notes.txt")).unwrap()
            }),
            "outside the model directory",
        ),
        (
            "link-out-abs-etc",
            Box::new(|d: &Path| symlink("/etc/hostname", d.join("hostname")).unwrap()),
            "outside the model directory",
        ),
        (
            "dotenv",
            Box::new(|d: &Path| std::fs::write(d.join(".env"), "HF_ACCESS_TOKEN=hf_x").unwrap()),
            "\".env\"",
        ),
        (
            "git",
            Box::new(|d: &Path| {
                std::fs::create_dir(d.join(".git")).unwrap();
                std::fs::write(d.join(".git/config"), "[remote]").unwrap();
            }),
            "\".git\"",
        ),
        (
            "netrc-deep",
            Box::new(|d: &Path| {
                std::fs::create_dir(d.join("sub")).unwrap();
                std::fs::write(d.join("sub/.netrc"), "machine x password y").unwrap();
            }),
            "\".netrc\"",
        ),
        (
            "fifo",
            Box::new(|d: &Path| {
                assert!(Command::new("mkfifo")
                    .arg(d.join("pipe"))
                    .status()
                    .unwrap()
                    .success());
            }),
            "not a regular file",
        ),
        (
            "dev-zero",
            Box::new(|d: &Path| symlink("/dev/zero", d.join("zeros")).unwrap()),
            "outside the model directory",
        ),
    ];
    for (name, spoil, needle) in cases {
        let case = tmp.path().join(name);
        let dir = model_copy(&case);
        spoil(&dir);
        let root = case.join("hub");
        let hub = LocalHub::open(&root).unwrap();
        let err = hub.upload(&dir, &repo("alice/tiny")).await.unwrap_err();
        let msg = error_chain(&err);
        assert!(
            matches!(err, HubError::UnsafePath { .. } | HubError::Io { .. }),
            "{name}: {msg}"
        );
        assert!(msg.contains(needle), "{name}: {msg}");
        assert_eq!(hub.head(&repo("alice/tiny")).unwrap(), None, "{name}");
        assert_eq!(
            std::fs::read_dir(root.join("tmp")).unwrap().count(),
            0,
            "{name}"
        );
    }
    // Links inside the directory and .gitattributes are fine, and upload what
    // the hash hashes: the files `from_pretrained` fetches.
    let dir = model_copy(&tmp.path().join("ok"));
    std::fs::write(dir.join(".gitattributes"), "*.safetensors filter=lfs\n").unwrap();
    std::fs::rename(dir.join("config.json"), dir.join("real-config.json")).unwrap();
    symlink("real-config.json", dir.join("config.json")).unwrap();
    let hub = LocalHub::open(tmp.path().join("ok/hub")).unwrap();
    let commit = hub.upload(&dir, &repo("alice/tiny")).await.unwrap();
    let dest = tempfile::tempdir().unwrap();
    let got = hub
        .download(&repo("alice/tiny"), &commit, dest.path())
        .await
        .unwrap();
    assert_eq!(
        hash_of_directory(&got).unwrap(),
        pretrain_store::pretrained::hash_of_model_dir(&dir).unwrap()
    );
    assert_eq!(hash_of_directory(&got).unwrap(), reference_hash());
}

/// Staging folders of killed uploads piled up. A folder
/// whose lock nobody holds (its process died) is removed by the next upload;
/// one whose lock is held (an upload in progress) is kept.
#[tokio::test]
async fn killed_uploads_staging_folders_are_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(tmp.path()).unwrap();
    let t = tmp.path().join("tmp");
    for i in 0..3 {
        let d = t.join(format!("upload-dead{i}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("model.safetensors"), vec![0u8; 4096]).unwrap();
        std::fs::File::create(t.join(format!("upload-dead{i}.lock"))).unwrap();
    }
    let alive = t.join("upload-alive");
    std::fs::create_dir(&alive).unwrap();
    let held = std::fs::File::create(t.join("upload-alive.lock")).unwrap();
    held.lock().unwrap();
    // A fresh folder without a lock file (being set up right now) is kept too.
    std::fs::create_dir(t.join("upload-new")).unwrap();
    hub.upload(&reference_model_dir(), &repo("alice/tiny"))
        .await
        .unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&t)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec!["upload-alive", "upload-alive.lock", "upload-new"]
    );
    drop(held);
    assert_eq!(hub.clean_stale_staging().unwrap(), 1);
    assert!(!alive.exists());
}

/// The same, with a real process killed (SIGKILL) in the middle of uploads.
#[tokio::test]
async fn a_process_killed_mid_upload_leaves_nothing_after_the_next_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("hub");
    LocalHub::open(&root).unwrap();
    let mut killed_with_staging = 0;
    let names = |d: &Path| -> std::collections::HashSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect()
    };
    for round in 0..6 {
        let before = names(&root.join("tmp"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_uploader_until_killed",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_UPLOAD_ENV, &root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it while a staging folder exists (it is copying files), whatever the machine's speed.
        let t0 = std::time::Instant::now();
        while names(&root.join("tmp")).is_subset(&before)
            && t0.elapsed() < std::time::Duration::from_secs(20)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(round));
        child.kill().unwrap();
        child.wait().unwrap();
        if !names(&root.join("tmp")).is_subset(&before) {
            killed_with_staging += 1;
        }
    }
    let hub = LocalHub::open(&root).unwrap();
    hub.upload(&reference_model_dir(), &repo("bob/tiny"))
        .await
        .unwrap();
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    // The test is only meaningful if some kill landed mid-upload.
    assert!(killed_with_staging > 0, "no kill landed during an upload");
}

const CHILD_UPLOAD_ENV: &str = "PRETRAIN_TEST_CHILD_UPLOAD";

#[test]
#[ignore = "run as a child process by a_process_killed_mid_upload_leaves_nothing_after_the_next_upload"]
fn child_uploader_until_killed() {
    let Ok(root) = std::env::var(CHILD_UPLOAD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let hub = LocalHub::open(&root).unwrap();
        loop {
            hub.upload(&reference_model_dir(), &repo("alice/tiny"))
                .await
                .unwrap();
        }
    });
}

/// Writes a one-file model directory (small, so the tests stay fast).
fn small_dir(root: &Path, content: &[u8]) -> std::path::PathBuf {
    let dir = root.join(format!("src-{}", content.len()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), content).unwrap();
    dir
}

#[tokio::test]
async fn a_private_repo_is_missing_to_readers_until_made_public() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let r = repo("alice/secret");
    let src = small_dir(root.path(), b"{\"a\":1}");
    let commit = hub.upload_as(&src, &r, Visibility::Private).await.unwrap();
    assert_eq!(hub.visibility(&r).unwrap(), Some(Visibility::Private));

    // Readers get NotFound, as a stranger gets 404 from Hugging Face.
    let err = hub.files_at(&r, &commit).await.unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    assert_eq!(err.to_string(), "not found: repo alice/secret is private");
    let dest = tempfile::tempdir().unwrap();
    let err = hub.download(&r, &commit, dest.path()).await.unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("is private"), "{err}");
    assert!(!dest.path().join("models--alice--secret").exists());
    // The owner's own check sees the files.
    let own = hub.files_at_as_owner(&r, &commit).await.unwrap();
    // After the Hub's .gitattributes.
    assert_eq!(own.len(), 2);
    assert_eq!((own[1].path.as_str(), own[1].size), ("config.json", 7));

    // Another upload, even a "public" one, does not change an existing repo.
    let src2 = small_dir(root.path(), b"{\"a\":22}");
    let second = hub.upload(&src2, &r).await.unwrap();
    assert_ne!(second, commit);
    assert_eq!(hub.visibility(&r).unwrap(), Some(Visibility::Private));
    assert!(matches!(
        hub.files_at(&r, &second).await,
        Err(HubError::NotFound(_))
    ));

    // Made public: every commit is readable.
    hub.set_visibility(&r, Visibility::Public).await.unwrap();
    assert_eq!(hub.visibility(&r).unwrap(), Some(Visibility::Public));
    assert_eq!(hub.files_at(&r, &commit).await.unwrap()[1].size, 7);
    let dir = hub.download(&r, &second, dest.path()).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("config.json")).unwrap(),
        b"{\"a\":22}"
    );
    // And private again.
    hub.set_visibility(&r, Visibility::Private).await.unwrap();
    assert!(matches!(
        hub.files_at(&r, &commit).await,
        Err(HubError::NotFound(_))
    ));
    // Another process opening the same hub sees the same.
    let other = LocalHub::open(root.path()).unwrap();
    assert_eq!(other.visibility(&r).unwrap(), Some(Visibility::Private));
}

#[tokio::test]
async fn visibility_of_new_existing_and_missing_repos() {
    let root = tempfile::tempdir().unwrap();
    let hub = LocalHub::open(root.path()).unwrap();
    let src = small_dir(root.path(), b"{}");

    // Missing repo: NotFound, and nothing is created.
    let err = hub
        .set_visibility(&repo("alice/nothing"), Visibility::Public)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::NotFound(_)), "{err}");
    assert!(!root.path().join("repos/alice/nothing").exists());
    assert_eq!(hub.visibility(&repo("alice/nothing")).unwrap(), None);

    // `upload` creates public; a later private upload does not hide it.
    let r = repo("alice/open");
    let c = hub.upload(&src, &r).await.unwrap();
    assert_eq!(hub.visibility(&r).unwrap(), Some(Visibility::Public));
    hub.upload_as(&src, &r, Visibility::Private).await.unwrap();
    assert_eq!(hub.visibility(&r).unwrap(), Some(Visibility::Public));
    assert_eq!(hub.files_at(&r, &c).await.unwrap().len(), 2); // and .gitattributes

    // A repo from before visibility files existed is public.
    let legacy = repo("alice/legacy");
    let c = hub
        .upload_as(&src, &legacy, Visibility::Private)
        .await
        .unwrap();
    std::fs::remove_file(root.path().join("repos/alice/legacy/visibility")).unwrap();
    assert_eq!(hub.visibility(&legacy).unwrap(), Some(Visibility::Public));
    assert_eq!(hub.files_at(&legacy, &c).await.unwrap().len(), 2);

    // Through the trait object too (what the miner and validator hold).
    let dynhub = open_hub(
        &format!("local:{}", root.path().display()),
        HubOptions::default(),
    )
    .unwrap();
    let hidden = repo("bob/hidden");
    let c = dynhub
        .upload_as(&src, &hidden, Visibility::Private)
        .await
        .unwrap();
    assert!(matches!(
        dynhub.files_at(&hidden, &c).await,
        Err(HubError::NotFound(_))
    ));
    dynhub
        .set_visibility(&hidden, Visibility::Public)
        .await
        .unwrap();
    assert_eq!(dynhub.files_at(&hidden, &c).await.unwrap().len(), 2);
}
