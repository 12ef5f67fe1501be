//! Watch Together rooms over WebSocket: clock sync, playback state, presence, chat.
//! Knows nothing of media; the server asks it through the traits it defines.
//!
//! Module map, from the leaves up (a module imports only modules listed above it;
//! the leaves import none of their siblings):
//! - Leaves, the shared vocabulary:
//!   - [`config`]: the `[rooms]` limits and timings.
//!   - [`wire`]: the protocol's client messages (SYNC_PROTOCOL.md v1).
//!   - [`clock`]: server time and the clock-offset filter.
//!   - [`playback`]: the playback state, its extrapolation, the ready barrier.
//!   - [`chat`]: the [`chat::ChatStore`] seam, rate limits, blocked words.
//!   - [`broker`]: the multi-node seam ([`broker::InProcessBroker`] by default).
//!   - [`metrics`]: Prometheus instruments.
//!   - `identity`: who connects ([`Identity`]), well-formed room ids.
//!   - `frame`: what a connection's writer is handed, framing once per broadcast.
//!   - `trim`: gives freed heap back to the OS after a burst of joins or leaves.
//! - `server_msg`: every message the server sends, typed, serialised once.
//! - `core`: the room's sans-IO core: `Room::handle(now, input)` leaves effects in
//!   an outbox; one file per message family (members, resume, playback, chat,
//!   moderation). No clock, no tokio, no sockets.
//! - `link`: a member's socket shared by the room (direct writes) and the connection.
//! - `event`: what reaches a room's task (joins, messages, typed database results).
//! - `state`: what all rooms share (limits, store, broker, metrics, the registry).
//! - `room`: the room task, the shell around the core: channel, timers, clock,
//!   database calls, socket writes.
//! - `rooms`: [`Rooms`], the registry: creates room tasks, hands them joins.
//! - `conn`: one WebSocket connection (reader, drains what would have blocked).

pub mod broker;
pub mod chat;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod playback;
pub mod wire;

mod conn;
mod core;
mod event;
mod frame;
mod identity;
mod link;
mod room;
mod rooms;
mod server_msg;
mod state;
mod trim;

pub use crate::core::Refused;
pub use broker::{Broker, InProcessBroker};
pub use chat::{ChatStore, MemoryStore};
pub use config::RoomsConfig;
pub use identity::{Identity, valid_room_id};
pub use link::WsUpgrade;
pub use metrics::Metrics;
pub use rooms::Rooms;
