//! `GET /v1/cluster/nodes` (service key) and the heartbeat task that keeps this
//! node's record in the registry (`cluster::registry`) with its load and the
//! streams it is the origin of.
//!
//! On a single node (no `cluster.redis_url`) the answer lists this node alone
//! with `cluster: false`; with Redis unreachable it is 503
//! `cluster_unavailable` (and `/readyz` says the same), never a stale list
//! passed off as current.

use std::collections::HashSet;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use prometheus::{IntGauge, Opts};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use super::registry::{Load, NodeRecord};
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::extract::ServiceCaller;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/cluster/nodes", get(list))
}

/// This node's record now.
pub fn record(state: &AppState) -> NodeRecord {
    let streams = state.sfu.streams();
    let origin_of: Vec<String> = streams
        .iter()
        // A stream this node pulls as an edge has a local publisher too: not an origin.
        .filter(|s| s.publisher.is_some() && !state.pulls.is_pulling(&s.name))
        .map(|s| s.name.clone())
        .collect();
    NodeRecord {
        id: state.cluster.node_id().to_string(),
        advertise_url: if state.cluster.enabled() {
            state.cluster.advertise_url().to_string()
        } else {
            state.public_url.to_string()
        },
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: state.cluster.started_at(),
        heartbeat_at: now_ms(),
        load: Load {
            media_sessions: state.sfu.session_count(),
            rooms: state.rooms.room_count(),
            live_streams: origin_of.len(),
        },
        origin_of,
    }
}

/// One node as the route answers it.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeOut {
    pub id: String,
    pub advertise_url: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: the node's last heartbeat (its own clock).
    pub last_heartbeat: String,
    /// Milliseconds between that heartbeat and this node's clock now.
    pub heartbeat_age_ms: i64,
    /// `origin` when streams are published to it, else `node`.
    pub role: &'static str,
    pub origin_of: Vec<String>,
    #[schema(value_type = Object)]
    pub load: Load,
    /// True for the node that answers.
    pub this_node: bool,
}

/// `GET /v1/cluster/nodes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodesOut {
    /// False on a single node (no `cluster.redis_url`).
    pub cluster: bool,
    /// The answering node's id (empty on a single node).
    pub node_id: String,
    pub nodes: Vec<NodeOut>,
}

fn out(r: NodeRecord, me: &str, now: i64) -> NodeOut {
    NodeOut {
        this_node: r.id == me,
        role: if r.origin_of.is_empty() {
            "node"
        } else {
            "origin"
        },
        started_at: crate::api::common::rfc3339(r.started_at),
        last_heartbeat: crate::api::common::rfc3339(r.heartbeat_at),
        heartbeat_age_ms: (now - r.heartbeat_at).max(0),
        id: r.id,
        advertise_url: r.advertise_url,
        version: r.version,
        origin_of: r.origin_of,
        load: r.load,
    }
}

#[utoipa::path(get, path = "/v1/cluster/nodes", tag = "operations",
    security(("service_key" = [])),
    responses((status = 200, body = NodesOut),
              (status = 401), (status = 403),
              (status = 503, description = "cluster_unavailable: Redis (cluster.redis_url) does not answer")))]
pub async fn list(State(state): State<AppState>, _: ServiceCaller) -> AppResult<Json<NodesOut>> {
    let now = now_ms();
    let me = state.cluster.node_id().to_string();
    if !state.cluster.enabled() {
        return Ok(Json(NodesOut {
            cluster: false,
            node_id: me.clone(),
            nodes: vec![out(record(&state), &me, now)],
        }));
    }
    let nodes = state.cluster.nodes().await.map_err(|_| {
        let mut e = AppError::unavailable(
            "Redis (cluster.redis_url) does not answer, so the cluster's nodes are unknown; \
             this node keeps serving and retries every heartbeat",
        );
        e.code = "cluster_unavailable";
        e
    })?;
    Ok(Json(NodesOut {
        cluster: true,
        node_id: me.clone(),
        nodes: nodes.into_iter().map(|r| out(r, &me, now)).collect(),
    }))
}

