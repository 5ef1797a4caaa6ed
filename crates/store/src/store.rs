//! The validator's on-disk model store:
//! `<model_dir>/models/<hotkey>/models--<ns>--<name>/snapshots/<commit>/`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pretrain_core::escape::Escaped;
use pretrain_core::{HashError, HotkeyAddress, IdError, ModelId};
use thiserror::Error;
use tracing::{info, warn};

use crate::paths::safe_relative_path;
use crate::{HubError, ModelHub};

/// Errors of the model store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The hub failed (not found, unauthorised, too large, network, ...), or
    /// a name was unsafe.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The model id names no repo and commit that can be fetched (no
    /// commit, or a repo id that is not safe).
    #[error(transparent)]
    Id(#[from] IdError),
    /// The model id has no hash, so what is downloaded cannot be checked.
    #[error("model id {0} has no hash")]
    NoHash(String),
    /// The downloaded files do not hash to the committed hash; they were deleted.
    #[error("hash mismatch for {model}: committed {expected}, downloaded {actual} (deleted)")]
    HashMismatch {
        /// The model id.
        model: String,
        /// Hash on chain.
        expected: String,
        /// Hash of what was downloaded.
        actual: String,
    },
    /// The caller's check of the downloaded hash refused it (the later
    /// protocol's hotkey-bound hash check); the download was deleted.
    #[error("hash check failed for {model} (deleted)")]
    HashCheck {
        /// The model id.
        model: String,
        /// The hashes that did not match (boxed: it is large, and rare).
        #[source]
        source: Box<pretrain_core::rules::HashCheckError>,
    },
    /// A local file operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The downloaded directory could not be hashed.
    #[error("cannot hash {}", dir.display())]
    Hash {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: HashError,
    },
    /// The verification task panicked or was cancelled.
    #[error("the verification task did not finish")]
    Task(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// Whether the failure is the model's own (its id, its size, its
    /// hash): only such a failure may refuse a commitment for good. Local
    /// I/O (a full disk, a permission), the hub's answers and a cancelled
    /// task are the validator's side and are retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Hub(e) => e.is_permanent(),
            StoreError::Id(_)
            | StoreError::NoHash(_)
            | StoreError::HashMismatch { .. }
            | StoreError::HashCheck { .. } => true,
            StoreError::Io { .. } | StoreError::Hash { .. } | StoreError::Task(_) => false,
        }
    }

    fn hashing(dir: &Path) -> impl FnOnce(HashError) -> StoreError {
        let dir = dir.to_path_buf();
        move |source| StoreError::Hash { dir, source }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// A model in the store, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedModel {
    /// The snapshot directory.
    pub path: PathBuf,
    /// `hash_of_directory` of it (equal to the committed hash).
    pub hash: String,
    /// Total size of its files in bytes.
    pub size: u64,
}

/// What a cleanup pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Directories deleted.
    pub removed: Vec<PathBuf>,
}

/// The validator's model directory tree (see the module docs).
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

impl ModelStore {
    /// The store of a validator whose `--model_dir` is `model_dir` (root `model_dir/models`).
    pub fn new(model_dir: impl AsRef<Path>) -> Self {
        Self {
            root: model_dir.as_ref().join("models"),
        }
    }

