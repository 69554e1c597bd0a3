//! Capped exponential backoff with full jitter, shared by every retry in the worker.

use std::time::Duration;

/// Exponential backoff: `base * 2^attempt`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// Delays from `base`, doubling, up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The ceiling for retry number `attempt` (0 = first retry), before jitter.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 overflows any useful duration; saturate instead of wrapping.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Full jitter (a uniform draw in `[ceiling/2, ceiling]`): spreads a fleet's retries apart
    /// while keeping the delay from collapsing to zero.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = ceiling.saturating_sub(half).as_millis() as u64;
        half + Duration::from_millis(fastrand::u64(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_then_caps() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let ceilings: Vec<u64> = (0..8).map(|a| b.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_between_half_and_ceiling() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 0..10 {
            let c = b.ceiling(attempt);
            for _ in 0..50 {
                let d = b.delay(attempt);
                assert!(
                    d >= c / 2 && d <= c,
                    "attempt {attempt}: {d:?} not in [{:?}, {c:?}]",
                    c / 2
                );
            }
        }
    }
}
