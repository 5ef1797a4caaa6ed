//! `local:DIR`: a hub kept in a directory, for one machine (localnet, tests).
//!
//! Layout:
//! ```text
//! DIR/repos/<ns>/<name>/commits/<sha>/manifest.json   files, sizes, sha256s
//! DIR/repos/<ns>/<name>/commits/<sha>/files/...       the files, read-only by convention
//! DIR/repos/<ns>/<name>/refs/main                     latest commit uploaded
//! DIR/repos/<ns>/<name>/visibility                    `public` or `private` (absent: public)
//! DIR/tmp/upload-XXXX/ + upload-XXXX.lock             uploads being staged
//! ```
//! As on Hugging Face, every commit holds a `.gitattributes` (the uploaded
//! directory's own, else the head's, else the Hub's default for a new repo),
//! and a download fetches only what `from_pretrained` would
//! ([`crate::pretrained`]).
//! Each staging folder has a lock file held (flock) by the uploading
//! process; an upload first removes the staging folders whose lock nobody
//! holds (their process was killed), so killed uploads do not pile up.
//! A commit is immutable and content-addressed: its sha is the first 40 hex
//! digits of the sha256 of its manifest (sorted paths, sizes, file sha256s),
//! so the same upload twice gives the same sha. A commit directory is staged
//! under `tmp/` and appears by a single `rename`, so readers in other
//! processes see either nothing or a complete commit; two processes racing
//! to create the same commit both succeed with the same content.
//!
//! Visibility is set when a repo gets its first commit and changed only by
//! [`ModelHub::set_visibility`]; a private repo is answered as missing to
//! every reader ([`HubError::NotFound`]), as Hugging Face answers a
//! stranger; only the uploader's own check ([`ModelHub::files_at_as_owner`])
//! sees it.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::paths::safe_relative_path;
use crate::pretrained;
use crate::{list_local_files, CommitId, HubError, ModelHub, RepoFile, RepoId, Visibility};

/// One file of a commit's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ManifestFile {
    path: String,
    size: u64,
    sha256: String,
}

/// What a commit holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    repo_id: String,
    files: Vec<ManifestFile>,
}

impl Manifest {
    /// The content address: paths (sorted), sizes and content hashes.
    fn commit_sha(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"pretrain-local-hub commit v1\n");
        for f in &self.files {
            hasher.update(f.path.as_bytes());
            hasher.update([0]);
            hasher.update(f.size.to_string().as_bytes());
            hasher.update([0]);
            hasher.update(f.sha256.as_bytes());
            hasher.update(b"\n");
        }
        hex(&hasher.finalize())[..40].to_string()
    }
}

/// Git's attributes file, which every Hub repo holds from its creation.
const GITATTRIBUTES: &str = ".gitattributes";

// A killed upload's staging folder without a lock file is removed after this long.
const STALE_UNLOCKED_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// An upload's staging folder, removed on drop unless kept.
struct StagingDir(Option<PathBuf>);

impl StagingDir {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Keeps the folder (it is about to be renamed into place).
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

// Removes the lock file (and so releases the lock) when the upload is over.
struct RemoveOnDrop(PathBuf, #[allow(dead_code)] fs::File);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hub kept in a local directory (see the module docs).
#[derive(Debug, Clone)]
pub struct LocalHub {
    root: PathBuf,
}

impl LocalHub {
    /// Opens (creating if needed) a local hub at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, HubError> {
        let root = root.as_ref().to_path_buf();
        for sub in ["repos", "tmp"] {
            fs::create_dir_all(root.join(sub)).map_err(HubError::io(format!(
                "cannot create local hub at {}",
                root.display()
            )))?;
        }
        Ok(Self { root })
    }

    /// The hub's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn repo_dir(&self, repo: &RepoId) -> PathBuf {
        self.root
            .join("repos")
            .join(repo.namespace())
            .join(repo.name())
    }

    fn visibility_file(&self, repo: &RepoId) -> PathBuf {
        self.repo_dir(repo).join("visibility")
    }

    /// The visibility of `repo`, or `None` if it has no commit yet. A repo
    /// without a visibility file (made before there was one) is public.
    pub fn visibility(&self, repo: &RepoId) -> Result<Option<Visibility>, HubError> {
        if self.head(repo)?.is_none() {
            return Ok(None);
        }
        self.stored_visibility(repo)
            .map(|v| Some(v.unwrap_or(Visibility::Public)))
    }

