//! Gives the heap's free pages back to the OS once a burst of joins or leaves has
//! settled (glibc keeps what a thousand `welcome`s and HTTP upgrades freed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Connections opened or closed since the process started.
static CHURN: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);

/// Churn worth a trim: one idle member costs tens of KiB, so 64 are megabytes.
const TRIM_AFTER: u64 = 64;
/// A burst has settled when nothing joined or left for one period.
const PERIOD: Duration = Duration::from_millis(500);

/// Counts a connection joining or leaving; starts the trimmer on first use.
pub(crate) fn churn() {
    CHURN.fetch_add(1, Ordering::Relaxed);
    if !STARTED.swap(true, Ordering::Relaxed) {
        tokio::spawn(trimmer());
    }
}

/// What the trimmer remembers between two looks at the churn counter.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Seen {
    last: u64,
    trimmed: u64,
}

/// Whether to trim now, given the counter; updates what was seen.
fn due(seen: &mut Seen, now: u64) -> bool {
    if now != seen.last {
        seen.last = now;
        return false;
    }
    if now.saturating_sub(seen.trimmed) < TRIM_AFTER {
        return false;
    }
    seen.trimmed = now;
    true
}

async fn trimmer() {
    let mut seen = Seen::default();
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        if due(&mut seen, CHURN.load(Ordering::Relaxed)) {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim takes a size and only touches the allocator's own state.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_settled_burst() {
        let mut s = Seen::default();
        assert!(!due(&mut s, 10), "still moving");
        assert!(!due(&mut s, 10), "settled, but too little churn");
        assert!(!due(&mut s, 100), "moving again");
        assert!(due(&mut s, 100), "settled after 100");
        assert!(!due(&mut s, 100), "already trimmed");
        assert!(!due(&mut s, 120));
        assert!(!due(&mut s, 120), "20 more is not worth a trim");
        assert!(!due(&mut s, 200));
        assert!(due(&mut s, 200));
    }
}
