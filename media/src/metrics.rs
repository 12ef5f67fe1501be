//! Prometheus instruments of the packet path, resolved to label children once at
//! start so the hot path only touches atomics.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct MediaMetrics {
    pub streams_live: IntGauge,
    pub publishers: IntGauge,
    pub viewers: IntGauge,
    pub packets_in: IntCounter,
    pub packets_out: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub nacks: IntCounter,
    pub plis: IntCounter,
    pub firs: IntCounter,
    pub plis_sent: IntCounter,
    pub retransmitted: IntCounter,
    pub dropped: DropCounters,
    pub forwarding_delay: Histogram,
    /// `tandem_simulcast_viewers{layer}`: viewers per encoding index (0-2), no
    /// stream label (its cardinality is the operator's stream count).
    pub layer_viewers: [IntGauge; crate::layers::MAX_ENCODINGS],
    /// `tandem_simulcast_switches_total{reason}`, indexed by `SwitchReason::index`.
    pub switches: [IntCounter; 5],
    /// PLIs sent to a publisher because a viewer waits to switch encodings.
    pub switch_plis: IntCounter,
    /// From a switch decided to the new encoding's first packet sent.
    pub switch_delay: Histogram,
    /// Viewer bandwidth feedback received: TWCC and REMB.
    pub twcc: IntCounter,
    pub remb: IntCounter,
    /// Joiners started from the cached last key frame (no PLI waited for).
    pub catch_ups: IntCounter,
}

/// `tandem_dropped_packets_total{reason}`; one child per reason.
#[derive(Clone)]
pub struct DropCounters {
    /// A worker's queue from another worker was full.
    pub worker_queue_full: IntCounter,
    /// Media waited longer than `core::MAX_HANDOVER_AGE` between workers (the worker is
    /// saturated): late video is worse than lost video, which NACK/PLI repair.
    pub stale: IntCounter,
    /// The socket's send buffer was full (a viewer's share of the uplink is exhausted).
    pub socket_full: IntCounter,
    /// The viewer did not negotiate the publisher's codec.
    pub codec_mismatch: IntCounter,
    /// Datagram from an address no session knows.
    pub unknown_source: IntCounter,
    /// The viewer cannot take media yet: DTLS not done (no SRTP keys) or no selected
    /// ICE pair, or its ICE-TCP connection is gone.
    pub session_not_ready: IntCounter,
}

impl MediaMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let streams_live =
            IntGauge::new("tandem_streams_live", "Streams with a connected publisher")?;
        let sessions = IntGaugeVec::new(
            Opts::new("tandem_sessions", "Live WebRTC sessions by kind"),
            &["kind"],
        )?;
        let packets = IntCounterVec::new(
            Opts::new(
                "tandem_packets_forwarded_total",
                "RTP packets received from publishers (in) and sent to viewers (out)",
            ),
            &["direction"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "tandem_bytes_forwarded_total",
                "RTP payload bytes received from publishers (in) and sent to viewers (out)",
            ),
            &["direction"],
        )?;
        let feedback = IntCounterVec::new(
            Opts::new(
                "tandem_rtcp_feedback_total",
                "RTCP feedback received from viewers, by type",
            ),
            &["type"],
        )?;
        let plis_sent = IntCounter::new(
            "tandem_keyframe_requests_sent_total",
            "PLIs sent to publishers (viewer joins and forwarded viewer requests, rate limited)",
        )?;
        let retransmitted = IntCounter::new(
            "tandem_retransmitted_packets_total",
            "Packets retransmitted to viewers in answer to their NACKs",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "tandem_dropped_packets_total",
                "Packets dropped by the SFU, by reason",
            ),
            &["reason"],
        )?;
        let forwarding_delay = Histogram::with_opts(
            HistogramOpts::new(
                "tandem_forwarding_delay_seconds",
                "Time from a packet's arrival at the socket to its last send on a worker",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
        )?;
        let layer_viewers = IntGaugeVec::new(
            Opts::new(
                "tandem_simulcast_viewers",
                "Viewers receiving each simulcast encoding, by its index in the publisher's offer",
            ),
            &["layer"],
        )?;
        let switches = IntCounterVec::new(
            Opts::new(
                "tandem_simulcast_switches_total",
                "Viewers moved from one simulcast encoding to another, by reason",
            ),
            &["reason"],
        )?;
        let switch_plis = IntCounter::new(
            "tandem_simulcast_switch_keyframe_requests_total",
            "Key frame requests (PLI) wanted for a viewer's switch of simulcast encoding",
        )?;
        let switch_delay = Histogram::with_opts(
            HistogramOpts::new(
                "tandem_simulcast_switch_seconds",
                "From a switch of simulcast encoding decided to the new encoding's first packet sent",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0]),
        )?;
        let catch_ups = IntCounter::new(
            "tandem_viewer_catch_ups_total",
            "Joining viewers started from the cached last key frame instead of waiting for a new one",
        )?;
        registry.register(Box::new(catch_ups.clone()))?;
        registry.register(Box::new(layer_viewers.clone()))?;
        registry.register(Box::new(switches.clone()))?;
        registry.register(Box::new(switch_plis.clone()))?;
        registry.register(Box::new(switch_delay.clone()))?;
        registry.register(Box::new(streams_live.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(packets.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(feedback.clone()))?;
        registry.register(Box::new(plis_sent.clone()))?;
        registry.register(Box::new(retransmitted.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(forwarding_delay.clone()))?;
        Ok(Self {
            streams_live,
            publishers: sessions.with_label_values(&["publisher"]),
            viewers: sessions.with_label_values(&["viewer"]),
            packets_in: packets.with_label_values(&["in"]),
            packets_out: packets.with_label_values(&["out"]),
            bytes_in: bytes.with_label_values(&["in"]),
            bytes_out: bytes.with_label_values(&["out"]),
            nacks: feedback.with_label_values(&["nack"]),
            plis: feedback.with_label_values(&["pli"]),
            firs: feedback.with_label_values(&["fir"]),
            twcc: feedback.with_label_values(&["twcc"]),
            remb: feedback.with_label_values(&["remb"]),
            plis_sent,
            retransmitted,
            dropped: DropCounters {
                worker_queue_full: dropped.with_label_values(&["worker_queue_full"]),
                stale: dropped.with_label_values(&["stale"]),
                socket_full: dropped.with_label_values(&["socket_full"]),
                codec_mismatch: dropped.with_label_values(&["codec_mismatch"]),
                unknown_source: dropped.with_label_values(&["unknown_source"]),
                session_not_ready: dropped.with_label_values(&["session_not_ready"]),
            },
            forwarding_delay,
            layer_viewers: std::array::from_fn(|i| {
                layer_viewers.with_label_values(&[&i.to_string()])
            }),
            switches: crate::layers::SwitchReason::ALL
                .map(|r| switches.with_label_values(&[r.as_str()])),
            switch_plis,
            switch_delay,
            catch_ups,
        })
    }
}
