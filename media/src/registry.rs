//! The registries every worker and the HTTP-facing handle share: sessions by id,
//! ICE ufrags to their owners, streams by name; and the summaries and answers the
//! HTTP layer gets back. Plain shared state (concurrent maps and atomics), no
//! channels: the workers' handles live with the workers (`crate::worker`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters;
use serde::Serialize;

use crate::admission::Admission;
use crate::config::MediaConfig;
use crate::kinds::{SessionKind, Transport};
use crate::layers::{LayerInfo, MAX_ENCODINGS, ViewerLayerShared};
use crate::metrics::MediaMetrics;
use crate::tap::{StreamTap, Taps};
use crate::track::Continuity;

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
    /// The connected publisher, if any (the operator view, the status endpoint).
    pub publisher: Option<PublisherStatus>,
    /// When the stream's media began (its first publisher connected; kept across
    /// a takeover or a reconnect while the stream is held), unix ms.
    pub started_at_ms: Option<i64>,
    /// The video encodings on offer (one, with an empty rid, without simulcast;
    /// none before the publisher's video arrives).
    pub layers: Vec<LayerInfo>,
}

/// A stream's connected publisher as the operator view shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PublisherStatus {
    /// When this publisher's session connected (ICE and DTLS done), unix ms.
    pub connected_since_ms: i64,
    /// Negotiated codecs, as MIME types (`video/VP8`, `audio/opus`).
    pub codecs: Vec<String>,
    /// Bits received from the publisher over the last rate window, in kbit/s.
    pub bitrate_kbps: u64,
    pub transport: Transport,
}

/// Who holds a stream's publisher place: reserved at POST, so a second POST
/// can tell a takeover (the same user) from a busy stream.
#[derive(Debug, Clone)]
pub struct PublisherHold {
    pub key: u64,
    /// The worker the session is (or is being) built on.
    pub worker: usize,
    /// The holder's user (the token's `sub`).
    pub user: Arc<str>,
}

/// What [`StreamShared::reserve_publisher`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// Nobody held the stream; it is ours.
    Free,
    /// The same user held it: it is ours now, and this old session must be
    /// closed before ours is built (it hands its numbering on as it closes).
    Takeover { key: u64, worker: usize },
    /// Another user holds it.
    Busy,
}

/// The connected publisher's details, written by its worker when it connects.
#[derive(Debug, Clone)]
pub struct PublisherInfo {
    pub key: u64,
    pub connected_since_ms: i64,
    pub transport: Transport,
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
    /// The publisher holding the stream (reserved at POST).
    pub publisher: Mutex<Option<PublisherHold>>,
    /// The publisher once connected (cleared when it closes).
    pub publisher_info: Mutex<Option<PublisherInfo>>,
    /// The codec each of the publisher's tracks sends (MIME type), by media
    /// kind (`MediaKind::index`): what it uses, not all it negotiated.
    pub active_codecs: Mutex<[Option<String>; 2]>,
    /// The publisher's received rate, in bits per second, over its last rate
    /// window (written by its worker every [`RATE_WINDOW`]).
    pub bitrate_bps: AtomicU64,
    /// When the stream's media began, unix ms (0: not yet).
    pub started_at_ms: std::sync::atomic::AtomicI64,
    /// The live publisher's negotiated codecs (payload types as it sends them).
    pub codecs: RwLock<Arc<Vec<RTCRtpCodecParameters>>>,
    /// Bumped whenever the publisher (and so its payload types) changes.
    pub epoch: AtomicU32,
    pub live: AtomicBool,
    /// Viewers holding a session (connected or not).
    pub viewers: AtomicUsize,
    /// Connected viewers per worker: who needs this stream's packets.
    pub viewers_on: Vec<AtomicUsize>,
    /// Per worker and video encoding: viewers receiving it or switching to it.
    /// An encoding nobody watches on a worker is neither handed to that worker
    /// nor walked through its viewers.
    pub watching: Vec<[AtomicU32; MAX_ENCODINGS]>,
    pub keyframe_wanted: AtomicBool,
    /// Numbering handed from one publisher to the next (audio, then video
    /// per encoding).
    pub continuity: Mutex<Option<[Continuity; 1 + MAX_ENCODINGS]>>,
    /// The publisher's simulcast rids in its offer's order (empty: one
    /// encoding). Set when a publisher's session is built.
    pub rids: RwLock<Arc<Vec<String>>>,
    /// Per video encoding (index = position in `rids`; 0 without simulcast).
    pub encodings: [EncodingShared; MAX_ENCODINGS],
}

