//! A small Hugging Face Hub stand-in on 127.0.0.1: the endpoints `HfHub`
//! uses (repo creation, repo info with sizes, pre-upload, Git LFS batch with
//! basic and multipart transfers, NDJSON commits, `resolve` downloads with
//! `Range`, repo settings), answering as the hub does (a private repo is
//! 404 to anyone without the token), plus scripted failures.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct FakeRepo {
    /// (sha, files) in commit order.
    pub commits: Vec<(String, BTreeMap<String, Vec<u8>>)>,
    /// Needs the token even to read.
    pub gated: bool,
    /// Answered as missing (404) to anyone without the token.
    pub private: bool,
}

impl FakeRepo {
    fn main(&self) -> Option<&(String, BTreeMap<String, Vec<u8>>)> {
        self.commits.last()
    }
}

#[derive(Default)]
pub struct State {
    pub token: String,
    pub repos: HashMap<String, FakeRepo>,
    pub lfs: HashMap<String, Vec<u8>>,
    pub parts: HashMap<(String, u64), Vec<u8>>,
    pub seen: Vec<Seen>,
    /// (method, path prefix, status, times left): answered before routing.
    pub failures: Vec<(String, String, u16, usize)>,
    /// Path prefixes answered with a redirect to themselves (a loop).
    pub redirect_loops: Vec<String>,
    /// path suffix -> (times left, bytes to send before cutting the connection).
    pub truncate: HashMap<String, (usize, usize)>,
    /// Sizes reported by the repo info instead of the real ones.
    pub size_override: HashMap<String, u64>,
    /// Multipart LFS transfers with this chunk size.
    pub multipart_chunk: Option<u64>,
    /// Extra siblings listed by repo info (names a hostile server might send).
    pub extra_siblings: Vec<(String, u64)>,
    /// The token is fine-grained: it may write existing repos but create
    /// none (`POST /api/repos/create` answers 403).
    pub forbid_create: bool,
    /// Repo creations answered 409 "another conflicting operation is in
    /// progress" before one goes through.
    pub create_conflicts: usize,
    /// Paths the preupload answer marks `shouldIgnore` (the repo's `.gitignore`).
    pub ignored: Vec<String>,
    /// Commits applied and then answered with this status anyway (times left, status).
    pub land_then_fail: Option<(usize, u16)>,
    /// `Retry-After` sent with scripted 429/503 failures (default "0" for 429).
    pub retry_after: Option<String>,
    commit_counter: u64,
}

pub struct FakeHub {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl FakeHub {
    pub fn start(token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            ..State::default()
        }));
        let (s, u) = (state.clone(), url.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (s, u) = (s.clone(), u.clone());
                thread::spawn(move || {
                    let _ = handle(stream, &s, &u);
                });
            }
        });
        Self { url, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Every request under `prefix` redirects to itself.
    pub fn redirect_loop(&self, prefix: &str) {
        self.state
            .lock()
            .unwrap()
            .redirect_loops
            .push(prefix.into());
    }

    pub fn fail(&self, method: &str, prefix: &str, status: u16, times: usize) {
        self.state
            .lock()
            .unwrap()
            .failures
            .push((method.into(), prefix.into(), status, times));
    }

    /// Adds a repo with one commit holding `files`; returns the commit sha.
    pub fn add_repo(&self, repo_id: &str, files: &[(&str, &[u8])], gated: bool) -> String {
        let mut st = self.state.lock().unwrap();
        let files: BTreeMap<String, Vec<u8>> = files
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_vec()))
            .collect();
        let sha = st.new_sha(&files);
        st.repos.insert(
            repo_id.to_string(),
            FakeRepo {
                commits: vec![(sha.clone(), files)],
                gated,
                private: false,
            },
        );
        sha
    }
}

