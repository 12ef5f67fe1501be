//! The rooms' broker on Redis (several nodes; the seam is `tandem_signaling::Broker`):
//!
//! - a room's lease: `{prefix}room:{id}:lease` = `"{node}|{fence}"` (`SET … PX`,
//!   renewed by its owner), the fence from `INCR {prefix}room:{id}:fence`, so a
//!   later owner always has a larger one;
//! - its log, a stream `{prefix}room:{id}:log` (fields `s` = seq, `m` = the
//!   broadcast's bytes) capped at [`LOG_MAX`], and its snapshot
//!   `{prefix}room:{id}:snap`. Appends run in a Lua script that first checks the
//!   lease: an owner that lost its lease cannot write (fencing at the broker);
//! - node-to-node messages on the channel `{prefix}peer:{node}` (pub/sub), one
//!   per node per pass of broadcasts.
//!
//! Every write goes through one writer task, in order (a room's appends and its
//! messages to other nodes leave in the order the room made them), pipelined: the
//! room task never waits for Redis. A full queue (Redis away for long) drops and
//! counts; the members elsewhere see a `seq` gap and ask for a snapshot.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use prometheus::{IntCounterVec, Opts, Registry};
use redis::aio::ConnectionManager;
use tandem_signaling::{Broker, BrokerError, BrokerFut, Lease, Owner, Restored, Rooms};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use axum::extract::ws::Utf8Bytes;

/// Entries a room's log keeps in Redis (about; trimmed with `MAXLEN ~`). A resume
/// further back than what the room keeps in memory (`rooms.log_size`) gets a fresh
/// `welcome` anyway.
const LOG_MAX: usize = 2048;

/// A room's log and snapshot outlive their last write (and lease renewal) by this:
/// an abandoned room's keys go away by themselves.
const KEEP_MS: u64 = 3_600_000;

/// Writes waiting for the writer task; past this they are dropped and counted.
const QUEUE: usize = 65_536;

/// Most writes sent in one pipeline.
const BATCH: usize = 256;

const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
local f = redis.call('INCR', KEYS[2])
local v = ARGV[1] .. '|' .. f
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return v";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  return 1
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] == '1' then redis.call('DEL', KEYS[2], KEYS[3]) end
  return 1
end
return 0";

const APPEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 5, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 's', ARGV[i], 'm', ARGV[i + 1])
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
else
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1";

enum Write {
    Append {
        room: String,
        fence: u64,
        log: Vec<(u64, Utf8Bytes)>,
        snapshot: Option<Vec<u8>>,
    },
    Send {
        node: String,
        msg: Bytes,
    },
    Release {
        room: String,
        fence: u64,
        forget: bool,
    },
}

#[derive(Clone)]
struct Metrics {
    /// Node-to-node messages: sent, received, dropped (queue full), refused
    /// (an append whose lease was gone).
    peer: IntCounterVec,
}

/// The Redis broker of this node.
pub struct RedisBroker {
    node: String,
    prefix: String,
    lease_ms: u64,
    conn: ConnectionManager,
    writes: mpsc::Sender<Write>,
    metrics: Metrics,
}

