//! Every message the server sends (SYNC_PROTOCOL.md v1 and its extensions), typed.
//! A message is serialised once, straight from these structs (no JSON tree is
//! built); a broadcast is serialised once for all its members. Broadcast variants
//! carry their `seq`, which the room assigns as it serialises them.
//!
//! Imports no sibling except the leaves whose values go on the wire unchanged.

use serde::Serialize;
use serde_json::Value;

use crate::chat::ChatRecord;
use crate::playback::Playback;
use crate::wire::Control;

/// One server message, `{"type": ..., fields...}`.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub(crate) enum ServerMsg {
    #[serde(rename = "error")]
    Error {
        code: &'static str,
        message: String,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The server measuring a client's clock; `t0` is stamped as it is written.
    #[serde(rename = "time.ping")]
    TimePing { id: u64, t0: f64 },
    /// The answer to a client's `time.ping`: `id` and `t0` exactly as it sent them.
    #[serde(rename = "time.pong")]
    TimePong {
        id: Value,
        t0: f64,
        t1: f64,
        t2: f64,
    },
    #[serde(rename = "welcome")]
    Welcome(Box<Welcome>),
    #[serde(rename = "resumed")]
    Resumed {
        session: String,
        resume_token: String,
        you: You,
        seq: u64,
        replayed: usize,
        server_time: f64,
    },
    #[serde(rename = "presence.join")]
    PresenceJoin { member: MemberInfo, seq: u64 },
    #[serde(rename = "presence.leave")]
    PresenceLeave { member: MemberInfo, seq: u64 },
    #[serde(rename = "presence.update")]
    PresenceUpdate { member: MemberInfo, seq: u64 },
    /// Large rooms: the presence changes of one `presence_batch_ms`.
    #[serde(rename = "presence.batch")]
    PresenceBatch {
        joined: Vec<MemberInfo>,
        left: Vec<MemberInfo>,
        updated: Vec<MemberInfo>,
        omitted: usize,
        member_count: usize,
        seq: u64,
    },
    #[serde(rename = "members.page")]
    MembersPage {
        members: Vec<MemberInfo>,
        next: Option<String>,
        member_count: usize,
    },
    #[serde(rename = "playback.state")]
    PlaybackState(PlaybackState),
    #[serde(rename = "sync.hint")]
    SyncHint {
        drift_ms: f64,
        action: &'static str,
        seq: u64,
    },
    #[serde(rename = "host.changed")]
    HostChanged {
        host: Option<String>,
        reason: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        seq: u64,
    },
    #[serde(rename = "room.settings")]
    RoomSettings {
        control: Control,
        slow_mode_ms: u64,
        by: String,
        seq: u64,
    },
    #[serde(rename = "chat.page")]
    ChatPage {
        messages: Vec<ChatMessage>,
        has_more: bool,
    },
    #[serde(rename = "chat.deleted")]
    ChatDeleted { id: String, by: String, seq: u64 },
    #[serde(rename = "reaction")]
    Reaction {
        user: UserRef,
        emoji: String,
        at: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        media_time: Option<f64>,
        seq: u64,
    },
    #[serde(rename = "member.muted")]
    MemberMuted {
        user: String,
        until: f64,
        by: String,
        seq: u64,
    },
    #[serde(rename = "member.unmuted")]
    MemberUnmuted { user: String, by: String, seq: u64 },
    #[serde(rename = "member.kicked")]
    MemberKicked {
        user: String,
        by: String,
        reason: Option<String>,
        seq: u64,
    },
    #[serde(rename = "member.banned")]
    MemberBanned {
        user: String,
        by: String,
        reason: Option<String>,
        seq: u64,
    },
    #[serde(rename = "member.unbanned")]
    MemberUnbanned { user: String, by: String, seq: u64 },
    /// Extension (calls): to the connections of a member the call's host muted
    /// (`kind`: `audio` or `video`); not broadcast, so it has no `seq`.
    #[serde(rename = "call.muted")]
    CallMuted { by: String, kind: &'static str },
    /// `chat.message`, tagged by [`ChatMessage`] itself (it is listed in `welcome`
    /// and `chat.page` with its `type` too).
    #[serde(untagged)]
    ChatMessage(ChatMessage),
}

impl ServerMsg {
    /// `error {code, message, ref?, retry_after_ms?}`.
    pub fn error(
        code: &'static str,
        message: impl Into<String>,
        r#ref: Option<&str>,
        retry_after_ms: Option<u64>,
    ) -> Self {
        ServerMsg::Error {
            code,
            message: message.into(),
            r#ref: r#ref.map(str::to_string),
            retry_after_ms,
        }
    }

    /// The JSON text, serialised once.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server messages serialise")
    }
}

