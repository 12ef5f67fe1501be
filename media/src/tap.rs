//! Taps on the publisher's side of a stream: what a recorder, a restream feed
//! (or any other consumer that wants a stream's media once, however many viewers
//! it has) is handed. A stream has one tap per owner (`recording`, `restream`):
//! the registry publishes them as one immutable list ([`Taps`]) that the core
//! caches and walks per packet, so adding a consumer costs no lock and no
//! allocation on the packet path. The core calls a tap from the publisher's worker thread for every
//! packet it forwards, already rewritten into the stream's numbering (so
//! sequence numbers and timestamps run on across a publisher's reconnect). A
//! tap must return at once: it queues, and drops when it cannot keep up (the
//! SFU never waits for a recorder).
//!
//! Imports only the shared vocabulary ([`crate::kinds`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::kinds::MediaKind;

/// One of the publisher's codecs for a track, as negotiated (what a packet's
/// payload type means).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapCodec {
    pub payload_type: u8,
    /// As in SDP, e.g. `video/VP8`, `video/H264`, `audio/opus` (any case).
    pub mime_type: String,
    pub clock_rate: u32,
    /// Audio channels (0 for video).
    pub channels: u16,
    /// The `a=fmtp` parameters, e.g. `profile-level-id=42e01f;packetization-mode=1`.
    pub fmtp: String,
}

/// One RTP packet of the publisher, in the stream's numbering. The payload is
/// shared with the fan-out (no copy).
#[derive(Debug, Clone)]
pub struct TapPacket {
    pub kind: MediaKind,
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Bytes,
    /// When the publisher's datagram was read.
    pub arrived: Instant,
}

/// A consumer of a stream's media. Called from media worker threads: every
/// method must return at once (queue, or drop and count).
pub trait StreamTap: Send + Sync + 'static {
    /// A publisher's track opened with these codecs (before its first packet;
    /// again when a publisher reconnects or takes over).
    fn track_opened(&self, kind: MediaKind, codecs: &[TapCodec]);
    /// One packet of the publisher.
    fn packet(&self, packet: TapPacket);
    /// The publisher went away (it may come back: a reconnect continues the
    /// stream's numbering).
    fn publisher_left(&self);
}

/// The taps of one stream, by owner (a subsystem: `recording`, `restream`),
/// published as a whole: a change builds a new list, so the publisher's worker
/// walks its cached copy without a lock.
pub type Taps = Arc<[(&'static str, Arc<dyn StreamTap>)]>;