    /// A store rooted exactly at `root`.
    pub fn at_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root (`<model_dir>/models`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<hotkey>`.
    pub fn hotkey_dir(&self, hotkey: &HotkeyAddress) -> PathBuf {
        self.root.join(hotkey.as_str())
    }

    /// Where `hotkey`'s model `id` lives (whether or not it is there); an
    /// id without a commit or with an unsafe repo id has no place.
    pub fn model_path(&self, hotkey: &HotkeyAddress, id: &ModelId) -> Result<PathBuf, StoreError> {
        let (repo, commit) = id.hub_location()?;
        Ok(self
            .hotkey_dir(hotkey)
            .join(repo.folder_name())
            .join("snapshots")
            .join(commit.as_str()))
    }

    /// Downloads (unless already there) and verifies `hotkey`'s model `id`:
    /// refuses before downloading anything if the hub lists more than
    /// `max_bytes`, replaces symlinks by the files they point to (refusing
    /// any that lead outside the hotkey's directory), and deletes the
    /// download if its hash is not the committed one.
    pub async fn fetch(
        &self,
        hub: &dyn ModelHub,
        hotkey: &HotkeyAddress,
        id: &ModelId,
        max_bytes: u64,
    ) -> Result<FetchedModel, StoreError> {
        id.hub_location()?;
        let expected = id
            .hash
            .clone()
            .map(String::from)
            .ok_or_else(|| StoreError::NoHash(id.to_compressed_str()))?;
        let model = id.to_compressed_str();
        self.fetch_verified(hub, hotkey, id, max_bytes, move |actual: &str| {
            if actual == expected {
                Ok(())
            } else {
                Err(StoreError::HashMismatch {
                    model,
                    expected,
                    actual: actual.to_string(),
                })
            }
        })
        .await
    }

    /// [`ModelStore::fetch`] with the caller deciding which hash of the
    /// download is accepted: `verify` gets `hash_of_directory` of the files
    /// and returns the error to fail with (the download is then deleted).
    /// Only the repo and commit of `id` are used to find the files.
    pub async fn fetch_verified<F>(
        &self,
        hub: &dyn ModelHub,
        hotkey: &HotkeyAddress,
        id: &ModelId,
        max_bytes: u64,
        verify: F,
    ) -> Result<FetchedModel, StoreError>
    where
        F: FnOnce(&str) -> Result<(), StoreError> + Send,
    {
        let (repo, commit) = id.hub_location()?;
        let hotkey_dir = self.hotkey_dir(hotkey);
        let path = hotkey_dir
            .join(repo.folder_name())
            .join("snapshots")
            .join(commit.as_str());

        let files = hub.files_at(&repo, &commit).await?;
        for f in &files {
            safe_relative_path(&f.path)?;
        }
        let listed: u64 = files.iter().map(|f| f.size).sum();
        if listed > max_bytes {
            return Err(HubError::TooLarge {
                repo_id: repo.to_string(),
                commit: commit.to_string(),
                size: listed,
                limit: max_bytes,
            }
            .into());
        }

        fs::create_dir_all(&self.root)
            .map_err(io(format!("cannot create {}", self.root.display())))?;
        ensure_real_dir(&hotkey_dir)?;
        let got = hub.download(&repo, &commit, &hotkey_dir).await?;
        if got != path {
            return Err(HubError::BadResponse(format!(
                "the hub put {repo}@{commit} at {}, expected {}",
                got.display(),
                path.display()
            ))
            .into());
        }

        let (p, hk) = (path.clone(), hotkey_dir.clone());
        let checked = tokio::task::spawn_blocking(move || -> Result<(String, u64), StoreError> {
            let size = resolve_symlinks(&p, &hk)?;
            let hash = pretrain_core::hash_of_directory(&p).map_err(StoreError::hashing(&p))?;
            Ok((hash, size))
        })
        .await
        .map_err(StoreError::Task)?;
        let (hash, size) = match checked {
            Ok(v) => v,
            Err(e) => {
                remove_dir(&path);
                return Err(e);
            }
        };
        if size > max_bytes {
            remove_dir(&path);
            return Err(HubError::TooLarge {
                repo_id: repo.to_string(),
                commit: commit.to_string(),
                size,
                limit: max_bytes,
            }
            .into());
        }
        if let Err(e) = verify(&hash) {
            warn!(%hotkey, model = %Escaped(id), %hash, "hash refused, deleting the download");
            remove_dir(&path);
            return Err(e);
        }
        info!(%hotkey, model = %Escaped(id), size, "model fetched and verified");
        Ok(FetchedModel { path, hash, size })
    }

    /// Deletes `hotkey`'s snapshot of `id` (e.g. a model that failed the
    /// validator's checks); returns whether there was one.
    pub fn remove_model(&self, hotkey: &HotkeyAddress, id: &ModelId) -> Result<bool, StoreError> {
        let path = self.model_path(hotkey, id)?;
        if !is_real_dir(&path) {
            return Ok(false);
        }
        fs::remove_dir_all(&path).map_err(io(format!("cannot remove {}", path.display())))?;
        Ok(true)
    }

    /// The clean loop: deletes every directory under the root that the
    /// tracked models (`hotkey -> model id`) do not reference and in which
    /// nothing changed for `grace`: hotkeys no longer tracked, other repos
    /// and other commits of tracked hotkeys, and abandoned partial
    /// downloads. Symlinks are never followed; names that are not hotkeys
    /// are left alone.
    pub fn delete_unreferenced(
        &self,
        tracked: &HashMap<HotkeyAddress, ModelId>,
        grace: Duration,
    ) -> Result<CleanupReport, StoreError> {
        let mut report = CleanupReport::default();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(io(format!("cannot list {}", self.root.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(format!("cannot list {}", self.root.display())))?;
            let Some(hotkey) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<HotkeyAddress>().ok())
            else {
                continue;
            };
            let path = entry.path();
            if !is_real_dir(&path) {
                continue;
            }
            match tracked.get(&hotkey) {
                None => remove_if_stale(&path, grace, &mut report),
                Some(id) => self.clean_hotkey(&path, id, grace, &mut report)?,
            }
        }
        Ok(report)
    }

    fn clean_hotkey(
        &self,
        hotkey_dir: &Path,
        id: &ModelId,
        grace: Duration,
        report: &mut CleanupReport,
    ) -> Result<(), StoreError> {
        let location = id.hub_location().ok();
        let keep_repo = location.as_ref().map(|(r, _)| r.folder_name());
        let keep_commit = location
            .as_ref()
            .map(|(_, c)| c.to_string())
            .unwrap_or_default();
        for entry in
            fs::read_dir(hotkey_dir).map_err(io(format!("cannot list {}", hotkey_dir.display())))?
        {
            let entry = entry.map_err(io(format!("cannot list {}", hotkey_dir.display())))?;
            let path = entry.path();
            if !is_real_dir(&path) {
                continue;
            }
            if Some(entry.file_name().to_string_lossy().as_ref()) != keep_repo.as_deref() {
                remove_if_stale(&path, grace, report);
                continue;
            }
            for inner in
                fs::read_dir(&path).map_err(io(format!("cannot list {}", path.display())))?
            {
                let inner = inner.map_err(io(format!("cannot list {}", path.display())))?;
                let name = inner.file_name().to_string_lossy().into_owned();
                let inner_path = inner.path();
                if !is_real_dir(&inner_path) {
                    continue;
                }
                if name == "snapshots" {
                    for snap in fs::read_dir(&inner_path)
                        .map_err(io(format!("cannot list {}", inner_path.display())))?
                    {
                        let snap =
                            snap.map_err(io(format!("cannot list {}", inner_path.display())))?;
                        if snap.file_name().to_string_lossy() != keep_commit.as_str()
                            && is_real_dir(&snap.path())
                        {
                            remove_if_stale(&snap.path(), grace, report);
                        }
                    }
                } else if name.starts_with(".partial-") {
                    // Downloads (of the tracked commit too) that were abandoned.
                    remove_if_stale(&inner_path, grace, report);
                }
            }
        }
        Ok(())
    }
}

/// Creates `dir` if needed and refuses it if it is a symlink (which could
/// send the download elsewhere).
fn ensure_real_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => Err(HubError::UnsafePath {
            path: dir.display().to_string(),
            reason: "is a symlink or not a directory".into(),
        }
        .into()),
        Ok(_) => Ok(()),
        Err(_) => fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display()))),
    }
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

/// Replaces each symlink under `dir` by a copy of the file it points to,
/// which must lie inside `allowed`; returns the total size of the files.
fn resolve_symlinks(dir: &Path, allowed: &Path) -> Result<u64, StoreError> {
    let allowed =
        fs::canonicalize(allowed).map_err(io(format!("cannot resolve {}", allowed.display())))?;
    let mut size = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io(format!("cannot list {}", d.display())))? {
            let entry = entry.map_err(io(format!("cannot list {}", d.display())))?;
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(io(format!("cannot stat {}", path.display())))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_symlink() {
                let unsafe_link = |reason: String| -> StoreError {
                    HubError::UnsafePath {
                        path: path.display().to_string(),
                        reason,
                    }
                    .into()
                };
                let target = fs::canonicalize(&path)
                    .map_err(|e| unsafe_link(format!("broken symlink: {e}")))?;
                if !target.starts_with(&allowed) {
                    return Err(unsafe_link(format!(
                        "symlink points outside the store, to {}",
                        target.display()
                    )));
                }
                if !target.is_file() {
                    return Err(unsafe_link(
                        "symlink to something that is not a file".into(),
                    ));
                }
                let tmp = path.with_file_name(format!(
                    ".resolving-{}",
                    entry.file_name().to_string_lossy()
                ));
                fs::copy(&target, &tmp).map_err(io(format!("cannot copy {}", target.display())))?;
                fs::rename(&tmp, &path)
                    .map_err(io(format!("cannot replace {}", path.display())))?;
                size += fs::metadata(&path)
                    .map_err(io(format!("cannot stat {}", path.display())))?
                    .len();
            } else {
                size += entry
                    .metadata()
                    .map_err(io(format!("cannot stat {}", path.display())))?
                    .len();
            }
        }
    }
    Ok(size)
}

/// The latest modification time of `path` or anything under it (not following symlinks).
fn last_modified(path: &Path) -> Option<SystemTime> {
    let meta = fs::symlink_metadata(path).ok()?;
    let mut latest = meta.modified().ok()?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).ok()?.flatten() {
            if let Some(t) = last_modified(&entry.path()) {
                latest = latest.max(t);
            }
        }
    }
    Some(latest)
}

fn remove_if_stale(path: &Path, grace: Duration, report: &mut CleanupReport) {
    let stale = last_modified(path)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= grace);
    if stale {
        // remove_dir_all does not follow symlinks, so nothing outside is touched.
        match fs::remove_dir_all(path) {
            Ok(()) => {
                info!(path = %path.display(), "removed unreferenced model directory");
                report.removed.push(path.to_path_buf());
            }
            Err(e) => warn!(path = %path.display(), "cannot remove: {e}"),
        }
    }
}

fn remove_dir(path: &Path) {
    if let Err(e) = fs::remove_dir_all(path) {
        warn!(path = %path.display(), "cannot remove: {e}");
    }
}
