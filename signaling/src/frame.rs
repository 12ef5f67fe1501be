//! The frames the server writes to a room WebSocket, as every layer names them:
//! what a connection's writer is handed ([`Outbound`]), how a close is asked for
//! ([`Kill`]), why a hand-over failed ([`SendError`]), and the framing of a server
//! text frame, done once per broadcast. Imports none of its siblings.

use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

/// Close request for a connection's writer: (close code, reason).
pub(crate) type Kill = (u16, &'static str);

/// The close of a connection whose queued bytes passed the budget.
pub(crate) const BACKLOG_CLOSE: Kill = (1013, "too slow: outbound backlog");

/// Most frames handed to the socket in one vectored write (room and connection task).
pub(crate) const MAX_FRAMES_PER_WRITE: usize = 64;

/// What a connection's writer sends. Broadcasts carry bytes serialised once by the room.
#[derive(Debug)]
pub(crate) enum Outbound {
    Text(Utf8Bytes, Instant),
    /// Answer to a client ping; `t2` is stamped when it is handed to the socket.
    Pong {
        id: Value,
        t0: f64,
        t1: f64,
    },
    /// Server-initiated clock measurement; `t0` is stamped when it is handed to the socket.
    Ping {
        id: u64,
    },
    /// Close after everything queued before it (kick, ban).
    Close(u16, &'static str),
}

/// Why the room could not hand a frame to a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// `queue_depth` frames or `max_queued_bytes_per_connection` bytes are already
    /// waiting: the member stays behind (close 1013).
    Full,
    /// The connection is closing or broken; the frame is dropped.
    Closed,
}

/// A server text frame (FIN, opcode 1, unmasked: RFC 6455 §5.1) of `payload`, header
/// and payload in one buffer so that a broadcast is framed once for every member.
pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    let n = payload.len();
    let mut b = BytesMut::with_capacity(n + 10);
    b.put_u8(0x81);
    if n < 126 {
        b.put_u8(n as u8);
    } else if n <= 0xffff {
        b.put_u8(126);
        b.put_u16(n as u16);
    } else {
        b.put_u8(127);
        b.put_u64(n as u64);
    }
    b.put_slice(payload);
    b.freeze()
}
