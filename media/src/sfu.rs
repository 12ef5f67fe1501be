//! [`Sfu`]: the handle the HTTP layer calls to create, patch and end sessions,
//! and the registries (sessions, ICE ufrags, streams) the workers share.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::MediaMetrics;
use crate::sdp;
use crate::track::Continuity;
use crate::worker::{self, Control, Inbound};
use crate::{MediaConfig, MediaError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Publisher,
    Viewer,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Publisher => "publisher",
            SessionKind::Viewer => "viewer",
        }
    }
}

/// What the HTTP layer returns for a new session.
#[derive(Debug, Clone)]
pub struct SessionAnswer {
    pub session_id: String,
    pub sdp: String,
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PatchOutcome {
    /// Candidates accepted (204).
    Trickled,
    /// ICE restarted: the server's new credentials as an sdpfrag (200).
    Restarted { sdpfrag: String, etag: String },
}

#[derive(Debug, Clone)]
pub struct SessionSummary {
    pub id: Arc<str>,
    pub stream: Arc<str>,
    pub kind: SessionKind,
    pub user: Arc<str>,
    pub etag: String,
    pub started_at_ms: i64,
}

/// Who asks for a session: what the per-token and per-user limits count.
#[derive(Debug, Clone, Copy)]
pub struct SessionHolder<'a> {
    /// The user (`sub` of the media token).
    pub user: &'a str,
    /// The token's id (`jti`).
    pub token: &'a str,
    /// Whether `max_sessions_per_token` / `max_sessions_per_user` apply (the
    /// server-wide limits always do). The HTTP layer decides who is exempt.
    pub limited: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamSummary {
    pub name: String,
    pub live: bool,
    pub viewers: usize,
}

/// Told when sessions start and end (the server records them); called from
/// media threads, so implementations must not block.
pub trait SessionObserver: Send + Sync + 'static {
    fn session_started(&self, session: &SessionSummary);
    fn session_ended(&self, session: &SessionSummary);
}

/// A stream as every worker sees it. Touched on joins, leaves and keyframe
/// requests; the per-packet path reads only atomics here.
pub struct StreamShared {
    pub id: u64,
    pub name: Arc<str>,
    /// Session key of the publisher holding the stream (reserved at POST).
    pub publisher: Mutex<Option<u64>>,
    /// The live publisher's negotiated codecs (payload types as it sends them).
    pub codecs: RwLock<Arc<Vec<RTCRtpCodecParameters>>>,
    /// Bumped whenever the publisher (and so its payload types) changes.
    pub epoch: AtomicU32,
    pub live: AtomicBool,
    /// Viewers holding a session (connected or not).
    pub viewers: AtomicUsize,
    /// Connected viewers per worker: who needs this stream's packets.
    pub viewers_on: Vec<AtomicUsize>,
    pub keyframe_wanted: AtomicBool,
    /// Numbering handed from one publisher to the next.
    pub continuity: Mutex<Option<[Continuity; 2]>>,
}

