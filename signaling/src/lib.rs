//! Watch Together rooms over WebSocket: clock sync, playback state, presence, chat.
//! Knows nothing of media; the server asks it through the traits it defines.
//!
//! Module map:
//! - [`config`]: the `[rooms]` limits and timings.
//! - [`wire`]: the protocol's messages (SYNC_PROTOCOL.md v1).
//! - [`clock`]: server time and the clock-offset filter.
//! - [`playback`]: the playback state, its extrapolation, the ready barrier.
//! - [`chat`]: the [`chat::ChatStore`] seam, rate limits, blocked words.
//! - [`broker`]: the multi-node seam ([`broker::InProcessBroker`] by default).
//! - [`metrics`]: Prometheus instruments.
//! - `room`: the room task, the one owner of a room's state.
//! - `conn`: one WebSocket connection (reader, drains what would have blocked).
//! - `link`: a member's socket shared by the room (direct writes) and the connection.

pub mod broker;
pub mod chat;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod playback;
pub mod wire;

mod conn;
mod link;
mod room;
mod trim;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

pub use broker::{Broker, InProcessBroker};
pub use chat::{ChatStore, MemoryStore};
pub use config::RoomsConfig;
pub use link::WsUpgrade;
pub use metrics::Metrics;
pub use room::Refused;

use room::{JoinReply, JoinRequest, RoomEvent};

/// Who is connecting, as the server established it from a room token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// Display name from the token; `hello.user.name` is used when absent.
    pub name: Option<String>,
    /// Token grant `moderate`: may moderate chat and take the host role.
    pub moderator: bool,
    /// Token grant `chat`.
    pub can_chat: bool,
}

/// `[A-Za-z0-9_.:-]{1,128}` (SYNC_PROTOCOL.md "Connection").
pub fn valid_room_id(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 128
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[derive(Clone)]
pub(crate) struct RoomHandle {
    pub tx: mpsc::Sender<RoomEvent>,
    pub generation: u64,
}

pub(crate) struct Inner {
    pub cfg: Arc<RoomsConfig>,
    pub store: Arc<dyn ChatStore>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Metrics,
    pub rooms: DashMap<String, RoomHandle>,
    next_id: AtomicU64,
}

impl Inner {
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// All rooms of this node. Cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    pub(crate) inner: Arc<Inner>,
}

impl Rooms {
    /// Rooms with the given limits, chat store and broker; metrics go into `registry`.
    pub fn new(
        cfg: RoomsConfig,
        store: Arc<dyn ChatStore>,
        broker: Arc<dyn Broker>,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                cfg: Arc::new(cfg),
                store,
                broker,
                metrics: Metrics::register(registry)?,
                rooms: DashMap::new(),
                next_id: AtomicU64::new(1),
            }),
        })
    }

    pub fn config(&self) -> &RoomsConfig {
        &self.inner.cfg
    }

    /// Rooms alive on this node.
    pub fn room_count(&self) -> usize {
        self.inner.rooms.len()
    }

    /// Answers a WebSocket upgrade and serves the connection of an authenticated user
    /// in `room` until it closes.
    pub fn upgrade(
        &self,
        up: WsUpgrade,
        room: String,
        ident: Identity,
    ) -> axum::response::Response {
        let rooms = self.clone();
        up.on_upgrade(move |io| conn::serve(rooms, io, room, ident))
    }

    /// Hands a join to the room's task, creating the room when needed.
    pub(crate) async fn join(
        &self,
        room: &str,
        req: JoinRequest,
    ) -> Result<mpsc::Sender<RoomEvent>, Refused> {
        let inner = &self.inner;
        if !inner.broker.owns(room) {
            return Err(Refused {
                code: "internal",
                message: "this room lives on another node".into(),
                close: 1013,
            });
        }
        let mut req = Box::new(req);
        for _ in 0..8 {
            let handle = match inner.rooms.get(room) {
                Some(h) => h.clone(),
                None => {
                    if inner.rooms.len() >= inner.cfg.max_rooms {
                        return Err(Refused {
                            code: "server_full",
                            message: format!(
                                "the server is at its room limit ({} rooms)",
                                inner.cfg.max_rooms
                            ),
                            close: 1013,
                        });
                    }
                    inner
                        .rooms
                        .entry(room.to_string())
                        .or_insert_with(|| {
                            let generation = inner.next_conn_id();
                            RoomHandle {
                                tx: room::Room::spawn(room, generation, inner.clone()),
                                generation,
                            }
                        })
                        .clone()
                }
            };
            let (reply_tx, reply_rx) = oneshot::channel();
            match handle.tx.send(RoomEvent::Join(req, reply_tx)).await {
                Ok(()) => {}
                Err(mpsc::error::SendError(RoomEvent::Join(r, _))) => {
                    req = r;
                    inner
                        .rooms
                        .remove_if(room, |_, h| h.generation == handle.generation);
                    continue;
                }
                Err(_) => unreachable!("send returns the event it was given"),
            }
            match reply_rx.await {
                Ok(JoinReply::Joined) => return Ok(handle.tx),
                Ok(JoinReply::Refused(r)) => return Err(r),
                Ok(JoinReply::Retry(r)) => req = r,
                Err(_) => break,
            }
        }
        Err(Refused {
            code: "internal",
            message: "could not join the room; try again".into(),
            close: 1011,
        })
    }

    /// Withdraws `user`'s access to `room` on this node: each of their connections
    /// gets `error {code, message}` and close 4004, and leaves the room at once (no
    /// grace period, no resume). Nothing happens when the room or the user is not here.
    /// The server checks access again when a connection joins, so a later reconnect
    /// is refused there.
    pub async fn evict(&self, room: &str, user: &str, code: &'static str, message: &str) {
        let Some(handle) = self.inner.rooms.get(room).map(|h| h.clone()) else {
            return;
        };
        let (user, message) = (user.to_string(), message.to_string());
        let apply = move |r: &mut room::Room| r.evict(&user, code, &message);
        // A room that ended meanwhile has no members to evict.
        let _ = handle.tx.send(RoomEvent::Apply(Box::new(apply))).await;
    }

    /// Closes every connection (1001) and ends every room, waiting up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let handles: Vec<RoomHandle> = self.inner.rooms.iter().map(|e| e.clone()).collect();
        let mut waits = Vec::new();
        for h in handles {
            let (tx, rx) = oneshot::channel();
            if h.tx.send(RoomEvent::Shutdown(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        let _ = tokio::time::timeout(grace, async {
            for w in waits {
                let _ = w.await;
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids() {
        assert!(valid_room_id("abc-1_2.3:4"));
        assert!(valid_room_id(&"a".repeat(128)));
        assert!(!valid_room_id(&"a".repeat(129)));
        assert!(!valid_room_id(""));
        assert!(!valid_room_id("a/b"));
        assert!(!valid_room_id("é"));
    }
}
