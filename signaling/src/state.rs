//! What all rooms of this node share: the limits, the chat store, the broker, the
//! metrics and the registry of room tasks (room id → its channel).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::chat::ChatStore;
use crate::config::RoomsConfig;
use crate::event::RoomEvent;
use crate::metrics::Metrics;

#[derive(Clone)]
pub(crate) struct RoomHandle {
    pub tx: mpsc::Sender<RoomEvent>,
    /// Tells a room from an earlier one of the same id (which may still be ending).
    pub generation: u64,
}

pub(crate) struct Inner {
    pub cfg: Arc<RoomsConfig>,
    pub store: Arc<dyn ChatStore>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Metrics,
    pub rooms: DashMap<String, RoomHandle>,
    pub next_id: AtomicU64,
}

impl Inner {
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
