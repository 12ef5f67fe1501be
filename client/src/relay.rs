//! A relay: one WHEP viewer of a stream on one server (the upstream) and one
//! publisher of it on another (the downstream), on a thread of their own. Every
//! RTP packet the upstream decrypts is written by the downstream as its own
//! (its SSRC and payload type, the packet's sequence number, timestamp and
//! marker), and a key-frame request the downstream receives goes upstream as a
//! PLI. The cluster edge (`src/cluster/edge.rs` in the server) runs one per
//! stream it pulls from the stream's origin.
//!
//! Nothing is decoded and nothing is allocated per packet beyond what the
//! client already does (the upstream's SRTP decryption, the downstream's
//! encryption); the two legs share one poll loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};

use crate::client::{Counters, Latencies, Peer};
use crate::media::PT_OPUS;

const UP: Token = Token(0);
const DOWN: Token = Token(1);
const WAKER: Token = Token(2);

/// At most one key-frame request upstream per this long (the origin throttles
/// too; this keeps a burst of local viewers from sending a burst of PLIs).
const PLI_EVERY: Duration = Duration::from_millis(250);

/// What a running relay reports (read by the edge without locking).
#[derive(Default)]
pub struct RelayStats {
    /// RTP packets passed from upstream to downstream.
    pub packets: AtomicU64,
    /// Key-frame requests sent upstream.
    pub keyframe_requests: AtomicU64,
    /// Both legs connected (ICE and DTLS done).
    pub connected: AtomicBool,
    /// A leg failed or closed: the relay stopped; the edge starts another.
    pub failed: AtomicBool,
}

/// A running relay; [`Relay::stop`] ends it (both peer connections closed).
pub struct Relay {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    join: Option<JoinHandle<()>>,
    pub stats: Arc<RelayStats>,
}

impl Relay {
    /// Starts the relay's thread with its two legs (offers answered, not yet
    /// connected): `upstream` a viewer, `downstream` a publisher made with
    /// [`crate::client::Offer::relayed`].
    pub fn start(name: &str, upstream: Peer, downstream: Peer) -> std::io::Result<Relay> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let join = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name(name.chars().take(15).collect())
                .spawn(move || run(poll, upstream, downstream, &stop, &stats))?
        };
        Ok(Relay {
            stop,
            waker,
            join: Some(join),
            stats,
        })
    }

    /// Asks the thread to stop without waiting for it.
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }

    /// Stops the relay and waits for its thread (both legs closed).
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

fn run(mut poll: Poll, mut up: Peer, mut down: Peer, stop: &AtomicBool, stats: &RelayStats) {
    let registered = poll
        .registry()
        .register(up.socket_mut(), UP, Interest::READABLE)
        .and_then(|_| {
            poll.registry()
                .register(down.socket_mut(), DOWN, Interest::READABLE)
        });
    if registered.is_err() {
        stats.failed.store(true, Ordering::Release);
        return;
    }
    // Each leg has counters of its own: the downstream's key-frame requests are
    // read from its counter; the upstream's are not looked at.
    let (up_c, down_c) = (Counters::default(), Counters::default());
    let mut latency = Latencies::new();
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 2048];
    let mut inbox = Vec::new();
    let mut video_ssrc: Option<u32> = None;
    let mut requests_seen = 0u64;
    let mut want_keyframe = false;
    let mut last_pli: Option<Instant> = None;
    let now = Instant::now();
    up.service(now, &up_c, &mut latency);
    down.service(now, &down_c, &mut latency);
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let mut deadline = now + Duration::from_millis(50);
        for t in [up.due(), down.due()].into_iter().flatten() {
            deadline = deadline.min(t);
        }
        if poll
            .poll(&mut events, Some(deadline.saturating_duration_since(now)))
            .is_err()
        {
            continue;
        }
        for ev in events.iter() {
            let now = Instant::now();
            let peer = match ev.token() {
                UP => &mut up,
                DOWN => &mut down,
                _ => continue,
            };
            let fd = peer.fd();
            let mut got = false;
            while let Ok((n, from, _)) = crate::rxtime::recv(fd, &mut buf) {
                let Some(from) = from else { continue };
                peer.handle_datagram(from, &buf[..n], now, None);
                got = true;
            }
            if !got {
                continue;
            }
            if ev.token() == UP {
                up.take_inbox(&mut inbox);
                if down.is_connected() {
                    let mut sent = 0;
                    for (header, payload, _) in &inbox {
                        // Padding-only packets (bandwidth probes) carry nothing to pass on.
                        if payload.is_empty() {
                            continue;
                        }
                        if header.payload_type != PT_OPUS {
                            video_ssrc = Some(header.ssrc);
                        }
                        if down.forward(header, payload, now) {
                            sent += 1;
                        }
                    }
                    stats.packets.fetch_add(sent, Ordering::Relaxed);
                    // Out now: written packets wait in the peer connection until
                    // flushed, and the downstream's own timers may be far off.
                    if sent > 0 {
                        down.flush();
                    }
                }
                up.service(now, &up_c, &mut latency);
            } else {
                down.service(now, &down_c, &mut latency);
            }
        }
        let now = Instant::now();
        if up.due().is_some_and(|t| t <= now) {
            up.on_due(now, &up_c, &mut latency);
        }
        if down.due().is_some_and(|t| t <= now) {
            down.on_due(now, &down_c, &mut latency);
        }
        let connected = up.is_connected() && down.is_connected();
        if connected && !stats.connected.swap(true, Ordering::AcqRel) {
            // The downstream's first viewers need a key frame now, not at the
            // publisher's next one.
            want_keyframe = true;
        }
        let requests = down_c.keyframe_requests.load(Ordering::Relaxed);
        if requests != requests_seen {
            requests_seen = requests;
            want_keyframe = true;
        }
        if want_keyframe
            && let Some(ssrc) = video_ssrc
            && last_pli.is_none_or(|t| now.duration_since(t) >= PLI_EVERY)
            && up.request_keyframe(ssrc, now)
        {
            want_keyframe = false;
            last_pli = Some(now);
            stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        }
        if up.is_closed() || down.is_closed() {
            stats.failed.store(true, Ordering::Release);
            break;
        }
    }
    up.close();
    down.close();
}
