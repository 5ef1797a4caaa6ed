//! `hf`: the Hugging Face Hub (or any server speaking its API, such as a mirror).
//!
//! `hf-hub` provides the authenticated client, the repo URLs and the
//! repo-info API (file sizes at a commit, `?blobs=true`). What it lacks is
//! done here with `reqwest`: repo creation, uploads (pre-upload, Git LFS
//! batch, basic and multipart transfers, the NDJSON commit API), and
//! downloads. Its own downloader is not used because it names cache files
//! after the server's `ETag` without checking it (a path-escape hole for
//! an untrusted server) and restarts a broken chunk from its start; ours
//! writes only listed, checked paths, never more bytes than listed, and
//! resumes with `Range` from the last byte on disk, also across calls.
//!
//! Here: options, the token, the client and the repo listing; `upload`
//! (repo creation public or private, visibility changes, LFS, commit), `download` (snapshots, resumable files),
//! `http` (URL paths, status mapping) and `retry` (the shared schedule).

pub mod auth;
mod download;
mod http;
mod retry;
mod upload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use hf_hub::api::tokio::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use pretrain_core::{CommitId, RepoId};
use serde::Deserialize;

use crate::paths::safe_relative_path;
use crate::{HubError, ModelHub, RepoFile, Visibility};
use http::send_json;

/// The public Hugging Face Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Settings of an [`HfHub`].
#[derive(Debug, Clone)]
pub struct HfOptions {
    /// Base URL of the hub, without a trailing `/`.
    pub endpoint: String,
    /// Access token (needed to upload; optional to read public repos).
    pub token: Option<String>,
    /// Draw a download progress bar on stderr.
    pub progress: bool,
    /// Retries of a request that failed for a transient reason (429, 5xx,
    /// a broken transfer) before giving up.
    pub retries: u32,
    /// First wait between retries; doubled each time, at most 30 s.
    pub retry_delay: Duration,
    /// Limit for one request, or for a pause in a transfer.
    pub timeout: Duration,
}

impl Default for HfOptions {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            progress: false,
            retries: 5,
            retry_delay: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
        }
    }
}

/// The access token: `HF_ACCESS_TOKEN` from the environment, else from a
/// `.env` file in the working directory (as the original miner read it).
pub fn hf_token() -> Option<String> {
    if let Ok(t) = std::env::var("HF_ACCESS_TOKEN") {
        if !t.trim().is_empty() {
            return Some(t.trim().to_string());
        }
    }
    token_from_dotenv(Path::new(".env"))
}

fn token_from_dotenv(path: &Path) -> Option<String> {
    // A regular file of bounded size only: a `.env` FIFO must not hang every hub command.
    let bytes = pretrain_core::bounded::read_regular(path, 1 << 20).ok()?;
    let iter = dotenvy::from_read_iter(bytes.as_slice());
    iter.filter_map(Result::ok)
        .find(|(k, _)| k == "HF_ACCESS_TOKEN")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The Hugging Face backend of [`ModelHub`].
#[derive(Debug, Clone)]
pub struct HfHub {
    options: HfOptions,
    api: Api,
    client: reqwest::Client,
}

/// `?blobs=true` repo info: the files with their sizes.
#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    size: Option<u64>,
}

