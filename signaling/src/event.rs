//! What reaches a room's task through its channel: joins, client messages, leaves,
//! the server's evictions, and the typed results of database work done off the
//! task (no closures: the room's core decides what a result means).

use tokio::sync::oneshot;

use crate::core::{Refused, Stored};
use crate::identity::Identity;
use crate::link::ConnHandle;
use crate::peer::PeerMsg;
use crate::wire::{ClientMsg, Resume, UserInfo};

pub(crate) struct JoinRequest {
    pub conn: ConnHandle,
    pub ident: Identity,
    pub resume: Option<Resume>,
    pub user: UserInfo,
}

pub(crate) enum JoinReply {
    Joined,
    Refused(Refused),
    /// The room ended before it saw the request: create it anew and try again.
    Retry(Box<JoinRequest>),
}

pub(crate) enum RoomEvent {
    Join(Box<JoinRequest>, oneshot::Sender<JoinReply>),
    Msg {
        conn: u64,
        msg: ClientMsg,
        recv_at: f64,
    },
    Leave {
        conn: u64,
        clean: bool,
    },
    /// The server withdrew `user`'s access (`Rooms::evict`).
    Evict {
        user: String,
        code: &'static str,
        message: String,
    },
    /// The result of database work done off the room task, applied in order.
    Stored(Stored),
    /// Several nodes: what another node said about this room (peer.rs).
    Peer(PeerMsg),
    /// Several nodes: how a lease renewal (owner) or an owner check (relay) came
    /// out: `Some(true)` still as it was, `Some(false)` moved or lost, `None` the
    /// broker did not answer.
    Lease(Option<bool>),
    /// Several nodes: `node` stopped heartbeating; its members are disconnected.
    NodeGone(String),
    Shutdown(oneshot::Sender<()>),
}

impl RoomEvent {
    /// Answers an event that reached a room (or relay) after it ended: a join is
    /// handed back to be tried on a new one, a shutdown is told it is done, the
    /// rest is dropped (its connection is gone with the room).
    pub fn refuse_after_end(self) {
        match self {
            RoomEvent::Join(req, reply) => {
                let _ = reply.send(JoinReply::Retry(req));
            }
            RoomEvent::Shutdown(reply) => {
                let _ = reply.send(());
            }
            _ => {}
        }
    }
}
