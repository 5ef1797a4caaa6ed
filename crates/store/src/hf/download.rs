//! Downloads into the `huggingface_hub` snapshot layout: only listed,
//! checked paths, never more bytes than listed, resumed with `Range`.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use pretrain_core::{CommitId, RepoId};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::http::{check_status, encode_path, network, with_retry_hint};
use super::HfHub;
use crate::paths::safe_relative_path;
use crate::{pretrained, HubError, ModelHub, RepoFile};

/// The time one model's fetch may take, all its files and retries
/// together (a 1 GiB model at 10 MB/s is under two minutes): past it the
/// model defers and the partial download resumes at the next pass.
pub const MODEL_FETCH_BUDGET: std::time::Duration = std::time::Duration::from_secs(600);

impl HfHub {
    /// Downloads `repo` at `commit` into
    /// `dest/models--<ns>--<name>/snapshots/<commit>/`, resuming what an
    /// earlier call left in `.partial-<commit>/`.
    pub(super) async fn download_snapshot(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        dest: &Path,
    ) -> Result<PathBuf, HubError> {
        // One slow or hostile repo must not hold the fetch pass: past its
        // budget, the model defers (its partial files resume next time).
        tokio::time::timeout(MODEL_FETCH_BUDGET, self.download_snapshot_now(repo, commit, dest))
            .await
            .map_err(|_| {
                HubError::Network(format!(
                    "{repo}@{commit}: not fetched within its budget of {MODEL_FETCH_BUDGET:?} (resumed later)"
                ))
            })?
    }

