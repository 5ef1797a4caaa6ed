//! The one retry loop: a call is tried again, on the [`Backoff`] schedule,
//! only while its error says it may succeed later.

use std::fmt::Display;
use std::future::Future;

use pretrain_core::Backoff;
use tracing::warn;

/// The last error of a call that [`retry`] gave up on, with the attempts made.
#[derive(Debug)]
pub struct GaveUp<E> {
    /// The last error.
    pub error: E,
    /// Attempts made.
    pub attempts: u32,
    /// Whether the error itself was retryable (the attempts ran out) or a
    /// permanent refusal (stopped at once).
    pub retryable: bool,
}

/// Runs `op` until it succeeds, fails with an error `retryable` rejects,
/// or the schedule runs out; logs each retry once with its reason.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    backoff: &Backoff,
    retryable: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, GaveUp<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        match op().await {
            Ok(v) => return Ok(v),
            Err(error) => {
                let can = retryable(&error);
                let delay = if can { backoff.delay(attempts) } else { None };
                let Some(delay) = delay else {
                    return Err(GaveUp {
                        error,
                        attempts,
                        retryable: can,
                    });
                };
                warn!("{what} failed (attempt {attempts}): {error}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn retries_only_what_can_succeed_later() {
        let fast = Backoff::constant(Duration::from_millis(1), Some(4));
        let mut n = 0;
        let ok: Result<u32, GaveUp<String>> = retry(
            "x",
            &fast,
            |_| true,
            || {
                n += 1;
                let v = n;
                async move {
                    if v < 3 {
                        Err(format!("busy {v}"))
                    } else {
                        Ok(v)
                    }
                }
            },
        )
        .await;
        assert_eq!(ok.unwrap(), 3);

        let mut calls = 0;
        let permanent = retry(
            "x",
            &fast,
            |e: &String| e != "no",
            || {
                calls += 1;
                async { Err::<(), _>("no".to_string()) }
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            (permanent.attempts, permanent.retryable, calls),
            (1, false, 1)
        );

        let out = retry("x", &fast, |_| true, || async { Err::<(), _>("busy") })
            .await
            .unwrap_err();
        assert_eq!((out.attempts, out.retryable), (4, true));
    }
}
