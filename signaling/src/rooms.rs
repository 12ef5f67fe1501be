//! The rooms of this node: creating a room's task on first join, handing joins and
//! evictions to it, shutting all down. (`Rooms::upgrade`, which serves a
//! connection, is in `conn`: the connection sits above the registry it joins.)

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::broker::Broker;
use crate::chat::ChatStore;
use crate::config::RoomsConfig;
use crate::core::Refused;
use crate::event::{JoinReply, JoinRequest, RoomEvent};
use crate::metrics::Metrics;
use crate::room;
use crate::state::{Inner, RoomHandle};

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
                                tx: room::spawn(room, generation, inner.clone()),
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
        let ev = RoomEvent::Evict {
            user: user.to_string(),
            code,
            message: message.to_string(),
        };
        // A room that ended meanwhile has no members to evict.
        let _ = handle.tx.send(ev).await;
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
