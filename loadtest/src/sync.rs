//! `tandem-loadtest sync`: R rooms × M WebSocket clients running the SDK's clock sync and
//! correction policy against simulated players with skewed, drifting clocks.
//!
//! One host per room issues play/pause/seek/rate at a given rate. The tool samples
//! every client's player position at the same true instant and reports the pairwise
//! position error, plus the fan-out latency of each command to every member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tandem_signaling::clock::{ClockFilter, sample};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::bare::{self, BareResult};
use crate::procstat;
use crate::report::{self, Row};
use crate::rxtime::{StampedTcp, wall_now_us};
use crate::server::{metric, scrape};
use crate::stats::{Percentiles, new_histogram};

/// What to run.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub base: String,
    /// HS256 secret of identity JWTs (the server's `jwt_secret`), to get room tokens.
    pub jwt_secret: String,
    pub server_pid: Option<u32>,
    pub rooms: usize,
    pub members: usize,
    /// Playback commands per second per room (from its host).
    pub command_rate: f64,
    /// Clients connected per second.
    pub ramp_per_s: f64,
    pub duration: Duration,
    /// Each client's clock is offset by a uniform random value in ±this.
    pub skew_ms: f64,
    /// … and drifts by a uniform random rate in ±this (parts per million).
    pub drift_ppm: f64,
    /// Bare TCP loop length (zero: skip).
    pub bare_duration: Duration,
    pub progress: bool,
    /// A label describing network conditions (netem), for the report.
    pub network: String,
    /// Dead band of the correction policy in ms (the SDK's: 30; nudging stops under half).
    pub deadband_ms: f64,
    /// WebSocket traffic crosses a relay adding this delay ± `jitter` each way (zero: direct).
    pub delay: Duration,
    pub jitter: Duration,
    /// Reactions per second per room, each from a random non-host member (zero: none).
    /// A reaction is a broadcast to the whole room: this is the fan-out load without
    /// the inbound traffic of commands (ready reports).
    pub reaction_rate: f64,
    /// Chat messages (`chat.send`) per second per room, each from a random non-host
    /// member (zero: none). Chat is persisted before it is fanned out, so this adds
    /// database writes and the chat history to the load (the soak script uses it).
    pub chat_rate: f64,
    /// Members other than the host send only what the protocol requires of them
    /// (`hello`, answers to server pings, `ready` at barriers): no clock pings, no
    /// periodic `playback.report`. Isolates the server's fan-out cost.
    pub listen_only: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            base: String::new(),
            jwt_secret: String::new(),
            server_pid: None,
            rooms: 10,
            members: 10,
            command_rate: 0.5,
            ramp_per_s: 500.0,
            duration: Duration::from_secs(20),
            skew_ms: 10_000.0,
            drift_ppm: 100.0,
            bare_duration: Duration::from_secs(2),
            progress: false,
            network: "loopback".into(),
            deadband_ms: 30.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reaction_rate: 0.0,
            chat_rate: 0.0,
            listen_only: false,
        }
    }
}

/// Everything `sync` measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub rooms: usize,
    pub members_per_room: usize,
    pub clients_connected: usize,
    pub connect_errors: Vec<String>,
    pub network: String,
    pub skew_ms: f64,
    pub drift_ppm: f64,
    pub deadband_ms: f64,
    pub window_s: f64,
    pub commands_sent: u64,
    pub reactions_sent: u64,
    pub chats_sent: u64,
    pub listen_only: bool,
    /// Host's send → each member's read of the resulting `playback.state`: includes
    /// the member's wait behind the generator's other clients on the same core.
    pub fanout_latency: Percentiles,
    /// Host's send → the last member's read, per command.
    pub fanout_complete: Percentiles,
    /// Host's send → the `playback.state` in each member's socket (the kernel's
    /// receive stamp, `SO_TIMESTAMPNS`): the fan-out a member on its own machine sees.
    pub fanout_latency_at_socket: Percentiles,
    /// Host's send → the last member's socket, per command.
    pub fanout_complete_at_socket: Percentiles,
    /// |position_i − position_j| over every pair in a room, sampled every 50 ms while playing.
    pub position_error: Percentiles,
    pub position_samples: u64,
    /// |estimated − true offset| of every client's clock filter at the end of the
    /// window (the tool knows each client's true skew and drift).
    pub clock_offset_error: Percentiles,
    /// The RTT each client's current estimate is based on.
    pub clock_estimate_rtt: Percentiles,
    /// The same two when the window starts (estimates from the join ramp).
    pub clock_offset_error_start: Percentiles,
    pub clock_estimate_rtt_start: Percentiles,
    pub messages_received: u64,
    pub messages_per_s: f64,
    pub avg_message_bytes: f64,
    pub server_cpu_s: f64,
    pub server_cpu_user_s: f64,
    pub server_cpu_system_s: f64,
    /// Delivered messages per second of server CPU.
    pub messages_per_server_core_s: f64,
    pub server_rss_before_bytes: u64,
    pub server_rss_connected_bytes: u64,
    pub server_rss_per_connection_bytes: f64,
    pub bare_tcp_write: Option<BareResult>,
    pub bare_tcp_write_batched: Option<BareResult>,
    /// One frame to every connection per sweep, sweeps as far apart as the run's
    /// broadcast passes: receivers idle between sweeps, as the members are.
    pub bare_tcp_write_paced: Option<BareResult>,
    /// The room task's time to hand one pass's broadcasts to every member's socket
    /// (`tandem_room_broadcast_pass_seconds` over the window): the server's side of
    /// fan-out, the figure the bare write loop compares with.
    pub server_broadcast_passes: f64,
    pub server_broadcast_pass_mean_ms: Option<f64>,
    /// Upper bound of the histogram bucket holding the 99th percentile.
    pub server_broadcast_pass_p99_le_ms: Option<f64>,
    pub load_average_before: f64,
    pub load_average_after: f64,
}

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// A client's local clock: wall time shifted by a skew and drifting at `ppm`.
#[derive(Debug, Clone, Copy)]
pub struct LocalClock {
    pub skew_ms: f64,
    pub ppm: f64,
    pub origin_ms: f64,
}

impl LocalClock {
    pub fn at(&self, wall: f64) -> f64 {
        wall + self.skew_ms + (wall - self.origin_ms) * self.ppm * 1e-6
    }
    pub fn now(&self) -> f64 {
        self.at(wall_ms())
    }
}

