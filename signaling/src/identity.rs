//! Who is connecting, as the server established it from a room token, and which
//! room ids are well formed. Imports none of its siblings.

/// Who is connecting, as the server established it from a room token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
