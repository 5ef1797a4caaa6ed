//! The retry schedule of every hub call.

use std::time::Duration;

use pretrain_core::Backoff;
use tracing::warn;

use super::http::{with_retry_hint, MAX_RETRY_AFTER};
use super::HfHub;
use crate::HubError;

impl HfHub {
    /// Runs `attempt` until it succeeds, fails for a reason retrying cannot
    /// fix, or the retries are spent (429, 5xx and network failures retry).
    pub(super) async fn retrying<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, HubError>
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
    pub(super) async fn retrying_within<T, F, Fut>(
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
            let (result, hint) = with_retry_hint(tokio::time::timeout(limit, attempt())).await;
            let err = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => HubError::Network(format!("{what}: no answer in {limit:?}")),
            };
            tries += 1;
            let Some(delay) = self.retry_delay(&schedule, tries, hint) else {
                return Err(err);
            };
            warn!(
                "{what}: {err}; retry {tries}/{} in {delay:?}",
                self.options.retries
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// The wait before retry `tries` (from 1): the schedule's, or longer if
    /// the hub said so in `Retry-After` (`hint`, already bounded by
    /// [`MAX_RETRY_AFTER`]); `None` once the retries are spent.
    pub(super) fn retry_delay(
        &self,
        schedule: &Backoff,
        tries: u32,
        hint: Option<Duration>,
    ) -> Option<Duration> {
        let delay = schedule.delay(tries)?;
        Some(hint.map_or(delay, |h| delay.max(h.min(MAX_RETRY_AFTER))))
    }

    /// The retry schedule of every hub call: `retry_delay`, doubled each
    /// time up to 30 s, `retries` times.
    pub(super) fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.options.retry_delay,
            max: Duration::from_secs(30),
            factor: 2.0,
            max_attempts: Some(self.options.retries.saturating_add(1)),
        }
    }

    /// Time allowed for sending `bytes`: the request timeout plus 256 KiB/s.
    pub(super) fn transfer_limit(&self, bytes: u64) -> Duration {
        self.options.timeout + Duration::from_secs(bytes / (256 * 1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HfOptions;

    #[test]
    fn retry_after_lengthens_the_wait_up_to_a_minute() {
        let hub = HfHub::new(HfOptions {
            retry_delay: Duration::from_secs(2),
            retries: 3,
            ..HfOptions::default()
        })
        .unwrap();
        let s = hub.backoff();
        let secs = Duration::from_secs;
        assert_eq!(hub.retry_delay(&s, 1, None), Some(secs(2)));
        assert_eq!(hub.retry_delay(&s, 1, Some(secs(5))), Some(secs(5)));
        // A longer wait than asked is kept; a huge one is cut to a minute.
        assert_eq!(hub.retry_delay(&s, 2, Some(secs(1))), Some(secs(4)));
        assert_eq!(hub.retry_delay(&s, 1, Some(secs(3600))), Some(secs(60)));
        // The retries stay bounded whatever the hub says.
        assert_eq!(hub.retry_delay(&s, 4, Some(secs(1))), None);
    }

    #[test]
    fn only_the_hubs_conflicting_operation_409_is_retried() {
        use super::super::http::is_conflicting_operation;
        assert!(is_conflicting_operation(
            "Cannot create repo: another conflicting operation is in progress"
        ));
        assert!(!is_conflicting_operation(
            "You already created this model repo"
        ));
    }
}