/// A player that only keeps time: position advances with the local clock at `rate`.
#[derive(Debug, Clone, Copy)]
pub struct SimPlayer {
    pub anchor_pos: f64,
    pub anchor_local: f64,
    pub rate: f64,
    pub paused: bool,
}

impl SimPlayer {
    pub fn time(&self, local: f64) -> f64 {
        if self.paused {
            self.anchor_pos
        } else {
            self.anchor_pos + (local - self.anchor_local) / 1000.0 * self.rate
        }
    }
    fn rebase(&mut self, local: f64) {
        self.anchor_pos = self.time(local);
        self.anchor_local = local;
    }
    pub fn seek(&mut self, local: f64, t: f64) {
        self.anchor_pos = t;
        self.anchor_local = local;
    }
    pub fn set_rate(&mut self, local: f64, rate: f64) {
        if (rate - self.rate).abs() > f64::EPSILON {
            self.rebase(local);
            self.rate = rate;
        }
    }
    pub fn set_paused(&mut self, local: f64, paused: bool) {
        if paused != self.paused {
            self.rebase(local);
            self.paused = paused;
        }
    }
}

/// The room's playback state as a client sees it.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub paused: bool,
    pub position: f64,
    pub rate: f64,
    pub at: f64,
    pub seq: u64,
    pub waiting: bool,
}

impl State {
    fn from_json(v: &Value) -> Option<State> {
        Some(State {
            paused: v.get("paused")?.as_bool()?,
            position: v.get("position")?.as_f64()?,
            rate: v.get("rate").and_then(Value::as_f64).unwrap_or(1.0),
            at: v.get("at")?.as_f64()?,
            seq: v.get("seq").and_then(Value::as_u64).unwrap_or(0),
            waiting: v.get("waiting").and_then(Value::as_bool).unwrap_or(false),
        })
    }
    /// Expected media position at server time `server_now`.
    pub fn position_at(&self, server_now: f64) -> f64 {
        if self.paused || server_now < self.at {
            self.position
        } else {
            self.position + (server_now - self.at) / 1000.0 * self.rate
        }
    }
}

/// The SDK's `VideoAdapter` policy (sdk/tandem-sync/tandem-sync.js), mirrored: under 30 ms do
/// nothing; 30 ms–1.5 s nudge the rate within ±5 % until under 15 ms; past 1.5 s seek.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub player: SimPlayer,
    pub nudging: bool,
    pub last_seek_local: f64,
    pub ready_sent: Option<u64>,
    /// Drift (s) under which nothing is corrected; nudging stops under half of it.
    pub deadband: f64,
}

impl Adapter {
    pub fn new(local: f64) -> Self {
        Adapter {
            player: SimPlayer {
                anchor_pos: 0.0,
                anchor_local: local,
                rate: 1.0,
                paused: true,
            },
            nudging: false,
            last_seek_local: 0.0,
            ready_sent: None,
            deadband: 0.03,
        }
    }

    /// Applies `p`; returns `Some(position)` when a `ready` report is due.
    pub fn apply(&mut self, p: &State, server_now: f64, local: f64, fresh: bool) -> Option<f64> {
        let cur = self.player.time(local);
        if p.paused || server_now < p.at {
            self.player.set_paused(local, true);
            self.player.set_rate(local, p.rate);
            if (cur - p.position).abs() > 0.01 && (fresh || local - self.last_seek_local > 500.0) {
                self.player.seek(local, p.position);
                self.last_seek_local = local;
            }
            if p.waiting && self.ready_sent != Some(p.seq) {
                self.ready_sent = Some(p.seq);
                return Some(self.player.time(local));
            }
            return None;
        }
        let target = p.position_at(server_now);
        let drift = cur - target;
        let abs = drift.abs();
        if self.player.paused {
            if abs > 0.1 {
                self.player.seek(local, target);
                self.last_seek_local = local;
            }
            self.player.set_rate(local, p.rate);
            self.player.set_paused(local, false);
            return None;
        }
        if abs > 1.5 {
            if local - self.last_seek_local > 3000.0 || fresh {
                self.player.seek(local, target);
                self.last_seek_local = local;
            }
            self.player.set_rate(local, p.rate);
            return None;
        }
        if if self.nudging {
            abs < self.deadband / 2.0
        } else {
            abs < self.deadband
        } {
            self.nudging = false;
            self.player.set_rate(local, p.rate);
            return None;
        }
        self.nudging = true;
        let k = (-drift).clamp(-0.05, 0.05);
        self.player.set_rate(local, p.rate * (1.0 + k));
        None
    }
}

/// What the sampler reads of each client.
struct ClientView {
    clock: LocalClock,
    adapter: Adapter,
    state: Option<State>,
    /// The client's current estimate of server − local (ms) and its RTT, if any.
    offset: Option<(f64, f64)>,
}

/// The longest host → member time of one command (µs): to the member's read, and
/// to its socket (the kernel's receive stamp).
#[derive(Default)]
struct Slowest {
    read_us: u64,
    socket_us: u64,
}

struct Room {
    /// Wall µs when the host sent its latest command (0: none yet).
    command_sent_us: AtomicU64,
    command_seq: AtomicU64,
    /// The slowest member's fan-out so far, per command.
    last_receipt: Mutex<HashMap<u64, Slowest>>,
    clients: Vec<Arc<Mutex<ClientView>>>,
}

struct Shared {
    stop: tokio::sync::watch::Receiver<bool>,
    measuring: std::sync::atomic::AtomicBool,
    connected: AtomicUsize,
    messages: AtomicU64,
    message_bytes: AtomicU64,
    commands: AtomicU64,
    reactions: AtomicU64,
    chats: AtomicU64,
    fanout: Mutex<Histogram<u64>>,
    fanout_at_socket: Mutex<Histogram<u64>>,
    complete: Mutex<Histogram<u64>>,
    complete_at_socket: Mutex<Histogram<u64>>,
}

/// An identity JWT (HS256, `sub`, `exp`) as the platform would issue.
pub fn identity_jwt(secret: &str, user: &str, role: &str) -> Result<String, String> {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "role": role, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("identity JWT: {e}"))
}