impl State {
    fn new_sha(&mut self, files: &BTreeMap<String, Vec<u8>>) -> String {
        // A git commit sha depends on history too: mix in a counter.
        self.commit_counter += 1;
        let mut h = Sha256::new();
        h.update(self.commit_counter.to_le_bytes());
        for (p, c) in files {
            h.update(p.as_bytes());
            h.update(c);
        }
        hex(&h.finalize())[..40].to_string()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = Vec::new();
    if let Some(len) = headers.get("content-length") {
        body.resize(len.parse().ok()?, 0);
        r.read_exact(&mut body).ok()?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Request {
        method,
        path: percent_decode(&path),
        query,
        headers,
        body,
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then cut the connection.
    cut_at: Option<usize>,
    /// An answer to HEAD: this Content-Length, no body.
    head_len: Option<usize>,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
        cut_at: None,
        head_len: None,
    }
}

fn error(status: u16, msg: &str) -> Reply {
    let mut r = reply(status, json!({ "error": msg }));
    r.headers.push(("X-Error-Message".into(), msg.into()));
    r
}

fn handle(mut stream: TcpStream, state: &Mutex<State>, base: &str) -> std::io::Result<()> {
    let Some(req) = read_request(&stream) else {
        return Ok(());
    };
    let reply = route(&req, state, base);
    let reason = match reply.status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Other",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.head_len.unwrap_or(reply.body.len())
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let n = reply
        .cut_at
        .unwrap_or(reply.body.len())
        .min(reply.body.len());
    stream.write_all(&reply.body[..n])?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

fn authorized(req: &Request, st: &State) -> bool {
    req.headers.get("authorization").map(String::as_str) == Some(&format!("Bearer {}", st.token))
}

fn route(req: &Request, state: &Mutex<State>, base: &str) -> Reply {
    let mut st = state.lock().unwrap();
    st.seen.push(Seen {
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        body: req.body.clone(),
    });
    if st.redirect_loops.iter().any(|p| req.path.starts_with(p)) {
        let mut r = error(302, "again");
        r.headers
            .push(("Location".into(), format!("{base}{}", req.path)));
        return r;
    }
    for f in st.failures.iter_mut() {
        if f.3 > 0 && f.0 == req.method && req.path.starts_with(&f.1) {
            f.3 -= 1;
            let status = f.2;
            let mut r = error(status, "scripted failure");
            match (&st.retry_after, status) {
                (Some(v), 429 | 503) => r.headers.push(("Retry-After".into(), v.clone())),
                (None, 429) => r.headers.push(("Retry-After".into(), "0".into())),
                _ => {}
            }
            return r;
        }
    }
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("POST", ["api", "repos", "create"]) => {
            if !authorized(req, &st) {
                return error(401, "Invalid credentials in Authorization header");
            }
            let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let id = format!(
                "{}/{}",
                v["organization"].as_str().unwrap_or(""),
                v["name"].as_str().unwrap_or("")
            );
            if st.create_conflicts > 0 {
                st.create_conflicts -= 1;
                return error(
                    409,
                    "Cannot create repo: another conflicting operation is in progress",
                );
            }
            if st.forbid_create {
                return error(
                    403,
                    "You don't have the rights to create a model under the namespace",
                );
            }
            if st.repos.contains_key(&id) {
                return error(409, "You already created this model repo");
            }
            // The hub starts every repo with a `.gitattributes` commit.
            let files: BTreeMap<String, Vec<u8>> = [(
                ".gitattributes".to_string(),
                pretrain_store::pretrained::HUB_GITATTRIBUTES
                    .as_bytes()
                    .to_vec(),
            )]
            .into();
            let sha = st.new_sha(&files);
            st.repos.insert(
                id.clone(),
                FakeRepo {
                    commits: vec![(sha, files)],
                    gated: false,
                    private: v["private"].as_bool().unwrap_or(false),
                },
            );
            reply(200, json!({ "url": format!("{base}/{id}") }))
        }
        ("GET", ["api", "models", ns, name]) => {
            // huggingface_hub's repo_info / model_info without a revision.
            let id = format!("{ns}/{name}");
            let Some(repo) = st.repos.get(&id) else {
                return error(404, "Repository not found");
            };
            if (repo.private || repo.gated) && !authorized(req, &st) {
                return error(404, "Repository not found");
            }
            let (sha, files) = repo.main().cloned().unwrap_or_default();
            let siblings: Vec<Value> = files.keys().map(|p| json!({ "rfilename": p })).collect();
            reply(200, json!({"id": id, "sha": sha, "siblings": siblings}))
        }
        ("GET", ["api", "models", ns, name, "revision", rev]) => {
            let id = format!("{ns}/{name}");
            let Some(repo) = st.repos.get(&id) else {
                return error(404, "Repository not found");
            };
            if repo.private && !authorized(req, &st) {
                return error(404, "Repository not found");
            }
            if repo.gated && !authorized(req, &st) {
                return error(401, "Access to this repo is restricted");
            }
            let found = if *rev == "main" {
                repo.main()
            } else {
                repo.commits.iter().find(|(s, _)| s == rev)
            };
            let Some((sha, files)) = found else {
                return error(404, "Invalid rev id");
            };
            // huggingface_hub sends `blobs=True`.
            let blobs = req.query.to_ascii_lowercase().contains("blobs=true");
            let mut siblings: Vec<Value> = files
                .iter()
                .map(|(p, c)| {
                    let size = st.size_override.get(p).copied().unwrap_or(c.len() as u64);
                    if blobs {
                        json!({"rfilename": p, "size": size, "blobId": "0"})
                    } else {
                        json!({ "rfilename": p })
                    }
                })
                .collect();
            for (p, size) in &st.extra_siblings {
                siblings.push(json!({"rfilename": p, "size": size}));
            }
            reply(200, json!({"id": id, "sha": sha, "siblings": siblings}))
        }
        ("PUT", ["api", "models", ns, name, "settings"]) => {
            if !authorized(req, &st) {
                return error(401, "Invalid credentials in Authorization header");
            }
            let Ok(v) = serde_json::from_slice::<Value>(&req.body) else {
                return error(400, "bad json");
            };
            let Some(repo) = st.repos.get_mut(&format!("{ns}/{name}")) else {
                return error(404, "Repository not found");
            };
            if let Some(p) = v.get("private") {
                let Some(p) = p.as_bool() else {
                    return error(400, "private must be a boolean");
                };
                repo.private = p;
            }
            reply(200, json!({}))
        }
        ("POST", ["api", "models", _ns, _name, "preupload", "main"]) => {
            if !authorized(req, &st) {
                return error(401, "Invalid credentials in Authorization header");
            }
            let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let files: Vec<Value> = v["files"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|f| {
                    let p = f["path"].as_str().unwrap_or("");
                    let lfs = p.ends_with(".safetensors") || p.ends_with(".bin");
                    let ignore = st.ignored.iter().any(|i| i == p);
                    json!({"path": p, "uploadMode": if lfs {"lfs"} else {"regular"}, "shouldIgnore": ignore})
                })
                .collect();
            reply(200, json!({ "files": files }))
        }
        ("POST", [_ns, name_git, "info", "lfs", "objects", "batch"])
            if name_git.ends_with(".git") =>
        {
            if !authorized(req, &st) {
                return error(401, "Invalid credentials");
            }
            let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let mut objects = Vec::new();
            for o in v["objects"].as_array().cloned().unwrap_or_default() {
                let oid = o["oid"].as_str().unwrap_or("").to_string();
                let size = o["size"].as_u64().unwrap_or(0);
                if st.lfs.contains_key(&oid) {
                    objects.push(json!({"oid": oid, "size": size}));
                    continue;
                }
                let upload = match st.multipart_chunk {
                    Some(chunk) => {
                        let mut header = serde_json::Map::new();
                        header.insert("chunk_size".into(), json!(chunk.to_string()));
                        for i in 1..=size.div_ceil(chunk) {
                            header.insert(
                                format!("{i:05}"),
                                json!(format!("{base}/lfs-part/{oid}/{i}")),
                            );
                        }
                        json!({"href": format!("{base}/lfs-complete/{oid}"), "header": header})
                    }
                    None => {
                        json!({"href": format!("{base}/lfs-upload/{oid}"), "header": {"x-amz-fake": "yes"}})
                    }
                };
                objects.push(json!({"oid": oid, "size": size, "actions": {
                    "upload": upload,
                    "verify": {"href": format!("{base}/lfs-verify"), "header": {"x-verify": "1"}},
                }}));
            }
            let mut r = reply(200, json!({"transfer": "basic", "objects": objects}));
            r.headers[0].1 = "application/vnd.git-lfs+json".into();
            r
        }
        ("PUT", ["lfs-upload", _]) if req.body.is_empty() => {
            // What S3 answers to an empty upload.
            error(
                501,
                "A header you provided implies functionality that is not implemented",
            )
        }
        ("PUT", ["lfs-upload", oid]) => {
            let digest = hex(&Sha256::digest(&req.body));
            if digest != *oid {
                return error(400, "content does not match oid");
            }
            st.lfs.insert(oid.to_string(), req.body.clone());
            reply(200, json!({}))
        }
        ("PUT", ["lfs-part", oid, n]) => {
            let n: u64 = n.parse().unwrap_or(0);
            st.parts.insert((oid.to_string(), n), req.body.clone());
            let mut r = reply(200, json!({}));
            r.headers.push(("ETag".into(), format!("\"etag-{n}\"")));
            r
        }
        ("POST", ["lfs-complete", oid]) => {
            let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let mut whole = Vec::new();
            for p in v["parts"].as_array().cloned().unwrap_or_default() {
                let n = p["partNumber"].as_u64().unwrap_or(0);
                if p["etag"].as_str() != Some(&format!("\"etag-{n}\"")) {
                    return error(400, "bad etag");
                }
                match st.parts.get(&(oid.to_string(), n)) {
                    Some(b) => whole.extend_from_slice(b),
                    None => return error(400, "missing part"),
                }
            }
            if hex(&Sha256::digest(&whole)) != *oid {
                return error(400, "assembled content does not match oid");
            }
            st.lfs.insert(oid.to_string(), whole);
            reply(200, json!({}))
        }
        ("POST", ["lfs-verify"]) => {
            if !authorized(req, &st) || req.headers.get("x-verify").map(String::as_str) != Some("1")
            {
                return error(401, "verify needs the token and the action's headers");
            }
            let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let oid = v["oid"].as_str().unwrap_or("");
            match st.lfs.get(oid) {
                Some(b) if Some(b.len() as u64) == v["size"].as_u64() => reply(200, json!({})),
                _ => error(404, "object not found"),
            }
        }
        ("POST", ["api", "models", ns, name, "commit", "main"]) => {
            if !authorized(req, &st) {
                return error(401, "Invalid credentials in Authorization header");
            }
            let id = format!("{ns}/{name}");
            let Some(mut files) = st
                .repos
                .get(&id)
                .map(|r| r.main().map(|m| m.1.clone()).unwrap_or_default())
            else {
                return error(404, "Repository not found");
            };
            let mut header_seen = false;
            for line in String::from_utf8_lossy(&req.body).lines() {
                let v: Value = match serde_json::from_str(line) {
                    Ok(v) => v,
                    Err(_) => return error(400, "bad ndjson"),
                };
                let val = &v["value"];
                match v["key"].as_str() {
                    Some("header") => header_seen = val["summary"].is_string(),
                    Some("file") => {
                        let Ok(c) = B64.decode(val["content"].as_str().unwrap_or("")) else {
                            return error(400, "bad base64");
                        };
                        files.insert(val["path"].as_str().unwrap_or("").to_string(), c);
                    }
                    Some("lfsFile") => {
                        let oid = val["oid"].as_str().unwrap_or("");
                        let Some(c) = st.lfs.get(oid).cloned() else {
                            return error(400, "LFS object not uploaded");
                        };
                        files.insert(val["path"].as_str().unwrap_or("").to_string(), c);
                    }
                    Some("deletedFile") => {
                        files.remove(val["path"].as_str().unwrap_or(""));
                    }
                    _ => return error(400, "unknown key"),
                }
            }
            if !header_seen {
                return error(400, "no header line");
            }
            let sha = st.new_sha(&files);
            st.repos
                .get_mut(&id)
                .unwrap()
                .commits
                .push((sha.clone(), files));
            if let Some((left, status)) = st.land_then_fail.as_mut() {
                if *left > 0 {
                    *left -= 1;
                    return error(*status, "the commit landed, the answer got lost");
                }
            }
            reply(
                200,
                json!({"commitOid": sha, "commitUrl": format!("{base}/{id}/commit/{sha}")}),
            )
        }
        ("GET" | "HEAD", [ns, name, "resolve", rev, rest @ ..]) => {
            let id = format!("{ns}/{name}");
            let path = rest.join("/");
            let Some(repo) = st.repos.get(&id) else {
                return error(404, "Repository not found");
            };
            if repo.private && !authorized(req, &st) {
                return error(404, "Repository not found");
            }
            if repo.gated && !authorized(req, &st) {
                return error(401, "Access to this repo is restricted");
            }
            let Some((sha, files)) = repo.commits.iter().find(|(s, _)| s == rev) else {
                return error(404, "Revision not found");
            };
            let Some(content) = files.get(&path) else {
                let mut r = error(404, "Entry not found");
                r.headers
                    .push(("X-Error-Code".into(), "EntryNotFound".into()));
                return r;
            };
            let (sha, content) = (sha.clone(), content.clone());
            let mut start = 0usize;
            let mut status = 200;
            let mut headers = vec![
                ("X-Repo-Commit".to_string(), sha),
                (
                    "ETag".to_string(),
                    format!("\"{}\"", hex(&Sha256::digest(&content))),
                ),
            ];
            if let Some(range) = req.headers.get("range") {
                let from = range
                    .trim_start_matches("bytes=")
                    .split('-')
                    .next()
                    .unwrap_or("0");
                start = from.parse().unwrap_or(0);
                if start >= content.len() {
                    return error(416, "range not satisfiable");
                }
                status = 206;
                headers.push((
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{}", content.len() - 1, content.len()),
                ));
            }
            let body = content[start..].to_vec();
            let mut cut_at = None;
            if let Some((left, at)) = st
                .truncate
                .iter_mut()
                .find(|(k, _)| path.ends_with(k.as_str()))
                .map(|(_, v)| v)
            {
                if *left > 0 {
                    *left -= 1;
                    cut_at = Some(*at);
                }
            }
            if req.method == "HEAD" {
                // The headers of the GET, and no body (huggingface_hub's
                // get_hf_file_metadata reads the size from Content-Length).
                return Reply {
                    status,
                    headers,
                    body: Vec::new(),
                    cut_at: None,
                    head_len: Some(body.len()),
                };
            }
            Reply {
                status,
                headers,
                body,
                cut_at,
                head_len: None,
            }
        }
        _ => error(404, "no such endpoint"),
    }
}
