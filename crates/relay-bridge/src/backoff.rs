//! Jittered exponential backoff: after relay errors the bridge waits longer each time (never a
//! tight loop), and a success resets it.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `base` up to `max`, each drawn from the upper half of its step so
/// many bridges do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base`, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(base, max);
        let first = b.next_delay();
        assert!(first >= base / 2 && first <= base);
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            last = b.next_delay();
            assert!(last >= Duration::from_millis(50) && last <= max);
        }
        assert!(last >= max / 2, "capped delays stay near the cap: {last:?}");
        b.reset();
        assert!(b.next_delay() <= base);
    }
}
