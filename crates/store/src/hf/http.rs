//! HTTP helpers: URL paths, headers, and the hub's answers mapped onto [`HubError`].

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::HubError;

/// Percent-encodes a repo path for a URL, keeping `/`.
pub(super) fn encode_path(path: &str) -> String {
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

pub(super) fn header_map(
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

pub(super) fn network(what: &str, e: reqwest::Error) -> HubError {
    HubError::Network(format!("{what}: {e}"))
}

/// Sends `req` and parses the JSON answer, mapping failures onto [`HubError`].
pub(super) async fn send_json<T: serde::de::DeserializeOwned>(
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
pub(super) async fn check_status(resp: Response, what: &str) -> Result<Response, HubError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_for_urls() {
        assert_eq!(encode_path("a/b c#?.txt"), "a/b%20c%23%3F.txt");
        assert_eq!(encode_path("model.safetensors"), "model.safetensors");
    }
}
