//! The node registry of a cluster (issue 18), in Redis: every node writes its
//! record under `{prefix}node:{id}` with a TTL and scores its id by the time of
//! its last heartbeat in the sorted set `{prefix}nodes`; a node that stops
//! heartbeating (killed, cut off) drops out when its key expires, within
//! `node_ttl_ms`, and a node that stops cleanly removes itself at once.
//!
//! No `AppState` here (a leaf under `state`): the heartbeat task that fills the
//! record (`cluster::nodes`) and `/readyz` use it through [`Cluster`].
//!
//! Redis being away is a state, not an error to crash on: the connection is
//! lazy and reconnects by itself ([`ConnectionManager`]), each request has a
//! short timeout, and the last outcome is kept for `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;

/// A request to Redis that takes longer than this failed (the heartbeat must not
/// hang behind a dead connection).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// What a node says of itself in the registry (`GET /v1/cluster/nodes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// How other nodes reach this node's HTTP (`cluster.advertise_url`).
    pub advertise_url: String,
    pub version: String,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms of the heartbeat that wrote this record (the node's own clock).
    pub heartbeat_at: i64,
    pub load: Load,
    /// The media streams published to this node (it is their origin).
    pub origin_of: Vec<String>,
}

/// A node's load as it reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub media_sessions: usize,
    pub rooms: usize,
    pub live_streams: usize,
}

/// The registry handle the `AppState` holds: empty on a single node.
#[derive(Clone)]
pub struct Cluster {
    inner: Option<Arc<Inner>>,
    /// When this node was built (unix ms): its record's `started_at`.
    started_at: i64,
}

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    node_id: String,
    advertise_url: String,
    ttl_ms: u64,
    heartbeat_ms: u64,
    /// The last request's outcome (true until one fails).
    redis_ok: AtomicBool,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::single()
    }
}

impl Cluster {
    /// One node, no Redis.
    pub fn single() -> Cluster {
        Cluster {
            inner: None,
            started_at: crate::clock::now_ms(),
        }
    }

