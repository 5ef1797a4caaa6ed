//! One place for the Hugging Face endpoint a command talks to and for the
//! check that a token is accepted there.

use std::time::Duration;

use thiserror::Error;

use super::DEFAULT_ENDPOINT;

/// The endpoint to use: `explicit` (`--hub_endpoint`), else a non-empty
/// `HF_ENDPOINT`, else the public hub. An empty `HF_ENDPOINT=` counts as
/// unset, as the hub client itself treats it.
pub fn resolve_endpoint(explicit: Option<&str>) -> String {
    resolve_endpoint_from(explicit, std::env::var("HF_ENDPOINT").ok().as_deref())
}

/// [`resolve_endpoint`] with the environment's value passed in (testable).
pub fn resolve_endpoint_from(explicit: Option<&str>, env: Option<&str>) -> String {
    explicit
        .or(env.filter(|e| !e.is_empty()))
        .unwrap_or(DEFAULT_ENDPOINT)
        .to_string()
}

/// Why a token check failed; each message says what to do.
#[derive(Debug, Error)]
pub enum TokenCheckError {
    /// No HTTP client could be built.
    #[error("cannot start an HTTP client: {0}")]
    Client(String),
    /// The hub could not be reached.
    #[error("cannot reach the hub at {endpoint}: {reason}")]
    Unreachable {
        /// The endpoint asked.
        endpoint: String,
        /// The transport error.
        reason: String,
    },
    /// The hub refused the token (401 or 403).
    #[error(
        "the hub at {endpoint} refused HF_ACCESS_TOKEN ({status}): make a token with write \
         access at https://huggingface.co/settings/tokens and set HF_ACCESS_TOKEN"
    )]
    Refused {
        /// The endpoint asked.
        endpoint: String,
        /// The HTTP status.
        status: String,
    },
    /// Another non-success status.
    #[error("the hub at {endpoint} answered {status} when checking the token")]
    Status {
        /// The endpoint asked.
        endpoint: String,
        /// The HTTP status.
        status: String,
    },
    /// The reply was not JSON.
    #[error("the hub's whoami reply is not JSON: {0}")]
    BadReply(String),
}

/// Asks the hub at `endpoint` whose `token` this is (`/api/whoami-v2`);
/// returns the account name.
pub async fn check_hf_token(endpoint: &str, token: &str) -> Result<String, TokenCheckError> {
    let url = format!("{}/api/whoami-v2", endpoint.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| TokenCheckError::Client(e.to_string()))?;
    let resp = client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| TokenCheckError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(TokenCheckError::Refused {
            endpoint: endpoint.to_string(),
            status: status.to_string(),
        });
    }
    if !status.is_success() {
        return Err(TokenCheckError::Status {
            endpoint: endpoint.to_string(),
            status: status.to_string(),
        });
    }
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| TokenCheckError::BadReply(e.to_string()))?;
    Ok(body
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_endpoint_wins_then_a_non_empty_environment_then_the_public_hub() {
        assert_eq!(
            resolve_endpoint_from(Some("http://mirror"), Some("http://env")),
            "http://mirror"
        );
        assert_eq!(
            resolve_endpoint_from(None, Some("http://env")),
            "http://env"
        );
        // `HF_ENDPOINT=` is unset, not an empty URL.
        assert_eq!(
            resolve_endpoint_from(None, Some("")),
            "https://huggingface.co"
        );
        assert_eq!(resolve_endpoint_from(None, None), "https://huggingface.co");
    }
}