impl StreamShared {
    fn new(id: u64, name: Arc<str>, workers: usize) -> Self {
        Self {
            id,
            name,
            publisher: Mutex::new(None),
            codecs: RwLock::new(Arc::new(Vec::new())),
            epoch: AtomicU32::new(0),
            live: AtomicBool::new(false),
            viewers: AtomicUsize::new(0),
            viewers_on: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            keyframe_wanted: AtomicBool::new(false),
            continuity: Mutex::new(None),
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.viewers.load(Ordering::Acquire) == 0
            && self.publisher.lock().map(|p| p.is_none()).unwrap_or(false)
    }

    pub fn codecs(&self) -> Arc<Vec<RTCRtpCodecParameters>> {
        self.codecs.read().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Sessions held, in all and per token and per user: what admission checks.
/// Locked on the HTTP path (admission) and when a session ends, never per packet.
#[derive(Default)]
pub(crate) struct Admission {
    held: Mutex<Held>,
    /// Unix second of the last "limit reached" log line, so refusals in a flood
    /// log once every [`REFUSAL_LOG_INTERVAL_SECS`].
    last_refusal_log: AtomicU64,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_token: HashMap<Arc<str>, usize>,
    by_user: HashMap<Arc<str>, usize>,
}

const REFUSAL_LOG_INTERVAL_SECS: u64 = 10;

/// One admitted session's place in the [`Admission`] counts. The session owns it
/// from admission to its end; dropping it gives the place back, so the counts
/// are released exactly once however the session ends (DELETE, a timeout, a
/// failed connection, a failed creation, shutdown).
pub(crate) struct SessionSlot {
    admission: Arc<Admission>,
    token: Arc<str>,
    user: Arc<str>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut held = self.admission.lock();
        held.total = held.total.saturating_sub(1);
        release(&mut held.by_token, &self.token);
        release(&mut held.by_user, &self.user);
    }
}

fn release(counts: &mut HashMap<Arc<str>, usize>, key: &Arc<str>) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts stay consistent under a panic elsewhere (every update is a
        // few integer operations), so a poisoned lock is still usable.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a new session, or says which limit refuses it.
    fn admit(
        self: &Arc<Self>,
        config: &MediaConfig,
        kind: SessionKind,
        holder: &SessionHolder<'_>,
    ) -> Result<SessionSlot, MediaError> {
        let mut held = self.lock();
        let refusal = self.refusal(&held, config, kind, holder);
        if let Some(err) = refusal {
            drop(held);
            self.log_refusal(&err, holder);
            return Err(err);
        }
        let token: Arc<str> = Arc::from(holder.token);
        let user: Arc<str> = Arc::from(holder.user);
        held.total += 1;
        *held.by_token.entry(token.clone()).or_default() += 1;
        *held.by_user.entry(user.clone()).or_default() += 1;
        Ok(SessionSlot {
            admission: self.clone(),
            token,
            user,
        })
    }

    fn refusal(
        &self,
        held: &Held,
        config: &MediaConfig,
        kind: SessionKind,
        holder: &SessionHolder<'_>,
    ) -> Option<MediaError> {
        // A place held by a session whose client never starts ICE comes back
        // after the ICE-start timeout: the earliest a retry can succeed.
        let retry_after_secs = config.ice_start_timeout.as_secs().max(1);
        let per_token = config.max_sessions_per_token;
        let per_user = config.max_sessions_per_user;
        let count = |m: &HashMap<Arc<str>, usize>, k: &str| m.get(k).copied().unwrap_or(0);
        if holder.limited && per_token > 0 && count(&held.by_token, holder.token) >= per_token {
            return Some(MediaError::LimitReached {
                limit: "media.max_sessions_per_token",
                message: format!(
                    "this token already holds {per_token} sessions, the most one token may \
                     (media.max_sessions_per_token); DELETE the sessions it no longer uses, \
                     or retry after sessions that never connected have timed out"
                ),
                retry_after_secs,
            });
        }
        if holder.limited && per_user > 0 && count(&held.by_user, holder.user) >= per_user {
            return Some(MediaError::LimitReached {
                limit: "media.max_sessions_per_user",
                message: format!(
                    "this user already holds {per_user} sessions, the most one user may over \
                     all their tokens (media.max_sessions_per_user); DELETE the sessions no \
                     longer used, or retry after sessions that never connected have timed out"
                ),
                retry_after_secs,
            });
        }
        let max = config.max_sessions;
        if held.total >= max {
            return Some(MediaError::AtCapacity(format!(
                "{max} sessions is the configured maximum (media.max_sessions)"
            )));
        }
        let reserve = config.publisher_reserve();
        if kind == SessionKind::Viewer && held.total >= max.saturating_sub(reserve) {
            return Some(MediaError::AtCapacity(format!(
                "viewers may hold {} of the {max} sessions; the other {reserve} are kept for \
                 publishers (media.publisher_reserve_percent)",
                max.saturating_sub(reserve)
            )));
        }
        None
    }

    fn log_refusal(&self, err: &MediaError, holder: &SessionHolder<'_>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_refusal_log.load(Ordering::Relaxed);
        let due = now >= last + REFUSAL_LOG_INTERVAL_SECS;
        if due
            && self
                .last_refusal_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(user = holder.user, error = %err, "session refused (logged at most every 10 s)");
        } else {
            tracing::debug!(user = holder.user, error = %err, "session refused");
        }
    }

    fn of_token(&self, token: &str) -> usize {
        self.lock().by_token.get(token).copied().unwrap_or(0)
    }

    fn of_user(&self, user: &str) -> usize {
        self.lock().by_user.get(user).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub key: u64,
    pub worker: usize,
}

pub(crate) struct SessionEntry {
    pub summary: SessionSummary,
    pub key: u64,
    pub worker: usize,
}

pub(crate) struct WorkerHandle {
    pub control: mpsc::UnboundedSender<Control>,
    pub inbound: mpsc::Sender<Inbound>,
}

/// State shared by the HTTP-facing handle and every worker.
pub(crate) struct Shared {
    pub config: MediaConfig,
    pub port: u16,
    /// The address incoming packets are attributed to (the first advertised IP).
    pub local_ip: IpAddr,
    pub workers: Vec<WorkerHandle>,
    pub sessions: DashMap<Arc<str>, SessionEntry>,
    pub ufrags: DashMap<String, Route>,
    pub streams: DashMap<Arc<str>, Arc<StreamShared>>,
    pub metrics: MediaMetrics,
    pub observer: Arc<dyn SessionObserver>,
    pub admission: Arc<Admission>,
    pub running: AtomicBool,
    next_worker: AtomicUsize,
    next_stream_id: AtomicU64,
    next_session_key: AtomicU64,
}

impl Shared {
    pub fn candidates(&self) -> Vec<(SocketAddr, bool)> {
        let mut out = Vec::new();
        for ip in &self.config.advertised_ips {
            out.push((SocketAddr::new(*ip, self.port), false));
        }
        if self.config.ice_tcp {
            for ip in &self.config.advertised_ips {
                out.push((SocketAddr::new(*ip, self.port), true));
            }
        }
        out
    }

    /// Drops a stream from the registry once nobody holds it.
    pub fn forget_stream_if_idle(&self, name: &Arc<str>) {
        self.streams.remove_if(name, |_, s| s.is_idle());
    }
}

#[derive(Clone)]
pub struct Sfu {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Sfu {
    /// Binds the media port (one UDP socket per worker, SO_REUSEPORT; ICE-TCP
    /// listener) and starts the workers.
    pub async fn start(
        config: MediaConfig,
        registry: &prometheus::Registry,
        observer: Arc<dyn SessionObserver>,
    ) -> Result<Sfu, MediaError> {
        let metrics = MediaMetrics::register(registry)
            .map_err(|e| MediaError::Internal(format!("metrics: {e}")))?;
        let workers = config.worker_count();
        let (sockets, port, tcp) = bind_media_port(&config, workers).await?;
        let mut handles = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (control, control_rx) = mpsc::unbounded_channel();
            let (inbound, inbound_rx) = mpsc::channel(config.worker_queue_packets.max(1));
            handles.push(WorkerHandle { control, inbound });
            receivers.push((control_rx, inbound_rx));
        }
        let local_ip = config
            .advertised_ips
            .first()
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let shared = Arc::new(Shared {
            config,
            port,
            local_ip,
            workers: handles,
            sessions: DashMap::new(),
            ufrags: DashMap::new(),
            streams: DashMap::new(),
            metrics,
            observer,
            admission: Arc::default(),
            running: AtomicBool::new(true),
            next_worker: AtomicUsize::new(0),
            next_stream_id: AtomicU64::new(1),
            next_session_key: AtomicU64::new(1),
        });
        let mut threads = Vec::with_capacity(workers);
        for (idx, (socket, (control_rx, inbound_rx))) in
            sockets.into_iter().zip(receivers).enumerate()
        {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("tandem-media-{idx}"))
                .spawn(move || worker::run(idx, shared, socket, control_rx, inbound_rx))
                .map_err(|e| MediaError::Internal(format!("spawning media worker: {e}")))?;
            threads.push(thread);
        }
        if let Some(listener) = tcp {
            tokio::spawn(crate::tcp::accept_loop(listener, shared.clone()));
        }
        tracing::info!(
            port,
            workers,
            ice_tcp = shared.config.ice_tcp,
            "media workers started"
        );
        Ok(Sfu {
            shared,
            threads: Arc::new(Mutex::new(threads)),
        })
    }

    /// The media port (UDP and ICE-TCP) every session uses.
    pub fn local_port(&self) -> u16 {
        self.shared.port
    }

    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }

