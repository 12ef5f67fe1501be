//! Waiting without sleeps of a guessed length: [`eventually`] polls a condition until
//! a deadline and fails with what it last saw; [`metric_value`] reads a sample out of
//! the Prometheus text; [`media_lock`] serialises the real-peer tests of a binary.

use std::future::Future;
use std::time::{Duration, Instant};

/// Sum of the samples of `name` (exact metric name, histogram parts excluded) whose
/// label set contains every pair in `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if all {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// Polls `check` every 100 ms until it returns `Ok`, or panics after `within` with
/// the last `Err` it gave (what was seen instead).
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {within:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serialises the tests that run real media peers inside one test binary: on a
/// 2-core machine two Chromium instances at once would make timings meaningless.
pub async fn media_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