impl RedisBroker {
    /// The broker, its writer task started.
    pub fn start(
        conn: ConnectionManager,
        prefix: String,
        node: String,
        lease_ms: u64,
        registry: &Registry,
    ) -> prometheus::Result<Arc<RedisBroker>> {
        let peer = IntCounterVec::new(
            Opts::new(
                "tandem_cluster_peer_messages_total",
                "Room messages between nodes: sent, received, dropped (writer queue full), \
                 refused (a log append after the room's lease was lost)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(peer.clone()))?;
        let metrics = Metrics { peer };
        let (writes, rx) = mpsc::channel(QUEUE);
        let broker = Arc::new(RedisBroker {
            node,
            prefix,
            lease_ms: lease_ms.max(300),
            conn,
            writes,
            metrics,
        });
        tokio::spawn(writer(
            broker.conn.clone(),
            broker.prefix.clone(),
            broker.node.clone(),
            rx,
            broker.metrics.clone(),
        ));
        Ok(broker)
    }

    fn key(&self, room: &str, what: &str) -> String {
        room_key(&self.prefix, room, what)
    }

    fn lease_value(&self, fence: u64) -> String {
        format!("{}|{fence}", self.node)
    }

    fn queue(&self, w: Write) {
        if self.writes.try_send(w).is_err() {
            self.metrics.peer.with_label_values(&["dropped"]).inc();
        }
    }

    /// Subscribes to this node's channel and hands every message to `rooms`, in
    /// order; reconnects (backing off to 2 s) while Redis is away.
    pub fn subscribe(self: &Arc<Self>, client: redis::Client, rooms: Rooms) -> JoinHandle<()> {
        let channel = format!("{}peer:{}", self.prefix, self.node);
        let received = self.metrics.peer.with_label_values(&["received"]);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut ps) => match ps.subscribe(&channel).await {
                        Ok(()) => {
                            backoff = Duration::from_millis(100);
                            let mut stream = ps.into_on_message();
                            while let Some(msg) = stream.next().await {
                                received.inc();
                                rooms
                                    .deliver(Bytes::copy_from_slice(msg.get_payload_bytes()))
                                    .await;
                            }
                            tracing::warn!(
                                "cluster: the subscription to this node's room channel ended; subscribing again"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster: cannot subscribe to this node's room channel")
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: no pub/sub connection to Redis")
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        })
    }
}

fn room_key(prefix: &str, room: &str, what: &str) -> String {
    format!("{prefix}room:{room}:{what}")
}

fn parse_owner(v: &str) -> Option<Lease> {
    let (node, fence) = v.rsplit_once('|')?;
    Some((node.into(), fence.parse().ok()?))
}

fn err(e: redis::RedisError) -> BrokerError {
    BrokerError(format!("Redis: {e}"))
}

impl Broker for RedisBroker {
    fn clustered(&self) -> bool {
        true
    }

    fn node_id(&self) -> &str {
        &self.node
    }

    fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    fn claim(&self, room: &str) -> BrokerFut<'_, Result<Owner, BrokerError>> {
        let (lease, fence) = (self.key(room, "lease"), self.key(room, "fence"));
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let v: String = redis::cmd("EVAL")
                .arg(CLAIM)
                .arg(2)
                .arg(&lease)
                .arg(&fence)
                .arg(&self.node)
                .arg(self.lease_ms)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            let (node, fence) =
                parse_owner(&v).ok_or_else(|| BrokerError(format!("a room lease reads {v:?}")))?;
            Ok(if *node == *self.node {
                Owner::Here { fence }
            } else {
                Owner::There { node, fence }
            })
        })
    }

    fn owner(&self, room: &str) -> BrokerFut<'_, Result<Option<Lease>, BrokerError>> {
        let lease = self.key(room, "lease");
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let v: Option<String> = redis::cmd("GET")
                .arg(&lease)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            Ok(v.as_deref().and_then(parse_owner))
        })
    }

    fn renew(&self, room: &str, fence: u64) -> BrokerFut<'_, Result<bool, BrokerError>> {
        let keys = [
            self.key(room, "lease"),
            self.key(room, "log"),
            self.key(room, "snap"),
        ];
        let value = self.lease_value(fence);
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let n: i64 = redis::cmd("EVAL")
                .arg(RENEW)
                .arg(3)
                .arg(&keys[..])
                .arg(&value)
                .arg(self.lease_ms)
                .arg(KEEP_MS)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            Ok(n == 1)
        })
    }

    fn release(&self, room: &str, fence: u64, forget: bool) {
        self.queue(Write::Release {
            room: room.to_string(),
            fence,
            forget,
        });
    }

    fn append(&self, room: &str, fence: u64, log: &[(u64, Utf8Bytes)], snapshot: Option<Vec<u8>>) {
        self.queue(Write::Append {
            room: room.to_string(),
            fence,
            log: log.to_vec(),
            snapshot,
        });
    }

    fn restore(&self, room: &str) -> BrokerFut<'_, Result<Restored, BrokerError>> {
        let (log, snap) = (self.key(room, "log"), self.key(room, "snap"));
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // XRANGE: [[id, [field, value, …]], …] with fields `s` (seq) and `m`.
            type Entries = Vec<(String, Vec<Vec<u8>>)>;
            let (snapshot, entries): (Option<Vec<u8>>, Entries) = redis::pipe()
                .cmd("GET")
                .arg(&snap)
                .cmd("XRANGE")
                .arg(&log)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            let mut out = Vec::with_capacity(entries.len());
            for (_, fields) in entries {
                let (mut seq, mut text) = (None, None);
                for kv in fields.chunks_exact(2) {
                    match kv[0].as_slice() {
                        b"s" => {
                            seq = std::str::from_utf8(&kv[1])
                                .ok()
                                .and_then(|s| s.parse::<u64>().ok())
                        }
                        b"m" => text = Some(Bytes::from(kv[1].clone())),
                        _ => {}
                    }
                }
                if let (Some(seq), Some(text)) = (seq, text) {
                    out.push((seq, text));
                }
            }
            Ok(Restored {
                snapshot: snapshot.map(Bytes::from),
                log: out,
            })
        })
    }

    fn send(&self, node: &str, msg: Bytes) {
        self.metrics.peer.with_label_values(&["sent"]).inc();
        self.queue(Write::Send {
            node: node.to_string(),
            msg,
        });
    }
}

