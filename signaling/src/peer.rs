//! What one node tells another about a room (several nodes, DESIGN.md): a member
//! connected here reaches the room's owner (`Join`, `Msg`, `Leave`), the owner
//! answers and writes to it (`Joined`, `Refused`, `Attach`, `Detach`, `Send`,
//! `Ping`, `Pong`) and sends each pass of broadcasts once per node (`Frames`),
//! already framed: the relaying node hands the same bytes to every local member.
//!
//! Encoding: `Frames` is binary (`F`, room length u16, room, fence u64, then the
//! WebSocket frames as the owner wrote them), everything else is JSON (`{`...).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::identity::Identity;
use crate::wire::{ClientMsg, Resume, UserInfo};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum PeerMsg {
    // ---- from the node a member is connected to, to the room's owner ----------
    Join {
        room: String,
        from: String,
        conn: u64,
        ident: Identity,
        resume: Option<Resume>,
        user: UserInfo,
    },
    Msg {
        room: String,
        from: String,
        conn: u64,
        recv_at: f64,
        msg: ClientMsg,
    },
    Leave {
        room: String,
        from: String,
        conn: u64,
        clean: bool,
    },
    /// `Rooms::evict` asked on a node that does not own the room.
    Evict {
        room: String,
        user: String,
        code: String,
        message: String,
    },
    // ---- from the owner to the node of a member --------------------------------
    Joined {
        room: String,
        conn: u64,
    },
    Refused {
        room: String,
        conn: u64,
        code: String,
        message: String,
        close: u16,
    },
    Attach {
        room: String,
        conn: u64,
    },
    /// `close`: 0 lets the connection go normally; otherwise its close code, now
    /// (`now`) or after what is queued.
    Detach {
        room: String,
        conn: u64,
        close: u16,
        reason: String,
        now: bool,
    },
    Send {
        room: String,
        conn: u64,
        text: String,
    },
    Ping {
        room: String,
        conn: u64,
        id: u64,
    },
    Pong {
        room: String,
        conn: u64,
        id: Value,
        t0: f64,
        t1: f64,
    },
    /// A pass of broadcasts (binary on the wire, see the module header).
    #[serde(skip)]
    Frames {
        room: String,
        fence: u64,
        frames: Bytes,
    },
}

impl PeerMsg {
    pub fn room(&self) -> &str {
        match self {
            PeerMsg::Join { room, .. }
            | PeerMsg::Msg { room, .. }
            | PeerMsg::Leave { room, .. }
            | PeerMsg::Evict { room, .. }
            | PeerMsg::Joined { room, .. }
            | PeerMsg::Refused { room, .. }
            | PeerMsg::Attach { room, .. }
            | PeerMsg::Detach { room, .. }
            | PeerMsg::Send { room, .. }
            | PeerMsg::Ping { room, .. }
            | PeerMsg::Pong { room, .. }
            | PeerMsg::Frames { room, .. } => room,
        }
    }

    pub fn encode(&self) -> Bytes {
        match self {
            PeerMsg::Frames {
                room,
                fence,
                frames,
            } => frames_msg(room, *fence, std::slice::from_ref(frames)),
            other => serde_json::to_vec(other).unwrap_or_default().into(),
        }
    }

    pub fn decode(mut b: Bytes) -> Result<PeerMsg, String> {
        match b.first() {
            Some(b'F') => {
                b.advance(1);
                if b.len() < 2 {
                    return Err("short frames header".into());
                }
                let n = b.get_u16() as usize;
                if b.len() < n + 8 {
                    return Err("short frames header".into());
                }
                let room = String::from_utf8(b.split_to(n).to_vec())
                    .map_err(|_| "room id is not UTF-8".to_string())?;
                let fence = b.get_u64();
                Ok(PeerMsg::Frames {
                    room,
                    fence,
                    frames: b,
                })
            }
            Some(b'{') => serde_json::from_slice(&b).map_err(|e| e.to_string()),
            _ => Err("not a peer message".into()),
        }
    }
}

/// The binary `Frames` message of one pass: `frames` written back to back.
pub(crate) fn frames_msg(room: &str, fence: u64, frames: &[Bytes]) -> Bytes {
    let len: usize = frames.iter().map(Bytes::len).sum();
    let mut b = BytesMut::with_capacity(1 + 2 + room.len() + 8 + len);
    b.put_u8(b'F');
    b.put_u16(room.len() as u16);
    b.put_slice(room.as_bytes());
    b.put_u64(fence);
    for f in frames {
        b.put_slice(f);
    }
    b.freeze()
}

/// Close reasons are `&'static str` in the room; one that crossed nodes is mapped
/// back to the same words (unknown ones to a generic reason).
pub(crate) fn static_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "kicked",
        "banned",
        "access revoked",
        "replaced by a newer connection",
        "too slow: outbound queue full",
        "server shutting down",
        "the room moved to another node; resume",
    ];
    KNOWN
        .iter()
        .find(|k| **k == reason)
        .copied()
        .unwrap_or("closed by the room")
}

/// Error codes are `&'static str` too (the protocol's codes).
pub(crate) fn static_code(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "banned",
        "room_full",
        "server_full",
        "forbidden",
        "not_found",
        "access_revoked",
        "kicked",
        "unavailable",
        "call_ended",
        "not_enrolled",
        "removed",
        "not_invited",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("internal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_without_copying_the_payload() {
        let f1 = Bytes::from_static(b"\x81\x02{}");
        let f2 = Bytes::from_static(b"\x81\x03[1]");
        let b = frames_msg("room:1", 7, &[f1, f2]);
        match PeerMsg::decode(b).unwrap() {
            PeerMsg::Frames {
                room,
                fence,
                frames,
            } => {
                assert_eq!((room.as_str(), fence), ("room:1", 7));
                assert_eq!(&frames[..], b"\x81\x02{}\x81\x03[1]");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_client_message_crosses_unchanged() {
        let msg = crate::wire::parse(
            r#"{"type":"chat.send","text":"hé","client_msg_id":"c1","media_time":1.5}"#,
        )
        .unwrap();
        let m = PeerMsg::Msg {
            room: "r".into(),
            from: "node-b".into(),
            conn: 3,
            recv_at: 1733144272509.9325,
            msg,
        };
        let back = PeerMsg::decode(m.encode()).unwrap();
        let PeerMsg::Msg { recv_at, msg, .. } = back else {
            panic!()
        };
        assert_eq!(recv_at, 1733144272509.9325);
        match msg {
            ClientMsg::ChatSend {
                text,
                client_msg_id,
                media_time,
            } => assert_eq!(
                (text.as_str(), client_msg_id.as_str(), media_time),
                ("hé", "c1", Some(1.5))
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(PeerMsg::decode(Bytes::from_static(b"F\x00")).is_err());
        assert!(PeerMsg::decode(Bytes::from_static(b"F\x00\x09ab")).is_err());
        assert!(PeerMsg::decode(Bytes::from_static(b"{\"t\":\"nope\"}")).is_err());
        assert!(PeerMsg::decode(Bytes::new()).is_err());
    }
}
