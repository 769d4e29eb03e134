//! Flow control of callers' WebSockets in the relay's object, per carried connection (pure;
//! `relay_binding` carries it out).
//!
//! A Worker's WebSocket has no `bufferedAmount` and no backpressure: `send` hands the message
//! to the runtime at once, and the hibernation API delivers every message a caller sends. So
//! the object counts, and the bridge does the waiting:
//!
//! - Target → caller: the bridge sends at most [`SOCKET_WINDOW_BYTES`] ahead of the object's
//!   grants, and the object grants what it passed on to the caller, paced by a token bucket
//!   ([`RATE_BYTES_PER_SEC`], burst [`BURST_BYTES`]). The object itself holds no message; what
//!   the runtime may have queued for a caller that reads slower than that grows by at most
//!   the rate, and a target faster than the rate waits in TCP behind the bridge, which stops
//!   reading it. (The runtime cannot tell the object how much its caller has read, so a
//!   byte-exact bound there is impossible; the rate bounds its growth.)
//! - Caller → target: the object cannot stop reading a caller, so it counts what it sent the
//!   bridge and the bridge has not yet granted back (written to the target). A caller more
//!   than [`SOCKET_BACKLOG_BYTES`] ahead of its target is closed with
//!   [`SOCKET_OVERFLOW_CODE`] ("too much data waiting for the target"), never buffered.

use ccr_protocol::relay::{SOCKET_BACKLOG_BYTES, SOCKET_WINDOW_BYTES};

/// Target → caller: the sustained rate at which the object grants a connection more.
pub const RATE_BYTES_PER_SEC: u64 = 8 * 1024 * 1024;
/// Target → caller: what the bucket holds when full (a burst passes at once).
pub const BURST_BYTES: u64 = SOCKET_WINDOW_BYTES;
/// The reason a caller closed for running ahead of its target is given.
pub const OVERFLOW_REASON: &str = "too much data waiting for the target";

/// One carried connection's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Caller → target bytes sent to the bridge that it has not granted back.
    outstanding: u64,
    /// Target → caller bytes passed on to the caller and not yet granted to the bridge.
    owed: u64,
    /// Bytes the bucket may grant now.
    tokens: u64,
    /// When `tokens` was last refilled (ms).
    at_ms: u64,
    /// A delayed grant is scheduled (one at a time).
    armed: bool,
}

/// What to do with a caller's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it to the bridge.
    Forward,
    /// The caller is too far ahead of its target: close it with [`SOCKET_OVERFLOW_CODE`].
    ///
    /// [`SOCKET_OVERFLOW_CODE`]: ccr_protocol::relay::SOCKET_OVERFLOW_CODE
    Overflow,
}

/// A grant to send the bridge now, and when to try again for what is still owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Bytes to grant now (0: none).
    pub bytes: u64,
    /// Wait this long, then call [`Flow::retry`] (only for the caller that armed it).
    pub retry_in_ms: Option<u64>,
}

impl Flow {
    /// A new connection's counters at `now_ms`: a full bucket, nothing owed.
    pub fn new(now_ms: u64) -> Flow {
        Flow {
            outstanding: 0,
            owed: 0,
            tokens: BURST_BYTES,
            at_ms: now_ms,
            armed: false,
        }
    }

    /// A caller's message of `bytes`: forwarded within the backlog, else the caller closes.
    pub fn caller_sent(&mut self, bytes: u64) -> Admit {
        match self.outstanding.checked_add(bytes) {
            Some(total) if total <= SOCKET_BACKLOG_BYTES => {
                self.outstanding = total;
                Admit::Forward
            }
            _ => Admit::Overflow,
        }
    }

    /// The bridge wrote `bytes` more of the caller's messages to the target.
    pub fn granted_back(&mut self, bytes: u64) {
        self.outstanding = self.outstanding.saturating_sub(bytes);
    }

    /// Caller → target bytes waiting for the target.
    #[cfg(test)]
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// `bytes` of the target's messages were passed on to the caller at `now_ms`.
    pub fn forwarded(&mut self, bytes: u64, now_ms: u64) -> Grant {
        self.owed = self.owed.saturating_add(bytes);
        self.grant(now_ms)
    }

    /// The delayed grant's time came.
    pub fn retry(&mut self, now_ms: u64) -> Grant {
        self.armed = false;
        self.grant(now_ms)
    }