async fn room_token(
    http: &reqwest::Client,
    base: &str,
    secret: &str,
    room: &str,
    user: &str,
) -> Result<String, String> {
    let jwt = identity_jwt(secret, user, "user")?;
    let r = http
        .post(format!("{base}/v1/rooms/{room}/token"))
        .bearer_auth(jwt)
        .json(&json!({"name": user}))
        .send()
        .await
        .map_err(|e| format!("room token: {e}"))?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| format!("room token: {e}"))?;
    if !status.is_success() {
        return Err(format!("room token: {status}: {v}"));
    }
    v.get("token")
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| format!("room token: no token in {v}"))
}

#[allow(clippy::too_many_arguments)]
/// What one client sends besides the protocol's required answers.
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    host: bool,
    command_rate: f64,
    /// Seconds between this member's reactions (None: it sends none).
    reaction_every: Option<f64>,
    /// Seconds between this member's chat messages (None: it sends none).
    chat_every: Option<f64>,
    /// No clock pings and no periodic `playback.report` (see [`SyncConfig::listen_only`]).
    listen_only: bool,
}

/// The top-level `type` of a server message, read without building a JSON tree:
/// serde skips the other members without allocating.
fn message_type(text: &str) -> Option<&str> {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_str::<Kind>(text).ok().map(|k| k.kind)
}

/// Opens a client's WebSocket over a [`StampedTcp`], so each message's arrival in the
/// socket is known; Nagle off, as `connect_async_with_config(.., true)` would.
async fn connect_stamped(
    url: &str,
    config: WebSocketConfig,
) -> Result<(WebSocketStream<StampedTcp>, Response), String> {
    let request = url.into_client_request().map_err(|e| e.to_string())?;
    let uri = request.uri();
    let host = uri.host().ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let stamped = StampedTcp::new(tcp).map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
    tokio_tungstenite::client_async_with_config(request, stamped, Some(config))
        .await
        .map_err(|e| e.to_string())
}