/// One video encoding of a stream as every worker and the handle see it,
/// written by the publisher's worker (rates once per window, sizes at key frames).
#[derive(Debug, Default)]
pub struct EncodingShared {
    /// Received bits per second over the last rate window.
    pub bitrate_bps: AtomicU64,
    pub width: AtomicU32,
    pub height: AtomicU32,
    /// Packets arrived within the inactivity window (see `core::machine`).
    pub active: AtomicBool,
    /// A viewer waits for this encoding's key frame (its PLI is due).
    pub keyframe_wanted: AtomicBool,
    /// The wait is a worker's first viewer of this encoding (nothing cached
    /// there): the PLI goes out past the throttle's interval.
    pub keyframe_urgent: AtomicBool,
}

impl StreamShared {
    pub fn new(id: u64, name: Arc<str>, workers: usize) -> Self {
        Self {
            id,
            name,
            publisher: Mutex::new(None),
            publisher_info: Mutex::new(None),
            active_codecs: Mutex::new([None, None]),
            bitrate_bps: AtomicU64::new(0),
            started_at_ms: std::sync::atomic::AtomicI64::new(0),
            codecs: RwLock::new(Arc::new(Vec::new())),
            epoch: AtomicU32::new(0),
            live: AtomicBool::new(false),
            viewers: AtomicUsize::new(0),
            viewers_on: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            watching: (0..workers).map(|_| Default::default()).collect(),
            keyframe_wanted: AtomicBool::new(false),
            continuity: Mutex::new(None),
            rids: RwLock::new(Arc::new(Vec::new())),
            encodings: Default::default(),
        }
    }

