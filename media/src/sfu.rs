//! [`Sfu`]: the handle the HTTP layer calls to create, patch and end sessions.
//! It admits requests, reserves streams in the [`Registry`] and hands sessions
//! to the workers (`crate::worker`) round robin.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::admission::SessionHolder;
use crate::config::MediaConfig;
use crate::core::NewSession;
use crate::core::machine::REPLACED;
use crate::error::MediaError;
use crate::kinds::SessionKind;
use crate::layers::{LayerInfo, LayerRequest, NO_ENCODING, ViewerLayer};
use crate::metrics::MediaMetrics;
pub use crate::registry::SessionObserver;
use crate::registry::{
    PatchOutcome, Registry, Reservation, SessionAnswer, SessionSummary, StreamShared,
    StreamSummary, random_hex,
};
use crate::sdp;
use crate::tap::StreamTap;
use crate::worker::{self, Control, CreateRequest, WorkerHandle};

/// What the handle holds: the registry, the workers' queues, and the counters
/// that name new streams and sessions and place them.
struct Shared {
    registry: Arc<Registry>,
    workers: Arc<[WorkerHandle]>,
    next_worker: AtomicUsize,
    next_stream_id: AtomicU64,
    next_session_key: AtomicU64,
    /// Claims the media port for this process (see `udp::PortLock`).
    _port_lock: crate::udp::PortLock,
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
        let (sockets, port, tcp, port_lock) = bind_media_port(&config, workers).await?;
        let mut handles = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (control, control_rx) = mpsc::unbounded_channel();
            let (inbound, inbound_rx) = mpsc::channel(config.worker_queue_packets.max(1));
            handles.push(WorkerHandle { control, inbound });
            receivers.push((control_rx, inbound_rx));
        }
        let registry = Arc::new(Registry::new(config, port, workers, metrics, observer));
        let handles: Arc<[WorkerHandle]> = handles.into();
        let mut threads = Vec::with_capacity(workers);
        for (idx, (socket, (control_rx, inbound_rx))) in
            sockets.into_iter().zip(receivers).enumerate()
        {
            let (registry, handles) = (registry.clone(), handles.clone());
            let thread = std::thread::Builder::new()
                .name(format!("tandem-media-{idx}"))
                .spawn(move || worker::run(idx, registry, handles, socket, control_rx, inbound_rx))
                .map_err(|e| MediaError::Internal(format!("spawning media worker: {e}")))?;
            threads.push(thread);
        }
        if let Some(listener) = tcp {
            tokio::spawn(crate::tcp::accept_loop(
                listener,
                registry.clone(),
                handles.clone(),
            ));
        }
        let shared = Arc::new(Shared {
            registry,
            workers: handles,
            next_worker: AtomicUsize::new(0),
            next_stream_id: AtomicU64::new(1),
            next_session_key: AtomicU64::new(1),
            _port_lock: port_lock,
        });
        tracing::info!(
            port,
            workers,
            ice_tcp = shared.registry.config.ice_tcp,
            "media workers started"
        );
        Ok(Sfu {
            shared,
            threads: Arc::new(Mutex::new(threads)),
        })
    }

    /// The media port (UDP and ICE-TCP) every session uses.
    pub fn local_port(&self) -> u16 {
        self.shared.registry.port
    }

    pub fn is_running(&self) -> bool {
        self.shared.registry.running.load(Ordering::Acquire)
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
        let slot = shared
            .registry
            .admission
            .admit(&shared.registry.config, kind, holder)?;
        let key = shared.next_session_key.fetch_add(1, Ordering::Relaxed);
        let name: Arc<str> = Arc::from(stream);
        let worker = shared.next_worker.fetch_add(1, Ordering::Relaxed) % shared.workers.len();
        // Reserve under the stream's map entry, so an idle stream cannot be
        // removed between our lookup and our reservation.
        let (stream, replaced) = {
            let entry = shared
                .registry
                .streams
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(StreamShared::new(
                        shared.next_stream_id.fetch_add(1, Ordering::Relaxed),
                        name.clone(),
                        shared.workers.len(),
                    ))
                });
            let s = entry.value().clone();
            let mut replaced = None;
            match kind {
                SessionKind::Publisher => match s.reserve_publisher(key, worker, holder.user) {
                    Reservation::Free => {}
                    Reservation::Takeover { key, worker } => replaced = Some((key, worker)),
                    Reservation::Busy => {
                        drop(entry);
                        return Err(MediaError::StreamBusy(name.to_string()));
                    }
                },
                SessionKind::Viewer => {
                    let max = shared.registry.config.max_viewers_per_stream;
                    if s.viewers.fetch_add(1, Ordering::AcqRel) >= max {
                        s.viewers.fetch_sub(1, Ordering::AcqRel);
                        drop(entry);
                        return Err(MediaError::AtCapacity(format!(
                            "stream '{name}' has {max} viewers (media.max_viewers_per_stream)"
                        )));
                    }
                }
            }
            (s, replaced)
        };
        // Takeover: the same user's old session (a crashed broadcaster's, say) is
        // closed as a DELETE would, and waited for, before ours is built: closing
        // hands the stream's numbering on, which the new publisher continues, so
        // viewers see one stream. An old session still being built is refused by
        // its worker instead (it no longer holds the place).
        if let Some((old, old_worker)) = replaced {
            tracing::info!(stream = %name, user = holder.user, "publisher takeover: the same user's new session replaces the old one");
            let (reply, done) = oneshot::channel();
            let sent = shared.workers[old_worker].control.send(Control::End {
                key: old,
                reason: REPLACED,
                reply: Some(reply),
            });
            if sent.is_ok() {
                let _ = done.await;
            }
        }
        let id: Arc<str> = Arc::from(random_hex(16));
        let (reply, answer) = oneshot::channel();
        let request = CreateRequest {
            session: NewSession {
                key,
                id,
                kind,
                stream: stream.clone(),
                offer: offer.to_string(),
                checked,
                user: Arc::from(holder.user),
                slot,
            },
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
                SessionKind::Publisher => stream.release_publisher(key),
                SessionKind::Viewer => {
                    stream.viewers.fetch_sub(1, Ordering::AcqRel);
                }
            }
            shared.registry.forget_stream_if_idle(&name);
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
            && let Some(mut entry) = self.shared.registry.sessions.get_mut(session)
        {
            entry.summary.etag = etag.clone();
        }
        Ok(outcome)
    }

    fn route(&self, session: &str) -> Result<(u64, usize), MediaError> {
        self.shared
            .registry
            .sessions
            .get(session)
            .map(|e| (e.key, e.worker))
            .ok_or(MediaError::UnknownSession)
    }

    pub fn session(&self, session: &str) -> Option<SessionSummary> {
        self.shared
            .registry
            .sessions
            .get(session)
            .map(|e| e.summary.clone())
    }

    /// Ends a session (DELETE). A second call for the same session is `UnknownSession`.
    pub async fn end(&self, session: &str) -> Result<(), MediaError> {
        let (key, worker) = self.route(session)?;
        let (reply, rx) = oneshot::channel();
        self.shared.workers[worker]
            .control
            .send(Control::End {
                key,
                reason: "deleted",
                reply: Some(reply),
            })
            .map_err(|_| MediaError::ShuttingDown)?;
        rx.await.unwrap_or(Err(MediaError::UnknownSession))
    }

    /// Closes every session of `stream`, its publisher's and its viewers' (as
    /// DELETE would: DTLS close sent, records ended), and returns how many were
    /// closed: the business stream ended or was cancelled.
    pub async fn close_stream(&self, stream: &str) -> usize {
        // Collected first: no map guard is held across the awaits below.
        let targets: Vec<(u64, usize)> = self
            .shared
            .registry
            .sessions
            .iter()
            .filter(|e| &*e.summary.stream == stream)
            .map(|e| (e.key, e.worker))
            .collect();
        let mut closed = 0;
        for (key, worker) in targets {
            let (reply, rx) = oneshot::channel();
            let sent = self.shared.workers[worker].control.send(Control::End {
                key,
                reason: "stream ended",
                reply: Some(reply),
            });
            if sent.is_ok() && matches!(rx.await, Ok(Ok(()))) {
                closed += 1;
            }
        }
        if closed > 0 {
            tracing::info!(stream, closed, "stream ended: its media sessions closed");
        }
        closed
    }

    /// Whether `stream` had a live publisher here that left recently (bounded
    /// memory, `registry::RECENTLY_ENDED_*`); a new publisher clears it.
    pub fn recently_ended(&self, stream: &str) -> bool {
        self.shared
            .registry
            .recently_ended
            .lock()
            .map(|mut r| r.contains(stream, std::time::Instant::now()))
            .unwrap_or(false)
    }

    /// Every live session (publishers and viewers): a call's host removing a
    /// participant closes that user's sessions across the call's streams.
    pub fn sessions(&self) -> Vec<SessionSummary> {
        self.shared
            .registry
            .sessions
            .iter()
            .map(|e| e.summary.clone())
            .collect()
    }

    /// Sessions held by the media token with this `jti` (limited or not).
    pub fn sessions_of_token(&self, jti: &str) -> usize {
        self.shared.registry.admission.of_token(jti)
    }

    /// Sessions held by this user over all their tokens (limited or not).
    pub fn sessions_of_user(&self, user: &str) -> usize {
        self.shared.registry.admission.of_user(user)
    }

    /// Live sessions (publishers and viewers).
    pub fn session_count(&self) -> usize {
        self.shared.registry.sessions.len()
    }

    /// Sets `owner`'s tap of stream `name` (the recorder, a restream feed),
    /// replacing that owner's previous one: its publisher's packets go to it
    /// from the next packet on, across reconnects, until [`Sfu::remove_tap`].
    /// A tap set while the publisher is on is told its open tracks first.
    pub fn set_tap(&self, name: &str, owner: &'static str, tap: Arc<dyn StreamTap>) {
        self.shared.registry.set_tap(name, owner, tap);
    }

    /// Removes `owner`'s tap of stream `name`; returns it if there was one.
    pub fn remove_tap(&self, name: &str, owner: &'static str) -> Option<Arc<dyn StreamTap>> {
        self.shared.registry.remove_tap(name, owner)
    }

    /// Whether stream `name` has a tap of `owner`.
    pub fn has_tap(&self, name: &str, owner: &str) -> bool {
        self.shared
            .registry
            .taps
            .get(name)
            .is_some_and(|list| list.iter().any(|(o, _)| *o == owner))
    }

    /// Asks the stream's publisher for a key frame (a PLI, throttled like the
    /// viewers' requests): a recorder starting a segment. False: no such stream.
    pub fn request_keyframe(&self, name: &str) -> bool {
        match self.shared.registry.streams.get(name) {
            Some(stream) => {
                stream.keyframe_wanted.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// The WHEP `layer` extension: pins viewer `session` to an encoding, caps
    /// its automatic choice, or (`{}`) returns it to automatic selection.
    /// `BadLayer` (nothing changed) for an unknown rid or mediaId, a publisher's
    /// session, or a request no encoding can satisfy.
    pub async fn select_layer(
        &self,
        session: &str,
        request: LayerRequest,
    ) -> Result<(), MediaError> {
        let (key, worker) = self.route(session)?;
        let (reply, rx) = oneshot::channel();
        self.shared.workers[worker]
            .control
            .send(Control::Layer {
                key,
                request,
                reply,
            })
            .map_err(|_| MediaError::ShuttingDown)?;
        rx.await.unwrap_or(Err(MediaError::UnknownSession))
    }

    /// Viewer `session`'s layer now (the SSE extension, the watch page); `None`
    /// for no such session or a publisher's.
    pub fn viewer_layer(&self, session: &str) -> Option<ViewerLayer> {
        let entry = self.shared.registry.sessions.get(session)?;
        let shared = entry.layer.as_ref()?;
        let rids = entry.stream.rids();
        let name = |i: u8| -> Option<String> {
            if i == NO_ENCODING {
                None
            } else {
                Some(rids.get(i as usize).cloned().unwrap_or_default())
            }
        };
        let current = shared.current.load(Ordering::Acquire);
        let target = shared.target.load(Ordering::Acquire);
        let media_id = shared.video_media_id.load(Ordering::Relaxed);
        Some(ViewerLayer {
            rid: name(current),
            switching_to: if target != current {
                name(target)
            } else {
                None
            },
            pinned: shared.pinned.load(Ordering::Acquire),
            estimate_bps: shared.estimate_bps.load(Ordering::Relaxed),
            media_id: (media_id != u32::MAX).then(|| media_id.to_string()),
        })
    }

    /// The video encodings of `stream` on offer (empty: no such stream, or no
    /// video yet).
    pub fn layers(&self, stream: &str) -> Vec<LayerInfo> {
        self.shared
            .registry
            .streams
            .get(stream)
            .map(|s| s.layers())
            .unwrap_or_default()
    }

    pub fn stream(&self, name: &str) -> Option<StreamSummary> {
        self.shared.registry.streams.get(name).map(|s| summary(&s))
    }

    pub fn streams(&self) -> Vec<StreamSummary> {
        self.shared
            .registry
            .streams
            .iter()
            .map(|s| summary(&s))
            .collect()
    }

    /// Closes every session (as DELETE would) and stops the workers.
    pub async fn shutdown(&self, grace: Duration) {
        if !self.shared.registry.running.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut waits = Vec::new();
        for w in self.shared.workers.iter() {
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
    let started = s.started_at_ms.load(Ordering::Acquire);
    StreamSummary {
        name: s.name.to_string(),
        live: s.live.load(Ordering::Acquire),
        viewers: s.viewers.load(Ordering::Acquire),
        publisher: s.publisher_status(),
        started_at_ms: (started > 0).then_some(started),
        layers: s.layers(),
    }
}

/// What [`bind_media_port`] holds: the workers' UDP sockets, the port, the
/// ICE-TCP listener (with `ice_tcp`) and the claim on the port.
type Bound = (
    Vec<std::net::UdpSocket>,
    u16,
    Option<tokio::net::TcpListener>,
    crate::udp::PortLock,
);

/// Claims the media port for this process, then binds the UDP sockets and,
/// with ICE-TCP, the TCP listener on the same port. Port 0 picks one free for
/// both (a port free for UDP may be taken for TCP).
async fn bind_media_port(config: &MediaConfig, workers: usize) -> Result<Bound, MediaError> {
    let attempts = if config.port == 0 { 20 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        // A fixed port is claimed before anything binds it: another process
        // there (another tandem, whose SO_REUSEPORT sockets ours would join
        // and split packets with) stops this one with a clear message.
        let early = if config.port != 0 {
            Some(crate::udp::PortLock::claim(config.bind, config.port)?)
        } else {
            None
        };
        let (sockets, port) = crate::udp::bind_udp(config.bind, config.port, workers)?;
        let lock = match early {
            Some(lock) => lock,
            // A port the kernel just picked: claimed so that a second server
            // configured with it fails as above.
            None => match crate::udp::PortLock::claim_bound(port) {
                Ok(lock) => lock,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            },
        };
        if !config.ice_tcp {
            return Ok((sockets, port, None, lock));
        }
        match crate::tcp::bind(config.bind, port).await {
            Ok(listener) => return Ok((sockets, port, Some(listener), lock)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| MediaError::Internal("binding the media port".into())))
}
