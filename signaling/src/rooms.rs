//! The rooms of this node: creating a room's task on first join, handing joins and
//! evictions to it, shutting all down. (`Rooms::upgrade`, which serves a
//! connection, is in `conn`: the connection sits above the registry it joins.)
//!
//! Several nodes: the first join of a room on this node asks the broker who owns
//! it (taking the lease when nobody does): this node runs the room's task, or a
//! relay to the owner. What other nodes send arrives through [`Rooms::deliver`].

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use bytes::Bytes;

use crate::broker::{Broker, Owner};
use crate::chat::ChatStore;
use crate::config::RoomsConfig;
use crate::core::Refused;
use crate::event::{JoinReply, JoinRequest, RoomEvent};
use crate::metrics::Metrics;
use crate::peer::PeerMsg;
use crate::state::{Inner, RoomHandle};
use crate::{relay, room};

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
        let mut req = Box::new(req);
        for _ in 0..8 {
            let handle = match inner.rooms.get(room).map(|h| h.clone()) {
                Some(h) => h,
                None => self.open(room).await?,
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

    /// The task of `room` on this node (created): the room itself when this node
    /// owns it (or there is one node), a relay to its owner otherwise.
    async fn open(&self, room: &str) -> Result<RoomHandle, Refused> {
        let inner = &self.inner;
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
        let owner = if inner.broker.clustered() {
            match inner.broker.claim(room).await {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::warn!(room, error = %e, "cluster: cannot tell who owns the room");
                    return Err(Refused {
                        code: "unavailable",
                        message: "the cluster's broker does not answer; try again shortly".into(),
                        close: 1013,
                    });
                }
            }
        } else {
            None
        };
        Ok(inner
            .rooms
            .entry(room.to_string())
            .or_insert_with(|| {
                let generation = inner.next_conn_id();
                let tx = match owner {
                    None => room::spawn(room, generation, inner.clone(), None),
                    Some(Owner::Here { fence }) => {
                        room::spawn(room, generation, inner.clone(), Some(fence))
                    }
                    Some(Owner::There { node, fence }) => {
                        relay::spawn(room, generation, inner.clone(), node, fence)
                    }
                };
                RoomHandle { tx, generation }
            })
            .clone())
    }

    /// What another node sent (the broker's subscriber calls this, in order): handed
    /// to the room's task or relay here. A join for a room this node no longer runs
    /// claims it again (the owner's room may have just ended) or is refused.
    pub async fn deliver(&self, bytes: Bytes) {
        let msg = match PeerMsg::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: unreadable message from another node");
                return;
            }
        };
        let room = msg.room().to_string();
        let handle = match self.inner.rooms.get(&room).map(|h| h.clone()) {
            Some(h) => Some(h),
            None if matches!(msg, PeerMsg::Join { .. }) => self.open(&room).await.ok(),
            None => None,
        };
        let delivered = match handle {
            Some(h) => {
                h.tx.send(RoomEvent::Peer(msg))
                    .await
                    .map_err(|e| match e.0 {
                        RoomEvent::Peer(m) => m,
                        _ => unreachable!("send returns the event it was given"),
                    })
            }
            None => Err(msg),
        };
        // A join nobody here can take: the member's node refuses it (try again).
        if let Err(PeerMsg::Join {
            room, from, conn, ..
        }) = delivered
        {
            let refused = PeerMsg::Refused {
                room,
                conn,
                code: "unavailable".into(),
                message: "the room is moving to another node; try again".into(),
                close: 1013,
            };
            self.inner.broker.send(&from, refused.encode());
        }
    }

    /// Several nodes: `node` stopped heartbeating. Rooms here drop its members
    /// (their grace period starts), relays to rooms it owned send theirs to resume.
    pub async fn node_gone(&self, node: &str) {
        let handles: Vec<RoomHandle> = self.inner.rooms.iter().map(|e| e.clone()).collect();
        for h in handles {
            let _ = h.tx.send(RoomEvent::NodeGone(node.to_string())).await;
        }
    }

    /// Withdraws `user`'s access to `room` on this node: each of their connections
    /// gets `error {code, message}` and close 4004, and leaves the room at once (no
    /// grace period, no resume). Nothing happens when the room or the user is not here.
    /// The server checks access again when a connection joins, so a later reconnect
    /// is refused there.
    pub async fn evict(&self, room: &str, user: &str, code: &'static str, message: &str) {
        let Some(handle) = self.inner.rooms.get(room).map(|h| h.clone()) else {
            // Several nodes: the room may live on another node.
            let broker = &self.inner.broker;
            if broker.clustered()
                && let Ok(Some((node, _))) = broker.owner(room).await
                && *node != *broker.node_id()
            {
                let msg = PeerMsg::Evict {
                    room: room.to_string(),
                    user: user.to_string(),
                    code: code.to_string(),
                    message: message.to_string(),
                };
                broker.send(&node, msg.encode());
            }
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
