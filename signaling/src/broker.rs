//! The broker seam for running rooms on several nodes: where a room lives and how
//! its broadcasts reach members connected elsewhere. The in-process one is the default.

use axum::extract::ws::Utf8Bytes;

/// Which node owns a room, and the fan-out of its broadcasts to other nodes.
///
/// A room is owned by exactly one task on one node (its state is never shared).
/// A multi-node broker (Redis pub/sub, NATS) would route a connection to the owning
/// node (or proxy frames to it) and carry `publish`ed broadcasts to edge nodes that
/// relay them to their local connections.
pub trait Broker: Send + Sync + 'static {
    /// True when this node owns (or may create) `room`.
    fn owns(&self, room: &str) -> bool;
    /// Called once per broadcast with the bytes every member receives.
    fn publish(&self, room: &str, seq: u64, bytes: &Utf8Bytes);
}

/// Single node: every room is local and there is nobody else to tell.
#[derive(Debug, Default, Clone, Copy)]
pub struct InProcessBroker;

impl Broker for InProcessBroker {
    fn owns(&self, _room: &str) -> bool {
        true
    }
    fn publish(&self, _room: &str, _seq: u64, _bytes: &Utf8Bytes) {}
}
