//! The server's one clock: wall-clock unix time for every stamp it writes
//! (sessions, ledger rows, streams, chat, token expiry), behind a [`Clock`] so
//! that code run by time (the background jobs) can be driven by a
//! [`ManualClock`] in tests instead of sleeping.
//!
//! The media and signaling crates keep their own (they cannot import this
//! crate); everything in `src` reads the time here.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock unix milliseconds (0 before 1970, which no real clock reads).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock unix seconds (JWT `iat`/`exp`).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where time-driven code gets the time from.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The wall clock, [`now_ms`].
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that moves only when told (tests).
#[derive(Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        Self(AtomicI64::new(start_ms))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3_000);
        clock.set(42);
        assert_eq!(clock.now_ms(), 42);
    }

    #[test]
    fn seconds_and_milliseconds_read_the_same_clock() {
        let ms = now_ms();
        let secs = now_secs() as i64;
        assert!((secs - ms / 1000).abs() <= 1, "{secs} vs {ms}");
        assert!(SystemClock.now_ms() >= ms);
    }
}
