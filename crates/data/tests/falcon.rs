//! The rows API client against a local HTTP server that replays the
//! datasets-server's answers and failures (never the real server).

#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pretrain_data::{load_tokens, DataError, FalconConfig, FalconSource, PageSource, Tokenizer};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata");

/// What the server does with one request.
#[derive(Clone)]
enum Reply {
    Json(String),
    Status(u16, String),
    Slow(Duration, String),
    Hangup,
}

/// A scripted server: answers requests in order with `replies` (the last
/// one repeats) and records each request target.
struct Server {
    base_url: String,
    targets: Arc<Mutex<Vec<String>>>,
}

async fn start(replies: Vec<Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/rows", listener.local_addr().unwrap());
    let targets = Arc::new(Mutex::new(Vec::new()));
    let queue = Arc::new(Mutex::new(VecDeque::from(replies)));
    let seen = Arc::clone(&targets);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let queue = Arc::clone(&queue);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push(target);
                let reply = {
                    let mut q = queue.lock().unwrap();
                    if q.len() > 1 {
                        q.pop_front().unwrap()
                    } else {
                        q.front().cloned().unwrap()
                    }
                };
                let (status, body) = match reply {
                    Reply::Json(body) => (200, body),
                    Reply::Status(code, body) => (code, body),
                    Reply::Slow(delay, body) => {
                        tokio::time::sleep(delay).await;
                        (200, body)
                    }
                    Reply::Hangup => return,
                };
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Server { base_url, targets }
}

/// A reply shaped like the datasets-server's (features, row_idx, truncated_cells, ...).
fn rows_json(offset: u64, docs: &[&str]) -> String {
    let rows: Vec<serde_json::Value> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            serde_json::json!({
                "row_idx": offset + i as u64,
                "row": {
                    "content": d,
                    "url": format!("https://example.org/{i}"),
                    "timestamp": "2023-01-30T07:07:31",
                    "dump": "CC-MAIN-2023-06",
                    "segment": "1674764499816.45",
                    "image_urls": []
                },
                "truncated_cells": []
            })
        })
        .collect();
    serde_json::json!({
        "features": [{"feature_idx": 0, "name": "content", "type": {"dtype": "string", "_type": "Value"}}],
        "rows": rows,
        "num_rows_total": 968000015u64,
        "num_rows_per_page": 100,
        "partial": false
    })
    .to_string()
}

fn client(base_url: &str, max_tries: u32, timeout_ms: u64) -> FalconSource {
    FalconSource::new(FalconConfig {
        base_url: base_url.to_string(),
        max_tries,
        retry_delay: Duration::from_millis(50),
        timeout: Duration::from_millis(timeout_ms),
        ..FalconConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn fetches_a_page_with_the_original_query() {
    let server = start(vec![Reply::Json(rows_json(1000, &["first doc", "second"]))]).await;
    let source = client(&server.base_url, 10, 5000);
    let docs = source.fetch_page(1000).await.unwrap();
    assert_eq!(docs, vec!["first doc", "second"]);
    assert_eq!(
        *server.targets.lock().unwrap(),
        vec!["/rows?dataset=tiiuae%2Ffalcon-refinedweb&config=default&split=train&offset=1000&limit=100"]
    );
    assert_eq!(source.page_range(), 1..=968_000_015);
}

#[tokio::test]
async fn retries_past_429_500_malformed_json_and_hangups() {
    let server = start(vec![
        Reply::Status(429, r#"{"error":"Too Many Requests"}"#.into()),
        Reply::Status(500, "oops".into()),
        Reply::Json(r#"{"rows": [{"row": {"content": "#.into()),
        Reply::Hangup,
        Reply::Json(rows_json(7, &["ok at last"])),
    ])
    .await;
    let source = client(&server.base_url, 10, 5000);
    let started = Instant::now();
    assert_eq!(source.fetch_page(7).await.unwrap(), vec!["ok at last"]);
    assert_eq!(server.targets.lock().unwrap().len(), 5);
    // Four waits of 50 ms between the five tries.
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn the_error_after_the_last_try_names_the_page_and_the_reason() {
    let server = start(vec![Reply::Status(500, "internal error".into())]).await;
    let source = client(&server.base_url, 3, 5000);
    let err = source.fetch_page(42).await.unwrap_err();
    match &err {
        DataError::PageFetch {
            page, tries, last, ..
        } => {
            assert_eq!((*page, *tries), (42, 3));
            assert!(last.contains("500"), "{last}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("page 42") && text.contains("3 tries"),
        "{text}"
    );
    assert_eq!(server.targets.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_an_error_not_a_panic() {
    for body in [
        r#"{"error": "The dataset does not exist."}"#,
        r#"{"rows": [{"row": {"content": null}}]}"#,
        r#"{"rows": [{"row": {"text": "no content field"}}]}"#,
        r#"[1, 2, 3]"#,
        "",
    ] {
        let server = start(vec![Reply::Json(body.to_string())]).await;
        let source = client(&server.base_url, 2, 5000);
        let err = source.fetch_page(1).await.unwrap_err();
        assert!(err.to_string().contains("rows API's JSON"), "{body}: {err}");
    }
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let server = start(vec![
        Reply::Slow(Duration::from_secs(3), rows_json(5, &["late"])),
        Reply::Json(rows_json(5, &["on time"])),
    ])
    .await;
    let source = client(&server.base_url, 2, 300);
    assert_eq!(source.fetch_page(5).await.unwrap(), vec!["on time"]);

    let server = start(vec![Reply::Slow(
        Duration::from_secs(3),
        rows_json(5, &["late"]),
    )])
    .await;
    let source = client(&server.base_url, 1, 300);
    let err = source.fetch_page(5).await.unwrap_err().to_string();
    assert!(err.contains("timed out"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    // Bind then drop: nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let source = client(&format!("http://127.0.0.1:{port}/rows"), 2, 1000);
    let err = source.fetch_page(9).await.unwrap_err().to_string();
    assert!(err.contains("page 9") && err.contains("2 tries"), "{err}");
}

#[derive(Deserialize)]
struct BatchingCase {
    pages: Vec<Vec<String>>,
    page_numbers: Vec<u64>,
    buffer: Vec<u32>,
}

#[tokio::test]
async fn pages_served_over_http_give_the_reference_buffer() {
    let text = std::fs::read_to_string(format!("{REFERENCE}/batching/cases.json")).unwrap();
    let cases: Vec<BatchingCase> = serde_json::from_str(&text).unwrap();
    let case = &cases[0];
    // Serve each page at its own offset, whatever order the requests come in.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/rows", listener.local_addr().unwrap());
    let pages: Vec<(u64, String)> = case
        .page_numbers
        .iter()
        .zip(&case.pages)
        .map(|(&n, docs)| {
            let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
            (n, rows_json(n, &docs))
        })
        .collect();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let pages = pages.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let body = pages
                    .iter()
                    .find(|(n, _)| head.contains(&format!("offset={n}&")))
                    .map(|(_, body)| body.clone())
                    .unwrap_or_default();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    let source = client(&base_url, 3, 5000);
    let tokenizer = Tokenizer::gpt2().unwrap();
    let buffer = load_tokens(&source, &tokenizer, &case.page_numbers)
        .await
        .unwrap();
    assert_eq!(buffer, case.buffer);
}
