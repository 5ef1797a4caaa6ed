//! One retry schedule for every call that can succeed later (chain rate
//! limits, network errors, timeouts). Pure: callers sleep the delays.

use std::time::Duration;

/// Exponential backoff with a cap and an optional attempt limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
    /// Growth of the wait after each failure (1.0 = constant).
    pub factor: f64,
    /// Give up after this many attempts; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(300),
            factor: 2.0,
            max_attempts: Some(10),
        }
    }
}

impl Backoff {
    /// A constant wait of `delay` between attempts.
    pub fn constant(delay: Duration, max_attempts: Option<u32>) -> Self {
        Self {
            initial: delay,
            max: delay,
            factor: 1.0,
            max_attempts,
        }
    }

    /// The wait after failed attempt number `attempt` (1-based), or `None`
    /// when no attempt is left.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        let grown = self.initial.as_secs_f64()
            * self
                .factor
                .max(1.0)
                .powi(attempt.saturating_sub(1).min(64) as i32);
        let capped = if grown.is_finite() {
            grown.min(self.max.as_secs_f64())
        } else {
            self.max.as_secs_f64()
        };
        Some(Duration::from_secs_f64(capped.max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_stops() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
            factor: 2.0,
            max_attempts: Some(5),
        };
        let got: Vec<_> = (1..=5).map(|a| b.delay(a).map(|d| d.as_secs())).collect();
        assert_eq!(got, vec![Some(1), Some(2), Some(4), Some(5), None]);
        let forever = Backoff::constant(Duration::from_millis(7), None);
        assert_eq!(forever.delay(u32::MAX), Some(Duration::from_millis(7)));
    }
}
