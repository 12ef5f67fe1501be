//! What leaves the media core: the [`Egress`] sink it writes everything into
//! (datagrams over UDP or ICE-TCP, media for another worker, registry events),
//! and the types that travel through it. The shell implements the sink over its
//! socket, its `sendmmsg` batch and its channels; the core's tests over a `Vec`.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::kinds::{MediaKind, Transport};
use crate::registry::SessionSummary;

/// One publisher packet, rewritten to the stream's numbering, on its way to viewers.
pub struct Forward {
    pub stream: u64,
    pub epoch: u32,
    pub kind: MediaKind,
    /// The video encoding (simulcast index; 0 without simulcast, and for audio).
    pub encoding: u8,
    /// The packet starts a key frame (a viewer may switch encodings here).
    pub keyframe: bool,
    pub packet: rtc::rtp::Packet,
    /// When the publisher's datagram was read: what the 150 ms age limit between
    /// workers counts from.
    pub arrived: Instant,
}

impl Forward {
    /// A copy for another worker: the payload is shared, not copied.
    pub fn share(&self) -> Forward {
        Forward {
            stream: self.stream,
            epoch: self.epoch,
            kind: self.kind,
            encoding: self.encoding,
            keyframe: self.keyframe,
            packet: self.packet.clone(),
            arrived: self.arrived,
        }
    }
}

/// What the registry's observer is told.
pub enum Event {
    SessionStarted(SessionSummary),
    SessionEnded(SessionSummary),
}

/// Why an ICE-TCP datagram was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpDrop {
    /// No connection for that address (it went away).
    NoLink,
    /// The connection's queue is full (the peer reads too slowly).
    Full,
}

/// Where the core puts everything that must go out. Every method returns at
/// once: nothing here may wait, so one slow peer never delays another.
pub trait Egress {
    /// The empty buffer the next UDP datagram is written into, in place (the
    /// shell hands out a reused slot of its `sendmmsg` batch, so forwarding
    /// allocates nothing). Queued by [`commit_udp`](Self::commit_udp); a slot not
    /// committed is reused.
    fn udp_slot(&mut self) -> &mut BytesMut;

    /// Queues what was written into [`udp_slot`](Self::udp_slot), to `to`.
    fn commit_udp(&mut self, to: SocketAddr);

    /// A datagram for an ICE-TCP peer (framed and written by its connection).
    fn send_tcp(&mut self, to: SocketAddr, data: Bytes) -> Result<(), TcpDrop>;

    /// Media for the viewers on worker `worker`; false when its queue is full.
    fn media(&mut self, worker: usize, forward: Forward) -> bool;

    /// A datagram that belongs to a session on worker `worker`; false when its
    /// queue is full.
    fn hand_over(&mut self, worker: usize, from: SocketAddr, data: &[u8], at: Instant) -> bool;

    /// A session ended: the other workers stop routing its addresses, and its
    /// ICE-TCP connections are let go.
    fn forget(&mut self, addrs: Vec<(SocketAddr, Transport)>);

    /// For the registry's observer.
    fn event(&mut self, event: Event);

    /// A packet read at `arrived` has gone to every viewer here: the shell, which
    /// has the clock, records how long that took (`tandem_forwarding_delay_seconds`).
    fn fanned_out(&mut self, arrived: Instant);

    /// Queues a copy of `data` to `to` over UDP.
    fn send_udp(&mut self, to: SocketAddr, data: &[u8]) {
        self.udp_slot().extend_from_slice(data);
        self.commit_udp(to);
    }
}
