//! Several nodes: a room owned by another node, as this node's members reach it.
//! The relay task stands where the room's task would: connections hand it the same
//! events (`Join`, `Msg`, `Leave`), it passes them to the owner through the broker
//! and carries out what the owner answers — writes to one member, attaches and
//! detaches, and each pass of broadcasts, which arrives once for this node already
//! framed and is handed as one buffer to every attached member here.
//!
//! It checks the owner's lease every half lease: when the owner is gone (killed,
//! its lease expired) or another node holds the room, every member here is closed
//! with 1012 and resumes — through any node, which then takes the room over from
//! the broker's log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::core::Refused;
use crate::event::{JoinReply, RoomEvent};
use crate::frame::{Outbound, SendError};
use crate::link::{ConnHandle, outside_io_budget};
use crate::peer::{PeerMsg, static_code, static_reason};
use crate::room::MOVED;
use crate::state::Inner;

/// How long a join waits for the owner's answer before it is refused (1013, try
/// again): the owner may have died with its lease still running.
const JOIN_TIMEOUT: Duration = Duration::from_secs(3);

struct Relayed {
    conn: ConnHandle,
    attached: bool,
    /// Until the owner answers the join.
    reply: Option<(oneshot::Sender<JoinReply>, Instant)>,
}

struct Relay {
    id: Arc<str>,
    generation: u64,
    owner: Arc<str>,
    fence: u64,
    inner: Arc<Inner>,
    conns: HashMap<u64, Relayed>,
    me: mpsc::WeakSender<RoomEvent>,
    checking: bool,
    moved: bool,
}

/// Starts the relay of room `id`, owned by `owner` under `fence`.
pub(crate) fn spawn(
    id: &str,
    generation: u64,
    inner: Arc<Inner>,
    owner: Arc<str>,
    fence: u64,
) -> mpsc::Sender<RoomEvent> {
    let (tx, rx) = mpsc::channel(4096);
    let relay = Relay {
        id: id.into(),
        generation,
        owner,
        fence,
        inner,
        conns: HashMap::new(),
        me: tx.downgrade(),
        checking: false,
        moved: false,
    };
    tokio::spawn(relay.run(rx));
    tx
}