    fn stored_visibility(&self, repo: &RepoId) -> Result<Option<Visibility>, HubError> {
        let path = self.visibility_file(repo);
        match pretrain_core::bounded::read_regular_to_string(&path, 1024) {
            Ok(s) => {
                s.trim().parse().map(Some).map_err(|e| {
                    HubError::BadResponse(format!("corrupt visibility of {repo}: {e}"))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HubError::io(format!(
                "cannot read the visibility of {repo}"
            ))(e)),
        }
    }

    fn write_visibility(&self, repo: &RepoId, visibility: Visibility) -> Result<(), HubError> {
        let path = self.visibility_file(repo);
        pretrain_core::fsio::atomic_write(&path, visibility.to_string().as_bytes())
            .map_err(HubError::io(format!("cannot write {}", path.display())))
    }

    /// Readers other than the owner see a private repo as missing.
    fn check_readable(&self, repo: &RepoId) -> Result<(), HubError> {
        if self.stored_visibility(repo)? == Some(Visibility::Private) {
            return Err(HubError::NotFound(format!("repo {repo} is private")));
        }
        Ok(())
    }

    fn set_visibility_blocking(
        &self,
        repo: &RepoId,
        visibility: Visibility,
    ) -> Result<(), HubError> {
        if self.head(repo)?.is_none() {
            return Err(HubError::NotFound(format!("repo {repo}")));
        }
        self.write_visibility(repo, visibility)?;
        info!(%repo, %visibility, "repo visibility set");
        Ok(())
    }

    fn commit_dir(&self, repo: &RepoId, commit: &CommitId) -> PathBuf {
        self.repo_dir(repo).join("commits").join(commit.as_str())
    }

    /// The latest commit uploaded to `repo`, if any.
    pub fn head(&self, repo: &RepoId) -> Result<Option<CommitId>, HubError> {
        let head = self.repo_dir(repo).join("refs").join("main");
        match pretrain_core::bounded::read_regular_to_string(&head, 1024) {
            Ok(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| HubError::BadResponse(format!("corrupt head of {repo}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HubError::io(format!("cannot read head of {repo}"))(e)),
        }
    }

    fn read_manifest(&self, repo: &RepoId, commit: &CommitId) -> Result<Manifest, HubError> {
        let path = self.commit_dir(repo, commit).join("manifest.json");
        let text = match pretrain_core::bounded::read_regular_to_string(
            &path,
            pretrain_core::bounded::SMALL_FILE_LIMIT,
        ) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if self.repo_dir(repo).exists() {
                    HubError::NotFound(format!("commit {commit} of {repo}"))
                } else {
                    HubError::NotFound(format!("repo {repo}"))
                })
            }
            Err(e) => return Err(HubError::io(format!("cannot read {}", path.display()))(e)),
        };
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            HubError::BadResponse(format!("corrupt manifest {}: {e}", path.display()))
        })?;
        for f in &manifest.files {
            safe_relative_path(&f.path)?;
        }
        Ok(manifest)
    }

