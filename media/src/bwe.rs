//! A viewer's bandwidth estimate, for choosing its simulcast encoding: the
//! SFU stamps a transport-wide sequence number on every packet it forwards to
//! the viewer (the `transport-cc` header extension, written by `crate::srtp`
//! straight into the send buffer), keeps what it sent in a fixed ring, and
//! feeds the viewer's TWCC feedback to webrtc-rs's Google Congestion Control
//! (`rtc::interceptor::Gcc`, sans-IO). A REMB from the viewer (aiortc and
//! Firefox send one) caps the estimate.
//!
//! Only viewers of a simulcast stream carry one: with one encoding there is
//! nothing to choose, and the stamping costs nothing when absent.

use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, Gcc, PacketReport, convert_twcc};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;

/// Packets remembered for feedback: 4096 at 16 bytes is 64 KiB per viewer of a
/// simulcast stream; at 2.5 Mbit/s (about 250 packets/s) that is 16 s, far more
/// than the 100-200 ms Chromium takes to report.
const RING: usize = 4096;
/// A REMB older than this no longer caps the estimate.
const REMB_MAX_AGE: Duration = Duration::from_secs(5);
/// Floor and ceiling of the estimate.
const MIN_BPS: f64 = 50_000.0;
const MAX_BPS: f64 = 100_000_000.0;

#[derive(Clone, Copy)]
struct Sent {
    at: Option<Instant>,
    seq: u16,
    size: u16,
}

pub struct Bwe {
    /// The negotiated one-byte header extension id of `transport-cc`.
    ext_id: u8,
    next_seq: u16,
    ring: Box<[Sent]>,
    gcc: Gcc,
    /// Whether any feedback has arrived (before that there is no estimate).
    informed: bool,
    remb: Option<(u64, Instant)>,
    /// Reused for each feedback's reports.
    reports: Vec<PacketReport>,
    /// Lost fraction of the last feedback.
    last_loss: f64,
}

impl Bwe {
    /// An estimator for a viewer whose answer negotiated `transport-cc` as
    /// extension `ext_id`, starting from `initial_bps`.
    pub fn new(ext_id: u8, initial_bps: u64) -> Self {
        Self {
            ext_id,
            next_seq: 0,
            ring: vec![
                Sent {
                    at: None,
                    seq: 0,
                    size: 0
                };
                RING
            ]
            .into_boxed_slice(),
            gcc: Gcc::new(initial_bps as f64, MIN_BPS, MAX_BPS),
            informed: false,
            remb: None,
            reports: Vec::with_capacity(256),
            last_loss: 0.0,
        }
    }

    pub fn ext_id(&self) -> u8 {
        self.ext_id
    }

    /// Takes the next transport-wide sequence number for a packet of `size`
    /// bytes leaving at `now`.
    pub fn stamp(&mut self, now: Instant, size: usize) -> u16 {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.ring[seq as usize % RING] = Sent {
            at: Some(now),
            seq,
            size: size.min(u16::MAX as usize) as u16,
        };
        seq
    }

    /// The viewer's TWCC feedback.
    pub fn on_twcc(&mut self, now: Instant, feedback: &TransportLayerCc) {
        self.reports.clear();
        let mut lost = 0usize;
        for (n, ack) in convert_twcc(feedback).into_iter().enumerate() {
            let sent = self.ring[ack.sequence_number as usize % RING];
            let Some(departure) = sent.at.filter(|_| sent.seq == ack.sequence_number) else {
                continue;
            };
            lost += usize::from(!ack.arrived);
            self.reports.push(PacketReport {
                ssrc: 0,
                id: n as u64,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: ack.sequence_number,
                size: usize::from(sent.size),
                arrived: ack.arrived,
                departure,
                arrival: ack.arrival,
                ecn: ack.ecn,
            });
        }
        if self.reports.is_empty() {
            return;
        }
        self.last_loss = lost as f64 / self.reports.len() as f64;
        self.gcc.on_reports(now, &self.reports);
        self.informed = true;
    }

    /// A REMB from the viewer.
    pub fn on_remb(&mut self, now: Instant, bps: f32) {
        if bps.is_finite() && bps > 0.0 {
            self.remb = Some((bps as u64, now));
        }
    }

    /// The estimate in bits per second; `None` until the viewer said anything.
    pub fn estimate(&self, now: Instant) -> Option<u64> {
        let remb = self
            .remb
            .filter(|(_, at)| now.saturating_duration_since(*at) < REMB_MAX_AGE)
            .map(|(bps, _)| bps);
        let gcc = self.informed.then(|| self.gcc.target_bitrate() as u64);
        match (gcc, remb) {
            (Some(g), Some(r)) => Some(g.min(r)),
            (g, r) => g.or(r),
        }
    }

    /// The share of packets the last feedback reported lost.
    pub fn loss(&self) -> f64 {
        self.last_loss
    }

    /// Starts the estimate again from `bps` (a probe of a higher encoding:
    /// the delay-based half then tells within a second or two whether the path
    /// carries it).
    pub fn restart_at(&mut self, bps: u64) {
        self.gcc = Gcc::new(bps as f64, MIN_BPS, MAX_BPS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, SymbolTypeTcc,
    };

    fn feedback(base: u16, count: u16, status: SymbolTypeTcc, delta_us: i64) -> TransportLayerCc {
        let received = status != SymbolTypeTcc::PacketNotReceived;
        TransportLayerCc {
            base_sequence_number: base,
            packet_status_count: count,
            reference_time: 1,
            fb_pkt_count: 0,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: status,
                run_length: count,
            })],
            recv_deltas: if received {
                (0..count)
                    .map(|_| RecvDelta {
                        type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                        delta: delta_us,
                    })
                    .collect()
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    #[test]
    fn no_estimate_before_feedback_then_one_after() {
        let t0 = Instant::now();
        let mut bwe = Bwe::new(3, 2_000_000);
        assert_eq!(bwe.estimate(t0), None);
        for i in 0..50u16 {
            assert_eq!(
                bwe.stamp(t0 + Duration::from_millis(u64::from(i) * 4), 1200),
                i
            );
        }
        bwe.on_twcc(
            t0 + Duration::from_millis(250),
            &feedback(0, 50, SymbolTypeTcc::PacketReceivedSmallDelta, 4000),
        );
        let estimate = bwe.estimate(t0 + Duration::from_millis(250));
        assert!(estimate.is_some_and(|e| e > 0), "{estimate:?}");
        assert_eq!(bwe.loss(), 0.0);
    }

    #[test]
    fn heavy_loss_brings_the_estimate_down() {
        let t0 = Instant::now();
        let mut bwe = Bwe::new(3, 2_000_000);
        let mut t = t0;
        for round in 0..10u16 {
            for _ in 0..50 {
                t += Duration::from_millis(4);
                bwe.stamp(t, 1200);
            }
            bwe.on_twcc(
                t,
                &feedback(round * 50, 50, SymbolTypeTcc::PacketNotReceived, 0),
            );
        }
        assert!(bwe.loss() > 0.9);
        let estimate = bwe.estimate(t).unwrap();
        assert!(estimate < 2_000_000, "{estimate}");
    }

    #[test]
    fn a_remb_caps_the_estimate_while_fresh() {
        let t0 = Instant::now();
        let mut bwe = Bwe::new(3, 2_000_000);
        bwe.on_remb(t0, 300_000.0);
        assert_eq!(bwe.estimate(t0), Some(300_000));
        assert_eq!(bwe.estimate(t0 + REMB_MAX_AGE), None);
    }
}