    /// The registry of `cfg` (single node when `redis_url` is empty). Connects
    /// lazily: a Redis that is down at start is reported, not fatal.
    /// `default_id` and `default_url` stand in for an empty `node_id` /
    /// `advertise_url`.
    pub fn from_config(
        cfg: &ClusterConfig,
        default_id: &str,
        default_url: &str,
    ) -> Result<Cluster, String> {
        if cfg.redis_url.is_empty() {
            return Ok(Cluster::single());
        }
        let client = redis::Client::open(cfg.redis_url.as_str()).map_err(|e| {
            format!(
                "cluster.redis_url {}: {e} (want redis://host:port/db or rediss://…)",
                cfg.redis_url_redacted()
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REQUEST_TIMEOUT))
            .set_response_timeout(Some(REQUEST_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("cluster.redis_url {}: {e}", cfg.redis_url_redacted()))?;
        let pick = |v: &str, d: &str| {
            if v.is_empty() {
                d.to_string()
            } else {
                v.to_string()
            }
        };
        Ok(Cluster {
            started_at: crate::clock::now_ms(),
            inner: Some(Arc::new(Inner {
                client,
                conn,
                prefix: cfg.key_prefix.clone(),
                node_id: pick(&cfg.node_id, default_id),
                advertise_url: pick(&cfg.advertise_url, default_url)
                    .trim_end_matches('/')
                    .to_string(),
                ttl_ms: cfg.node_ttl_ms.max(1),
                heartbeat_ms: cfg.heartbeat_ms.max(1),
                redis_ok: AtomicBool::new(true),
            })),
        })
    }

    /// The Redis connection (shared, reconnecting), a client for subscriptions
    /// and the key prefix: for the rooms' broker (`cluster::broker`).
    pub fn redis(&self) -> Option<(ConnectionManager, redis::Client, String)> {
        self.inner
            .as_ref()
            .map(|i| (i.conn.clone(), i.client.clone(), i.prefix.clone()))
    }

    /// When this node started (unix ms).
    pub fn started_at(&self) -> i64 {
        self.started_at
    }

    /// True with a Redis URL configured.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// This node's id (empty on a single node).
    pub fn node_id(&self) -> &str {
        self.inner.as_ref().map_or("", |i| i.node_id.as_str())
    }

    /// This node's advertised URL (empty on a single node).
    pub fn advertise_url(&self) -> &str {
        self.inner.as_ref().map_or("", |i| i.advertise_url.as_str())
    }

    /// The heartbeat period (ms).
    pub fn heartbeat_ms(&self) -> u64 {
        self.inner.as_ref().map_or(1000, |i| i.heartbeat_ms)
    }

    /// How long a record lives without a heartbeat (ms).
    pub fn ttl_ms(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.ttl_ms)
    }

    /// `None` on a single node; else whether the last request reached Redis.
    pub fn redis_ok(&self) -> Option<bool> {
        self.inner
            .as_ref()
            .map(|i| i.redis_ok.load(Ordering::Acquire))
    }

    fn key(i: &Inner, id: &str) -> String {
        format!("{}node:{id}", i.prefix)
    }

    fn set_key(i: &Inner) -> String {
        format!("{}nodes", i.prefix)
    }

    /// Notes a request's outcome; logs each change (not every failure).
    fn outcome<T>(i: &Inner, r: redis::RedisResult<T>) -> redis::RedisResult<T> {
        let ok = r.is_ok();
        let was = i.redis_ok.swap(ok, Ordering::AcqRel);
        match (&r, was) {
            (Err(e), true) => tracing::warn!(
                node = %i.node_id, error = %e,
                "cluster: Redis does not answer; /readyz says so, and this node retries every heartbeat"
            ),
            (Ok(_), false) => tracing::info!(node = %i.node_id, "cluster: Redis answers again"),
            _ => {}
        }
        r
    }

    /// Writes this node's record (TTL `node_ttl_ms`) and scores it in the set;
    /// entries of nodes gone for long are trimmed from the set.
    pub async fn heartbeat(&self, record: &NodeRecord) -> redis::RedisResult<()> {
        let Some(i) = &self.inner else { return Ok(()) };
        let json = serde_json::to_string(record).unwrap_or_default();
        let mut conn = i.conn.clone();
        let stale = record.heartbeat_at - (10 * i.ttl_ms) as i64;
        let r = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(Self::key(i, &i.node_id))
            .arg(json)
            .arg("PX")
            .arg(i.ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(Self::set_key(i))
            .arg(record.heartbeat_at)
            .arg(&i.node_id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(Self::set_key(i))
            .arg("-inf")
            .arg(stale)
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        Self::outcome(i, r)
    }

    /// Every node with a live record, in id order.
    pub async fn nodes(&self) -> redis::RedisResult<Vec<NodeRecord>> {
        let Some(i) = &self.inner else {
            return Ok(Vec::new());
        };
        let mut conn = i.conn.clone();
        let ids: Vec<String> = match redis::cmd("ZRANGE")
            .arg(Self::set_key(i))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
        {
            Ok(ids) => ids,
            Err(e) => return Self::outcome(i, Err(e)),
        };
        if ids.is_empty() {
            return Self::outcome(i, Ok(Vec::new()));
        }
        let keys: Vec<String> = ids.iter().map(|id| Self::key(i, id)).collect();
        let r: redis::RedisResult<Vec<Option<String>>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await;
        let values = Self::outcome(i, r)?;
        // A key expired (its node stopped heartbeating): not a node any more.
        let mut nodes: Vec<NodeRecord> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Claims periodic job `job` for `ttl` across the cluster (`SET
    /// {prefix}job:{job} <node> NX PX ttl`): true when this node is to run it
    /// now. Always true on a single node. For passes that every node would
    /// otherwise repeat (the Discord reconcile walks every member at Discord);
    /// work items are claimed in the database instead (`api::jobs`). A Redis
    /// that does not answer also says true: those passes are idempotent, so
    /// one run twice beats none (and `/readyz` already says Redis is out).
    pub async fn claim(&self, job: &str, ttl: Duration) -> bool {
        let Some(i) = &self.inner else { return true };
        let mut conn = i.conn.clone();
        let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(format!("{}job:{job}", i.prefix))
            .arg(&i.node_id)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await;
        // `OK` when set, nil when another node holds the claim.
        match Self::outcome(i, r) {
            Ok(set) => set.is_some(),
            Err(_) => true,
        }
    }

    fn origin_key(i: &Inner, stream: &str) -> String {
        format!("{}origin:{stream}", i.prefix)
    }

    /// A publisher's WHIP session went live here: this node is the stream's
    /// origin now, whoever was before (the latest publisher wins: a broadcaster
    /// that reconnected on this node moves the origin here at once).
    pub async fn claim_origin(&self, stream: &str) -> redis::RedisResult<()> {
        let Some(i) = &self.inner else { return Ok(()) };
        let mut conn = i.conn.clone();
        let r = redis::cmd("SET")
            .arg(Self::origin_key(i, stream))
            .arg(&i.node_id)
            .arg("PX")
            .arg(i.ttl_ms)
            .query_async::<()>(&mut conn)
            .await;
        Self::outcome(i, r)
    }

    /// Refreshes the origin keys of the streams published here (each heartbeat),
    /// each only if it is missing or still this node's: a stale session left
    /// behind here must not take back a stream that moved to another node.
    pub async fn refresh_origins(&self, streams: &[String]) -> redis::RedisResult<()> {
        let Some(i) = &self.inner else { return Ok(()) };
        if streams.is_empty() {
            return Ok(());
        }
        // EVAL, not EVALSHA: a pipeline cannot load a script Redis lacks.
        const REFRESH: &str = "local v = redis.call('GET', KEYS[1]) \
             if (not v) or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end \
             return 1";
        let mut pipe = redis::pipe();
        for s in streams {
            pipe.cmd("EVAL")
                .arg(REFRESH)
                .arg(1)
                .arg(Self::origin_key(i, s))
                .arg(&i.node_id)
                .arg(i.ttl_ms)
                .ignore();
        }
        let mut conn = i.conn.clone();
        let r = pipe.query_async::<()>(&mut conn).await;
        Self::outcome(i, r)
    }

    /// The stream is no longer published here: its origin key goes, if it is
    /// still this node's.
    pub async fn release_origin(&self, stream: &str) -> redis::RedisResult<()> {
        let Some(i) = &self.inner else { return Ok(()) };
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end \
             return 0",
        );
        let mut conn = i.conn.clone();
        let r = script
            .key(Self::origin_key(i, stream))
            .arg(&i.node_id)
            .invoke_async::<()>(&mut conn)
            .await;
        Self::outcome(i, r)
    }

    /// The node a stream is published to and its advertised URL; `None` when no
    /// live node is its origin (never published, ended, or its node is gone:
    /// the key outlives a killed node by at most `node_ttl_ms`, and a node
    /// without a live record does not count).
    pub async fn origin_of(&self, stream: &str) -> redis::RedisResult<Option<(String, String)>> {
        let Some(i) = &self.inner else {
            return Ok(None);
        };
        let mut conn = i.conn.clone();
        let r: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(Self::origin_key(i, stream))
            .query_async(&mut conn)
            .await;
        let Some(node) = Self::outcome(i, r)? else {
            return Ok(None);
        };
        if node == i.node_id {
            return Ok(Some((node, i.advertise_url.clone())));
        }
        let r: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(Self::key(i, &node))
            .query_async(&mut conn)
            .await;
        let record = Self::outcome(i, r)?.and_then(|v| serde_json::from_str::<NodeRecord>(&v).ok());
        Ok(record.map(|r| (node, r.advertise_url.trim_end_matches('/').to_string())))
    }

    /// Removes this node from the registry (a clean stop): the others see it
    /// gone at once instead of after the TTL.
    pub async fn leave(&self) {
        let Some(i) = &self.inner else { return };
        let mut conn = i.conn.clone();
        let r = redis::pipe()
            .cmd("DEL")
            .arg(Self::key(i, &i.node_id))
            .ignore()
            .cmd("ZREM")
            .arg(Self::set_key(i))
            .arg(&i.node_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(node = %i.node_id, error = %e, "cluster: could not leave the registry; the record expires by itself");
        } else {
            tracing::info!(node = %i.node_id, "cluster: left the registry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_password_never_shows() {
        let cfg = ClusterConfig {
            redis_url: "redis://:hunter2@10.0.0.5:6379/0".into(),
            ..ClusterConfig::default()
        };
        assert_eq!(cfg.redis_url_redacted(), "redis://:***@10.0.0.5:6379/0");
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let plain = ClusterConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            ..ClusterConfig::default()
        };
        assert_eq!(plain.redis_url_redacted(), "redis://127.0.0.1:6379");
    }

    #[test]
    fn no_redis_url_is_one_node() {
        let c = Cluster::from_config(&ClusterConfig::default(), "a", "http://a").unwrap();
        assert!(!c.enabled());
        assert_eq!(c.redis_ok(), None);
        assert_eq!(c.node_id(), "");
    }

    #[test]
    fn a_bad_redis_url_says_what_is_wanted_without_the_password() {
        let cfg = ClusterConfig {
            redis_url: "http://:hunter2@x:1".into(),
            ..ClusterConfig::default()
        };
        let err = Cluster::from_config(&cfg, "a", "http://a")
            .err()
            .expect("refused");
        assert!(err.contains("redis://"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn defaults_fill_an_empty_id_and_url() {
        let cfg = ClusterConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            ..ClusterConfig::default()
        };
        let c = Cluster::from_config(&cfg, "host-8080", "http://10.0.0.2:8080/").unwrap();
        assert!(c.enabled());
        assert_eq!(c.node_id(), "host-8080");
        assert_eq!(c.advertise_url(), "http://10.0.0.2:8080");
    }
}