    /// Removes the staging folders of uploads whose process is gone (killed mid-upload);
    /// returns how many were removed.
    pub fn clean_stale_staging(&self) -> Result<usize, HubError> {
        let tmp = self.root.join("tmp");
        let entries = match fs::read_dir(&tmp) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(HubError::io(format!("cannot list {}", tmp.display()))(e)),
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("upload-") || name.ends_with(".lock") {
                continue;
            }
            let lock_path = tmp.join(format!("{name}.lock"));
            let stale = match fs::OpenOptions::new().write(true).open(&lock_path) {
                // Its owner holds the lock while it uploads; a dead owner's lock is free.
                Ok(f) => f.try_lock().is_ok(),
                // No lock file: a folder from before locks existed, or one being set up
                // this instant; only an old one is stale.
                Err(_) => e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_UNLOCKED_AGE),
            };
            if stale {
                debug!(dir = %e.path().display(), "removing a killed upload's staging folder");
                if fs::remove_dir_all(e.path()).is_ok() {
                    removed += 1;
                }
                let _ = fs::remove_file(&lock_path);
            }
        }
        // Lock files whose folder is gone (a crash between the two removals).
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(stem) = name.strip_suffix(".lock") {
                    if stem.starts_with("upload-") && !tmp.join(stem).exists() {
                        if let Ok(f) = fs::OpenOptions::new().write(true).open(e.path()) {
                            if f.try_lock().is_ok() {
                                let _ = fs::remove_file(e.path());
                            }
                        }
                    }
                }
            }
        }
        Ok(removed)
    }

    /// A fresh `tmp/upload-XXXX/` with its lock file `tmp/upload-XXXX.lock`
    /// created and locked *before* the folder, so a live upload's folder is
    /// never seen without its held lock.
    fn new_staging(&self) -> Result<(StagingDir, RemoveOnDrop), HubError> {
        let tmp = self.root.join("tmp");
        for _ in 0..16 {
            let lock_file = tempfile::Builder::new()
                .prefix("upload-")
                .suffix(".lock")
                .tempfile_in(&tmp)
                .map_err(HubError::io(
                    "cannot create a staging lock in the local hub",
                ))?;
            let (lock, lock_path) = lock_file
                .keep()
                .map_err(|e| HubError::io("cannot keep a staging lock")(e.error))?;
            let unlock = RemoveOnDrop(lock_path.clone(), lock);
            unlock
                .1
                .lock()
                .map_err(HubError::io(format!("cannot lock {}", lock_path.display())))?;
            let name = lock_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dir = tmp.join(name.trim_end_matches(".lock"));
            match fs::create_dir(&dir) {
                Ok(()) => return Ok((StagingDir(Some(dir)), unlock)),
                // A leftover folder of that name (from before locks existed): another name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(HubError::io(format!("cannot create {}", dir.display()))(e)),
            }
        }
        Err(HubError::io(
            "cannot create a staging directory in the local hub",
        )(std::io::Error::other(
            "16 names in a row were taken",
        )))
    }

    fn upload_blocking(
        &self,
        dir: &Path,
        repo: &RepoId,
        visibility: Visibility,
    ) -> Result<CommitId, HubError> {
        let files = list_local_files(dir)?;
        if let Err(e) = self.clean_stale_staging() {
            debug!(error = ?e, "cannot clean old staging folders");
        }
        // The lock comes first, then its folder: a process killed at any
        // instant leaves either an unlocked lock file or a folder whose lock
        // is free, both of which the next upload removes.
        let (staging, _unlock) = self.new_staging()?;
        let mut manifest = Manifest {
            repo_id: repo.to_string(),
            files: Vec::with_capacity(files.len()),
        };
        for (rel, src, _) in &files {
            let dst = staging.path().join("files").join(safe_relative_path(rel)?);
            let (size, sha256) = copy_hashing(src, &dst)?;
            manifest.files.push(ManifestFile {
                path: rel.clone(),
                size,
                sha256,
            });
        }
        if !manifest.files.iter().any(|f| f.path == GITATTRIBUTES) {
            let attributes = self.stage_gitattributes(repo, staging.path())?;
            manifest.files.push(attributes);
        }
        manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
        let sha: CommitId = manifest
            .commit_sha()
            .parse()
            .map_err(|e| HubError::BadResponse(format!("local hub commit id: {e}")))?;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| HubError::BadResponse(e.to_string()))?;
        write_synced(&staging.path().join("manifest.json"), &json)?;
        self.store_commit(repo, visibility, staging, &sha)?;
        self.set_head(repo, &sha)?;
        info!(%repo, commit = %sha, files = manifest.files.len(), "uploaded to the local hub");
        Ok(sha)
    }

    /// Stages the `.gitattributes` of a commit whose directory has none. As
    /// on the Hub, every commit holds one: the repo head's, else the one the
    /// Hub writes into a new repo.
    fn stage_gitattributes(&self, repo: &RepoId, staging: &Path) -> Result<ManifestFile, HubError> {
        let dst = staging.join("files").join(GITATTRIBUTES);
        let inherited = match self.head(repo)? {
            Some(head) => self
                .read_manifest(repo, &head)
                .ok()
                .filter(|m| m.files.iter().any(|f| f.path == GITATTRIBUTES))
                .map(|_| {
                    self.commit_dir(repo, &head)
                        .join("files")
                        .join(GITATTRIBUTES)
                }),
            None => None,
        };
        let (size, sha256) = match inherited {
            Some(src) => copy_hashing(&src, &dst)?,
            None => {
                let files = staging.join("files");
                fs::create_dir_all(&files)
                    .map_err(HubError::io(format!("cannot create {}", files.display())))?;
                let bytes = pretrained::HUB_GITATTRIBUTES.as_bytes();
                write_synced(&dst, bytes)?;
                (bytes.len() as u64, hex(&Sha256::digest(bytes)))
            }
        };
        Ok(ManifestFile {
            path: GITATTRIBUTES.to_string(),
            size,
            sha256,
        })
    }

    /// Moves the staged commit `sha` into the repo's commits (a commit
    /// already there is kept), a new repo getting its visibility first.
    fn store_commit(
        &self,
        repo: &RepoId,
        visibility: Visibility,
        staging: StagingDir,
        sha: &CommitId,
    ) -> Result<(), HubError> {
        let commits = self.repo_dir(repo).join("commits");
        fs::create_dir_all(&commits)
            .map_err(HubError::io(format!("cannot create {}", commits.display())))?;
        // A new repo gets its visibility before its first commit appears, so a
        // private one is never readable, even for an instant; an existing one
        // keeps its own.
        if self.head(repo)?.is_none() && self.stored_visibility(repo)?.is_none() {
            self.write_visibility(repo, visibility)?;
        }
        let target = commits.join(sha.as_str());
        let staged = staging.keep();
        if let Err(e) = fs::rename(&staged, &target) {
            // Someone (maybe another process) already made this very commit.
            let _ = fs::remove_dir_all(&staged);
            if !target.join("manifest.json").exists() {
                return Err(HubError::io(format!(
                    "cannot store commit {}",
                    target.display()
                ))(e));
            }
            debug!(%repo, %sha, "commit already present");
        }
        Ok(())
    }

    fn set_head(&self, repo: &RepoId, sha: &CommitId) -> Result<(), HubError> {
        let refs = self.repo_dir(repo).join("refs");
        fs::create_dir_all(&refs)
            .map_err(HubError::io(format!("cannot create {}", refs.display())))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(&refs).map_err(HubError::io("cannot write a ref"))?;
        tmp.write_all(sha.as_str().as_bytes())
            .map_err(HubError::io("cannot write a ref"))?;
        tmp.persist(refs.join("main"))
            .map_err(|e| HubError::io("cannot write a ref")(e.error))?;
        Ok(())
    }

    fn download_blocking(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        dest: &Path,
    ) -> Result<PathBuf, HubError> {
        let manifest = self.read_manifest(repo, commit)?;
        let repo_dir = dest.join(repo.folder_name());
        let target = repo_dir.join("snapshots").join(commit.as_str());
        if target.is_dir() {
            return Ok(target);
        }
        fs::create_dir_all(&repo_dir).map_err(HubError::io(format!(
            "cannot create {}",
            repo_dir.display()
        )))?;
        let staging = tempfile::Builder::new()
            .prefix(".partial-")
            .tempdir_in(&repo_dir)
            .map_err(HubError::io(format!(
                "cannot stage a download in {}",
                repo_dir.display()
            )))?;
        let files_dir = self.commit_dir(repo, commit).join("files");
        let wanted = wanted_files(&manifest, &files_dir)?;
        for f in manifest
            .files
            .iter()
            .filter(|f| wanted.iter().any(|w| w.path == f.path))
        {
            copy_checked(f, &files_dir, staging.path(), repo, commit)?;
        }
        let snapshots = repo_dir.join("snapshots");
        fs::create_dir_all(&snapshots).map_err(HubError::io(format!(
            "cannot create {}",
            snapshots.display()
        )))?;
        let staged = staging.keep();
        if let Err(e) = fs::rename(&staged, &target) {
            let _ = fs::remove_dir_all(&staged);
            if !target.is_dir() {
                return Err(HubError::io(format!(
                    "cannot move the download to {}",
                    target.display()
                ))(e));
            }
        }
        Ok(target)
    }
}