impl HfHub {
    /// A client for the hub at `options.endpoint`.
    pub fn new(mut options: HfOptions) -> Result<Self, HubError> {
        options.endpoint = options.endpoint.trim_end_matches('/').to_string();
        if !(options.endpoint.starts_with("http://") || options.endpoint.starts_with("https://")) {
            return Err(HubError::BadSpec(format!(
                "hub endpoint {:?} (must start with http:// or https://)",
                options.endpoint
            )));
        }
        // The cache is never written: downloads do not go through hf-hub's cache.
        let cache = Cache::new(std::env::temp_dir().join("pretrain-hf-hub-unused"));
        let api = ApiBuilder::from_cache(cache)
            .with_endpoint(options.endpoint.clone())
            .with_token(options.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| HubError::BadSpec(format!("cannot build the hub client: {e}")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(options.timeout)
            .user_agent(concat!("pretrain-store/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HubError::BadSpec(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            options,
            api,
            client,
        })
    }

    /// The endpoint in use.
    pub fn endpoint(&self) -> &str {
        &self.options.endpoint
    }

    pub(super) fn require_token(&self) -> Result<&str, HubError> {
        self.options.token.as_deref().ok_or_else(|| {
            HubError::Unauthorized(
                "no Hugging Face token: set HF_ACCESS_TOKEN in the environment or in .env".into(),
            )
        })
    }

    async fn repo_info(&self, repo: &RepoId, revision: &str) -> Result<RepoInfo, HubError> {
        let api_repo = self.api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ));
        let what = format!("listing files of {repo}@{revision}");
        self.retrying(&what, || {
            send_json(api_repo.info_request().query(&[("blobs", "true")]), &what)
        })
        .await
    }

    pub(super) async fn list(
        &self,
        repo: &RepoId,
        revision: &str,
    ) -> Result<(Option<String>, Vec<RepoFile>), HubError> {
        let info = self.repo_info(repo, revision).await?;
        let mut files = Vec::with_capacity(info.siblings.len());
        for s in info.siblings {
            safe_relative_path(&s.rfilename)?;
            let size = s.size.or(s.lfs.and_then(|l| l.size)).ok_or_else(|| {
                HubError::BadResponse(format!(
                    "{repo}@{revision}: no size given for {}",
                    s.rfilename
                ))
            })?;
            files.push(RepoFile {
                path: s.rfilename,
                size,
            });
        }
        files.sort();
        Ok((info.sha, files))
    }
}

#[async_trait]
impl ModelHub for HfHub {
    async fn upload_as(
        &self,
        dir: &Path,
        repo: &RepoId,
        visibility: Visibility,
    ) -> Result<CommitId, HubError> {
        self.upload_dir(dir, repo, visibility).await
    }

    async fn set_visibility(&self, repo: &RepoId, visibility: Visibility) -> Result<(), HubError> {
        self.put_visibility(repo, visibility).await
    }

    async fn files_at(&self, repo: &RepoId, commit: &CommitId) -> Result<Vec<RepoFile>, HubError> {
        let (sha, files) = self.list(repo, commit.as_str()).await?;
        if let Some(sha) = sha {
            if sha != commit.as_str() {
                return Err(HubError::BadResponse(format!(
                    "asked for {repo}@{commit}, the hub answered for {sha}"
                )));
            }
        }
        Ok(files)
    }

    async fn download(
        &self,
        repo: &RepoId,
        commit: &CommitId,
        dest: &Path,
    ) -> Result<PathBuf, HubError> {
        self.download_snapshot(repo, commit, dest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_dotenv_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(".env");
        std::fs::write(&p, "# comment\nOTHER=1\nHF_ACCESS_TOKEN=\"hf_abc123\"\n").unwrap();
        assert_eq!(token_from_dotenv(&p).as_deref(), Some("hf_abc123"));
        std::fs::write(&p, "OTHER=1\n").unwrap();
        assert_eq!(token_from_dotenv(&p), None);
        assert_eq!(token_from_dotenv(&tmp.path().join("missing")), None);
        // A `.env` FIFO or device is no token, not a hang.
        std::fs::remove_file(&p).unwrap();
        assert!(std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap()
            .success());
        assert_eq!(token_from_dotenv(&p), None);
        let z = tmp.path().join("zero.env");
        std::os::unix::fs::symlink("/dev/zero", &z).unwrap();
        assert_eq!(token_from_dotenv(&z), None);
    }

    #[test]
    fn bad_endpoint_is_refused() {
        let err = HfHub::new(HfOptions {
            endpoint: "ftp://x".into(),
            ..HfOptions::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("must start with http"), "{err}");
    }
}
