//! The broker seam for running rooms on several nodes: which node owns a room (a
//! lease with a fencing token), the room's log and snapshot kept where another node
//! can read them, and an ordered pipe of bytes to another node. The in-process one
//! (one node, every room local, nothing to tell anyone) is the default; the server's
//! Redis implementation is `src/cluster/broker.rs`. Imports none of its siblings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;

/// A boxed future, as the broker's methods return them (the trait is object safe).
pub type BrokerFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who owns a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This node, under fencing token `fence` (larger than every earlier owner's).
    Here { fence: u64 },
    /// Another node: its members here reach it through [`Broker::send`].
    There { node: Arc<str>, fence: u64 },
}

/// A room's owner as the broker holds it: (node id, fencing token).
pub type Lease = (Arc<str>, u64);

/// What a node taking a room over reads back: the last snapshot of its state and
/// the broadcasts of its log, oldest first.
#[derive(Debug, Default)]
pub struct Restored {
    pub snapshot: Option<Bytes>,
    pub log: Vec<(u64, Bytes)>,
}

/// The broker did not answer (or answered nonsense); the message says what.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BrokerError(pub String);

/// Where a room lives and how its members on other nodes are reached.
///
/// A room is owned by exactly one task on one node at a time: its owner holds a
/// lease (renewed every third of [`Broker::lease_ms`]) with a fencing token, and
/// every write the owner makes to the room's log is refused once another node
/// holds the lease — a node that lost its lease cannot act for the room.
pub trait Broker: Send + Sync + 'static {
    /// False on a single node: every other method is then never called.
    fn clustered(&self) -> bool {
        false
    }
    /// This node's id (`cluster.node_id`).
    fn node_id(&self) -> &str {
        ""
    }
    /// How long a lease lives without renewal.
    fn lease_ms(&self) -> u64 {
        3000
    }
    /// Who owns `room`, taking it for this node when nobody does.
    fn claim(&self, _room: &str) -> BrokerFut<'_, Result<Owner, BrokerError>> {
        Box::pin(async { Ok(Owner::Here { fence: 0 }) })
    }
    /// Who owns `room` now (node, fence), without claiming it.
    fn owner(&self, _room: &str) -> BrokerFut<'_, Result<Option<Lease>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }
    /// Extends this node's lease on `room`; `Ok(false)` when it is no longer ours.
    fn renew(&self, _room: &str, _fence: u64) -> BrokerFut<'_, Result<bool, BrokerError>> {
        Box::pin(async { Ok(true) })
    }
    /// Gives the lease up (if still ours); `forget` also deletes the room's log and
    /// snapshot (the room ended: the next one of that id starts afresh).
    fn release(&self, _room: &str, _fence: u64, _forget: bool) {}
    /// Appends broadcasts to the room's log and, when given, replaces its snapshot;
    /// refused by the broker when `fence` no longer holds the lease. In order with
    /// [`Broker::send`].
    fn append(
        &self,
        _room: &str,
        _fence: u64,
        _log: &[(u64, Utf8Bytes)],
        _snapshot: Option<Vec<u8>>,
    ) {
    }
    /// The room's snapshot and log, for a node that takes it over.
    fn restore(&self, _room: &str) -> BrokerFut<'_, Result<Restored, BrokerError>> {
        Box::pin(async { Ok(Restored::default()) })
    }
    /// Bytes for `node`'s rooms (`Rooms::deliver` there), in the order sent.
    fn send(&self, _node: &str, _msg: Bytes) {}
}

/// Single node: every room is local and there is nobody else to tell.
#[derive(Debug, Default, Clone, Copy)]
pub struct InProcessBroker;

impl Broker for InProcessBroker {}
