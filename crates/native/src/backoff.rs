//! Retry delays that grow exponentially with jitter, so a failing peer is never hammered in a
//! tight loop and many clients do not retry in lockstep. The random source is a parameter, so
//! tests draw from a seeded generator and a spawned task can use a `Send` one.

use std::time::Duration;

use rand::Rng;

/// How a delay is drawn below its step's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, cap]` ("full jitter"): the widest spread.
    Full,
    /// Uniform in `[cap/2, cap]`: never much shorter than the cap.
    UpperHalf,
}

/// Exponential backoff: attempt n is drawn below `min(max, base·2ⁿ)` according to the
/// [`Jitter`]; [`Backoff::reset`] (after a success or a connection that stayed up long enough)
/// starts again from `base`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: Jitter,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff whose first cap is `base`, growing to at most `max`.
    pub fn new(base: Duration, max: Duration, jitter: Jitter) -> Self {
        Self {
            base,
            max,
            jitter,
            attempt: 0,
        }
    }

    /// The cap for the next attempt (without jitter).
    pub fn cap(&self) -> Duration {
        // The exponent is bounded so the factor cannot overflow; the cap is `max` long before.
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, drawn from `rng`; each call moves to the next step.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        match self.jitter {
            Jitter::Full => {
                let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(rng.random_range(0..=ms))
            }
            Jitter::UpperHalf => {
                let half = cap / 2;
                let ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
                half + Duration::from_millis(rng.random_range(0..=ms))
            }
        }
    }

    /// Back to the first step.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Ends a connection that stayed up `up_for`: one that lasted `healthy_after` or longer
    /// counts as healthy and resets the backoff; a shorter one keeps growing it, so a peer that
    /// accepts and drops at once is not reconnected to in a tight loop.
    pub fn connection_ended(&mut self, up_for: Duration, healthy_after: Duration) {
        if up_for >= healthy_after {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn full_jitter_grows_caps_and_resets() {
        let mut b = Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            Jitter::Full,
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut caps = Vec::new();
        for _ in 0..10 {
            caps.push(b.cap());
            let d = b.next_delay(&mut rng);
            assert!(d <= *caps.last().unwrap());
        }
        assert_eq!(caps[0], Duration::from_millis(500));
        assert_eq!(caps[1], Duration::from_secs(1));
        assert_eq!(caps[5], Duration::from_secs(16));
        assert_eq!(caps[6], Duration::from_secs(30));
        assert_eq!(caps[9], Duration::from_secs(30));
        // Jitter: many draws at the cap spread over the range rather than sitting on it.
        let draws: Vec<Duration> = (0..200).map(|_| b.next_delay(&mut rng)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(10)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(20)));
        b.reset();
        assert_eq!(b.cap(), Duration::from_millis(500));
        // Huge attempt counts do not overflow.
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.cap(), Duration::from_secs(30));
    }

    #[test]
    fn upper_half_jitter_grows_caps_and_resets() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(base, max, Jitter::UpperHalf);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let first = b.next_delay(&mut rng);
        assert!(first >= base / 2 && first <= base);
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            last = b.next_delay(&mut rng);
            assert!(last >= Duration::from_millis(50) && last <= max);
        }
        assert!(last >= max / 2, "capped delays stay near the cap: {last:?}");
        b.reset();
        assert!(b.next_delay(&mut rng) <= base);
    }

    #[test]
    fn only_a_healthy_connection_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8), Jitter::Full);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        b.next_delay(&mut rng);
        b.next_delay(&mut rng);
        b.connection_ended(Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(b.cap(), Duration::from_secs(4));
        b.connection_ended(Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(b.cap(), Duration::from_secs(1));
    }
}
