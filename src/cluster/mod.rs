//! Several nodes (issue 18, DESIGN.md "Several nodes", docs/CLUSTER.md): what
//! is built so far is the node registry in Redis and `GET /v1/cluster/nodes`.
//! Unset `cluster.redis_url`: one node exactly as before, no Redis needed.
//!
//! Module map, from the leaves up:
//! - [`registry`]: the registry handle the `AppState` holds ([`registry::Cluster`]):
//!   records with a TTL, heartbeats, a clean leave, Redis health for `/readyz`.
//! - [`nodes`]: the heartbeat task (this node's load and origin streams) and the route.

pub mod nodes;
pub mod registry;
