//! What reaches a room's task through its channel: joins, client messages, leaves,
//! the server's evictions, and the typed results of database work done off the
//! task (no closures: the room decides what a result means).

use tokio::sync::oneshot;

use crate::chat::{ChatRecord, Inserted, StoreError};
use crate::identity::Identity;
use crate::link::ConnHandle;
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

/// Why a connection may not join: `error {code, message}`, then close `close`.
#[derive(Debug, Clone)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
    pub close: u16,
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
    Shutdown(oneshot::Sender<()>),
}

/// A database result, with what the room needs to answer it. `conn` is the asking
/// connection (it may have gone meanwhile).
pub(crate) enum Stored {
    /// `chat.send`: stored once per (user, client_msg_id).
    ChatInserted {
        conn: Option<u64>,
        /// (user id, client_msg_id): no longer being stored.
        key: (String, String),
        /// The `ref` of an error answer.
        r: String,
        res: Result<Inserted, StoreError>,
    },
    /// `chat.history`: up to `limit + 1` records, newest first.
    ChatPage {
        conn: Option<u64>,
        limit: u32,
        res: Result<Vec<ChatRecord>, StoreError>,
    },
    /// `chat.delete`: `Ok(true)` deleted, `Ok(false)` no such message, `Err(code)`.
    ChatDeleted {
        conn: Option<u64>,
        id: i64,
        by: String,
        privileged: bool,
        outcome: Result<bool, &'static str>,
    },
}
