//! [`Sfu`]: the handle the HTTP layer calls to create, patch and end sessions,
//! and the registries (sessions, ICE ufrags, streams) the workers share.

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
        user: &str,
    ) -> Result<SessionAnswer, MediaError> {
        self.create(SessionKind::Publisher, stream, offer, user)
            .await
    }

    /// WHEP: a viewer's offer for `stream` (the publisher may come later).
    pub async fn subscribe(
        &self,
        stream: &str,
        offer: &str,
        user: &str,
    ) -> Result<SessionAnswer, MediaError> {
        self.create(SessionKind::Viewer, stream, offer, user).await
    }

    async fn create(
        &self,
        kind: SessionKind,
        stream: &str,
        offer: &str,
        user: &str,
    ) -> Result<SessionAnswer, MediaError> {
        let shared = &self.shared;
        if !self.is_running() {
            return Err(MediaError::ShuttingDown);
        }
        let checked = sdp::check_offer(offer, kind)?;
        if shared.sessions.len() >= shared.config.max_sessions {
            return Err(MediaError::AtCapacity(format!(
                "{} sessions is the configured maximum (media.max_sessions)",
                shared.config.max_sessions
            )));
        }
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
            user: Arc::from(user),
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

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let b: u8 = rand::random();
        out.push_str(&format!("{b:02x}"));
    }
    out
}