impl Relay {
    async fn run(mut self, mut rx: mpsc::Receiver<RoomEvent>) {
        self.inner.metrics.relays.inc();
        let every = Duration::from_millis((self.inner.broker.lease_ms() / 2).max(100));
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown_reply = None;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    None => break,
                    Some(RoomEvent::Shutdown(reply)) => {
                        for (_, c) in self.conns.drain() {
                            c.conn.close(1001, "server shutting down");
                        }
                        shutdown_reply = Some(reply);
                        break;
                    }
                    Some(ev) => self.handle(ev),
                },
                _ = check.tick() => self.check_owner(),
            }
            if self.moved {
                tracing::info!(room = %self.id, owner = %self.owner, "the room's owner is gone or changed: its members here resume");
                for (_, c) in self.conns.drain() {
                    if let Some((reply, _)) = c.reply {
                        let _ = reply.send(JoinReply::Refused(moved_refusal()));
                    }
                    c.conn.close(MOVED.0, MOVED.1);
                }
                break;
            }
            if self.conns.is_empty() {
                break;
            }
        }
        let generation = self.generation;
        self.inner
            .rooms
            .remove_if(&*self.id, |_, h| h.generation == generation);
        rx.close();
        while let Some(ev) = rx.recv().await {
            ev.refuse_after_end();
        }
        self.inner.metrics.relays.dec();
        if let Some(r) = shutdown_reply {
            let _ = r.send(());
        }
    }

    fn to_owner(&self, msg: PeerMsg) {
        self.inner.broker.send(&self.owner, msg.encode());
    }

    fn handle(&mut self, ev: RoomEvent) {
        let room = self.id.to_string();
        match ev {
            RoomEvent::Join(req, reply) => {
                let id = req.conn.id;
                let from = self.inner.broker.node_id().to_string();
                let req = *req;
                self.conns.insert(
                    id,
                    Relayed {
                        conn: req.conn,
                        attached: false,
                        reply: Some((reply, Instant::now())),
                    },
                );
                self.to_owner(PeerMsg::Join {
                    room,
                    from,
                    conn: id,
                    ident: req.ident,
                    resume: req.resume,
                    user: req.user,
                });
            }
            RoomEvent::Msg { conn, msg, recv_at } => {
                let from = self.inner.broker.node_id().to_string();
                self.to_owner(PeerMsg::Msg {
                    room,
                    from,
                    conn,
                    recv_at,
                    msg,
                });
            }
            RoomEvent::Leave { conn, clean } => {
                if self.conns.remove(&conn).is_some() {
                    let from = self.inner.broker.node_id().to_string();
                    self.to_owner(PeerMsg::Leave {
                        room,
                        from,
                        conn,
                        clean,
                    });
                }
            }
            RoomEvent::Evict {
                user,
                code,
                message,
            } => self.to_owner(PeerMsg::Evict {
                room,
                user,
                code: code.into(),
                message,
            }),
            RoomEvent::Peer(msg) => self.on_owner_msg(msg),
            RoomEvent::Lease(answer) => {
                self.checking = false;
                if answer == Some(false) {
                    self.moved = true;
                }
                // Joins the owner never answered (it died with its lease running).
                let late: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        c.reply
                            .as_ref()
                            .is_some_and(|(_, at)| at.elapsed() >= JOIN_TIMEOUT)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in late {
                    if let Some(c) = self.conns.remove(&id)
                        && let Some((reply, _)) = c.reply
                    {
                        let _ = reply.send(JoinReply::Refused(moved_refusal()));
                    }
                }
            }
            RoomEvent::NodeGone(node) => {
                if *node == *self.owner {
                    self.moved = true;
                }
            }
            RoomEvent::Stored(_) | RoomEvent::Shutdown(_) => {}
        }
    }

    fn on_owner_msg(&mut self, msg: PeerMsg) {
        match msg {
            PeerMsg::Frames { fence, frames, .. } => {
                if fence != self.fence {
                    return;
                }
                self.write_frames(frames);
            }
            PeerMsg::Attach { conn, .. } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.attached = true;
                }
            }
            PeerMsg::Joined { conn, .. } => {
                if let Some(c) = self.conns.get_mut(&conn)
                    && let Some((reply, _)) = c.reply.take()
                    && reply.send(JoinReply::Joined).is_err()
                {
                    // The connection went meanwhile: the owner is told it left.
                    self.conns.remove(&conn);
                    self.to_owner(PeerMsg::Leave {
                        room: self.id.to_string(),
                        from: self.inner.broker.node_id().to_string(),
                        conn,
                        clean: false,
                    });
                }
            }
            PeerMsg::Refused {
                conn,
                code,
                message,
                close,
                ..
            } => {
                if let Some(c) = self.conns.remove(&conn)
                    && let Some((reply, _)) = c.reply
                {
                    let _ = reply.send(JoinReply::Refused(Refused {
                        code: static_code(&code),
                        message,
                        close,
                    }));
                }
            }
            PeerMsg::Detach {
                conn,
                close,
                reason,
                now,
                ..
            } => {
                if let Some(c) = self.conns.remove(&conn) {
                    let reason = static_reason(&reason);
                    match (close, now) {
                        (0, _) => drop(c.conn),
                        (code, false) => c.conn.close_after_queue(code, reason),
                        (code, true) => c.conn.close(code, reason),
                    }
                }
            }
            PeerMsg::Send { conn, text, .. } => {
                self.send(conn, Outbound::Text(text.into(), Instant::now()));
            }
            PeerMsg::Ping { conn, id, .. } => self.send(conn, Outbound::Ping { id }),
            PeerMsg::Pong {
                conn, id, t0, t1, ..
            } => self.send(conn, Outbound::Pong { id, t0, t1 }),
            // What a member says: not for a relay.
            PeerMsg::Join { .. }
            | PeerMsg::Msg { .. }
            | PeerMsg::Leave { .. }
            | PeerMsg::Evict { .. } => {}
        }
    }

    fn send(&mut self, conn: u64, o: Outbound) {
        if let Some(c) = self.conns.get(&conn)
            && c.conn.tx.try_send(o) == Err(SendError::Full)
        {
            self.slow(conn);
        }
    }

    /// A member here whose queue is full is closed (1013) like on its owner's node;
    /// the owner keeps it for its grace period.
    fn slow(&mut self, conn: u64) {
        if let Some(c) = self.conns.remove(&conn) {
            c.conn.close(1013, "too slow: outbound queue full");
            self.to_owner(PeerMsg::Leave {
                room: self.id.to_string(),
                from: self.inner.broker.node_id().to_string(),
                conn,
                clean: false,
            });
        }
    }

    /// One pass of the owner's broadcasts: the same buffer to every attached member.
    fn write_frames(&mut self, frames: Bytes) {
        let at = Instant::now();
        let mut slow = Vec::new();
        let conns = &self.conns;
        outside_io_budget(|| {
            for (id, c) in conns {
                if c.attached
                    && c.conn.tx.try_send_frames(std::slice::from_ref(&frames), at)
                        == Err(SendError::Full)
                {
                    slow.push(*id);
                }
            }
        });
        for id in slow {
            self.slow(id);
        }
    }

    /// Asks the broker who owns the room now (one question at a time).
    fn check_owner(&mut self) {
        if self.checking {
            return;
        }
        self.checking = true;
        let (broker, room, owner, fence, me) = (
            self.inner.broker.clone(),
            self.id.clone(),
            self.owner.clone(),
            self.fence,
            self.me.clone(),
        );
        tokio::spawn(async move {
            let answer = match broker.owner(&room).await {
                Ok(Some((node, f))) => Some(node == owner && f == fence),
                Ok(None) => Some(false),
                Err(_) => None,
            };
            if let Some(tx) = me.upgrade() {
                let _ = tx.send(RoomEvent::Lease(answer)).await;
            }
        });
    }
}

fn moved_refusal() -> Refused {
    Refused {
        code: "unavailable",
        message: "the room is moving to another node; try again".into(),
        close: 1013,
    }
}
