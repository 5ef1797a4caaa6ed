//! HTTP helpers: URL paths, headers, and the hub's answers mapped onto [`HubError`].

use std::cell::Cell;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::HubError;

/// The longest `Retry-After` honoured: a hub asking for more gets retried
/// after this (the retries stay bounded).
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

tokio::task_local! {
    /// The `Retry-After` of the last 429/503 answer within one attempt
    /// ([`with_retry_hint`]): the retry loops see only [`HubError`]s.
    static RETRY_HINT: Cell<Option<Duration>>;
}

/// Runs one attempt and returns its result with the `Retry-After` (bounded
/// by [`MAX_RETRY_AFTER`]) of a 429 or 503 answer it got, if any.
pub(super) async fn with_retry_hint<T>(
    attempt: impl std::future::Future<Output = T>,
) -> (T, Option<Duration>) {
    RETRY_HINT
        .scope(Cell::new(None), async {
            let out = attempt.await;
            (out, RETRY_HINT.with(Cell::get))
        })
        .await
}

/// `Retry-After` in delta-seconds (an HTTP date is not read: our own
/// schedule applies then).
fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Whether a 409's message is the Hub's "another conflicting operation is
/// in progress" (retried, as huggingface_hub's `create_repo` does), not a
/// plain conflict (the repo exists).
pub(super) fn is_conflicting_operation(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .contains("conflicting operation")
}

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
    if e.is_redirect() {
        // Too many redirects: a loop (a hostile or broken repo) answers the
        // same on every retry, so it is not retried (the model defers).
        return HubError::BadResponse(format!("{what}: {e} (a redirect loop; not retried)"));
    }
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
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        if let Some(wait) = retry_after(&resp) {
            // Outside a retry loop there is no one to tell.
            let _ = RETRY_HINT.try_with(|h| h.set(Some(wait)));
        }
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
        StatusCode::CONFLICT if is_conflicting_operation(&message) => HubError::RateLimited(text),
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
