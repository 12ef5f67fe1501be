//! The streams this node pulls from their origin as an edge, and the cluster's
//! media metrics: the handle the `AppState` holds ([`Pulls`]). A leaf under
//! `state` (no `AppState` here); the edge's logic is `cluster::edge`.
//!
//! Touched on a WHEP request, a WHIP request and the edge's reconcile tick,
//! never per packet: packets of a pulled stream go through its relay's thread
//! (`tandem_client::relay`) and the SFU's own forwarding path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use prometheus::{IntCounter, IntGauge, Registry};
use tandem_client::relay::Relay;

/// One stream's pull as it runs.
pub struct Pull {
    /// The origin pulled from (node id, advertised URL).
    pub origin_node: String,
    pub origin_url: String,
    /// The WHEP viewer at the origin and the local publisher, joined.
    pub relay: Relay,
    /// The upstream WHEP session's URL at the origin (DELETEd when the pull ends).
    pub upstream_url: String,
    /// The local publisher session's id in this node's SFU.
    pub local_session: String,
    /// Since when the stream has had no local viewer (the linger).
    pub empty_since: Option<Instant>,
}

/// A stream's place in the map: concurrent first viewers wait on one lock and
/// share the one pull it holds.
#[derive(Default)]
pub struct Slot {
    /// A pull runs (readable without the lock: the heartbeat and WHIP ask).
    pub live: AtomicBool,
    pub pull: tokio::sync::Mutex<Option<Pull>>,
}

/// Cluster media metrics of this node.
#[derive(Clone)]
pub struct PullMetrics {
    /// Streams pulled from their origin now.
    pub edge_pulls: IntGauge,
    /// Pulls started here (a re-pull after the origin moved counts again).
    pub edge_pulls_started: IntCounter,
    /// WHEP sessions of other nodes' edges served here as the origin.
    pub origin_pulls: IntCounter,
    /// Edge pulls that could not start (origin unreachable or refusing).
    pub edge_pull_failures: IntCounter,
}

#[derive(Clone)]
pub struct Pulls {
    pub streams: Arc<DashMap<Arc<str>, Arc<Slot>>>,
    pub metrics: PullMetrics,
    /// The client edges pull with (no redirects followed: a 307 from an origin
    /// is an answer to report, not to chase).
    pub http: reqwest::Client,
}

impl Pulls {
    pub fn new(registry: &Registry) -> prometheus::Result<Pulls> {
        let metrics = PullMetrics {
            edge_pulls: IntGauge::new(
                "tandem_cluster_edge_pulls",
                "Streams this node pulls from their origin as an edge now",
            )?,
            edge_pulls_started: IntCounter::new(
                "tandem_cluster_edge_pulls_started_total",
                "Pulls this node started as an edge (re-pulls after an origin move count too)",
            )?,
            origin_pulls: IntCounter::new(
                "tandem_cluster_origin_pulls_total",
                "WHEP sessions of other nodes' edges this node served as a stream's origin",
            )?,
            edge_pull_failures: IntCounter::new(
                "tandem_cluster_edge_pull_failures_total",
                "Edge pulls that could not start (the origin unreachable or refusing)",
            )?,
        };
        registry.register(Box::new(metrics.edge_pulls.clone()))?;
        registry.register(Box::new(metrics.edge_pulls_started.clone()))?;
        registry.register(Box::new(metrics.origin_pulls.clone()))?;
        registry.register(Box::new(metrics.edge_pull_failures.clone()))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| prometheus::Error::Msg(format!("HTTP client: {e}")))?;
        Ok(Pulls {
            streams: Arc::default(),
            metrics,
            http,
        })
    }

    /// The stream's slot, made if missing.
    pub fn slot(&self, stream: &str) -> Arc<Slot> {
        self.streams
            .entry(Arc::from(stream))
            .or_default()
            .value()
            .clone()
    }

    /// True while this node pulls `stream` (its local publisher is the edge's).
    pub fn is_pulling(&self, stream: &str) -> bool {
        self.streams
            .get(stream)
            .is_some_and(|s| s.live.load(Ordering::Acquire))
    }
}
