//! Several nodes (issue 18, DESIGN.md "Several nodes", docs/CLUSTER.md): the node
//! registry in Redis and `GET /v1/cluster/nodes`, the rooms' broker that spreads
//! a room's members over the nodes, and media across nodes (origins and edges).
//! Unset `cluster.redis_url`: one node exactly as before, no Redis needed.
//!
//! Module map, from the leaves up:
//! - [`registry`]: the registry handle the `AppState` holds ([`registry::Cluster`]):
//!   records with a TTL, heartbeats, a clean leave, Redis health for `/readyz`.
//! - [`broker`]: `tandem_signaling::Broker` on Redis: room leases with fencing
//!   tokens, the rooms' logs and snapshots, node-to-node messages.
//! - [`pulls`]: the streams this node pulls as an edge, and the cluster media metrics.
//! - [`nodes`]: the heartbeat task (this node's load and origin streams, nodes
//!   that went away) and the route.
//! - [`edge`]: a WHEP request for a stream published to another node: the pull
//!   (or the 307 of `media_redirect`), its linger, re-pulls when the origin moves.

pub mod broker;
pub mod edge;
pub mod nodes;
pub mod pulls;
pub mod registry;