/// The files of a commit that `from_pretrained` fetches, as from the Hugging
/// Face hub (its safetensors index read from the commit where needed).
fn wanted_files(manifest: &Manifest, files_dir: &Path) -> Result<Vec<RepoFile>, HubError> {
    let listed: Vec<RepoFile> = manifest
        .files
        .iter()
        .map(|f| RepoFile {
            path: f.path.clone(),
            size: f.size,
        })
        .collect();
    let index = match pretrained::index_to_read(&listed) {
        Some(ix) => {
            let p = files_dir.join(safe_relative_path(&ix.path)?);
            Some(
                pretrain_core::bounded::read_regular(&p, pretrained::INDEX_LIMIT)
                    .map_err(HubError::io(format!("cannot read {}", p.display())))?,
            )
        }
        None => None,
    };
    pretrained::select(&listed, index.as_deref())
}

/// Copies one manifest file of `repo@commit` from the hub's `files_dir` into
/// `staging`, refusing what is no regular file or does not match the manifest.
fn copy_checked(
    f: &ManifestFile,
    files_dir: &Path,
    staging: &Path,
    repo: &RepoId,
    commit: &CommitId,
) -> Result<(), HubError> {
    let rel = safe_relative_path(&f.path)?;
    let src = files_dir.join(&rel);
    // The hub directory is not trusted more than a remote hub.
    let meta = fs::symlink_metadata(&src)
        .map_err(HubError::io(format!("cannot read {}", src.display())))?;
    if !meta.is_file() {
        return Err(HubError::UnsafePath {
            path: f.path.clone(),
            reason: "not a regular file in the local hub (symlink?)".into(),
        });
    }
    let (size, sha256) = copy_hashing(&src, &staging.join(&rel))?;
    if size != f.size || sha256 != f.sha256 {
        return Err(HubError::BadResponse(format!(
            "{} of {repo}@{commit} does not match its manifest",
            f.path
        )));
    }
    Ok(())
}

