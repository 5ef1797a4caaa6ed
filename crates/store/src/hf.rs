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

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hf_hub::api::tokio::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use pretrain_core::Backoff;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::paths::{check_commit, safe_relative_path, RepoId};
use crate::{list_local_files, HubError, ModelHub, RepoFile};

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

/// A local file prepared for upload.
struct LocalFile {
    path: String,
    abs: PathBuf,
    size: u64,
    sha256: String,
    sample: Vec<u8>,
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

    fn require_token(&self) -> Result<&str, HubError> {
        self.options.token.as_deref().ok_or_else(|| {
            HubError::Unauthorized(
                "no Hugging Face token: set HF_ACCESS_TOKEN in the environment or in .env".into(),
            )
        })
    }

    /// Runs `attempt` until it succeeds, fails for a reason retrying cannot
    /// fix, or the retries are spent (429, 5xx and network failures retry).
    async fn retrying<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, HubError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, HubError>>,
    {
        self.retrying_within(what, self.options.timeout, attempt)
            .await
    }

    /// [`Self::retrying`] with its own limit per attempt (a large upload
    /// takes longer than an API call; stalls are caught by the client's
    /// read timeout).
    async fn retrying_within<T, F, Fut>(
        &self,
        what: &str,
        limit: Duration,
        mut attempt: F,
    ) -> Result<T, HubError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, HubError>>,
    {
        let schedule = self.backoff();
        let mut tries = 0u32;
        loop {
            let err = match tokio::time::timeout(limit, attempt()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => HubError::Network(format!("{what}: no answer in {limit:?}")),
            };
            tries += 1;
            let Some(delay) = schedule.delay(tries) else {
                return Err(err);
            };
            warn!(
                "{what}: {err}; retry {tries}/{} in {delay:?}",
                self.options.retries
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// The retry schedule of every hub call: `retry_delay`, doubled each
    /// time up to 30 s, `retries` times.
    fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.options.retry_delay,
            max: Duration::from_secs(30),
            factor: 2.0,
            max_attempts: Some(self.options.retries.saturating_add(1)),
        }
    }

    /// Time allowed for sending `bytes`: the request timeout plus 256 KiB/s.
    fn transfer_limit(&self, bytes: u64) -> Duration {
        self.options.timeout + Duration::from_secs(bytes / (256 * 1024))
    }

    async fn repo_info(&self, repo: &RepoId, revision: &str) -> Result<RepoInfo, HubError> {
        let api_repo = self.api.repo(Repo::with_revision(
            repo.as_string(),
            RepoType::Model,
            revision.to_string(),
        ));
        let what = format!("listing files of {repo}@{revision}");
        self.retrying(&what, || {
            send_json(api_repo.info_request().query(&[("blobs", "true")]), &what)
        })
        .await
    }

    async fn list(
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

    async fn create_repo(&self, repo: &RepoId) -> Result<(), HubError> {
        let token = self.require_token()?;
        let url = format!("{}/api/repos/create", self.options.endpoint);
        let what = format!("creating repo {repo}");
        self.retrying(&what, || async {
            let resp = self
                .client
                .post(&url)
                .bearer_auth(token)
                .json(&json!({"name": repo.name, "organization": repo.namespace, "private": false}))
                .send()
                .await
                .map_err(|e| network(&what, e))?;
            if resp.status() == StatusCode::CONFLICT {
                debug!(%repo, "repo already exists");
                return Ok(());
            }
            check_status(resp, &what).await.map(|_| ())
        })
        .await
    }

    async fn preupload(&self, repo: &RepoId, files: &[LocalFile]) -> Result<Vec<bool>, HubError> {
        let token = self.require_token()?;
        let url = format!(
            "{}/api/models/{}/preupload/main",
            self.options.endpoint, repo
        );
        let what = format!("asking {repo} how to upload");
        let body = json!({"files": files.iter().map(|f| json!({
            "path": f.path, "sample": B64.encode(&f.sample), "size": f.size,
        })).collect::<Vec<_>>()});
        let answer: Value = self
            .retrying(&what, || {
                send_json(self.client.post(&url).bearer_auth(token).json(&body), &what)
            })
            .await?;
        let modes = answer["files"]
            .as_array()
            .ok_or_else(|| HubError::BadResponse(format!("{what}: no \"files\" in the answer")))?;
        files
            .iter()
            .map(|f| {
                let mode = modes
                    .iter()
                    .find(|m| m["path"].as_str() == Some(&f.path))
                    .and_then(|m| m["uploadMode"].as_str())
                    .ok_or_else(|| {
                        HubError::BadResponse(format!("{what}: no upload mode for {}", f.path))
                    })?;
                match mode {
                    "lfs" => Ok(true),
                    "regular" => Ok(false),
                    other => Err(HubError::BadResponse(format!(
                        "{what}: unknown upload mode {other:?}"
                    ))),
                }
            })
            .collect()
    }

    async fn upload_lfs(&self, repo: &RepoId, files: &[&LocalFile]) -> Result<(), HubError> {
        if files.is_empty() {
            return Ok(());
        }
        let token = self.require_token()?;
        let url = format!(
            "{}/{}.git/info/lfs/objects/batch",
            self.options.endpoint, repo
        );
        let what = format!("LFS batch for {repo}");
        let body = json!({
            "operation": "upload",
            "transfers": ["basic", "multipart"],
            "objects": files.iter().map(|f| json!({"oid": f.sha256, "size": f.size})).collect::<Vec<_>>(),
            "hash_algo": "sha256",
        });
        let answer: Value = self
            .retrying(&what, || {
                let req = self
                    .client
                    .post(&url)
                    .bearer_auth(token)
                    .header("accept", "application/vnd.git-lfs+json")
                    .header(CONTENT_TYPE, "application/vnd.git-lfs+json")
                    .body(body.to_string());
                send_json(req, &what)
            })
            .await?;
        let objects = answer["objects"].as_array().ok_or_else(|| {
            HubError::BadResponse(format!("{what}: no \"objects\" in the answer"))
        })?;
        for file in files {
            let obj = objects
                .iter()
                .find(|o| o["oid"].as_str() == Some(&file.sha256))
                .ok_or_else(|| {
                    HubError::BadResponse(format!("{what}: nothing about {}", file.path))
                })?;
            if let Some(err) = obj.get("error") {
                return Err(HubError::BadResponse(format!(
                    "{what}: {} refused: {err}",
                    file.path
                )));
            }
            let Some(upload) = obj.get("actions").and_then(|a| a.get("upload")) else {
                debug!(path = %file.path, "already on the hub");
                continue;
            };
            let href = upload["href"].as_str().ok_or_else(|| {
                HubError::BadResponse(format!("{what}: upload action without href"))
            })?;
            let header = upload["header"].as_object().cloned().unwrap_or_default();
            info!(path = %file.path, size = file.size, "uploading to LFS");
            if let Some(chunk_size) = header.get("chunk_size") {
                self.upload_multipart(file, href, &header, chunk_size)
                    .await?;
            } else {
                self.upload_basic(file, href, &header).await?;
            }
            if let Some(verify) = obj.get("actions").and_then(|a| a.get("verify")) {
                let vhref = verify["href"].as_str().ok_or_else(|| {
                    HubError::BadResponse(format!("{what}: verify action without href"))
                })?;
                let vwhat = format!("verifying {} on LFS", file.path);
                let headers = header_map(verify["header"].as_object(), &vwhat)?;
                // The verify URL is the hub's own (as huggingface_hub does, it
                // gets our token); a foreign storage URL never does.
                let ours = vhref.starts_with(&format!("{}/", self.options.endpoint));
                self.retrying(&vwhat, || async {
                    let mut req = self.client.post(vhref).headers(headers.clone());
                    if ours && !headers.contains_key(reqwest::header::AUTHORIZATION) {
                        req = req.bearer_auth(token);
                    }
                    let resp = req
                        .json(&json!({"oid": file.sha256, "size": file.size}))
                        .send()
                        .await
                        .map_err(|e| network(&vwhat, e))?;
                    check_status(resp, &vwhat).await.map(|_| ())
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn upload_basic(
        &self,
        file: &LocalFile,
        href: &str,
        header: &serde_json::Map<String, Value>,
    ) -> Result<(), HubError> {
        let what = format!("uploading {}", file.path);
        let headers = header_map(Some(header), &what)?;
        self.retrying_within(&what, self.transfer_limit(file.size), || async {
            let f = tokio::fs::File::open(&file.abs)
                .await
                .map_err(HubError::io(format!("cannot open {}", file.abs.display())))?;
            let resp = self
                .client
                .put(href)
                .headers(headers.clone())
                .header(CONTENT_LENGTH, file.size)
                .body(reqwest::Body::from(f))
                .send()
                .await
                .map_err(|e| network(&what, e))?;
            check_status(resp, &what).await.map(|_| ())
        })
        .await
    }

    async fn upload_multipart(
        &self,
        file: &LocalFile,
        href: &str,
        header: &serde_json::Map<String, Value>,
        chunk_size: &Value,
    ) -> Result<(), HubError> {
        let what = format!("uploading {} in parts", file.path);
        let chunk_size = chunk_size
            .as_u64()
            .or_else(|| chunk_size.as_str().and_then(|s| s.parse().ok()))
            .filter(|&c| c > 0)
            .ok_or_else(|| HubError::BadResponse(format!("{what}: bad chunk_size {chunk_size}")))?;
        let mut parts: Vec<(u64, String)> = header
            .iter()
            .filter_map(|(k, v)| Some((k.parse::<u64>().ok()?, v.as_str()?.to_string())))
            .collect();
        parts.sort();
        if parts.len() as u64 != file.size.div_ceil(chunk_size) {
            return Err(HubError::BadResponse(format!(
                "{what}: {} part URLs for {} bytes in chunks of {chunk_size}",
                parts.len(),
                file.size
            )));
        }
        let mut etags = Vec::with_capacity(parts.len());
        for (i, (number, url)) in parts.iter().enumerate() {
            let start = i as u64 * chunk_size;
            let len = chunk_size.min(file.size - start);
            let mut buf = vec![0u8; len as usize];
            let mut f = tokio::fs::File::open(&file.abs)
                .await
                .map_err(HubError::io(format!("cannot open {}", file.abs.display())))?;
            f.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(HubError::io(format!("cannot read {}", file.abs.display())))?;
            f.read_exact(&mut buf)
                .await
                .map_err(HubError::io(format!("cannot read {}", file.abs.display())))?;
            let part_what = format!("{what}: part {number}");
            let etag = self
                .retrying_within(&part_what, self.transfer_limit(len), || async {
                    let resp = self
                        .client
                        .put(url)
                        .body(buf.clone())
                        .send()
                        .await
                        .map_err(|e| network(&part_what, e))?;
                    let resp = check_status(resp, &part_what).await?;
                    resp.headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .ok_or_else(|| HubError::BadResponse(format!("{part_what}: no ETag")))
                })
                .await?;
            etags.push(json!({"partNumber": number, "etag": etag}));
        }
        self.retrying(&what, || async {
            let resp = self
                .client
                .post(href)
                .header("accept", "application/vnd.git-lfs+json")
                .header(CONTENT_TYPE, "application/vnd.git-lfs+json")
                .body(json!({"oid": file.sha256, "parts": etags}).to_string())
                .send()
                .await
                .map_err(|e| network(&what, e))?;
            check_status(resp, &what).await.map(|_| ())
        })
        .await
    }

    async fn commit(
        &self,
        repo: &RepoId,
        files: &[LocalFile],
        lfs: &[bool],
        deleted: &[String],
    ) -> Result<String, HubError> {
        let token = self.require_token()?;
        let mut lines = vec![json!({"key": "header", "value": {
            "summary": "Upload model with pretrain",
            "description": "",
        }})];
        for (f, &is_lfs) in files.iter().zip(lfs) {
            if is_lfs {
                lines.push(json!({"key": "lfsFile", "value": {"path": f.path, "algo": "sha256", "oid": f.sha256}}));
            } else {
                let bytes = tokio::fs::read(&f.abs)
                    .await
                    .map_err(HubError::io(format!("cannot read {}", f.abs.display())))?;
                lines.push(json!({"key": "file", "value": {
                    "content": B64.encode(bytes), "path": f.path, "encoding": "base64",
                }}));
            }
        }
        for path in deleted {
            lines.push(json!({"key": "deletedFile", "value": {"path": path}}));
        }
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let url = format!("{}/api/models/{}/commit/main", self.options.endpoint, repo);
        let what = format!("committing to {repo}");
        let answer: Value = self
            .retrying(&what, || {
                let req = self
                    .client
                    .post(&url)
                    .bearer_auth(token)
                    .header(CONTENT_TYPE, "application/x-ndjson")
                    .body(body.clone());
                send_json(req, &what)
            })
            .await?;
        let oid = answer["commitOid"]
            .as_str()
            .ok_or_else(|| HubError::BadResponse(format!("{what}: no commitOid in the answer")))?
            .to_string();
        check_commit(&oid)
            .map_err(|_| HubError::BadResponse(format!("{what}: bad commitOid {oid:?}")))?;
        Ok(oid)
    }

    /// Downloads one listed file into `done` (complete files), resuming
    /// from `part` (bytes already fetched) with `Range`.
    async fn download_file(
        &self,
        repo: &RepoId,
        commit: &str,
        file: &RepoFile,
        part: &Path,
        done: &Path,
        bar: &ProgressBar,
    ) -> Result<(), HubError> {
        let api_repo = self.api.repo(Repo::with_revision(
            repo.as_string(),
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
            match self.fetch_range(&url, commit, file, part, bar, &what).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    tries += 1;
                    let Some(delay) = schedule.delay(tries) else {
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
        commit: &str,
        file: &RepoFile,
        part: &Path,
        bar: &ProgressBar,
        what: &str,
    ) -> Result<(), HubError> {
        let mut have = match tokio::fs::metadata(part).await {
            Ok(m) => m.len(),
            Err(_) => 0,
        };
        if have > file.size {
            have = 0;
        }
        if have == file.size && file.size > 0 {
            return Ok(());
        }
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
        let resp = check_status(resp, what).await?;
        if let Some(c) = resp
            .headers()
            .get("x-repo-commit")
            .and_then(|v| v.to_str().ok())
        {
            if c != commit {
                return Err(HubError::BadResponse(format!(
                    "{what}: the hub served commit {c}"
                )));
            }
        }
        let resumed = resp.status() == StatusCode::PARTIAL_CONTENT;
        if resumed {
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
        } else {
            // The server sent the whole file.
            bar.set_position(bar.position().saturating_sub(have));
            have = 0;
        }
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(part)
            .await
            .map_err(HubError::io(format!("cannot write {}", part.display())))?;
        let mut resp = resp;
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

/// Percent-encodes a repo path for a URL, keeping `/`.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header_map(
    header: Option<&serde_json::Map<String, Value>>,
    what: &str,
) -> Result<HeaderMap, HubError> {
    let mut map = HeaderMap::new();
    for (k, v) in header.into_iter().flatten() {
        // Multipart part URLs and the chunk size travel in the same object.
        if k == "chunk_size" || k.parse::<u64>().is_ok() {
            continue;
        }
        let Some(v) = v.as_str() else { continue };
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| HubError::BadResponse(format!("{what}: bad header name {k:?}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| HubError::BadResponse(format!("{what}: bad header value for {k}")))?;
        map.insert(name, value);
    }
    Ok(map)
}

fn network(what: &str, e: reqwest::Error) -> HubError {
    HubError::Network(format!("{what}: {e}"))
}

/// Sends `req` and parses the JSON answer, mapping failures onto [`HubError`].
async fn send_json<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    what: &str,
) -> Result<T, HubError> {
    let resp = req.send().await.map_err(|e| network(what, e))?;
    check_status(resp, what)
        .await?
        .json()
        .await
        .map_err(|e| HubError::BadResponse(format!("{what}: {e}")))
}

/// Maps the hub's error statuses onto [`HubError`], with its message.
async fn check_status(resp: Response, what: &str) -> Result<Response, HubError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let message = resp
        .headers()
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().await.unwrap_or_default();
    let message = message
        .or_else(|| {
            serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    let text = format!("{what}: HTTP {status}: {message}");
    Err(match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HubError::Unauthorized(text),
        StatusCode::NOT_FOUND => HubError::NotFound(text),
        StatusCode::TOO_MANY_REQUESTS => HubError::RateLimited(text),
        s if s.is_server_error() => HubError::Network(text),
        _ => HubError::BadResponse(text),
    })
}

fn prepare_files(dir: &Path) -> Result<Vec<LocalFile>, HubError> {
    let mut out = Vec::new();
    for (path, abs, _) in list_local_files(dir)? {
        let mut f = std::fs::File::open(&abs)
            .map_err(HubError::io(format!("cannot open {}", abs.display())))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut sample = Vec::new();
        let mut size = 0u64;
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)
                .map_err(HubError::io(format!("cannot read {}", abs.display())))?;
            if n == 0 {
                break;
            }
            if sample.len() < 512 {
                let take = (512 - sample.len()).min(n);
                sample.extend_from_slice(&buf[..take]);
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.push(LocalFile {
            path,
            abs,
            size,
            sha256,
            sample,
        });
    }
    Ok(out)
}

#[async_trait]
impl ModelHub for HfHub {
    async fn upload(&self, dir: &Path, repo_id: &str) -> Result<String, HubError> {
        let repo = RepoId::parse(repo_id)?;
        self.require_token()?;
        let d = dir.to_path_buf();
        let files = tokio::task::spawn_blocking(move || prepare_files(&d))
            .await
            .map_err(|e| {
                HubError::io("hashing files failed")(std::io::Error::other(e.to_string()))
            })??;
        if files.is_empty() {
            return Err(HubError::NotFound(format!(
                "no files to upload in {}",
                dir.display()
            )));
        }
        self.create_repo(&repo).await?;
        // Files of the previous revision that the new one lacks are deleted,
        // so the repo at the new commit is exactly `dir` (and hashes the same).
        let deleted: Vec<String> = match self.list(&repo, "main").await {
            Ok((_, old)) => old
                .into_iter()
                .map(|f| f.path)
                .filter(|p| !files.iter().any(|f| &f.path == p))
                .collect(),
            Err(HubError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let lfs = self.preupload(&repo, &files).await?;
        let lfs_files: Vec<&LocalFile> = files
            .iter()
            .zip(&lfs)
            .filter(|(_, &l)| l)
            .map(|(f, _)| f)
            .collect();
        self.upload_lfs(&repo, &lfs_files).await?;
        let commit = self.commit(&repo, &files, &lfs, &deleted).await?;
        info!(%repo, %commit, files = files.len(), deleted = deleted.len(), "uploaded to the hub");
        Ok(commit)
    }

    async fn files_at(&self, repo_id: &str, commit: &str) -> Result<Vec<RepoFile>, HubError> {
        let repo = RepoId::parse(repo_id)?;
        check_commit(commit)?;
        let (sha, files) = self.list(&repo, commit).await?;
        if let Some(sha) = sha {
            if sha != commit {
                return Err(HubError::BadResponse(format!(
                    "asked for {repo}@{commit}, the hub answered for {sha}"
                )));
            }
        }
        Ok(files)
    }

    async fn download(
        &self,
        repo_id: &str,
        commit: &str,
        dest: &Path,
    ) -> Result<PathBuf, HubError> {
        let repo = RepoId::parse(repo_id)?;
        check_commit(commit)?;
        let repo_dir = dest.join(repo.folder_name());
        let target = repo_dir.join("snapshots").join(commit);
        if tokio::fs::metadata(&target)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return Ok(target);
        }
        let files = self.files_at(repo_id, commit).await?;
        // Kept across calls so that an interrupted download resumes.
        let staging = repo_dir.join(format!(".partial-{commit}"));
        let done_dir = staging.join("files");
        let parts_dir = staging.join("parts");
        let total: u64 = files.iter().map(|f| f.size).sum();
        let bar = if self.options.progress {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(format!("{repo}@{}", &commit[..8]));
            bar
        } else {
            ProgressBar::hidden()
        };
        tokio::fs::create_dir_all(&done_dir)
            .await
            .map_err(HubError::io(format!(
                "cannot create {}",
                done_dir.display()
            )))?;
        for file in &files {
            let rel = safe_relative_path(&file.path)?;
            let done = done_dir.join(&rel);
            if let Ok(m) = tokio::fs::symlink_metadata(&done).await {
                if m.is_file() && m.len() == file.size {
                    bar.inc(file.size);
                    continue;
                }
                if !m.is_file() {
                    return Err(HubError::UnsafePath {
                        path: file.path.clone(),
                        reason: "something that is not a file is in the way of the download".into(),
                    });
                }
                let _ = tokio::fs::remove_file(&done).await;
            }
            let part = parts_dir.join(hex_id(&file.path));
            if let Ok(m) = tokio::fs::metadata(&part).await {
                bar.inc(m.len().min(file.size));
            }
            self.download_file(&repo, commit, file, &part, &done, &bar)
                .await?;
        }
        bar.finish_and_clear();
        let snapshots = repo_dir.join("snapshots");
        tokio::fs::create_dir_all(&snapshots)
            .await
            .map_err(HubError::io(format!(
                "cannot create {}",
                snapshots.display()
            )))?;
        if let Err(e) = tokio::fs::rename(&done_dir, &target).await {
            if !target.is_dir() {
                return Err(HubError::io(format!(
                    "cannot move the download to {}",
                    target.display()
                ))(e));
            }
        }
        let _ = tokio::fs::remove_dir_all(&staging).await;
        info!(%repo, %commit, bytes = total, "downloaded");
        Ok(target)
    }
}

/// A flat, safe file name for a repo path's partial download.
fn hex_id(path: &str) -> String {
    Sha256::digest(path.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
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
        // Issue 14, class 2: a `.env` FIFO or device is no token, not a hang.
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
    fn paths_are_encoded_for_urls() {
        assert_eq!(encode_path("a/b c#?.txt"), "a/b%20c%23%3F.txt");
        assert_eq!(encode_path("model.safetensors"), "model.safetensors");
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
