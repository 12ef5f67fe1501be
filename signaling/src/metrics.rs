//! Prometheus instruments of the rooms, registered into the server's registry.
//! Names `tandem_*`, base units, no room or user ids as labels.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub rooms: IntGauge,
    pub connections: IntGauge,
    pub messages_in: IntCounter,
    pub messages_out: IntCounter,
    pub fanout_delay: Histogram,
    pub broadcast_pass: Histogram,
    pub resumes: IntCounterVec,
    pub drift_corrections: IntCounter,
    pub sync_hints: IntCounter,
    pub chat_messages: IntCounter,
    pub moderation_actions: IntCounterVec,
    pub clock_rtt: Histogram,
    pub slow_disconnects: IntCounter,
    pub errors: IntCounterVec,
    /// Bytes queued for room WebSockets, all connections together.
    pub ws_queued_bytes: IntGauge,
    /// Connections closed by a limit, by which one.
    pub ws_limit_closes: IntCounterVec,
    /// Several nodes: rooms owned by another node with members on this one.
    pub relays: IntGauge,
    /// Several nodes: rooms this node took over from the broker's log.
    pub takeovers: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            rooms: IntGauge::new("tandem_rooms", "Watch Together rooms alive on this node")?,
            connections: IntGauge::new(
                "tandem_room_connections",
                "Open Watch Together WebSocket connections",
            )?,
            messages_in: IntCounter::new(
                "tandem_room_messages_received_total",
                "Client messages received on room WebSockets",
            )?,
            messages_out: IntCounter::new(
                "tandem_room_messages_sent_total",
                "Messages queued to room WebSocket connections",
            )?,
            fanout_delay: Histogram::with_opts(
                HistogramOpts::new(
                    "tandem_room_fanout_delay_seconds",
                    "Time from a broadcast leaving the room task to its write on a member's socket",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0,
                ]),
            )?,
            broadcast_pass: Histogram::with_opts(
                HistogramOpts::new(
                    "tandem_room_broadcast_pass_seconds",
                    "Time the room task takes to hand one pass's broadcasts to every member's \
                     socket (comparable to a bare write loop over as many sockets)",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
                    0.075, 0.1, 0.25, 0.5, 1.0,
                ]),
            )?,
            resumes: IntCounterVec::new(
                Opts::new(
                    "tandem_room_resumes_total",
                    "Resumes by outcome (replayed: missed events replayed; fresh: new welcome)",
                ),
                &["result"],
            )?,
            drift_corrections: IntCounter::new(
                "tandem_room_drift_corrections_total",
                "playback.state reason=correction broadcasts",
            )?,
            sync_hints: IntCounter::new("tandem_room_sync_hints_total", "sync.hint messages sent")?,
            chat_messages: IntCounter::new(
                "tandem_chat_messages_total",
                "Chat messages persisted and fanned out",
            )?,
            moderation_actions: IntCounterVec::new(
                Opts::new(
                    "tandem_moderation_actions_total",
                    "Moderation actions by kind",
                ),
                &["action"],
            )?,
            clock_rtt: Histogram::with_opts(
                HistogramOpts::new(
                    "tandem_clock_rtt_seconds",
                    "Round-trip times of server-initiated clock measurements",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            slow_disconnects: IntCounter::new(
                "tandem_room_slow_consumer_disconnects_total",
                "Connections closed with 1013 because their outbound queue was full",
            )?,
            errors: IntCounterVec::new(
                Opts::new("tandem_room_errors_total", "error messages sent, by code"),
                &["code"],
            )?,
            ws_queued_bytes: IntGauge::new(
                "tandem_ws_queued_bytes",
                "Bytes queued for room WebSocket connections that their sockets did not take \
                 yet (each connection is bounded by rooms.max_queued_bytes_per_connection)",
            )?,
            ws_limit_closes: IntCounterVec::new(
                Opts::new(
                    "tandem_ws_limit_closes_total",
                    "Room WebSocket connections closed by a limit: queued_bytes, queue_depth \
                     (1013), frame_too_large (1009), pre_hello_frames, no_hello (1008)",
                ),
                &["reason"],
            )?,
            relays: IntGauge::new(
                "tandem_room_relays",
                "Rooms owned by another node of the cluster that have members on this node",
            )?,
            takeovers: IntCounter::new(
                "tandem_room_takeovers_total",
                "Rooms this node took over from the broker's log (their owner stopped)",
            )?,
        };
        registry.register(Box::new(m.rooms.clone()))?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.messages_in.clone()))?;
        registry.register(Box::new(m.messages_out.clone()))?;
        registry.register(Box::new(m.fanout_delay.clone()))?;
        registry.register(Box::new(m.broadcast_pass.clone()))?;
        registry.register(Box::new(m.resumes.clone()))?;
        registry.register(Box::new(m.drift_corrections.clone()))?;
        registry.register(Box::new(m.sync_hints.clone()))?;
        registry.register(Box::new(m.chat_messages.clone()))?;
        registry.register(Box::new(m.moderation_actions.clone()))?;
        registry.register(Box::new(m.clock_rtt.clone()))?;
        registry.register(Box::new(m.slow_disconnects.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.ws_queued_bytes.clone()))?;
        registry.register(Box::new(m.ws_limit_closes.clone()))?;
        registry.register(Box::new(m.relays.clone()))?;
        registry.register(Box::new(m.takeovers.clone()))?;
        Ok(m)
    }
}