/// `welcome`: everything a joining (or re-snapshotting) member needs.
#[derive(Debug, Serialize)]
pub(crate) struct Welcome {
    pub session: String,
    pub resume_token: String,
    pub you: You,
    pub room: RoomInfo,
    pub chat: Vec<ChatMessage>,
    pub server_time: f64,
}

/// `welcome.room`.
#[derive(Debug, Serialize)]
pub(crate) struct RoomInfo {
    pub id: String,
    pub host: Option<String>,
    pub control: Control,
    pub slow_mode_ms: u64,
    pub members: Vec<MemberInfo>,
    pub member_count: usize,
    pub members_partial: bool,
    pub playback: PlaybackState,
    pub seq: u64,
}

/// `you`: the member as it sees itself.
#[derive(Debug, Serialize)]
pub(crate) struct You {
    pub id: String,
    pub name: String,
    pub avatar: Option<String>,
    pub role: &'static str,
    pub muted_until: Option<i64>,
}

/// A member as the others see it (presence, member lists).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemberInfo {
    pub id: String,
    pub name: String,
    pub avatar: Option<String>,
    pub role: &'static str,
    pub status: &'static str,
    pub connected: bool,
    pub session: String,
    /// Extension (calls): the member's microphone, camera and voice, as its last
    /// `call.state` said; absent for members that never sent one, so rooms
    /// without calls look exactly as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaState>,
}

/// A call member's media as the others see it (`member.media`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct MediaState {
    pub muted: bool,
    pub camera_off: bool,
    pub speaking: bool,
}

/// The author of a chat message or a reaction.
#[derive(Debug, Serialize)]
pub(crate) struct UserRef {
    pub id: String,
    pub name: String,
    pub avatar: Option<String>,
}

/// The playback state (`playback.state`, and `welcome.room.playback`).
#[derive(Debug, Serialize)]
pub(crate) struct PlaybackState {
    pub paused: bool,
    pub position: f64,
    pub rate: f64,
    pub at: f64,
    pub media: Option<Value>,
    pub host: Option<String>,
    pub seq: u64,
    pub by: Option<String>,
    pub reason: &'static str,
    pub waiting: bool,
}

impl PlaybackState {
    pub fn new(
        p: &Playback,
        host: Option<String>,
        by: Option<String>,
        reason: &'static str,
        waiting: bool,
    ) -> Self {
        Self {
            paused: p.paused,
            position: p.position,
            rate: p.rate,
            at: p.at,
            media: p.media.clone(),
            host,
            seq: p.seq,
            by,
            reason,
            waiting,
        }
    }
}

/// A chat message on the wire (`chat.message`, and the entries of `welcome.chat`
/// and `chat.page`, which carry their `type` too).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "chat.message")]
pub(crate) struct ChatMessage {
    pub id: String,
    pub user: UserRef,
    pub text: String,
    pub at: f64,
    pub client_msg_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_time: Option<f64>,
    /// Set when broadcast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Set on the answer to a `chat.send` that was stored before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

impl From<&ChatRecord> for ChatMessage {
    fn from(r: &ChatRecord) -> Self {
        Self {
            id: r.id.to_string(),
            user: UserRef {
                id: r.user_id.clone(),
                name: r.user_name.clone(),
                avatar: r.user_avatar.clone(),
            },
            text: r.text.clone(),
            at: r.created_at as f64,
            client_msg_id: r.client_msg_id.clone(),
            media_time: r.media_time,
            seq: None,
            duplicate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, ClientMsg};

    /// Client clock readings with 17 significant digits that serde_json's default
    /// (fast, inexact) float parser misread by one unit in the last place.
    const MISPARSED_T0: &[&str] = &[
        "1733144272509.9325",
        "1733507069464.6219",
        "1733747144854.7297",
        "1733032845751.0365",
        "1733961616757.8205",
        "1733092843870.7191",
        "1733397845686.8023",
        "1733694878646.2791",
        "1733579409818.8983",
        "1733934166291.5975",
    ];

    #[test]
    fn time_pong_echoes_the_pings_t0_bit_exact() {
        for text in MISPARSED_T0 {
            let sent: f64 = text.parse().unwrap();
            let frame = format!(r#"{{"type":"time.ping","id":7,"t0":{text}}}"#);
            let ClientMsg::TimePing { id, t0 } = wire::parse(&frame).unwrap() else {
                panic!("{frame}")
            };
            assert_eq!(t0.to_bits(), sent.to_bits(), "t0 {text} parsed as {t0}");
            let pong = ServerMsg::TimePong {
                id,
                t0,
                t1: 1.0,
                t2: 2.0,
            }
            .to_text();
            let echoed = pong
                .split_once(r#""t0":"#)
                .and_then(|(_, rest)| rest.split([',', '}']).next())
                .unwrap();
            let echoed: f64 = echoed.parse().unwrap();
            assert_eq!(echoed.to_bits(), sent.to_bits(), "{text} -> {pong}");
        }
    }
}