async fn client(
    ws_url: String,
    plan: Behaviour,
    room: Arc<Room>,
    me: Arc<Mutex<ClientView>>,
    shared: Arc<Shared>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let Behaviour {
        host,
        command_rate,
        reaction_every,
        chat_every,
        listen_only,
    } = plan;
    let chatty = host || !listen_only;
    // tungstenite's default 128 KiB read buffer is zero-filled on every read: a third
    // of the generator's CPU with 1,000 clients, delaying every client behind it.
    let small_reads = WebSocketConfig::default().read_buffer_size(4096);
    let conn = connect_stamped(&ws_url, small_reads).await;
    let (mut ws, _) = match conn {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("connect: {e}")));
            return;
        }
    };
    let clock = me.lock().map(|v| v.clock).unwrap_or(LocalClock {
        skew_ms: 0.0,
        ppm: 0.0,
        origin_ms: 0.0,
    });
    let mut filter = ClockFilter::default();
    let mut offset = 0.0f64;
    let mut pings: HashMap<u64, ()> = HashMap::new();
    let mut ping_id = 0u64;
    let mut ready = Some(ready);
    let _ = ws
        .send(Message::text(json!({"type": "hello"}).to_string()))
        .await;
    // The client's timers (the SDK's 100 ms render tick, clock pings, reports, the
    // host's commands, reactions, the start timer) share one sleep, so that a message
    // wakes the task to poll the socket and that sleep, not six timers.
    let now = Instant::now();
    let mut apply_due = now;
    let mut ping_due = now;
    let mut burst_left = 8u32;
    let mut report_due = now;
    let reaction_period = reaction_every.map(Duration::from_secs_f64);
    // A random phase within one period: members' reactions spread evenly over time.
    let mut reaction_due = reaction_period.map(|p| now + p.mul_f64(rand::random::<f64>()));
    let chat_period = chat_every.map(Duration::from_secs_f64);
    let mut chat_due = chat_period.map(|p| now + p.mul_f64(rand::random::<f64>()));
    let mut chats = 0u64;
    let cmd_period = Duration::from_secs_f64(1.0 / command_rate.max(0.001));
    let mut cmd_due = host.then(|| now + cmd_period.mul_f64(1.0 + rand::random::<f64>()));
    // The SDK's start timer: a state that starts playing at a future `at` is applied
    // again exactly then, not at the next 100 ms tick.
    let mut start_due: Option<Instant> = None;
    let next_due =
        |apply: Instant, ping: Instant, report: Instant, others: [Option<Instant>; 4]| {
            let mut next = apply;
            if chatty {
                next = next.min(ping).min(report);
            }
            others.into_iter().flatten().fold(next, Instant::min)
        };
    let timer = tokio::time::sleep_until(now.into());
    tokio::pin!(timer);
    let mut stop = shared.stop.clone();
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let mut step = 0u64;
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(text) = msg else { continue };
                let recv_us = wall_now_us();
                let socket_us = ws.get_ref().last_rx_us();
                shared.messages.fetch_add(1, Ordering::Relaxed);
                shared.message_bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                // Only the types matched below are parsed; reactions, chat and presence
                // are counted, not read: a JSON tree for each of 400 k reactions a
                // second made the generator, not the server, the limit.
                let Some("welcome" | "time.pong" | "time.ping" | "playback.state") = message_type(&text) else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                let local = clock.now();
                match v.get("type").and_then(Value::as_str).unwrap_or("") {
                    "welcome" => {
                        if let Some(r) = ready.take() {
                            shared.connected.fetch_add(1, Ordering::Relaxed);
                            let _ = r.send(Ok(()));
                        }
                        if let Some(s) = v.pointer("/room/playback").and_then(State::from_json)
                            && let Ok(mut m) = me.lock()
                        {
                            m.state = Some(s);
                        }
                    }
                    "time.pong" => {
                        let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
                        if pings.remove(&id).is_none() { continue; }
                        let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                        let (o, rtt) = sample(f("t0"), f("t1"), f("t2"), local);
                        filter.add(o, rtt);
                        if let Some((o, rtt)) = filter.estimate() {
                            offset = o;
                            if let Ok(mut m) = me.lock() {
                                m.offset = Some((o, rtt));
                            }
                            let _ = ws.send(Message::text(json!({"type":"time.report","offset":o,"rtt":rtt}).to_string())).await;
                        }
                    }
                    "time.ping" => {
                        let t1 = local;
                        let reply = json!({"type":"time.pong","id":v.get("id"),"t0":v.get("t0"),"t1":t1,"t2":clock.now()});
                        let _ = ws.send(Message::text(reply.to_string())).await;
                    }
                    "playback.state" => {
                        let Some(s) = State::from_json(&v) else { continue };
                        if v.get("reason").and_then(Value::as_str) == Some("command") {
                            let sent = room.command_sent_us.load(Ordering::Acquire);
                            let cseq = room.command_seq.load(Ordering::Acquire);
                            if sent > 0 && recv_us >= sent && shared.measuring.load(Ordering::Relaxed) {
                                let d = (recv_us - sent).max(1);
                                // No stamp (0), or one from before the send (an older segment): no figure.
                                let at_socket = (socket_us >= sent).then(|| (socket_us - sent).max(1));
                                if let Ok(mut h) = shared.fanout.lock() { let _ = h.record(d); }
                                if let Some(w) = at_socket && let Ok(mut h) = shared.fanout_at_socket.lock() {
                                    let _ = h.record(w);
                                }
                                if let Ok(mut m) = room.last_receipt.lock() {
                                    let e = m.entry(cseq).or_default();
                                    e.read_us = e.read_us.max(d);
                                    // A member without a stamp counts with its read
                                    // time: the last member's figure errs long, not short.
                                    e.socket_us = e.socket_us.max(at_socket.unwrap_or(d));
                                }
                            }
                        }
                        let server_now = local + offset;
                        if !s.paused && server_now < s.at {
                            start_due = Some(Instant::now() + Duration::from_secs_f64((s.at - server_now) / 1000.0));
                        }
                        let report = if let Ok(mut m) = me.lock() {
                            let r = m.adapter.apply(&s, server_now, local, true);
                            m.state = Some(s);
                            r
                        } else { None };
                        if let Some(pos) = report {
                            let _ = ws.send(Message::text(json!({"type":"playback.report","state":"ready","position":pos,"at":local}).to_string())).await;
                        }
                    }
                    _ => {}
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                if start_due.is_some_and(|d| now >= d) {
                    start_due = None;
                    let local = clock.now();
                    if let Ok(mut m) = me.lock()
                        && let Some(s) = m.state.clone()
                    {
                        m.adapter.apply(&s, local + offset, local, false);
                    }
                }
                if now >= apply_due {
                    apply_due = now + Duration::from_millis(100);
                    let local = clock.now();
                    let report = if let Ok(mut m) = me.lock() {
                        match m.state.clone() {
                            Some(s) => m.adapter.apply(&s, local + offset, local, false),
                            None => None,
                        }
                    } else { None };
                    if let Some(pos) = report {
                        let _ = ws.send(Message::text(json!({"type":"playback.report","state":"ready","position":pos,"at":local}).to_string())).await;
                    }
                }
                if chatty && now >= ping_due {
                    // An 8-ping burst 60 ms apart, then one every 5 s.
                    burst_left = burst_left.saturating_sub(1);
                    ping_due = now + if burst_left > 0 { Duration::from_millis(60) } else { Duration::from_secs(5) };
                    ping_id += 1;
                    pings.insert(ping_id, ());
                    let _ = ws.send(Message::text(json!({"type":"time.ping","id":ping_id,"t0":clock.now()}).to_string())).await;
                }
                if chatty && now >= report_due {
                    report_due = now + Duration::from_millis(1500);
                    let local = clock.now();
                    let position = me.lock().map(|m| (m.adapter.player.time(local), m.adapter.player.paused)).ok();
                    if let Some((pos, paused)) = position {
                        let st = if paused { "paused" } else { "playing" };
                        let _ = ws.send(Message::text(json!({"type":"playback.report","state":st,"position":pos,"at":local}).to_string())).await;
                    }
                }
                if let (Some(due), Some(period)) = (reaction_due, reaction_period)
                    && now >= due
                {
                    reaction_due = Some(due + period);
                    if shared.measuring.load(Ordering::Relaxed) {
                        shared.reactions.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = ws.send(Message::text(r#"{"type":"reaction","emoji":":clap:"}"#)).await;
                }
                if let (Some(due), Some(period)) = (chat_due, chat_period)
                    && now >= due
                {
                    chat_due = Some(due + period);
                    chats += 1;
                    if shared.measuring.load(Ordering::Relaxed) {
                        shared.chats.fetch_add(1, Ordering::Relaxed);
                    }
                    // client_msg_id is the dedup key: unique per member and message.
                    let msg = json!({"type":"chat.send","text":format!("load test message {chats}"),"client_msg_id":format!("lt{}-{chats}", rand::random::<u32>())});
                    let _ = ws.send(Message::text(msg.to_string())).await;
                }
                if let Some(due) = cmd_due
                    && now >= due
                {
                    cmd_due = Some(due + cmd_period);

                let local = clock.now();
                let cur = me.lock().map(|m| m.adapter.player.time(local)).unwrap_or(0.0);
                step += 1;
                // play, rate, seek, rate back, pause, play, seek, … (mostly playing).
                let cmd = match step % 6 {
                    1 => json!({"action":"play","position":cur}),
                    2 => json!({"action":"rate","position":cur,"rate":1.25}),
                    3 => json!({"action":"seek","position":(cur + 30.0) % 3000.0}),
                    4 => json!({"action":"rate","position":cur,"rate":1.0}),
                    5 => json!({"action":"pause","position":cur}),
                    _ => json!({"action":"play","position":cur}),
                };
                let mut cmd = cmd;
                cmd["type"] = "playback.command".into();
                cmd["at"] = local.into();
                cmd["client_msg_id"] = format!("c{step}").into();
                // Settle the previous command's completion time first.
                let prev = room.command_seq.load(Ordering::Acquire);
                if let Ok(mut m) = room.last_receipt.lock()
                    && let Some(worst) = m.remove(&prev)
                {
                    if let Ok(mut h) = shared.complete.lock() {
                        let _ = h.record(worst.read_us.max(1));
                    }
                    if let Ok(mut h) = shared.complete_at_socket.lock() {
                        let _ = h.record(worst.socket_us.max(1));
                    }
                }
                room.command_seq.store(prev + 1, Ordering::Release);
                room.command_sent_us.store(wall_now_us(), Ordering::Release);
                if shared.measuring.load(Ordering::Relaxed) {
                    shared.commands.fetch_add(1, Ordering::Relaxed);
                }
                let _ = ws.send(Message::text(cmd.to_string())).await;
                }
            }
            _ = &mut stopped => break,
        }
        let next = next_due(
            apply_due,
            ping_due,
            report_due,
            [start_due, reaction_due, cmd_due, chat_due],
        );
        if next != timer.deadline().into_std() {
            timer.as_mut().reset(next.into());
        }
    }
    if let Some(r) = ready.take() {
        let _ = r.send(Err("closed before welcome".into()));
    }
    let _ = ws.close(None).await;
}

