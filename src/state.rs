//! [`AppState`]: what every handler shares (configuration, the SFU, the rooms,
//! the database, token keys, metrics). A module of its own so that the routes
//! depend on it and on nothing above them; the router and the lifecycle
//! (`server`) build it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tandem_media::Sfu;

use crate::auth::{IdentityVerifier, MediaTokens};
use crate::config::Config;
use crate::storage::{Db, Health};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub sfu: Sfu,
    pub tokens: MediaTokens,
    pub identity: IdentityVerifier,
    pub db: Db,
    pub registry: Registry,
    /// Watch Together rooms (tandem-signaling).
    pub rooms: tandem_signaling::Rooms,
    /// Base URL clients reach this server at (links, `whep_url`).
    pub public_url: Arc<str>,
    /// Recordings of live streams (src/recording).
    pub recordings: crate::recording::live::Recordings,
    /// Restreams of live streams to RTMP(S) destinations (src/restream).
    pub restreams: crate::restream::Restreams,
    /// `/readyz`'s last verdict, reused for [`READY_CACHE`].
    pub ready: Arc<tokio::sync::Mutex<Option<(Instant, Readiness)>>>,
    /// The WHEP server-sent-event streams registered (src/whep_ext.rs).
    pub whep_events: crate::whep_events::SseHub,
    /// The keys of secrets at rest: stream keys, OAuth tokens (src/secrets.rs).
    pub keyring: crate::secrets::Keyring,
    /// Course servers: the queue to the Discord worker and the bot (src/discord/guild.rs).
    pub discord: crate::discord::queue::Guilds,
    /// The node registry of a cluster (src/cluster; empty on a single node).
    pub cluster: crate::cluster::registry::Cluster,
    /// Streams this node pulls from their origin as an edge (src/cluster/edge.rs).
    pub pulls: crate::cluster::pulls::Pulls,
}

/// How long one `/readyz` verdict is reused: the write probe is one committed
/// row update, and a load balancer may ask several times a second.
pub const READY_CACHE: Duration = Duration::from_secs(1);

/// What `/readyz` found: each check `ok` or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub database: Health,
    pub media: bool,
    /// `None` on a single node; else whether Redis answered last.
    pub redis: Option<bool>,
}
