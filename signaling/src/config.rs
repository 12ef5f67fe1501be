//! The `[rooms]` configuration section: limits, timings and chat policy.
//! Deserialised by the server from its TOML/env config; every field has a default.

use serde::Deserialize;

/// Limits and timings of Watch Together rooms. Times in milliseconds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct RoomsConfig {
    /// Most rooms alive at once on this node.
    pub max_rooms: usize,
    /// Most members (connected or within their grace period) in one room.
    pub max_members_per_room: usize,
    /// Largest accepted WebSocket frame; larger closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// Outbound messages queued per connection; a connection whose queue is full is closed with 1013.
    pub queue_depth: usize,
    /// Outbound bytes queued per connection, whatever queued them (broadcasts,
    /// replies, pongs to the client's pings, answers before `hello`); past it the
    /// connection is closed with 1013. Keep it well above the largest `welcome`.
    pub max_queued_bytes_per_connection: usize,
    /// How long a disconnected member (and the host role) is kept for a resume.
    pub grace_period_ms: u64,
    /// Broadcasts kept per room for resumes.
    pub log_size: usize,
    /// Per-user chat rate limit: at most `chat_rate_count` messages per `chat_rate_window_ms`.
    pub chat_rate_count: u32,
    pub chat_rate_window_ms: u64,
    /// Per-connection limit on all client messages (token bucket: rate per second, burst).
    pub messages_per_second: f64,
    pub messages_burst: f64,
    /// Longest chat message, in characters.
    pub chat_max_chars: usize,
    /// Chat messages containing one of these words (case-insensitive) are refused.
    pub blocked_words: Vec<String>,
    /// Chat messages sent in `welcome`.
    pub welcome_chat: usize,
    /// Ready barrier: longest wait for members to report `ready`.
    pub ready_timeout_ms: u64,
    /// Ready barrier: how far in the future the scheduled start is.
    pub start_lead_ms: u64,
    /// Drift past which a host report corrects the room / a viewer gets a `sync.hint`.
    pub drift_threshold_ms: f64,
    /// Drift past which the fix is a seek rather than a rate nudge.
    pub drift_seek_threshold_ms: f64,
    /// A member with no `playback.report` for this long is `idle`.
    pub idle_after_ms: u64,
    /// Time a new connection has to send `hello`.
    pub hello_timeout_ms: u64,
    /// Server-initiated clock measurement of each client, after the initial burst.
    pub ping_interval_ms: u64,
    /// Pings in the initial burst, one per `burst_interval_ms`.
    pub ping_burst: u32,
    pub burst_interval_ms: u64,
    /// Granularity of the room timer (grace, barrier, idle, pings).
    pub tick_ms: u64,
    /// Longest a `reaction` broadcast may wait for company: reactions arriving
    /// within this window leave together, one write per member, instead of one
    /// write per reaction each. Anything else the room sends (sync, chat,
    /// presence, a reply) writes waiting reactions out first, so order is kept
    /// and nothing but reactions ever waits. 0 sends each reaction at once.
    pub reaction_linger_ms: u64,
    /// A room with more members than this is *large*: its presence changes go out
    /// as one `presence.batch` per `presence_batch_ms` instead of one message per
    /// change, and its `welcome` lists at most `welcome_members` members (the rest
    /// are paged with `members.list`). The default equals `max_members_per_room`,
    /// so a default deployment never has a large room and speaks plain v1.
    pub large_room_above: usize,
    /// Large rooms: interval of `presence.batch`.
    pub presence_batch_ms: u64,
    /// Large rooms: members listed in `welcome`, and member entries per `presence.batch`.
    pub welcome_members: usize,
    /// Calls: at most one `presence.update` per member per this interval comes
    /// from its `call.state`s (speaking flips often); changes in between are
    /// coalesced and leave with the room timer, carrying the latest state.
    pub call_state_interval_ms: u64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            max_rooms: 10_000,
            max_members_per_room: 200,
            max_frame_bytes: 16 * 1024,
            queue_depth: 256,
            max_queued_bytes_per_connection: 1024 * 1024,
            grace_period_ms: 30_000,
            log_size: 1024,
            chat_rate_count: 5,
            chat_rate_window_ms: 5_000,
            messages_per_second: 30.0,
            messages_burst: 60.0,
            chat_max_chars: 500,
            blocked_words: Vec::new(),
            welcome_chat: 50,
            ready_timeout_ms: 3_000,
            start_lead_ms: 300,
            drift_threshold_ms: 40.0,
            drift_seek_threshold_ms: 1_000.0,
            idle_after_ms: 60_000,
            hello_timeout_ms: 10_000,
            ping_interval_ms: 10_000,
            ping_burst: 8,
            burst_interval_ms: 100,
            tick_ms: 50,
            reaction_linger_ms: 20,
            large_room_above: 200,
            presence_batch_ms: 1_000,
            welcome_members: 20,
            call_state_interval_ms: 250,
        }
    }
}