/// The running heartbeat; [`Heartbeat::stop`] ends it and leaves the registry.
pub struct Heartbeat {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Heartbeat {
    pub async fn stop(mut self, state: &AppState) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
            state.cluster.leave().await;
        }
    }
}

/// Registers `tandem_node_info{node_id,version}` (always 1: which node a
/// scrape came from, beside Prometheus' own `instance` label) and
/// `tandem_cluster_nodes` (the nodes alive in the registry as this node's
/// heartbeat last saw them; 1 on a single node). Returns the latter. A
/// registration that fails (a second server on one registry) is logged and
/// the gauge works unregistered: metrics never stop a start.
pub fn register_metrics(state: &AppState) -> IntGauge {
    let info = IntGauge::with_opts(
        Opts::new(
            "tandem_node_info",
            "Always 1; labels say which node this is (node_id empty on a single node)",
        )
        .const_label("node_id", state.cluster.node_id())
        .const_label("version", env!("CARGO_PKG_VERSION")),
    );
    let nodes = IntGauge::new(
        "tandem_cluster_nodes",
        "Nodes alive in the cluster's registry, as this node's last heartbeat saw them",
    )
    .expect("a valid metric name");
    match info {
        Ok(info) => {
            info.set(1);
            let r = state
                .registry
                .register(Box::new(info))
                .and_then(|_| state.registry.register(Box::new(nodes.clone())));
            if let Err(err) = r {
                tracing::warn!(error = %err, "cluster metrics not registered");
            }
        }
        Err(err) => tracing::warn!(error = %err, "tandem_node_info not built"),
    }
    nodes
}

/// Starts the heartbeat (nothing to run on a single node).
pub fn spawn(state: &AppState) -> Heartbeat {
    let (stop, mut stopped) = watch::channel(false);
    let alive = register_metrics(state);
    if !state.cluster.enabled() {
        alive.set(1);
        return Heartbeat { stop, task: None };
    }
    let state = state.clone();
    let period = Duration::from_millis(state.cluster.heartbeat_ms());
    tracing::info!(
        node = %state.cluster.node_id(),
        advertise_url = %state.cluster.advertise_url(),
        "cluster: joining the node registry"
    );
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen: HashSet<String> = HashSet::new();
        // The streams whose origin keys the last tick refreshed.
        let mut origins: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                _ = tick.tick() => {}
            }
            // Failures are logged by the registry on each change and shown by
            // /readyz; the next tick retries.
            let record = record(&state);
            // Failures are logged by the registry on each change and shown by
            // /readyz; the next tick retries.
            if state.cluster.heartbeat(&record).await.is_ok()
                && let Ok(nodes) = state.cluster.nodes().await
            {
                // Two short reads per heartbeat (ZRANGE, MGET): what the route
                // reads, so the gauge and `GET /v1/cluster/nodes` agree.
                alive.set(nodes.len() as i64);
                // A node whose record expired (killed, cut off): the rooms here drop
                // its members, the relays to rooms it owned send theirs to resume.
                let now: HashSet<String> = nodes.into_iter().map(|n| n.id).collect();
                for gone in seen.difference(&now) {
                    tracing::warn!(node = %gone, "cluster: a node stopped heartbeating");
                    state.rooms.node_gone(gone).await;
                }
                seen = now;
            }
            // Origin keys (cluster::edge) live as long as the node record and
            // are refreshed with it; a stream no longer published here loses
            // its key (if still ours) at once rather than by its TTL.
            let _ = state.cluster.refresh_origins(&record.origin_of).await;
            for gone in origins.iter().filter(|s| !record.origin_of.contains(s)) {
                let _ = state.cluster.release_origin(gone).await;
            }
            origins = record.origin_of;
        }
    });
    Heartbeat {
        stop,
        task: Some(task),
    }
}
