//! Wire types of SYNC_PROTOCOL.md v1: the client's messages, parsed once per frame
//! (what the server sends is typed in `server_msg`). Imports none of its siblings.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every client message type this server understands (the protocol's plus extensions).
pub const CLIENT_TYPES: &[&str] = &[
    "hello",
    "playback.command",
    "playback.report",
    "host.transfer",
    "room.settings",
    "chat.send",
    "chat.history",
    "reaction",
    "chat.delete",
    "member.mute",
    "member.unmute",
    "member.kick",
    "member.ban",
    "member.unban",
    "time.ping",
    "time.pong",
    "time.report",
    "client.visibility",
    "room.snapshot",
    "members.list",
    "call.state",
    "call.mute",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resume {
    pub session: String,
    pub last_seq: u64,
    #[serde(default)]
    pub resume_token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub avatar: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Play,
    Pause,
    Seek,
    Rate,
    Load,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    Host,
    Everyone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportState {
    Playing,
    Paused,
    Buffering,
    Ready,
    Ended,
}

/// A chat message id: the protocol sends it as a string, numbers are accepted too.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdRef {
    Num(i64),
    Str(String),
}

impl IdRef {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            IdRef::Num(n) => Some(*n),
            IdRef::Str(s) => s.parse().ok(),
        }
    }
}

// Serialize: a member on another node reaches the room's owner with its message
// re-encoded (peer.rs); parsed and checked once, on the node it is connected to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientMsg {
    #[serde(rename = "hello")]
    Hello {
        #[serde(default)]
        resume: Option<Resume>,
        #[serde(default)]
        user: Option<UserInfo>,
    },
    #[serde(rename = "playback.command")]
    Command {
        action: Action,
        #[serde(default)]
        position: Option<f64>,
        #[serde(default)]
        rate: Option<f64>,
        #[serde(default)]
        media: Option<Value>,
        #[serde(default)]
        at: Option<f64>,
        #[serde(default)]
        client_msg_id: Option<String>,
    },
    #[serde(rename = "playback.report")]
    Report {
        position: f64,
        state: ReportState,
        at: f64,
        /// Extension: the `seq` of the newest `playback.state` the client has applied.
        #[serde(default)]
        seq: Option<u64>,
    },
    #[serde(rename = "host.transfer")]
    HostTransfer { to: String },
    #[serde(rename = "room.settings")]
    Settings {
        #[serde(default)]
        control: Option<Control>,
        #[serde(default)]
        slow_mode_ms: Option<u64>,
    },
    #[serde(rename = "chat.send")]
    ChatSend {
        text: String,
        client_msg_id: String,
        #[serde(default)]
        media_time: Option<f64>,
    },
    #[serde(rename = "chat.history")]
    ChatHistory {
        #[serde(default)]
        before: Option<IdRef>,
        #[serde(default)]
        limit: Option<u32>,
    },
    #[serde(rename = "reaction")]
    Reaction {
        emoji: String,
        #[serde(default)]
        media_time: Option<f64>,
    },
    #[serde(rename = "chat.delete")]
    ChatDelete { id: IdRef },
    #[serde(rename = "member.mute")]
    Mute { user: String, seconds: f64 },
    #[serde(rename = "member.unmute")]
    Unmute { user: String },
    #[serde(rename = "member.kick")]
    Kick {
        user: String,
        #[serde(default)]
        reason: Option<String>,
    },
    #[serde(rename = "member.ban")]
    Ban {
        user: String,
        #[serde(default)]
        reason: Option<String>,
    },
    #[serde(rename = "member.unban")]
    Unban { user: String },
    #[serde(rename = "time.ping")]
    TimePing { id: Value, t0: f64 },
    #[serde(rename = "time.pong")]
    TimePong { id: u64, t0: f64, t1: f64, t2: f64 },
    #[serde(rename = "time.report")]
    TimeReport { offset: f64, rtt: f64 },
    #[serde(rename = "client.visibility")]
    Visibility { hidden: bool },
    /// Extension: asks for a fresh `welcome` (after a `seq` gap).
    #[serde(rename = "room.snapshot")]
    Snapshot,
    /// Extension: one page of the member list (a large room's `welcome` lists only some).
    #[serde(rename = "members.list")]
    MembersList {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<u64>,
    },
    /// Extension (calls): the sender's microphone, camera and voice; fields left
    /// out keep their value.
    #[serde(rename = "call.state")]
    CallState {
        #[serde(default)]
        muted: Option<bool>,
        #[serde(default)]
        camera_off: Option<bool>,
        #[serde(default)]
        speaking: Option<bool>,
    },
    /// Extension (calls): a host mutes a member's microphone (`kind: audio`) or
    /// turns off its camera (`video`). `kind` is checked by the room, which
    /// answers `bad_request` like every other refusal of the message.
    #[serde(rename = "call.mute")]
    CallMute { user: String, kind: String },
}