    async fn download_snapshot_now(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        dest: &Path,
    ) -> Result<PathBuf, HubError> {
        let repo_dir = dest.join(repo.folder_name());
        let target = repo_dir.join("snapshots").join(commit.as_str());
        if tokio::fs::metadata(&target)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return Ok(target);
        }
        let listed = self.files_at(repo, commit).await?;
        for f in &listed {
            safe_relative_path(&f.path)?;
        }
        // Kept across calls so that an interrupted download resumes.
        let staging = repo_dir.join(format!(".partial-{commit}"));
        let done_dir = staging.join("files");
        let parts_dir = staging.join("parts");
        // Only what `from_pretrained` fetches; a sharded model's index first,
        // since it names the shards.
        let index = self
            .fetch_index(repo, commit, &listed, &done_dir, &parts_dir)
            .await?;
        let files = pretrained::select(&listed, index.as_deref())?;
        let total: u64 = files.iter().map(|f| f.size).sum();
        let bar = self.progress_bar(total, repo, commit);
        tokio::fs::create_dir_all(&done_dir)
            .await
            .map_err(HubError::io(format!(
                "cannot create {}",
                done_dir.display()
            )))?;
        for file in &files {
            let done = done_dir.join(safe_relative_path(&file.path)?);
            self.fetch_listed(repo, commit, file, &parts_dir, &done, &bar)
                .await?;
        }
        bar.finish_and_clear();
        move_into_place(&done_dir, &repo_dir.join("snapshots"), &target).await?;
        let _ = tokio::fs::remove_dir_all(&staging).await;
        info!(%repo, %commit, bytes = total, "downloaded");
        Ok(target)
    }

    /// The safetensors index of a sharded model (it names the shards),
    /// fetched first and read back; `None` where the choice needs none.
    async fn fetch_index(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        listed: &[RepoFile],
        done_dir: &Path,
        parts_dir: &Path,
    ) -> Result<Option<Vec<u8>>, HubError> {
        match pretrained::index_to_read(listed) {
            Some(ix) if ix.size > pretrained::INDEX_LIMIT => Err(HubError::BadResponse(format!(
                "{repo}@{commit}: {} is {} bytes, more than {}",
                ix.path,
                ix.size,
                pretrained::INDEX_LIMIT
            ))),
            Some(ix) => {
                let done = done_dir.join(safe_relative_path(&ix.path)?);
                self.fetch_listed(repo, commit, ix, parts_dir, &done, &ProgressBar::hidden())
                    .await?;
                let bytes = tokio::fs::read(&done)
                    .await
                    .map_err(HubError::io(format!("cannot read {}", done.display())))?;
                Ok(Some(bytes))
            }
            None => Ok(None),
        }
    }

    /// The download's progress bar over `total` bytes; hidden unless asked for.
    fn progress_bar(&self, total: u64, repo: &RepoId, commit: &CommitId) -> ProgressBar {
        if !self.options.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("{repo}@{}", &commit.as_str()[..8]));
        bar
    }

    /// Puts one listed file at `done` unless a complete copy is already
    /// there, resuming a partial one from `parts_dir`.
    async fn fetch_listed(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        file: &RepoFile,
        parts_dir: &Path,
        done: &Path,
        bar: &ProgressBar,
    ) -> Result<(), HubError> {
        if let Ok(m) = tokio::fs::symlink_metadata(done).await {
            if m.is_file() && m.len() == file.size {
                bar.inc(file.size);
                return Ok(());
            }
            if !m.is_file() {
                return Err(HubError::UnsafePath {
                    path: file.path.clone(),
                    reason: "something that is not a file is in the way of the download".into(),
                });
            }
            let _ = tokio::fs::remove_file(done).await;
        }
        let part = parts_dir.join(hex_id(&file.path));
        if let Ok(m) = tokio::fs::metadata(&part).await {
            bar.inc(m.len().min(file.size));
        }
        self.download_file(repo, commit, file, &part, done, bar)
            .await
    }

    /// Downloads one listed file into `done` (complete files), resuming
    /// from `part` (bytes already fetched) with `Range`.
    async fn download_file(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        file: &RepoFile,
        part: &Path,
        done: &Path,
        bar: &ProgressBar,
    ) -> Result<(), HubError> {
        let api_repo = self.api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            commit.to_string(),
        ));
        let url = api_repo.url(&encode_path(&file.path));
        let what = format!("downloading {} of {repo}@{commit}", file.path);
        if let Some(parent) = part.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(HubError::io(format!("cannot create {}", parent.display())))?;
        }
        let schedule = self.backoff();
        let mut tries = 0u32;
        loop {
            let (result, hint) =
                with_retry_hint(self.fetch_range(&url, commit, file, part, bar, &what)).await;
            match result {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    tries += 1;
                    let Some(delay) = self.retry_delay(&schedule, tries, hint) else {
                        return Err(e);
                    };
                    warn!(
                        "{what}: {e}; resuming, retry {tries}/{} in {delay:?}",
                        self.options.retries
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(parent) = done.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(HubError::io(format!("cannot create {}", parent.display())))?;
        }
        tokio::fs::rename(part, done)
            .await
            .map_err(HubError::io(format!(
                "cannot move {} into place",
                file.path
            )))
    }

    /// One attempt: asks for the bytes not yet in `part` and appends them.
    async fn fetch_range(
        &self,
        url: &str,
        commit: &CommitId,
        file: &RepoFile,
        part: &Path,
        bar: &ProgressBar,
        what: &str,
    ) -> Result<(), HubError> {
        let have = bytes_kept(part, file).await;
        if have == file.size && file.size > 0 {
            return Ok(());
        }
        let resp = self.request_from(url, have, part, what).await?;
        check_served_commit(&resp, commit, what)?;
        let resumed = resp.status() == StatusCode::PARTIAL_CONTENT;
        let have = if resumed {
            check_resumed_at(&resp, have, part, what).await?;
            have
        } else {
            // The server sent the whole file.
            bar.set_position(bar.position().saturating_sub(have));
            0
        };
        let out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(part)
            .await
            .map_err(HubError::io(format!("cannot write {}", part.display())))?;
        self.append_body(resp, out, have, file, part, bar, what)
            .await
    }

    /// Asks for the file from byte `have` on (all of it when 0); a range
    /// the server refuses drops `part`, so that the retry starts over.
    async fn request_from(
        &self,
        url: &str,
        have: u64,
        part: &Path,
        what: &str,
    ) -> Result<reqwest::Response, HubError> {
        let mut req = self.api.client().get(url);
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
        }
        let resp = tokio::time::timeout(self.options.timeout, req.send())
            .await
            .map_err(|_| {
                HubError::Network(format!("{what}: no answer in {:?}", self.options.timeout))
            })?
            .map_err(|e| network(what, e))?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
            // Our part file does not fit the server's file: start over.
            let _ = tokio::fs::remove_file(part).await;
            return Err(HubError::Network(format!(
                "{what}: range refused, restarting"
            )));
        }
        check_status(resp, what).await
    }

    /// Streams the body into `out` (which holds `have` bytes), never past
    /// the listed size: more drops `part`, less is a broken transfer.
    #[allow(clippy::too_many_arguments)]
    async fn append_body(
        &self,
        mut resp: reqwest::Response,
        mut out: tokio::fs::File,
        have: u64,
        file: &RepoFile,
        part: &Path,
        bar: &ProgressBar,
        what: &str,
    ) -> Result<(), HubError> {
        let mut written = have;
        loop {
            let chunk = tokio::time::timeout(self.options.timeout, resp.chunk())
                .await
                .map_err(|_| HubError::Network(format!("{what}: transfer stalled")));
            let chunk = match chunk {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    out.sync_all().await.ok();
                    return Err(HubError::Network(format!(
                        "{what}: transfer broke off at {written} of {} bytes: {e}",
                        file.size
                    )));
                }
                Err(e) => {
                    out.sync_all().await.ok();
                    return Err(e);
                }
            };
            written += chunk.len() as u64;
            if written > file.size {
                drop(out);
                let _ = tokio::fs::remove_file(part).await;
                return Err(HubError::BadResponse(format!(
                    "{what}: the hub sent more than the {} bytes it listed",
                    file.size
                )));
            }
            out.write_all(&chunk)
                .await
                .map_err(HubError::io(format!("cannot write {}", part.display())))?;
            bar.inc(chunk.len() as u64);
        }
        out.sync_all()
            .await
            .map_err(HubError::io(format!("cannot write {}", part.display())))?;
        if written < file.size {
            return Err(HubError::Network(format!(
                "{what}: transfer broke off at {written} of {} bytes",
                file.size
            )));
        }
        Ok(())
    }
}

