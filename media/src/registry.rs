//! The registries every worker and the HTTP-facing handle share: sessions by id,
//! ICE ufrags to their owners, streams by name; and the summaries and answers the
//! HTTP layer gets back. Plain shared state (concurrent maps and atomics), no
//! channels: the workers' handles live with the workers (`crate::worker`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dashmap::DashMap;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters;
use serde::Serialize;

use crate::admission::Admission;
use crate::config::MediaConfig;
use crate::kinds::{SessionKind, Transport};
use crate::metrics::MediaMetrics;
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
    pub fn new(id: u64, name: Arc<str>, workers: usize) -> Self {
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
        }
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
