//! Uploads: repo creation, pre-upload, Git LFS batch (basic and multipart
//! transfers) and the NDJSON commit API.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pretrain_core::{CommitId, RepoId};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{debug, info};

use super::http::{check_status, header_map, is_conflicting_operation, network, send_json};
use super::HfHub;
use crate::{list_local_files, HubError, Visibility};

/// Git's attributes file: the Hub writes one into every new repo.
const GITATTRIBUTES: &str = ".gitattributes";

/// Files per pre-upload request (huggingface_hub's chunk).
const PREUPLOAD_CHUNK: usize = 256;

/// How a file is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Its content in the commit.
    Regular,
    /// Through Git LFS, by its sha256.
    Lfs,
    /// Left out (`shouldIgnore`: the repo's `.gitignore` matches it).
    Ignored,
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
    /// Uploads the files of `dir` as one commit of `repo` (created with
    /// `visibility` if new): the repo at the new commit holds exactly those
    /// files and the `.gitattributes` the Hub wrote at its creation.
    pub(super) async fn upload_dir(
        &self,
        dir: &Path,
        repo: &RepoId,
        visibility: Visibility,
    ) -> Result<CommitId, HubError> {
        self.require_token()?;
        let d = dir.to_path_buf();
        let files = tokio::task::spawn_blocking(move || prepare_files(&d))
            .await
            .map_err(HubError::Task)??;
        if files.is_empty() {
            return Err(HubError::NotFound(format!(
                "no files to upload in {}",
                dir.display()
            )));
        }
        self.create_repo(repo, visibility).await?;
        // Files of the previous revision that the new one lacks are deleted,
        // so the repo at the new commit holds `dir` (and what `from_pretrained`
        // fetches from it hashes as `dir` does); the `.gitattributes` the Hub
        // wrote at creation stays (without it, LFS files clone as pointers).
        let (parent, deleted): (Option<String>, Vec<String>) = match self.list(repo, "main").await {
            Ok((sha, old)) => (
                sha,
                old.into_iter()
                    .map(|f| f.path)
                    .filter(|p| p != GITATTRIBUTES && !files.iter().any(|f| &f.path == p))
                    .collect(),
            ),
            Err(HubError::NotFound(_)) => (None, Vec::new()),
            Err(e) => return Err(e),
        };
        let modes = self.preupload(repo, &files).await?;
        let lfs_files: Vec<&LocalFile> = files
            .iter()
            .zip(&modes)
            .filter(|(_, &m)| m == Mode::Lfs)
            .map(|(f, _)| f)
            .collect();
        self.upload_lfs(repo, &lfs_files).await?;
        let commit = self
            .commit(repo, &files, &modes, &deleted, parent.as_deref())
            .await?;
        info!(%repo, %commit, files = files.len(), deleted = deleted.len(), "uploaded to the hub");
        Ok(commit)
    }

    /// Creates `repo` with `visibility`; an existing repo is left as it is
    /// (the hub answers 409, and its visibility does not change). As
    /// huggingface_hub's `create_repo(exist_ok=True)`: a 409 "another
    /// conflicting operation is in progress" is retried, and a 403 (a
    /// fine-grained token that may write this repo but create none) is fine
    /// if `GET /api/models/{repo}` shows the repo exists.
    async fn create_repo(&self, repo: &RepoId, visibility: Visibility) -> Result<(), HubError> {
        let token = self.require_token()?;
        let url = format!("{}/api/repos/create", self.options.endpoint);
        let what = format!("creating repo {repo}");
        let private = visibility == Visibility::Private;
        self.retrying(&what, || async {
            let resp = self
                .client
                .post(&url)
                .bearer_auth(token)
                .json(&json!({"name": repo.name(), "organization": repo.namespace(), "private": private}))
                .send()
                .await
                .map_err(|e| network(&what, e))?;
            match resp.status() {
                StatusCode::CONFLICT => {
                    let text = resp.text().await.unwrap_or_default();
                    if is_conflicting_operation(&text) {
                        return Err(HubError::RateLimited(format!(
                            "{what}: HTTP 409: another conflicting operation is in progress"
                        )));
                    }
                    debug!(%repo, "repo already exists");
                    Ok(())
                }
                StatusCode::FORBIDDEN => {
                    let refused = check_status(resp, &what).await.err().unwrap_or_else(|| {
                        HubError::Unauthorized(format!("{what}: HTTP 403"))
                    });
                    if self.repo_exists(repo).await? {
                        debug!(%repo, "may not create repos, but the repo exists");
                        Ok(())
                    } else {
                        Err(refused)
                    }
                }
                _ => check_status(resp, &what).await.map(|_| ()),
            }
        })
        .await
    }

    /// Whether `GET /api/models/{repo}` (huggingface_hub's `repo_info`)
    /// finds the repo with our token; a network failure is an error (retried).
    async fn repo_exists(&self, repo: &RepoId) -> Result<bool, HubError> {
        let token = self.require_token()?;
        let url = format!("{}/api/models/{}", self.options.endpoint, repo);
        let what = format!("checking that {repo} exists");
        let req = self.client.get(&url).bearer_auth(token);
        match send_json::<Value>(req, &what).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_retryable() => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Makes `repo` public or private: huggingface_hub's
    /// `update_repo_settings(private=...)`, `PUT /api/models/{repo}/settings`.
    pub(super) async fn put_visibility(
        &self,
        repo: &RepoId,
        visibility: Visibility,
    ) -> Result<(), HubError> {
        let token = self.require_token()?;
        let url = format!("{}/api/models/{}/settings", self.options.endpoint, repo);
        let what = format!("making {repo} {visibility}");
        let body = json!({"private": visibility == Visibility::Private});
        self.retrying(&what, || async {
            let resp = self
                .client
                .put(&url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map_err(|e| network(&what, e))?;
            check_status(resp, &what).await.map(|_| ())
        })
        .await?;
        info!(%repo, %visibility, "repo visibility set");
        Ok(())
    }

    /// How each file goes: huggingface_hub's `_fetch_upload_modes`, 256
    /// files a request; `shouldIgnore` files are left out, and an empty file
    /// is always regular (S3 answers 501 to an empty LFS upload).
    async fn preupload(&self, repo: &RepoId, files: &[LocalFile]) -> Result<Vec<Mode>, HubError> {
        let token = self.require_token()?;
        let url = format!(
            "{}/api/models/{}/preupload/main",
            self.options.endpoint, repo
        );
        let what = format!("asking {repo} how to upload");
        let mut modes = Vec::with_capacity(files.len());
        for chunk in files.chunks(PREUPLOAD_CHUNK) {
            let body = json!({"files": chunk.iter().map(|f| json!({
                "path": f.path, "sample": B64.encode(&f.sample), "size": f.size,
            })).collect::<Vec<_>>()});
            let answer: Value = self
                .retrying(&what, || {
                    send_json(self.client.post(&url).bearer_auth(token).json(&body), &what)
                })
                .await?;
            let listed = answer["files"].as_array().ok_or_else(|| {
                HubError::BadResponse(format!("{what}: no \"files\" in the answer"))
            })?;
            for f in chunk {
                let entry = listed
                    .iter()
                    .find(|m| m["path"].as_str() == Some(&f.path))
                    .ok_or_else(|| {
                        HubError::BadResponse(format!("{what}: no upload mode for {}", f.path))
                    })?;
                let mode = match entry["uploadMode"].as_str() {
                    Some("lfs") => Mode::Lfs,
                    Some("regular") => Mode::Regular,
                    other => {
                        return Err(HubError::BadResponse(format!(
                            "{what}: unknown upload mode {other:?} for {}",
                            f.path
                        )))
                    }
                };
                let mode = if entry["shouldIgnore"].as_bool() == Some(true) {
                    debug!(path = %f.path, "the hub ignores this file (its .gitignore)");
                    Mode::Ignored
                } else if f.size == 0 {
                    Mode::Regular
                } else {
                    mode
                };
                modes.push(mode);
            }
        }
        Ok(modes)
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

    /// The NDJSON commit. A retry first checks whether the previous try
    /// landed after all (the head moved from `parent` and holds every file
    /// with its size, and none of the deleted ones): then that commit is the
    /// answer, and nothing is sent twice.
    async fn commit(
        &self,
        repo: &RepoId,
        files: &[LocalFile],
        modes: &[Mode],
        deleted: &[String],
        parent: Option<&str>,
    ) -> Result<CommitId, HubError> {
        let token = self.require_token()?;
        let mut lines = vec![json!({"key": "header", "value": {
            "summary": "Upload model with pretrain",
            "description": "",
        }})];
        for (f, &mode) in files.iter().zip(modes) {
            match mode {
                Mode::Ignored => {}
                Mode::Lfs => lines.push(json!({"key": "lfsFile", "value": {
                    "path": f.path, "algo": "sha256", "oid": f.sha256, "size": f.size,
                }})),
                Mode::Regular => {
                    let bytes = tokio::fs::read(&f.abs)
                        .await
                        .map_err(HubError::io(format!("cannot read {}", f.abs.display())))?;
                    lines.push(json!({"key": "file", "value": {
                        "content": B64.encode(bytes), "path": f.path, "encoding": "base64",
                    }}));
                }
            }
        }
        for path in deleted {
            lines.push(json!({"key": "deletedFile", "value": {"path": path}}));
        }
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let url = format!("{}/api/models/{}/commit/main", self.options.endpoint, repo);
        let what = format!("committing to {repo}");
        let sent = AtomicBool::new(false);
        let answer: Value = self
            .retrying(&what, || async {
                if sent.swap(true, Ordering::SeqCst) {
                    if let Some(landed) = self.landed(repo, files, modes, deleted, parent).await? {
                        info!(%repo, commit = %pretrain_core::escape::Escaped(&landed), "the previous try of the commit had landed");
                        return Ok(json!({ "commitOid": landed }));
                    }
                }
                let req = self
                    .client
                    .post(&url)
                    .bearer_auth(token)
                    .header(CONTENT_TYPE, "application/x-ndjson")
                    .body(body.clone());
                send_json(req, &what).await
            })
            .await?;
        let oid = answer["commitOid"]
            .as_str()
            .ok_or_else(|| HubError::BadResponse(format!("{what}: no commitOid in the answer")))?;
        oid.parse()
            .map_err(|_| HubError::BadResponse(format!("{what}: bad commitOid {oid:?}")))
    }

    /// The head of `repo` if it moved from `parent` and holds the commit
    /// being sent (same paths and sizes; the deleted files gone).
    async fn landed(
        &self,
        repo: &RepoId,
        files: &[LocalFile],
        modes: &[Mode],
        deleted: &[String],
        parent: Option<&str>,
    ) -> Result<Option<String>, HubError> {
        let (head, remote) = match self.list(repo, "main").await {
            Ok(v) => v,
            Err(HubError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(head) = head else { return Ok(None) };
        if Some(head.as_str()) == parent {
            return Ok(None);
        }
        let holds = files.iter().zip(modes).all(|(f, &m)| {
            m == Mode::Ignored || remote.iter().any(|r| r.path == f.path && r.size == f.size)
        }) && !remote.iter().any(|r| deleted.contains(&r.path));
        Ok(holds.then_some(head))
    }
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