/// Why a frame could not be turned into a [`ClientMsg`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub code: &'static str,
    pub message: String,
    pub r#ref: Option<String>,
}

/// Parses one text frame: bad JSON and bad fields are `bad_request`, an unknown
/// `type` is `unknown_type`.
pub fn parse(text: &str) -> Result<ClientMsg, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError {
        code: "bad_request",
        message: format!("not valid JSON: {e}"),
        r#ref: None,
    })?;
    let Some(obj) = value.as_object() else {
        return Err(ParseError {
            code: "bad_request",
            message: "a frame must be one JSON object".into(),
            r#ref: None,
        });
    };
    let Some(ty) = obj.get("type").and_then(Value::as_str) else {
        return Err(ParseError {
            code: "bad_request",
            message: "missing string field \"type\"".into(),
            r#ref: None,
        });
    };
    if !CLIENT_TYPES.contains(&ty) {
        return Err(ParseError {
            code: "unknown_type",
            message: format!("unknown message type {ty:?}"),
            r#ref: Some(ty.chars().take(64).collect()),
        });
    }
    if let Some(field) = control_char_field(&value, "") {
        // The store would refuse it (PostgreSQL has no NUL in TEXT) and peers could
        // not render it: refused here, naming the field, whatever the backend.
        return Err(ParseError {
            code: "bad_request",
            message: format!(
                "{ty}: {field} contains a NUL or another control character; send plain text"
            ),
            r#ref: Some(ty.to_string()),
        });
    }
    let ty = ty.to_string();
    let r#ref = obj
        .get("client_msg_id")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(128).collect())
        .or(Some(ty.clone()));
    serde_json::from_value(value).map_err(|e| ParseError {
        code: "bad_request",
        message: format!("{ty}: {e}"),
        r#ref,
    })
}

/// The JSON path of the first string with a control character, if any: chat
/// `text` may hold tab, CR and LF (multi-line messages); every other string (ids,
/// names, reasons) no control character at all. Allocates only when it finds one
/// (every frame passes here).
fn control_char_field(v: &Value, key: &str) -> Option<String> {
    match v {
        Value::String(s) => {
            let multiline = key == "text";
            s.chars()
                .any(|c| c.is_control() && !(multiline && matches!(c, '\t' | '\n' | '\r')))
                .then(String::new)
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, x)| {
            control_char_field(x, key).map(|rest| format!("[{i}]{}", dot(&rest)))
        }),
        Value::Object(map) => map.iter().find_map(|(k, x)| {
            if k.chars().any(char::is_control) {
                return Some(k.escape_debug().to_string());
            }
            control_char_field(x, k).map(|rest| format!("{k}{}", dot(&rest)))
        }),
        _ => None,
    }
}

/// `.rest` for a nested path, nothing for a leaf (`[i]` paths need no dot).
fn dot(rest: &str) -> String {
    if rest.is_empty() || rest.starts_with('[') {
        rest.to_string()
    } else {
        format!(".{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_json_unknown_type_and_bad_fields_are_told_apart() {
        assert_eq!(parse("{nope").unwrap_err().code, "bad_request");
        assert_eq!(parse("[1]").unwrap_err().code, "bad_request");
        assert_eq!(
            parse(r#"{"type":"dance"}"#).unwrap_err().code,
            "unknown_type"
        );
        let e = parse(r#"{"type":"chat.send","text":1,"client_msg_id":"c1"}"#).unwrap_err();
        assert_eq!(e.code, "bad_request");
        assert_eq!(e.r#ref.as_deref(), Some("c1"));
        assert!(matches!(
            parse(r#"{"type":"playback.command","action":"seek","position":3,"at":1}"#),
            Ok(ClientMsg::Command {
                action: Action::Seek,
                ..
            })
        ));
    }

    #[test]
    fn control_characters_are_refused_with_the_field_named() {
        let e =
            parse(r#"{"type":"chat.send","text":"a\u0000b","client_msg_id":"c1"}"#).unwrap_err();
        assert_eq!(e.code, "bad_request");
        assert!(e.message.contains("text"), "{}", e.message);
        let e = parse(r#"{"type":"chat.send","text":"hi","client_msg_id":"c\u0000"}"#).unwrap_err();
        assert!(e.message.contains("client_msg_id"), "{}", e.message);
        let e = parse(r#"{"type":"hello","user":{"name":"a\nb"}}"#).unwrap_err();
        assert!(e.message.contains("user.name"), "{}", e.message);
        assert!(parse(r#"{"type":"chat.send","text":"two\nlines","client_msg_id":"c1"}"#).is_ok());
    }

    #[test]
    fn ids_as_string_or_number() {
        let ClientMsg::ChatDelete { id } = parse(r#"{"type":"chat.delete","id":"17"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(id.as_i64(), Some(17));
        let ClientMsg::ChatDelete { id } = parse(r#"{"type":"chat.delete","id":17}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(id.as_i64(), Some(17));
    }
}