    /// WHIP: a publisher's offer for `stream`.
    pub async fn publish(
        &self,
        stream: &str,
        offer: &str,
        holder: &SessionHolder<'_>,
    ) -> Result<SessionAnswer, MediaError> {
        self.create(SessionKind::Publisher, stream, offer, holder)
            .await
    }

    /// WHEP: a viewer's offer for `stream` (the publisher may come later).
    pub async fn subscribe(
        &self,
        stream: &str,
        offer: &str,
        holder: &SessionHolder<'_>,
    ) -> Result<SessionAnswer, MediaError> {
        self.create(SessionKind::Viewer, stream, offer, holder)
            .await
    }

    async fn create(
        &self,
        kind: SessionKind,
        stream: &str,
        offer: &str,
        holder: &SessionHolder<'_>,
    ) -> Result<SessionAnswer, MediaError> {
        let shared = &self.shared;
        if !self.is_running() {
            return Err(MediaError::ShuttingDown);
        }
        let checked = sdp::check_offer(offer, kind)?;
        // Counted from here (not from when the worker has built the session), so
        // concurrent requests cannot overshoot a limit; any failure below drops
        // the slot and gives the place back.
        let slot = shared.admission.admit(&shared.config, kind, holder)?;
        let key = shared.next_session_key.fetch_add(1, Ordering::Relaxed);
        let name: Arc<str> = Arc::from(stream);
        // Reserve under the stream's map entry, so an idle stream cannot be
        // removed between our lookup and our reservation.
        let stream = {
            let entry = shared.streams.entry(name.clone()).or_insert_with(|| {
                Arc::new(StreamShared::new(
                    shared.next_stream_id.fetch_add(1, Ordering::Relaxed),
                    name.clone(),
                    shared.workers.len(),
                ))
            });
            let s = entry.value().clone();
            match kind {
                SessionKind::Publisher => {
                    let mut publisher = s.publisher.lock().expect("publisher lock");
                    if publisher.is_some() {
                        drop(publisher);
                        drop(entry);
                        return Err(MediaError::StreamBusy(name.to_string()));
                    }
                    *publisher = Some(key);
                }
                SessionKind::Viewer => {
                    let max = shared.config.max_viewers_per_stream;
                    if s.viewers.fetch_add(1, Ordering::AcqRel) >= max {
                        s.viewers.fetch_sub(1, Ordering::AcqRel);
                        drop(entry);
                        return Err(MediaError::AtCapacity(format!(
                            "stream '{name}' has {max} viewers (media.max_viewers_per_stream)"
                        )));
                    }
                }
            }
            s
        };
        let worker = shared.next_worker.fetch_add(1, Ordering::Relaxed) % shared.workers.len();
        let id: Arc<str> = Arc::from(random_hex(16));
        let (reply, answer) = oneshot::channel();
        let request = worker::CreateRequest {
            key,
            id,
            kind,
            stream: stream.clone(),
            offer: offer.to_string(),
            checked,
            user: Arc::from(holder.user),
            slot,
            reply,
        };
        let sent = shared.workers[worker]
            .control
            .send(Control::Create(Box::new(request)));
        let result = match sent {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err(MediaError::Internal("media worker stopped".into()))),
            Err(_) => Err(MediaError::ShuttingDown),
        };
        if result.is_err() {
            match kind {
                SessionKind::Publisher => {
                    let mut publisher = stream.publisher.lock().expect("publisher lock");
                    if *publisher == Some(key) {
                        *publisher = None;
                    }
                }
                SessionKind::Viewer => {
                    stream.viewers.fetch_sub(1, Ordering::AcqRel);
                }
            }
            shared.forget_stream_if_idle(&name);
        }
        result
    }

    /// Trickle candidates or an ICE restart (PATCH).
    pub async fn patch(&self, session: &str, frag: &str) -> Result<PatchOutcome, MediaError> {
        let fragment = sdp::parse_fragment(frag)?;
        let (key, worker) = self.route(session)?;
        let (reply, rx) = oneshot::channel();
        self.shared.workers[worker]
            .control
            .send(Control::Patch {
                key,
                fragment,
                reply,
            })
            .map_err(|_| MediaError::ShuttingDown)?;
        let outcome = rx.await.unwrap_or(Err(MediaError::UnknownSession))?;
        if let PatchOutcome::Restarted { etag, .. } = &outcome
            && let Some(mut entry) = self.shared.sessions.get_mut(session)
        {
            entry.summary.etag = etag.clone();
        }
        Ok(outcome)
    }

    fn route(&self, session: &str) -> Result<(u64, usize), MediaError> {
        self.shared
            .sessions
            .get(session)
            .map(|e| (e.key, e.worker))
            .ok_or(MediaError::UnknownSession)
    }

    pub fn session(&self, session: &str) -> Option<SessionSummary> {
        self.shared.sessions.get(session).map(|e| e.summary.clone())
    }

    /// Ends a session (DELETE). A second call for the same session is `UnknownSession`.
    pub async fn end(&self, session: &str) -> Result<(), MediaError> {
        let (key, worker) = self.route(session)?;
        let (reply, rx) = oneshot::channel();
        self.shared.workers[worker]
            .control
            .send(Control::End {
                key,
                reply: Some(reply),
            })
            .map_err(|_| MediaError::ShuttingDown)?;
        rx.await.unwrap_or(Err(MediaError::UnknownSession))
    }

    /// Sessions held by the media token with this `jti` (limited or not).
    pub fn sessions_of_token(&self, jti: &str) -> usize {
        self.shared.admission.of_token(jti)
    }

    /// Sessions held by this user over all their tokens (limited or not).
    pub fn sessions_of_user(&self, user: &str) -> usize {
        self.shared.admission.of_user(user)
    }

    /// Live sessions (publishers and viewers).
    pub fn session_count(&self) -> usize {
        self.shared.sessions.len()
    }

    pub fn stream(&self, name: &str) -> Option<StreamSummary> {
        self.shared.streams.get(name).map(|s| summary(&s))
    }

    pub fn streams(&self) -> Vec<StreamSummary> {
        self.shared.streams.iter().map(|s| summary(&s)).collect()
    }

    /// Closes every session (as DELETE would) and stops the workers.
    pub async fn shutdown(&self, grace: Duration) {
        if !self.shared.running.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut waits = Vec::new();
        for w in &self.shared.workers {
            let (reply, rx) = oneshot::channel();
            if w.control.send(Control::Shutdown { reply }).is_ok() {
                waits.push(rx);
            }
        }
        let all = async {
            for rx in waits {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("media workers did not stop within the grace period");
            return;
        }
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

fn summary(s: &StreamShared) -> StreamSummary {
    StreamSummary {
        name: s.name.to_string(),
        live: s.live.load(Ordering::Acquire),
        viewers: s.viewers.load(Ordering::Acquire),
    }
}

/// Binds the UDP sockets and, with ICE-TCP, the TCP listener on the same port.
/// Port 0 picks one free for both (a port free for UDP may be taken for TCP).
async fn bind_media_port(
    config: &MediaConfig,
    workers: usize,
) -> Result<
    (
        Vec<std::net::UdpSocket>,
        u16,
        Option<tokio::net::TcpListener>,
    ),
    MediaError,
> {
    let attempts = if config.port == 0 { 20 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let (sockets, port) = worker::bind_udp(config.bind, config.port, workers)?;
        if !config.ice_tcp {
            return Ok((sockets, port, None));
        }
        match crate::tcp::bind(config.bind, port).await {
            Ok(listener) => return Ok((sockets, port, Some(listener))),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| MediaError::Internal("binding the media port".into())))
}

/// What the logs show of a session id: its first 8 hex digits. The whole id is
/// the secret part of the session URL (anyone holding it may PATCH or DELETE the
/// session, RFC 9725 §4.3), so logs, which more people read, carry only enough
/// to tell sessions apart: 32 of its 128 bits.
pub(crate) fn log_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let b: u8 = rand::random();
        out.push_str(&format!("{b:02x}"));
    }
    out
}
