//! Several nodes (issue 18, DESIGN.md "Several nodes", docs/CLUSTER.md): what
//! is built so far is the node registry in Redis, `GET /v1/cluster/nodes`, and
//! media across nodes (origins and edges).
//! Unset `cluster.redis_url`: one node exactly as before, no Redis needed.
//!
//! Module map, from the leaves up:
//! - [`registry`]: the registry handle the `AppState` holds ([`registry::Cluster`]):
//!   records with a TTL, heartbeats, a clean leave, Redis health for `/readyz`.
//! - [`pulls`]: the streams this node pulls as an edge, and the cluster media metrics.
//! - [`nodes`]: the heartbeat task (this node's load and origin streams) and the route.
//! - [`edge`]: a WHEP request for a stream published to another node: the pull
//!   (or the 307 of `media_redirect`), its linger, re-pulls when the origin moves.

pub mod edge;
pub mod nodes;
pub mod pulls;
pub mod registry;