/// Moves the finished `done_dir` to `target` in `snapshots`; a snapshot
/// already there (another fetch finished first) is kept.
async fn move_into_place(done_dir: &Path, snapshots: &Path, target: &Path) -> Result<(), HubError> {
    tokio::fs::create_dir_all(snapshots)
        .await
        .map_err(HubError::io(format!(
            "cannot create {}",
            snapshots.display()
        )))?;
    if let Err(e) = tokio::fs::rename(done_dir, target).await {
        if !target.is_dir() {
            return Err(HubError::io(format!(
                "cannot move the download to {}",
                target.display()
            ))(e));
        }
    }
    Ok(())
}

/// The bytes of `file` already in `part`; 0 when there is none, or more
/// than the file holds (then it is fetched whole again).
async fn bytes_kept(part: &Path, file: &RepoFile) -> u64 {
    let have = match tokio::fs::metadata(part).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    if have > file.size {
        0
    } else {
        have
    }
}

/// Refuses an answer for another commit than the one asked for.
fn check_served_commit(
    resp: &reqwest::Response,
    commit: &CommitId,
    what: &str,
) -> Result<(), HubError> {
    if let Some(c) = resp
        .headers()
        .get("x-repo-commit")
        .and_then(|v| v.to_str().ok())
    {
        if c != commit.as_str() {
            return Err(HubError::BadResponse(format!(
                "{what}: the hub served commit {c}"
            )));
        }
    }
    Ok(())
}

/// Checks that a partial answer starts at byte `have`; one that does not
/// drops `part` (the retry starts over).
async fn check_resumed_at(
    resp: &reqwest::Response,
    have: u64,
    part: &Path,
    what: &str,
) -> Result<(), HubError> {
    let start = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok());
    if start != Some(have) {
        let _ = tokio::fs::remove_file(part).await;
        return Err(HubError::BadResponse(format!(
            "{what}: asked for bytes from {have}, got {start:?}"
        )));
    }
    Ok(())
}

/// A flat, safe file name for a repo path's partial download.
fn hex_id(path: &str) -> String {
    Sha256::digest(path.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}