    /// The publisher's rids (empty without simulcast).
    pub fn rids(&self) -> Arc<Vec<String>> {
        self.rids.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// The encodings on offer, in the publisher's order: what the `layers`
    /// event lists. Empty while no video has arrived.
    pub fn layers(&self) -> Vec<LayerInfo> {
        let rids = self.rids();
        let count = rids.len().clamp(1, MAX_ENCODINGS);
        let any_video = self.encodings[..count]
            .iter()
            .any(|e| e.active.load(Ordering::Acquire) || e.width.load(Ordering::Relaxed) > 0);
        if !any_video {
            return Vec::new();
        }
        (0..count)
            .map(|i| {
                let e = &self.encodings[i];
                let rid = rids.get(i).cloned().unwrap_or_default();
                let active = e.active.load(Ordering::Acquire);
                LayerInfo {
                    encoding_id: rid.clone(),
                    rid,
                    spatial_layer_id: 0,
                    temporal_layer_id: 0,
                    bitrate: if active {
                        e.bitrate_bps.load(Ordering::Relaxed)
                    } else {
                        0
                    },
                    width: e.width.load(Ordering::Relaxed),
                    height: e.height.load(Ordering::Relaxed),
                    active,
                }
            })
            .collect()
    }

    /// A viewer on `worker` changed the encodings it watches (see `watching`).
    pub fn rewatch(
        &self,
        worker: usize,
        before: [bool; MAX_ENCODINGS],
        after: [bool; MAX_ENCODINGS],
    ) {
        let Some(counts) = self.watching.get(worker) else {
            return;
        };
        for e in 0..MAX_ENCODINGS {
            match (before[e], after[e]) {
                (false, true) => {
                    counts[e].fetch_add(1, Ordering::AcqRel);
                }
                (true, false) => {
                    counts[e].fetch_sub(1, Ordering::AcqRel);
                }
                _ => {}
            }
        }
    }

    /// Whether a viewer on `worker` receives or waits for encoding `encoding`.
    pub fn watched(&self, worker: usize, encoding: u8) -> bool {
        self.watching
            .get(worker)
            .and_then(|c| c.get(encoding as usize))
            .is_some_and(|c| c.load(Ordering::Acquire) > 0)
    }

    /// Asks the publisher for a key frame of encoding `encoding` (throttled per
    /// encoding by its worker).
    pub fn want_keyframe(&self, encoding: usize) {
        if let Some(e) = self.encodings.get(encoding) {
            e.keyframe_wanted.store(true, Ordering::Release);
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.viewers.load(Ordering::Acquire) == 0
            && self.publisher.lock().map(|p| p.is_none()).unwrap_or(false)
    }

    pub fn codecs(&self) -> Arc<Vec<RTCRtpCodecParameters>> {
        self.codecs.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Reserves the publisher place for session `key` of `user` on `worker`.
    /// The same user (a crashed broadcaster coming back with a new session, as
    /// MediaMTX's `overridePublisher`) takes the place over from their old session.
    pub fn reserve_publisher(&self, key: u64, worker: usize, user: &str) -> Reservation {
        let mut hold = self.publisher.lock().expect("publisher lock");
        let outcome = match &*hold {
            None => Reservation::Free,
            Some(old) if &*old.user == user => Reservation::Takeover {
                key: old.key,
                worker: old.worker,
            },
            Some(_) => return Reservation::Busy,
        };
        *hold = Some(PublisherHold {
            key,
            worker,
            user: Arc::from(user),
        });
        outcome
    }

    /// Whether session `key` still holds the publisher place.
    pub fn holds_publisher(&self, key: u64) -> bool {
        self.publisher
            .lock()
            .map(|p| p.as_ref().is_some_and(|h| h.key == key))
            .unwrap_or(false)
    }

    /// Gives the publisher place back if session `key` holds it.
    pub fn release_publisher(&self, key: u64) {
        if let Ok(mut p) = self.publisher.lock()
            && p.as_ref().is_some_and(|h| h.key == key)
        {
            *p = None;
        }
    }

    /// The connected publisher, as the operator view shows it.
    pub fn publisher_status(&self) -> Option<PublisherStatus> {
        let info = self.publisher_info.lock().ok()?.clone()?;
        // Video first, as MediaMTX lists tracks: `video/VP8`, `audio/opus`.
        let codecs = self
            .active_codecs
            .lock()
            .map(|c| [&c[1], &c[0]].into_iter().flatten().cloned().collect())
            .unwrap_or_default();
        Some(PublisherStatus {
            connected_since_ms: info.connected_since_ms,
            codecs,
            bitrate_kbps: self.bitrate_bps.load(Ordering::Relaxed) / 1000,
            transport: info.transport,
        })
    }
}

/// How often a publisher's received rate is published (the operator view's
/// `bitrate_kbps` is the rate over the last window).
pub const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Names of streams whose publisher was live here and left, remembered for a
/// while (bounded in count and age) so a page can say "ended" instead of
/// "no such stream"; a new publisher removes its name.
pub struct RecentlyEnded {
    at: HashMap<Arc<str>, Instant>,
    order: VecDeque<(Arc<str>, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl RecentlyEnded {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            at: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    pub fn insert(&mut self, name: Arc<str>, now: Instant) {
        self.expire(now);
        self.at.insert(name.clone(), now);
        self.order.push_back((name, now));
        while self.at.len() > self.capacity {
            self.pop_oldest();
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.at.remove(name);
    }

    pub fn contains(&mut self, name: &str, now: Instant) -> bool {
        self.expire(now);
        self.at.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, t)) = self.order.front() {
            if now.saturating_duration_since(*t) <= self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Drops the oldest entry of the order; a name re-inserted since keeps its newer time.
    fn pop_oldest(&mut self) {
        if let Some((name, t)) = self.order.pop_front()
            && self.at.get(&name) == Some(&t)
        {
            self.at.remove(&name);
        }
    }
}

/// How many ended stream names are remembered, and for how long.
pub const RECENTLY_ENDED_CAPACITY: usize = 1024;
pub const RECENTLY_ENDED_TTL: Duration = Duration::from_secs(3600);

/// Where a session lives: its key on the worker that owns it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub key: u64,
    pub worker: usize,
}

pub struct SessionEntry {
    pub summary: SessionSummary,
    pub key: u64,
    pub worker: usize,
    /// A viewer's layer (publishers: `None`).
    pub layer: Option<Arc<ViewerLayerShared>>,
    /// The session's stream.
    pub stream: Arc<StreamShared>,
}

/// State shared by the HTTP-facing handle and every worker.
pub struct Registry {
    pub config: MediaConfig,
    pub port: u16,
    /// The address incoming packets are attributed to (the first advertised IP).
    pub local_ip: IpAddr,
    /// Worker threads (each with its own socket on the media port).
    pub workers: usize,
    pub sessions: DashMap<Arc<str>, SessionEntry>,
    pub ufrags: DashMap<String, Route>,
    pub streams: DashMap<Arc<str>, Arc<StreamShared>>,
    pub metrics: MediaMetrics,
    pub observer: Arc<dyn SessionObserver>,
    pub(crate) admission: Arc<Admission>,
    pub running: AtomicBool,
    /// Streams whose publisher was live and left (the status endpoint's `ended`).
    pub recently_ended: Mutex<RecentlyEnded>,
    /// Taps by stream name, one per owner (the recorder, the restream feed):
    /// set by the server before or while a publisher is on. Kept apart from
    /// [`StreamShared`], which is forgotten when a publisher leaves and nobody
    /// watches; a tap outlives reconnects.
    pub taps: DashMap<Arc<str>, Taps>,
    /// Bumped on every change of `taps`: a publisher re-reads its tap when this
    /// moves (one relaxed load per packet instead of a map lookup).
    pub taps_generation: AtomicU64,
}

impl Registry {
    pub fn new(
        config: MediaConfig,
        port: u16,
        workers: usize,
        metrics: MediaMetrics,
        observer: Arc<dyn SessionObserver>,
    ) -> Self {
        let local_ip = config
            .advertised_ips
            .first()
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Self {
            config,
            port,
            local_ip,
            workers,
            sessions: DashMap::new(),
            ufrags: DashMap::new(),
            streams: DashMap::new(),
            metrics,
            observer,
            admission: Arc::default(),
            running: AtomicBool::new(true),
            recently_ended: Mutex::new(RecentlyEnded::new(
                RECENTLY_ENDED_CAPACITY,
                RECENTLY_ENDED_TTL,
            )),
            taps: DashMap::new(),
            taps_generation: AtomicU64::new(0),
        }
    }

    /// The taps of stream `name`, if any is set.
    pub fn taps(&self, name: &str) -> Option<Taps> {
        self.taps.get(name).map(|t| t.value().clone())
    }

    /// Sets `owner`'s tap of stream `name`, replacing that owner's previous
    /// one: a new list is published and the generation bumped.
    pub fn set_tap(&self, name: &str, owner: &'static str, tap: Arc<dyn StreamTap>) {
        let mut entry = self
            .taps
            .entry(Arc::from(name))
            .or_insert_with(|| Arc::from([]));
        let list: Vec<(&'static str, Arc<dyn StreamTap>)> = entry
            .iter()
            .filter(|(o, _)| *o != owner)
            .cloned()
            .chain(std::iter::once((owner, tap)))
            .collect();
        *entry = list.into();
        drop(entry);
        self.taps_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes `owner`'s tap of stream `name`; returns it if there was one.
    pub fn remove_tap(&self, name: &str, owner: &'static str) -> Option<Arc<dyn StreamTap>> {
        let mut removed = None;
        if let Some(mut entry) = self.taps.get_mut(name) {
            removed = entry
                .iter()
                .find(|(o, _)| *o == owner)
                .map(|(_, t)| t.clone());
            if removed.is_some() {
                let list: Vec<_> = entry.iter().filter(|(o, _)| *o != owner).cloned().collect();
                *entry = list.into();
            }
        }
        self.taps.remove_if(name, |_, list| list.is_empty());
        if removed.is_some() {
            self.taps_generation.fetch_add(1, Ordering::AcqRel);
        }
        removed
    }

    /// The host candidates every answer carries.
    pub fn candidates(&self) -> Vec<(SocketAddr, Transport)> {
        let mut out = Vec::new();
        for ip in &self.config.advertised_ips {
            out.push((SocketAddr::new(*ip, self.port), Transport::Udp));
        }
        if self.config.ice_tcp {
            for ip in &self.config.advertised_ips {
                out.push((SocketAddr::new(*ip, self.port), Transport::Tcp));
            }
        }
        out
    }

    /// Drops a stream from the registry once nobody holds it.
    pub fn forget_stream_if_idle(&self, name: &Arc<str>) {
        self.streams.remove_if(name, |_, s| s.is_idle());
    }
}

/// What the logs show of a session id: its first 8 hex digits. The whole id is
/// the secret part of the session URL (anyone holding it may PATCH or DELETE the
/// session, RFC 9725 §4.3), so logs, which more people read, carry only enough
/// to tell sessions apart: 32 of its 128 bits.
pub fn log_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `bytes` random bytes in hex: session ids (16) and ETags (8).
pub fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let b: u8 = rand::random();
        out.push_str(&format!("{b:02x}"));
    }
    out
}