    fn grant(&mut self, now_ms: u64) -> Grant {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        let refill = elapsed.saturating_mul(RATE_BYTES_PER_SEC) / 1000;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(BURST_BYTES);
            self.at_ms = now_ms;
        } else if now_ms < self.at_ms {
            // A clock that went back: start again from now.
            self.at_ms = now_ms;
        }
        let bytes = self.owed.min(self.tokens);
        self.owed -= bytes;
        self.tokens -= bytes;
        let retry_in_ms = if self.owed > 0 && !self.armed {
            self.armed = true;
            // Until the bucket holds what is owed (or a full burst), at least 1 ms.
            let need = self.owed.min(BURST_BYTES).saturating_sub(self.tokens);
            Some((need.saturating_mul(1000).div_ceil(RATE_BYTES_PER_SEC)).max(1))
        } else {
            None
        };
        Grant { bytes, retry_in_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_ahead_of_its_target_by_more_than_the_backlog_is_closed() {
        let mut f = Flow::new(0);
        assert_eq!(f.caller_sent(SOCKET_BACKLOG_BYTES - 10), Admit::Forward);
        assert_eq!(f.caller_sent(10), Admit::Forward);
        assert_eq!(f.caller_sent(1), Admit::Overflow);
        // What was refused is not counted; a grant makes room again.
        assert_eq!(f.outstanding(), SOCKET_BACKLOG_BYTES);
        f.granted_back(100);
        assert_eq!(f.caller_sent(100), Admit::Forward);
        assert_eq!(f.caller_sent(u64::MAX), Admit::Overflow);
        f.granted_back(u64::MAX);
        assert_eq!(f.outstanding(), 0);
    }

    #[test]
    fn grants_follow_what_was_passed_on_within_the_rate() {
        let mut f = Flow::new(1_000);
        // A burst's worth passes at once.
        let g = f.forwarded(BURST_BYTES / 2, 1_000);
        assert_eq!(
            g,
            Grant {
                bytes: BURST_BYTES / 2,
                retry_in_ms: None
            }
        );
        let g = f.forwarded(BURST_BYTES, 1_000);
        assert_eq!(g.bytes, BURST_BYTES / 2);
        // The rest is owed: one timer, for when the bucket holds it.
        let wait = g.retry_in_ms.unwrap();
        assert_eq!(
            wait,
            ((BURST_BYTES / 2) * 1000).div_ceil(RATE_BYTES_PER_SEC)
        );
        let g = f.forwarded(10, 1_001);
        assert_eq!(g.retry_in_ms, None, "one timer at a time");
        assert_eq!(g.bytes, RATE_BYTES_PER_SEC / 1000, "1 ms refilled");
        // The timer fires a little late, as timers do.
        let g = f.retry(1_000 + wait + 10);
        assert_eq!(g.retry_in_ms, None);
        assert_eq!(
            g.bytes,
            BURST_BYTES / 2 + 10 - RATE_BYTES_PER_SEC / 1000,
            "everything owed granted once the bucket refilled"
        );
    }

    #[test]
    fn the_bucket_never_holds_more_than_a_burst() {
        let mut f = Flow::new(0);
        let g = f.forwarded(3 * BURST_BYTES, 3_600_000);
        assert_eq!(g.bytes, BURST_BYTES);
        assert!(g.retry_in_ms.is_some());
        // Everything owed is granted in the end, a burst at a time, at the rate.
        let mut granted = g.bytes;
        let mut now = 3_600_000;
        let mut wait = g.retry_in_ms;
        while let Some(ms) = wait {
            now += ms;
            let g = f.retry(now);
            granted += g.bytes;
            wait = g.retry_in_ms;
        }
        assert_eq!(granted, 3 * BURST_BYTES);
        let secs = (now - 3_600_000) as f64 / 1000.0;
        let expected = (2 * BURST_BYTES) as f64 / RATE_BYTES_PER_SEC as f64;
        assert!((secs - expected).abs() < 0.01, "{secs} s, not {expected} s");
    }

    #[test]
    fn a_clock_that_goes_back_grants_nothing_extra() {
        let mut f = Flow::new(10_000);
        assert_eq!(f.forwarded(BURST_BYTES, 10_000).bytes, BURST_BYTES);
        let g = f.forwarded(100, 5_000);
        assert_eq!(g.bytes, 0);
        assert!(g.retry_in_ms.is_some());
        assert_eq!(f.retry(5_001).bytes, 100.min(RATE_BYTES_PER_SEC / 1000));
    }
}