/// Copies `src` to `dst` (creating parents), returning size and sha256 hex
/// of what was written, and syncs it.
fn copy_hashing(src: &Path, dst: &Path) -> Result<(u64, String), HubError> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)
            .map_err(HubError::io(format!("cannot create {}", parent.display())))?;
    }
    let mut input =
        fs::File::open(src).map_err(HubError::io(format!("cannot open {}", src.display())))?;
    let mut output =
        fs::File::create(dst).map_err(HubError::io(format!("cannot create {}", dst.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .map_err(HubError::io(format!("cannot read {}", src.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output
            .write_all(&buf[..n])
            .map_err(HubError::io(format!("cannot write {}", dst.display())))?;
        size += n as u64;
    }
    output
        .sync_all()
        .map_err(HubError::io(format!("cannot write {}", dst.display())))?;
    Ok((size, hex(&hasher.finalize())))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let mut f = fs::File::create(path)
        .map_err(HubError::io(format!("cannot create {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(HubError::io(format!("cannot write {}", path.display())))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, HubError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(HubError::Task)?
}

#[async_trait]
impl ModelHub for LocalHub {
    async fn upload_as(
        &self,
        dir: &Path,
        repo: &RepoId,
        visibility: Visibility,
    ) -> Result<CommitId, HubError> {
        let (hub, dir, repo) = (self.clone(), dir.to_path_buf(), repo.clone());
        blocking(move || hub.upload_blocking(&dir, &repo, visibility)).await
    }

    async fn set_visibility(&self, repo: &RepoId, visibility: Visibility) -> Result<(), HubError> {
        let (hub, repo) = (self.clone(), repo.clone());
        blocking(move || hub.set_visibility_blocking(&repo, visibility)).await
    }

    async fn files_at(&self, repo: &RepoId, commit: &CommitId) -> Result<Vec<RepoFile>, HubError> {
        self.check_readable(repo)?;
        self.files_at_as_owner(repo, commit).await
    }

    async fn files_at_as_owner(
        &self,
        repo: &RepoId,
        commit: &CommitId,
    ) -> Result<Vec<RepoFile>, HubError> {
        let manifest = self.read_manifest(repo, commit)?;
        Ok(manifest
            .files
            .into_iter()
            .map(|f| RepoFile {
                path: f.path,
                size: f.size,
            })
            .collect())
    }

    async fn download(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        dest: &Path,
    ) -> Result<PathBuf, HubError> {
        let (hub, repo, commit, dest) = (
            self.clone(),
            repo.clone(),
            commit.clone(),
            dest.to_path_buf(),
        );
        blocking(move || {
            hub.check_readable(&repo)?;
            hub.download_blocking(&repo, &commit, &dest)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_sha_depends_on_content_only() {
        let m = |content: &str| Manifest {
            repo_id: "a/bcd".into(),
            files: vec![ManifestFile {
                path: "x".into(),
                size: 1,
                sha256: content.into(),
            }],
        };
        let a = m("00").commit_sha();
        assert_eq!(a.len(), 40);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(a, m("00").commit_sha());
        assert_ne!(a, m("01").commit_sha());
    }
}
