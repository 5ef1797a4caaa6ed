//! Falcon RefinedWeb through the Hugging Face datasets-server rows API.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;
use tracing::{debug, warn};

use super::{PageSource, MAX_PAGE, ROWS_PER_PAGE};
use crate::error::DataError;

/// The rows endpoint of the datasets-server.
pub const FALCON_BASE_URL: &str = "https://datasets-server.huggingface.co/rows";
/// The dataset the subnet evaluates on.
pub const FALCON_DATASET: &str = "tiiuae/falcon-refinedweb";

/// Settings of the rows API client; `Default` is the original's behaviour.
#[derive(Debug, Clone)]
pub struct FalconConfig {
    /// The rows endpoint (tests point it at a local server).
    pub base_url: String,
    /// Dataset id.
    pub dataset: String,
    /// Dataset config.
    pub config: String,
    /// Dataset split.
    pub split: String,
    /// Requests per page before giving up (the original: 10).
    pub max_tries: u32,
    /// Wait between two tries (the original: 5 s).
    pub retry_delay: Duration,
    /// Limit for one whole request, body included.
    pub timeout: Duration,
    /// Largest page offset drawn (pages are drawn from `1..=max_page`).
    pub max_page: u64,
}

impl Default for FalconConfig {
    fn default() -> Self {
        FalconConfig {
            base_url: FALCON_BASE_URL.to_string(),
            dataset: FALCON_DATASET.to_string(),
            config: "default".to_string(),
            split: "train".to_string(),
            max_tries: 10,
            retry_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            max_page: MAX_PAGE,
        }
    }
}

/// The rows API as a [`PageSource`].
#[derive(Debug, Clone)]
pub struct FalconSource {
    config: FalconConfig,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct RowsReply {
    rows: Vec<RowEntry>,
}

#[derive(Deserialize)]
struct RowEntry {
    row: Row,
}

#[derive(Deserialize)]
struct Row {
    content: String,
}

impl FalconSource {
    /// A client with `config`'s endpoint, retries and timeout.
    pub fn new(config: FalconConfig) -> Result<Self, DataError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("pretrain-data/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DataError::Http(e.to_string()))?;
        reqwest::Url::parse(&config.base_url)
            .map_err(|e| DataError::Http(format!("bad base URL {:?}: {e}", config.base_url)))?;
        Ok(FalconSource { config, client })
    }

    /// The settings in use.
    pub fn config(&self) -> &FalconConfig {
        &self.config
    }

    /// The exact URL requested for `page` (query encoded as Python's `requests` does).
    pub fn page_url(&self, page: u64) -> Result<reqwest::Url, DataError> {
        let offset = page.to_string();
        let limit = ROWS_PER_PAGE.to_string();
        reqwest::Url::parse_with_params(
            &self.config.base_url,
            [
                ("dataset", self.config.dataset.as_str()),
                ("config", self.config.config.as_str()),
                ("split", self.config.split.as_str()),
                ("offset", offset.as_str()),
                ("limit", limit.as_str()),
            ],
        )
        .map_err(|e| DataError::Http(format!("bad base URL {:?}: {e}", self.config.base_url)))
    }

    async fn try_once(&self, url: &reqwest::Url) -> Result<Vec<String>, String> {
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| describe(&e))?;
        if !status.is_success() {
            let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("HTTP {status}: {}", snippet.trim()));
        }
        let reply: RowsReply = serde_json::from_slice(&body)
            .map_err(|e| format!("reply is not the rows API's JSON: {e}"))?;
        Ok(reply.rows.into_iter().map(|r| r.row.content).collect())
    }
}

/// The error of a request with its causes (reqwest's Display hides them).
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        format!("timed out: {err}")
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[async_trait::async_trait]
impl PageSource for FalconSource {
    fn name(&self) -> String {
        "falcon".to_string()
    }

    fn page_range(&self) -> RangeInclusive<u64> {
        1..=self.config.max_page
    }

    async fn fetch_page(&self, page: u64) -> Result<Vec<String>, DataError> {
        let url = self.page_url(page)?;
        let tries = self.config.max_tries.max(1);
        let mut last = String::new();
        for attempt in 1..=tries {
            match self.try_once(&url).await {
                Ok(rows) => {
                    debug!(page, rows = rows.len(), attempt, "fetched page");
                    return Ok(rows);
                }
                Err(reason) => {
                    warn!(page, attempt, tries, %reason, "page request failed");
                    last = reason;
                    if attempt < tries {
                        tokio::time::sleep(self.config.retry_delay).await;
                    }
                }
            }
        }
        Err(DataError::PageFetch {
            dataset: self.config.dataset.clone(),
            page,
            tries,
            last,
        })
    }
}