/// The writer task: everything queued, in order, pipelined by up to [`BATCH`].
async fn writer(
    mut conn: ConnectionManager,
    prefix: String,
    node: String,
    mut rx: mpsc::Receiver<Write>,
    metrics: Metrics,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut backoff = Duration::from_millis(50);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut appends = Vec::new();
        for w in batch.drain(..) {
            match w {
                Write::Append {
                    room,
                    fence,
                    log,
                    snapshot,
                } => {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(APPEND)
                        .arg(3)
                        .arg(room_key(&prefix, &room, "lease"))
                        .arg(room_key(&prefix, &room, "log"))
                        .arg(room_key(&prefix, &room, "snap"))
                        .arg(format!("{node}|{fence}"))
                        .arg(LOG_MAX)
                        .arg(KEEP_MS)
                        .arg(snapshot.unwrap_or_default());
                    for (seq, text) in &log {
                        cmd.arg(*seq).arg(text.as_bytes());
                    }
                    appends.push(room);
                    pipe.add_command(cmd);
                }
                Write::Send { node, msg } => {
                    pipe.cmd("PUBLISH")
                        .arg(format!("{prefix}peer:{node}"))
                        .arg(&msg[..])
                        .ignore();
                }
                Write::Release {
                    room,
                    fence,
                    forget,
                } => {
                    pipe.cmd("EVAL")
                        .arg(RELEASE)
                        .arg(3)
                        .arg(room_key(&prefix, &room, "lease"))
                        .arg(room_key(&prefix, &room, "log"))
                        .arg(room_key(&prefix, &room, "snap"))
                        .arg(format!("{node}|{fence}"))
                        .arg(if forget { "1" } else { "0" })
                        .ignore();
                }
            }
        }
        match pipe.query_async::<Vec<i64>>(&mut conn).await {
            Ok(answers) => {
                backoff = Duration::from_millis(50);
                for (room, ok) in appends.iter().zip(answers) {
                    if ok != 1 {
                        metrics.peer.with_label_values(&["refused"]).inc();
                        tracing::warn!(room = %room, "cluster: a log append was refused: this node no longer holds the room's lease");
                    }
                }
            }
            Err(e) => {
                // Lost with the batch: members elsewhere see a seq gap and ask for
                // a snapshot; a takeover finds the log a little short.
                metrics.peer.with_label_values(&["dropped"]).inc();
                tracing::warn!(error = %e, "cluster: writing to Redis failed; retrying with the next writes");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
