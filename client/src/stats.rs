//! What a viewer counts about the packets it receives (sequence continuity, loss,
//! late packets, keyframe wait) and the latency histograms the report prints.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A histogram of microseconds (1 µs .. 10 min, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// p50/p99/p999 and friends of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// Sequence-number accounting of one RTP stream.
#[derive(Debug, Clone, Default)]
pub struct SeqTrack {
    started: bool,
    last: u16,
    cycles: u64,
    base_ext: u64,
    max_ext: u64,
    pub received: u64,
    /// Packets older than the newest already seen (reordered or retransmitted).
    pub late: u64,
    pub duplicates: u64,
    seen_recent: u64,
}

impl SeqTrack {
    pub fn on_packet(&mut self, seq: u16) {
        if !self.started {
            self.started = true;
            self.last = seq;
            self.base_ext = seq as u64;
            self.max_ext = seq as u64;
            self.received = 1;
            self.seen_recent = 1;
            return;
        }
        let diff = seq.wrapping_sub(self.last) as i16;
        if diff > 0 {
            if seq < self.last {
                self.cycles += 1 << 16;
            }
            // Shift the "recently seen" bitmap along.
            let shift = diff as u32;
            self.seen_recent = if shift >= 64 {
                0
            } else {
                self.seen_recent << shift
            } | 1;
            self.last = seq;
            self.max_ext = self.cycles + seq as u64;
            self.received += 1;
        } else if diff == 0 {
            self.duplicates += 1;
        } else {
            let back = (-(diff as i32)) as u32;
            if back < 64 && self.seen_recent & (1 << back) != 0 {
                self.duplicates += 1;
                return;
            }
            if back < 64 {
                self.seen_recent |= 1 << back;
            }
            self.late += 1;
            self.received += 1;
        }
    }

    /// Packets expected from the first to the newest sequence number seen.
    pub fn expected(&self) -> u64 {
        if self.started {
            self.max_ext - self.base_ext + 1
        } else {
            0
        }
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// The index of [`LayerStats::packets`] counting video without an encoding tag
/// (a publisher without simulcast).
pub const UNTAGGED: usize = 3;
/// "No encoding" in [`LayerCtl`].
pub const NO_LAYER: u8 = u8::MAX;

/// What a viewer does about layers for the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerRole {
    /// Automatic selection (no `/layer` request).
    Auto,
    /// Pinned to this encoding index once connected.
    Pinned(u8),
    /// Alternates its pin between these two encoding indexes.
    Switching(u8, u8),
}

/// Between the run's controller (which POSTs `/layer`) and a viewer's driver
/// thread (which sees the packets): what was asked, when, and what arrives.
#[derive(Debug)]
pub struct LayerCtl {
    pub role: LayerRole,
    /// The encoding index asked for ([`NO_LAYER`]: automatic).
    pub want: AtomicU8,
    /// When the switch to `want` was asked (µs since [`crate::media::base`]);
    /// 0 once its first packet arrived (or no switch pending).
    pub asked_us: AtomicU64,
    /// The encoding of the last video packet ([`UNTAGGED`] untagged, [`NO_LAYER`]
    /// before the first).
    pub current: AtomicU8,
}

impl LayerCtl {
    pub fn new(role: LayerRole) -> Self {
        Self {
            role,
            want: AtomicU8::new(NO_LAYER),
            asked_us: AtomicU64::new(0),
            current: AtomicU8::new(NO_LAYER),
        }
    }
}

/// What one viewer saw of the simulcast encodings.
#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    /// Video packets per encoding (index 0–2; [`UNTAGGED`]: no encoding tag).
    pub packets: [u64; 4],
    /// The same, inside the measurement window.
    pub window_packets: [u64; 4],
    pub current: Option<usize>,
    /// Changes of encoding seen in the viewer's one video stream …
    pub changes: u64,
    /// … whose first packet did not start a key frame (a broken picture) …
    pub change_not_on_keyframe: u64,
    /// … that came before the old encoding's frame was complete (no marker) …
    pub change_mid_frame: u64,
    /// … whose RTP timestamp did not move forward from the last packet's.
    pub change_ts_not_forward: u64,
    pub last_marker: bool,
    pub last_ts: u32,
    /// Each switch asked through `/layer`: from the POST to the first packet of
    /// the encoding asked for (at the viewer's socket), µs.
    pub switch_us: Vec<u64>,
}

/// Everything one viewer counted.
#[derive(Debug, Clone)]
pub struct ViewerStats {
    pub created_at: Instant,
    pub connected_at: Option<Instant>,
    pub first_packet_at: Option<Instant>,
    pub first_keyframe_at: Option<Instant>,
    pub video: SeqTrack,
    pub audio: SeqTrack,
    pub packets: u64,
    pub bytes: u64,
    pub failed: bool,
    pub layers: LayerStats,
    /// Shared with the controller when this viewer pins or switches layers.
    pub ctl: Option<Arc<LayerCtl>>,
}

impl ViewerStats {
    pub fn new(created_at: Instant, ctl: Option<Arc<LayerCtl>>) -> Self {
        Self {
            created_at,
            connected_at: None,
            first_packet_at: None,
            first_keyframe_at: None,
            video: SeqTrack::default(),
            audio: SeqTrack::default(),
            packets: 0,
            bytes: 0,
            failed: false,
            layers: LayerStats::default(),
            ctl,
        }
    }

    /// From connected (DTLS up, the server starts forwarding) to the first key frame.
    pub fn keyframe_wait(&self) -> Option<Duration> {
        Some(
            self.first_keyframe_at?
                .saturating_duration_since(self.connected_at?),
        )
    }

    /// From the WHEP request to connected.
    pub fn setup_time(&self) -> Option<Duration> {
        Some(
            self.connected_at?
                .saturating_duration_since(self.created_at),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_late_and_wraps() {
        let mut t = SeqTrack::default();
        for s in [65533u16, 65534, 65535, 0, 1, 3, 2, 5] {
            t.on_packet(s);
        }
        assert_eq!(t.expected(), 9);
        assert_eq!(t.received, 8);
        assert_eq!(t.lost(), 1);
        assert_eq!(t.late, 1);
        t.on_packet(5);
        t.on_packet(2);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.lost(), 1);
    }
}
