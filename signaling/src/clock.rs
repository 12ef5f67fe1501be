//! Clocks: the server's wall clock in f64 ms, and the NTP-style filter that turns
//! ping/pong samples into a clock-offset estimate (lowest-RTT samples of a window).

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

/// Server time: milliseconds since the Unix epoch, as f64 (the protocol's time unit).
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// One ping exchange: `rtt = (t3-t0)-(t2-t1)`, `offset = ((t1-t0)+(t2-t3))/2`
/// (the answering side's clock minus the asking side's).
pub fn sample(t0: f64, t1: f64, t2: f64, t3: f64) -> (f64, f64) {
    let rtt = ((t3 - t0) - (t2 - t1)).max(0.0);
    let offset = ((t1 - t0) + (t2 - t3)) / 2.0;
    (offset, rtt)
}

/// Keeps the last `window` samples; the estimate is the median offset of the
/// `best` lowest-RTT ones (NTP's clock filter idea).
#[derive(Debug, Clone)]
pub struct ClockFilter {
    window: usize,
    best: usize,
    samples: VecDeque<(f64, f64)>,
}

impl Default for ClockFilter {
    fn default() -> Self {
        Self::new(8, 3)
    }
}

impl ClockFilter {
    pub fn new(window: usize, best: usize) -> Self {
        Self {
            window: window.max(1),
            best: best.max(1),
            samples: VecDeque::new(),
        }
    }

    pub fn add(&mut self, offset: f64, rtt: f64) {
        if !offset.is_finite() || !rtt.is_finite() {
            return;
        }
        if self.samples.len() == self.window {
            self.samples.pop_front();
        }
        self.samples.push_back((offset, rtt));
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// `(offset, rtt)` of the estimate, `None` before the first sample.
    pub fn estimate(&self) -> Option<(f64, f64)> {
        if self.samples.is_empty() {
            return None;
        }
        let mut by_rtt: Vec<(f64, f64)> = self.samples.iter().copied().collect();
        by_rtt.sort_by(|a, b| a.1.total_cmp(&b.1));
        by_rtt.truncate(self.best);
        let rtt = by_rtt[0].1;
        by_rtt.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = by_rtt.len();
        let offset = if n % 2 == 1 {
            by_rtt[n / 2].0
        } else {
            (by_rtt[n / 2 - 1].0 + by_rtt[n / 2].0) / 2.0
        };
        Some((offset, rtt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_formula_recovers_a_symmetric_offset() {
        // Client clock 5000 ms ahead; 10 ms each way; 1 ms server processing.
        let t0 = 1000.0;
        let t1 = t0 - 5000.0 + 10.0;
        let t2 = t1 + 1.0;
        let t3 = t0 + 21.0;
        let (offset, rtt) = sample(t0, t1, t2, t3);
        assert!((offset + 5000.0).abs() < 1e-9, "{offset}");
        assert!((rtt - 20.0).abs() < 1e-9);
    }

    #[test]
    fn filter_prefers_low_rtt_samples() {
        let mut f = ClockFilter::new(8, 3);
        for (o, r) in [
            (100.0, 200.0),
            (5.0, 2.0),
            (6.0, 3.0),
            (7.0, 4.0),
            (-80.0, 150.0),
        ] {
            f.add(o, r);
        }
        let (o, r) = f.estimate().unwrap();
        assert_eq!(o, 6.0);
        assert_eq!(r, 2.0);
        for _ in 0..8 {
            f.add(1.0, 1.0);
        }
        assert_eq!(f.len(), 8);
        assert_eq!(f.estimate().unwrap().0, 1.0);
    }
}
