//! A fake W&B server on 127.0.0.1 that records every request (path, auth,
//! JSON body) and answers as W&B does; shared by the telemetry and CLI tests.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub auth: String,
    pub body: Value,
}

#[derive(Default)]
pub struct Fake {
    pub requests: Vec<Request>,
    /// Answer 500 to this many file_stream requests that carry history.
    pub fail_history: usize,
}

pub async fn start_fake() -> (String, Arc<Mutex<Fake>>) {
    let fake = Arc::new(Mutex::new(Fake::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = fake.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                            })
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    while buf.len() < head_end + len {
                        let n = s.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body: Value =
                        serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
                    let path = head.split_whitespace().nth(1).unwrap().to_string();
                    let (status, answer) = {
                        let mut f = state.lock().unwrap();
                        let has_history = body.pointer("/files/wandb-history.jsonl").is_some();
                        f.requests.push(Request {
                            path: path.clone(),
                            auth: header("authorization"),
                            body: body.clone(),
                        });
                        if has_history && f.fail_history > 0 {
                            f.fail_history -= 1;
                            (500, json!({"error": "try later"}))
                        } else if path == "/graphql" {
                            let v = &body["variables"];
                            (
                                200,
                                json!({"data": {"upsertBucket": {"bucket": {
                                "id": "x", "name": v["name"], "displayName": v["displayName"],
                                "project": {"id": "p", "name": v["project"], "entity": {"id": "e", "name": v["entity"]}}},
                                "inserted": true}}}),
                            )
                        } else {
                            (200, json!({"exitcode": null, "limits": {}}))
                        }
                    };
                    let text = answer.to_string();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), fake)
}

/// History lines of one run, in file order, checking that every request
/// starts where the server's file ends (no gap, no duplicate); `accepted`
/// says which requests the server took.
pub fn history_of(requests: &[Request], run: &str, accepted: &dyn Fn(usize) -> bool) -> Vec<Value> {
    let mut lines: Vec<Value> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if !r.path.contains(&format!("/{run}/file_stream")) {
            continue;
        }
        let Some(h) = r.body.pointer("/files/wandb-history.jsonl") else {
            continue;
        };
        assert_eq!(
            h["offset"].as_u64().unwrap() as usize,
            lines.len(),
            "request {i} offset"
        );
        if accepted(i) {
            for l in h["content"].as_array().unwrap() {
                lines.push(serde_json::from_str(l.as_str().unwrap()).unwrap());
            }
        }
    }
    lines
}