/// Members of a room whose positions are compared each tick (all pairs of them).
const SAMPLED_MEMBERS: usize = 40;

/// Pairwise position errors of every room at one true instant (only rooms whose
/// members all hold the same latest state and are playing). Large rooms compare a
/// random subset of [`SAMPLED_MEMBERS`] per tick, so the sampler stays cheap.
fn sample_rooms(rooms: &[Arc<Room>], h: &mut Histogram<u64>) -> u64 {
    let wall = wall_ms();
    let mut n = 0;
    for room in rooms {
        let mut positions = Vec::with_capacity(room.clients.len().min(SAMPLED_MEMBERS));
        let mut seq = None;
        let mut ok = true;
        let total = room.clients.len();
        let picked: Vec<usize> = if total <= SAMPLED_MEMBERS {
            (0..total).collect()
        } else {
            (0..SAMPLED_MEMBERS)
                .map(|_| rand::random_range(0..total))
                .collect()
        };
        for c in picked.iter().map(|&i| &room.clients[i]) {
            let Ok(v) = c.lock() else {
                ok = false;
                break;
            };
            let Some(s) = &v.state else {
                ok = false;
                break;
            };
            if s.paused || s.waiting || *seq.get_or_insert(s.seq) != s.seq {
                ok = false;
                break;
            }
            positions.push(v.adapter.player.time(v.clock.at(wall)));
        }
        if !ok || positions.len() < 2 {
            continue;
        }
        for i in 0..positions.len() {
            for j in i + 1..positions.len() {
                let e = ((positions[i] - positions[j]).abs() * 1e6) as u64;
                let _ = h.record(e.max(1));
                n += 1;
            }
        }
    }
    n
}

/// Every client's clock-estimate error (against its known skew and drift) and RTT.
fn clock_errors(rooms: &[Arc<Room>]) -> (Percentiles, Percentiles) {
    let (mut err, mut rtt) = (new_histogram(), new_histogram());
    let wall = wall_ms();
    for c in rooms.iter().flat_map(|r| r.clients.iter()) {
        let Ok(v) = c.lock() else { continue };
        if let Some((o, r)) = v.offset {
            // Server and clients share this machine's wall clock: true offset = wall − local.
            let truth = wall - v.clock.at(wall);
            let _ = err.record((((o - truth).abs()) * 1000.0) as u64 + 1);
            let _ = rtt.record((r.max(0.0) * 1000.0) as u64 + 1);
        }
    }
    (Percentiles::of(&err), Percentiles::of(&rtt))
}

/// `tandem_room_broadcast_pass_seconds` bucket bounds as the server prints them.
const PASS_BUCKETS: [&str; 15] = [
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.0075", "0.01", "0.025", "0.05",
    "0.075", "0.1", "0.25", "0.5", "1",
];

/// Runs the sync load and returns the report.
fn percentiles_of(h: &Mutex<Histogram<u64>>) -> Percentiles {
    h.lock().map(|h| Percentiles::of(&h)).unwrap_or_default()
}

pub async fn run(cfg: &SyncConfig) -> Result<SyncReport, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let mut report = SyncReport {
        rooms: cfg.rooms,
        members_per_room: cfg.members,
        network: cfg.network.clone(),
        skew_ms: cfg.skew_ms,
        drift_ppm: cfg.drift_ppm,
        deadband_ms: cfg.deadband_ms,
        load_average_before: procstat::loadavg(),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        stop: stop_rx,
        measuring: Default::default(),
        connected: AtomicUsize::new(0),
        messages: AtomicU64::new(0),
        message_bytes: AtomicU64::new(0),
        commands: AtomicU64::new(0),
        reactions: AtomicU64::new(0),
        chats: AtomicU64::new(0),
        fanout: Mutex::new(new_histogram()),
        fanout_at_socket: Mutex::new(new_histogram()),
        complete: Mutex::new(new_histogram()),
        complete_at_socket: Mutex::new(new_histogram()),
    });
    let rss_before = cfg
        .server_pid
        .and_then(|p| procstat::sample(p).ok())
        .map(|s| s.rss_bytes)
        .unwrap_or(0);
    let mut ws_base = cfg.base.replacen("http://", "ws://", 1);
    if !cfg.delay.is_zero() || !cfg.jitter.is_zero() {
        let upstream: std::net::SocketAddr = cfg
            .base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map_err(|e| format!("server address for the delay relay: {e}"))?;
        let relay = crate::delay::start(upstream, cfg.delay, cfg.jitter)
            .await
            .map_err(|e| format!("delay relay: {e}"))?;
        ws_base = format!("ws://{relay}");
    }
    let origin = wall_ms();
    let total = cfg.rooms * cfg.members;
    let pb = report::progress(cfg.progress, total as u64, "clients connecting");
    let run_id: u32 = rand::random();
    let mut rooms = Vec::with_capacity(cfg.rooms);
    let mut tasks = Vec::with_capacity(total);
    let mut readies = Vec::with_capacity(total);
    let ramp = Duration::from_secs_f64(1.0 / cfg.ramp_per_s.max(0.01));
    // Room tokens first, 32 requests in flight (one at a time would take minutes
    // for 10,000 members), then connections at the ramp rate.
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut fetches = Vec::with_capacity(total);
    for r in 0..cfg.rooms {
        for i in 0..cfg.members {
            let (http, sem) = (http.clone(), sem.clone());
            let (base, secret) = (cfg.base.clone(), cfg.jwt_secret.clone());
            let room_id = format!("lt-{run_id:08x}-{r}");
            fetches.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                room_token(&http, &base, &secret, &room_id, &format!("u{r}-{i}")).await
            }));
        }
    }
    let mut tokens = std::collections::VecDeque::with_capacity(total);
    for f in fetches {
        tokens.push_back(f.await.map_err(|e| e.to_string())??);
    }
    let start = Instant::now();
    let mut k = 0usize;
    for r in 0..cfg.rooms {
        let room_id = format!("lt-{run_id:08x}-{r}");
        let clients: Vec<Arc<Mutex<ClientView>>> = (0..cfg.members)
            .map(|_| {
                let clock = LocalClock {
                    skew_ms: (rand::random::<f64>() * 2.0 - 1.0) * cfg.skew_ms,
                    ppm: (rand::random::<f64>() * 2.0 - 1.0) * cfg.drift_ppm,
                    origin_ms: origin,
                };
                let mut adapter = Adapter::new(clock.now());
                adapter.deadband = cfg.deadband_ms / 1000.0;
                Arc::new(Mutex::new(ClientView {
                    clock,
                    adapter,
                    state: None,
                    offset: None,
                }))
            })
            .collect();
        let room = Arc::new(Room {
            command_sent_us: AtomicU64::new(0),
            command_seq: AtomicU64::new(0),
            last_receipt: Mutex::new(HashMap::new()),
            clients: clients.clone(),
        });
        for (i, me) in clients.into_iter().enumerate() {
            tokio::time::sleep_until((start + ramp.mul_f64(k as f64)).into()).await;
            k += 1;
            let token = tokens.pop_front().ok_or("room token missing")?;
            let url = format!("{ws_base}/v1/rooms/{room_id}/ws?token={token}");
            let (tx, rx) = tokio::sync::oneshot::channel();
            // The first member becomes the host; wait for it so it is.
            let senders = cfg.members.saturating_sub(1).max(1) as f64;
            let plan = Behaviour {
                host: i == 0,
                command_rate: cfg.command_rate,
                reaction_every: (i > 0 && cfg.reaction_rate > 0.0)
                    .then(|| senders / cfg.reaction_rate),
                chat_every: (i > 0 && cfg.chat_rate > 0.0).then(|| senders / cfg.chat_rate),
                listen_only: cfg.listen_only,
            };
            tasks.push(tokio::spawn(client(
                url,
                plan,
                room.clone(),
                me,
                shared.clone(),
                tx,
            )));
            if i == 0 {
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => report.connect_errors.push(e),
                    Err(e) => report.connect_errors.push(e.to_string()),
                }
            } else {
                readies.push(rx);
            }
            pb.set_position(shared.connected.load(Ordering::Relaxed) as u64);
        }
        rooms.push(room);
    }
    // One deadline for all of them: a server that stops answering must not cost
    // 30 s per client.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut missing = 0usize;
    for rx in readies {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => report.connect_errors.push(e),
            Ok(Err(e)) => report.connect_errors.push(e.to_string()),
            Err(_) => missing += 1,
        }
    }
    if missing > 0 {
        report
            .connect_errors
            .push(format!("{missing} clients had no welcome within 60 s"));
    }
    pb.finish_and_clear();
    if report.connect_errors.len() > 6 {
        let n = report.connect_errors.len();
        report.connect_errors.drain(5..n - 1);
    }
    report.clients_connected = shared.connected.load(Ordering::Relaxed);
    // Clock bursts finish and the first commands land before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = cfg
        .server_pid
        .and_then(|p| procstat::sample(p).ok())
        .map(|s| s.rss_bytes)
        .unwrap_or(0);

    let (start_error, start_rtt) = clock_errors(&rooms);
    report.clock_offset_error_start = start_error;
    report.clock_estimate_rtt_start = start_rtt;
    let pb = report::progress(cfg.progress, cfg.duration.as_secs().max(1), "measuring");
    let p0 = cfg.server_pid.and_then(|p| procstat::sample(p).ok());
    let m0 = scrape(&http, &cfg.base).await;
    let msg0 = shared.messages.load(Ordering::Relaxed);
    let bytes0 = shared.message_bytes.load(Ordering::Relaxed);
    shared.measuring.store(true, Ordering::Release);
    let t0 = Instant::now();
    let mut pos_h = new_histogram();
    let mut samples = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while t0.elapsed() < cfg.duration {
        tick.tick().await;
        samples += sample_rooms(&rooms, &mut pos_h);
        pb.set_position(t0.elapsed().as_secs());
    }
    shared.measuring.store(false, Ordering::Release);
    let window = t0.elapsed().as_secs_f64();
    let (offset_error, estimate_rtt) = clock_errors(&rooms);
    report.clock_offset_error = offset_error;
    report.clock_estimate_rtt = estimate_rtt;
    let p1 = cfg.server_pid.and_then(|p| procstat::sample(p).ok());
    let m1 = scrape(&http, &cfg.base).await;
    let pass = |name: &str, labels: &[(&str, &str)]| {
        metric(
            &m1,
            &format!("tandem_room_broadcast_pass_seconds{name}"),
            labels,
        ) - metric(
            &m0,
            &format!("tandem_room_broadcast_pass_seconds{name}"),
            labels,
        )
    };
    let passes = pass("_count", &[]);
    report.server_broadcast_passes = passes;
    if passes > 0.0 {
        report.server_broadcast_pass_mean_ms = Some(pass("_sum", &[]) / passes * 1000.0);
        report.server_broadcast_pass_p99_le_ms = PASS_BUCKETS
            .iter()
            .find(|le| pass("_bucket", &[("le", le)]) >= 0.99 * passes)
            .and_then(|le| le.parse::<f64>().ok())
            .map(|s| s * 1000.0);
    }
    let msgs = shared.messages.load(Ordering::Relaxed) - msg0;
    let bytes = shared.message_bytes.load(Ordering::Relaxed) - bytes0;
    pb.finish_and_clear();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }

    report.window_s = window;
    report.commands_sent = shared.commands.load(Ordering::Relaxed);
    report.reactions_sent = shared.reactions.load(Ordering::Relaxed);
    report.chats_sent = shared.chats.load(Ordering::Relaxed);
    report.listen_only = cfg.listen_only;
    report.fanout_latency = percentiles_of(&shared.fanout);
    report.fanout_complete = percentiles_of(&shared.complete);
    report.fanout_latency_at_socket = percentiles_of(&shared.fanout_at_socket);
    report.fanout_complete_at_socket = percentiles_of(&shared.complete_at_socket);
    report.position_error = Percentiles::of(&pos_h);
    report.position_samples = samples;
    report.messages_received = msgs;
    report.messages_per_s = msgs as f64 / window;
    report.avg_message_bytes = bytes as f64 / msgs.max(1) as f64;
    if let (Some(a), Some(b)) = (p0, p1) {
        let (u, s, _) = procstat::delta(&a, &b);
        report.server_cpu_user_s = u.as_secs_f64();
        report.server_cpu_system_s = s.as_secs_f64();
        report.server_cpu_s = (u + s).as_secs_f64();
        report.messages_per_server_core_s = msgs as f64 / report.server_cpu_s.max(1e-9);
    }
    report.server_rss_before_bytes = rss_before;
    report.server_rss_connected_bytes = rss_connected;
    report.server_rss_per_connection_bytes =
        (rss_connected as f64 - rss_before as f64) / report.clients_connected.max(1) as f64;
    if !cfg.bare_duration.is_zero() {
        let n = total.max(1);
        let size = report.avg_message_bytes.round().max(16.0) as usize + 4;
        let dur = cfg.bare_duration;
        let every = (report.server_broadcast_passes > 0.0)
            .then(|| Duration::from_secs_f64(window / report.server_broadcast_passes));
        let (one, batched, paced) = tokio::task::spawn_blocking(move || {
            let report_err = |e: &std::io::Error| {
                eprintln!("bare TCP loop over {n} connections: {e}");
            };
            let run = |frames| bare::tcp(n, size, frames, dur).inspect_err(report_err).ok();
            let paced = every.and_then(|every| {
                // Ten sweeps at least (a slow broadcast rate still measures), 10 s at most.
                let dur = dur.max(every * 10).min(Duration::from_secs(10));
                bare::tcp_paced(n, size, every, dur)
                    .inspect_err(report_err)
                    .ok()
            });
            (run(1), run(8), paced)
        })
        .await
        .map_err(|e| e.to_string())?;
        report.bare_tcp_write = one;
        report.bare_tcp_write_batched = batched;
        report.bare_tcp_write_paced = paced;
    }
    report.load_average_after = procstat::loadavg();
    Ok(report)
}

/// The table of a `sync` report, with the targets of issue 5.
pub fn rows(r: &SyncReport) -> Vec<Row> {
    let mut rows = vec![
        Row::new(
            "clients connected",
            format!(
                "{} / {} ({} rooms × {})",
                r.clients_connected,
                r.rooms * r.members_per_room,
                r.rooms,
                r.members_per_room
            ),
        ),
        Row::new(
            "network / clock skew / drift",
            format!(
                "{} / ±{:.0} ms / ±{:.0} ppm",
                r.network, r.skew_ms, r.drift_ppm
            ),
        ),
        Row::new(
            "correction dead band",
            format!("{:.0} ms (SDK: 30 ms)", r.deadband_ms),
        ),
        Row::new(
            "connect errors",
            r.connect_errors
                .last()
                .cloned()
                .unwrap_or_else(|| "none".into()),
        ),
        Row::new(
            "commands / reactions / chat (window)",
            format!(
                "{} / {} / {}",
                r.commands_sent, r.reactions_sent, r.chats_sent
            ),
        ),
        Row::new(
            "members send",
            if r.listen_only {
                "only what the protocol requires (--listen-only)"
            } else {
                "SDK traffic: clock pings, reports"
            },
        ),
        Row::new(
            "messages delivered/s",
            format!("{:.0} (avg {:.0} B)", r.messages_per_s, r.avg_message_bytes),
        ),
    ];
    let members = r.members_per_room;
    let fan_target = if members >= 10_000 {
        None
    } else if members >= 1000 {
        Some("p99 < 10 ms")
    } else {
        None
    };
    let socket = &r.fanout_latency_at_socket;
    let mut fan = Row::new(
        "fan-out to the member's socket p50 / p99",
        report::ms_each(&[socket.p50_ms, socket.p99_ms]),
    );
    if let Some(t) = fan_target {
        fan = fan.target(t, (socket.count > 0).then_some(socket.p99_ms < 10.0));
    }
    rows.push(fan);
    rows.push(Row::new(
        "fan-out to the member's read p50 / p99",
        report::ms_each(&[r.fanout_latency.p50_ms, r.fanout_latency.p99_ms]),
    ));
    let last = &r.fanout_complete_at_socket;
    let mut complete = Row::new(
        "fan-out to the last member's socket p50 / p99",
        report::ms_each(&[last.p50_ms, last.p99_ms]),
    );
    if let Some(b) = r.bare_tcp_write.as_ref().filter(|_| members >= 1000) {
        let bare_ms = b.total_us_per_op * members as f64 / 1000.0;
        let ratio = last.p99_ms / bare_ms.max(1e-9);
        complete = complete.bare(
            format!("{} ({} writes)", report::ms(bare_ms), members),
            ratio,
        );
    }
    rows.push(complete);
    rows.push(Row::new(
        "fan-out to the last member's read p50 / p99",
        report::ms_each(&[r.fanout_complete.p50_ms, r.fanout_complete.p99_ms]),
    ));
    if let Some(mean) = r.server_broadcast_pass_mean_ms {
        let p99 = r
            .server_broadcast_pass_p99_le_ms
            .map_or("-".into(), |v| format!("≤ {}", report::ms(v)));
        let mut pass = Row::new(
            "server: one broadcast to all members, mean / p99",
            format!(
                "{} / {} ({:.0} passes)",
                report::ms(mean),
                p99,
                r.server_broadcast_passes
            ),
        );
        if let Some(b) = r.bare_tcp_write.as_ref().filter(|_| members >= 1000) {
            let bare_ms = b.total_us_per_op * members as f64 / 1000.0;
            let ratio = mean / bare_ms.max(1e-9);
            pass = pass.bare(
                format!("{} ({} writes)", report::ms(bare_ms), members),
                ratio,
            );
            if members >= 10_000 {
                pass = pass.target("≤ 1.3× bare", Some(ratio <= 1.3));
            }
        }
        rows.push(pass);
    }
    let mut per_core = Row::new(
        "messages per server CPU-second",
        format!("{:.0}", r.messages_per_server_core_s),
    );
    if let Some(b) = &r.bare_tcp_write {
        let bare_rate = 1e6 / b.total_us_per_op.max(1e-9);
        let ratio = r.messages_per_server_core_s / bare_rate;
        per_core = per_core.bare(format!("{bare_rate:.0} (1 frame/write)"), ratio);
        // The target is about fan-out; in small rooms timers and clock pings, not
        // deliveries, are most of the server's CPU.
        if members >= 1000 {
            per_core = per_core.target("≥ 0.8× bare", Some(ratio >= 0.8));
        }
    }
    rows.push(per_core);
    if let Some(b) = &r.bare_tcp_write_batched {
        rows.push(Row::new(
            "  bare with 8 queued frames per write",
            format!("{:.0} frames/CPU-s", 1e6 / b.total_us_per_op.max(1e-9)),
        ));
    }
    if let Some(b) = &r.bare_tcp_write_paced {
        let bare_rate = 1e6 / b.total_us_per_op.max(1e-9);
        rows.push(
            Row::new(
                "  bare paced like the broadcasts (idle receivers)",
                format!("{bare_rate:.0} writes/CPU-s"),
            )
            .bare(
                format!("{:.2} µs/write", b.total_us_per_op),
                r.messages_per_server_core_s / bare_rate,
            ),
        );
    }
    let mut rss = Row::new(
        "server RSS per connection",
        format!("{:.1} KiB", r.server_rss_per_connection_bytes / 1024.0),
    );
    // Below a thousand connections the server's fixed costs (allocator arenas,
    // buffers of the first rooms) are most of the difference, not the connections.
    if r.clients_connected >= 1000 {
        rss = rss.target(
            "≤ 10 KiB idle",
            Some(r.server_rss_per_connection_bytes <= 10.0 * 1024.0),
        );
    }
    rows.push(rss);
    let pos_target = if r.network == "loopback" {
        ("p95 < 20 ms", 20.0)
    } else {
        ("p95 < 50 ms", 50.0)
    };
    let position = Row::new(
        "pairwise position error p50 / p95 / p99",
        report::ms_each(&[
            r.position_error.p50_ms,
            r.position_error.p95_ms,
            r.position_error.p99_ms,
        ]),
    );
    // Listen-only members send no clock pings, so they never learn their clock's
    // offset and their positions differ by their skew: nothing to hold them to.
    rows.push(if r.listen_only {
        position.target("none (listen-only: no clock sync)", None)
    } else {
        position.target(
            pos_target.0,
            (r.position_error.count > 0).then_some(r.position_error.p95_ms < pos_target.1),
        )
    });
    rows.push(Row::new(
        "position samples (pairs)",
        r.position_samples.to_string(),
    ));
    rows.push(Row::new(
        "client clock-estimate error p50 / p95 / max (end)",
        format!(
            "{} / {} / {} (RTT p50 {})",
            report::ms(r.clock_offset_error.p50_ms),
            report::ms(r.clock_offset_error.p95_ms),
            report::ms(r.clock_offset_error.max_ms),
            report::ms(r.clock_estimate_rtt.p50_ms)
        ),
    ));
    rows.push(Row::new(
        "  … when the window started",
        format!(
            "{} / {} / {} (RTT p50 {})",
            report::ms(r.clock_offset_error_start.p50_ms),
            report::ms(r.clock_offset_error_start.p95_ms),
            report::ms(r.clock_offset_error_start.max_ms),
            report::ms(r.clock_estimate_rtt_start.p50_ms)
        ),
    ));
    rows.push(Row::new(
        "load average before / after",
        format!("{:.2} / {:.2}", r.load_average_before, r.load_average_after),
    ));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_is_read_without_parsing() {
        assert_eq!(
            message_type(r#"{"emoji":"👏","from":{"user":"u1"},"seq":9,"type":"reaction"}"#),
            Some("reaction")
        );
        assert_eq!(
            message_type(r#"{"type":"playback.state","at":1.5,"paused":false}"#),
            Some("playback.state")
        );
        // A nested member named `type` is not the message's.
        assert_eq!(
            message_type(r#"{"chat":[{"type":"chat.message"}],"type":"welcome"}"#),
            Some("welcome")
        );
        assert_eq!(message_type(r#"{"seq":1}"#), None);
        assert_eq!(message_type(r#"{"type":"trunc"#), None);
    }

    #[test]
    fn skewed_clients_that_apply_the_same_state_agree() {
        let p = State {
            paused: false,
            position: 10.0,
            rate: 1.0,
            at: 1_000_000.0,
            seq: 3,
            waiting: false,
        };
        let wall = 1_000_500.0;
        let mut a = Adapter::new(0.0);
        let mut b = Adapter::new(0.0);
        let ca = LocalClock {
            skew_ms: 9000.0,
            ppm: 100.0,
            origin_ms: wall,
        };
        let cb = LocalClock {
            skew_ms: -7000.0,
            ppm: -100.0,
            origin_ms: wall,
        };
        // Each knows its offset exactly: server_now = wall.
        a.apply(&p, wall, ca.at(wall), true);
        b.apply(&p, wall, cb.at(wall), true);
        let later = wall + 2000.0;
        let pa = a.player.time(ca.at(later));
        let pb = b.player.time(cb.at(later));
        assert!((pa - 12.5).abs() < 0.01, "{pa}");
        assert!((pa - pb).abs() < 0.001, "{pa} {pb}");
    }

    #[test]
    fn adapter_nudges_then_settles() {
        let p = State {
            paused: false,
            position: 0.0,
            rate: 1.0,
            at: 0.0,
            seq: 1,
            waiting: false,
        };
        let mut a = Adapter::new(0.0);
        a.apply(&p, 0.0, 0.0, true);
        // 100 ms behind: nudge, not seek.
        a.player.seek(1000.0, 0.9);
        a.apply(&p, 1000.0, 1000.0, false);
        assert!(a.nudging && a.player.rate > 1.0);
        let mut t = 1000.0;
        while t < 6000.0 {
            t += 100.0;
            a.apply(&p, t, t, false);
        }
        assert!(!a.nudging, "settled");
        assert!((a.player.time(t) - t / 1000.0).abs() < 0.03);
    }

    #[test]
    fn ready_is_reported_once_per_barrier() {
        let p = State {
            paused: true,
            position: 5.0,
            rate: 1.0,
            at: 0.0,
            seq: 9,
            waiting: true,
        };
        let mut a = Adapter::new(0.0);
        assert_eq!(a.apply(&p, 10.0, 10.0, true), Some(5.0));
        assert_eq!(a.apply(&p, 20.0, 20.0, false), None);
    }
}
