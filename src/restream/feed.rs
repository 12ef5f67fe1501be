//! A stream's restream feed: its tap in the SFU (owner [`TAP_OWNER`]) and the
//! thread that sends the publisher's RTP to every destination's ffmpeg.
//!
//! - On the publisher's media worker a packet costs one `try_send` into a
//!   bounded queue (`[restream] queue_packets`; a refcount on the payload, no
//!   allocation); a full queue drops it and counts
//!   (`tandem_restream_dropped_packets_total`). The SFU never waits.
//! - The feed thread serialises each packet once (a reused buffer: the RTP
//!   header the SFU already rewrote into the stream's numbering, then the
//!   payload) and sends it over UDP on 127.0.0.1 to each destination's port
//!   for that kind. Every second, and first thing for a new destination, an
//!   RTCP sender report per track ties the RTP clocks to one wall clock so
//!   ffmpeg keeps audio and video in sync.
//! - It tells the destinations ([`Feed::media`]) what the publisher sends:
//!   the codecs its tracks opened with and the payload type in use, known once
//!   each open track's first packet arrived (or a track alone after
//!   [`LONE_TRACK_AFTER`]); `None` while no publisher is on.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use tandem_media::kinds::MediaKind;
use tandem_media::{StreamTap, TapCodec, TapPacket};
use tokio::sync::watch;

use super::ffmpeg::{Media, TrackMedia};

/// The feed's name among a stream's taps.
pub const TAP_OWNER: &str = "restream";

/// One open track whose packets arrive while the other's do not: described
/// alone after this long (a publisher without a camera).
pub const LONE_TRACK_AFTER: Duration = Duration::from_secs(3);

/// A publisher's second track opens a moment after its first: how long a
/// lone open track waits for it.
pub const OTHER_TRACK_GRACE: Duration = Duration::from_millis(500);

/// How often each track's RTCP sender report goes out.
const SR_EVERY: Duration = Duration::from_secs(1);

/// How often the feed thread wakes without packets.
const TICK: Duration = Duration::from_millis(200);

/// SSRCs of the RTP the feed sends (one sender, two tracks).
const SSRC: [u32; 2] = [0x7444_0001, 0x7444_0002];

/// One destination's ffmpeg as the feed sends to it: RTP port per kind (RTCP
/// on the next port) and the payload type its SDP declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sink {
    pub id: u64,
    /// (address, payload type) by `MediaKind::index()` (audio, video).
    pub tracks: [Option<(SocketAddr, u8)>; 2],
}

/// What the tap and the thread share.
struct Shared {
    /// Codecs of the open tracks by kind (written by the tap, off the packet path).
    codecs: Mutex<[Option<Vec<TapCodec>>; 2]>,
    /// Bumped by `track_opened` and `publisher_left`.
    control: AtomicU64,
    sinks: Mutex<Vec<Sink>>,
    sinks_generation: AtomicU64,
    media: watch::Sender<Option<Media>>,
    closed: AtomicBool,
    dropped: IntCounter,
}

/// The tap the SFU calls.
struct Tap {
    queue: SyncSender<TapPacket>,
    shared: Arc<Shared>,
}

impl StreamTap for Tap {
    fn track_opened(&self, kind: MediaKind, codecs: &[TapCodec]) {
        if let Ok(mut c) = self.shared.codecs.lock() {
            c[kind.index()] = Some(codecs.to_vec());
        }
        self.shared.control.fetch_add(1, Ordering::AcqRel);
    }

    fn packet(&self, packet: TapPacket) {
        match self.queue.try_send(packet) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.shared.dropped.inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn publisher_left(&self) {
        if let Ok(mut c) = self.shared.codecs.lock() {
            *c = [None, None];
        }
        self.shared.control.fetch_add(1, Ordering::AcqRel);
    }
}

/// A stream's feed: the tap to hand the SFU and the sending thread. Dropping
/// it stops the thread.
pub struct Feed {
    shared: Arc<Shared>,
    tap: Arc<Tap>,
}

impl Feed {
    /// A feed whose queue holds `queue_packets`; its thread is named after `stream`.
    pub fn start(stream: &str, queue_packets: usize, dropped: IntCounter) -> std::io::Result<Self> {
        let (queue, packets) = sync_channel(queue_packets.max(16));
        let (media, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            codecs: Mutex::new([None, None]),
            control: AtomicU64::new(0),
            sinks: Mutex::new(Vec::new()),
            sinks_generation: AtomicU64::new(0),
            media,
            closed: AtomicBool::new(false),
            dropped,
        });
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let thread = FeedThread {
            shared: shared.clone(),
            packets,
            socket,
            sinks: Vec::new(),
            sinks_generation: u64::MAX,
            control: u64::MAX,
            expected: [false; 2],
            seen: [None; 2],
            first_packet: None,
            published: None,
            dirty: false,
            buf: Vec::with_capacity(1500),
            last_sr: [None; 2],
            clock: (Instant::now(), SystemTime::now()),
        };
        let name: String = stream.chars().take(10).collect();
        std::thread::Builder::new()
            .name(format!("rs-{name}"))
            .spawn(move || thread.run())?;
        Ok(Self {
            tap: Arc::new(Tap {
                queue,
                shared: shared.clone(),
            }),
            shared,
        })
    }

    /// The tap to set on the stream (`Sfu::set_tap(stream, TAP_OWNER, ..)`).
    pub fn tap(&self) -> Arc<dyn StreamTap> {
        self.tap.clone()
    }

    /// The publisher's media as a destination's SDP describes it (`None`:
    /// no publisher, or its first packets have not arrived).
    pub fn media(&self) -> watch::Receiver<Option<Media>> {
        self.shared.media.subscribe()
    }

    /// Adds (or replaces, by id) a destination's ffmpeg.
    pub fn add_sink(&self, sink: Sink) {
        if let Ok(mut sinks) = self.shared.sinks.lock() {
            sinks.retain(|s| s.id != sink.id);
            sinks.push(sink);
        }
        self.shared.sinks_generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove_sink(&self, id: u64) {
        if let Ok(mut sinks) = self.shared.sinks.lock() {
            sinks.retain(|s| s.id != id);
        }
        self.shared.sinks_generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

struct FeedThread {
    shared: Arc<Shared>,
    packets: Receiver<TapPacket>,
    socket: UdpSocket,
    /// The thread's copy of the sinks (re-read when their generation moves).
    sinks: Vec<Sink>,
    sinks_generation: u64,
    control: u64,
    /// Tracks the publisher opened, by kind.
    expected: [bool; 2],
    /// Payload type of each kind's last packet.
    seen: [Option<u8>; 2],
    first_packet: Option<Instant>,
    published: Option<Media>,
    /// A payload type or the tracks changed since the media was last described.
    dirty: bool,
    buf: Vec<u8>,
    last_sr: [Option<Instant>; 2],
    /// A moment on both clocks: `arrived` instants → NTP time.
    clock: (Instant, SystemTime),
}

impl FeedThread {
    fn run(mut self) {
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                break;
            }
            let packet = match self.packets.recv_timeout(TICK) {
                Ok(p) => Some(p),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.refresh();
            if let Some(packet) = packet {
                self.packet(&packet);
            }
            self.describe(Instant::now());
        }
        self.shared.media.send_replace(None);
    }

    /// Picks up new sinks and the tap's control changes.
    fn refresh(&mut self) {
        let generation = self.shared.sinks_generation.load(Ordering::Acquire);
        if generation != self.sinks_generation {
            self.sinks_generation = generation;
            if let Ok(sinks) = self.shared.sinks.lock() {
                self.sinks.clone_from(&sinks);
            }
            // New destinations get sender reports before their first packet.
            self.last_sr = [None; 2];
        }
        let control = self.shared.control.load(Ordering::Acquire);
        if control != self.control {
            self.control = control;
            let codecs = self
                .shared
                .codecs
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default();
            self.expected = [codecs[0].is_some(), codecs[1].is_some()];
            self.seen = [None; 2];
            self.first_packet = None;
            self.dirty = true;
            if !self.expected.iter().any(|e| *e) {
                self.publish(None);
            }
        }
    }

    fn packet(&mut self, p: &TapPacket) {
        let k = p.kind.index();
        if self.seen[k] != Some(p.payload_type) {
            self.seen[k] = Some(p.payload_type);
            self.dirty = true;
        }
        self.first_packet.get_or_insert(p.arrived);
        if self.sinks.is_empty() {
            return;
        }
        let due = self.last_sr[k].is_none_or(|t| p.arrived.duration_since(t) >= SR_EVERY);
        if due {
            self.last_sr[k] = Some(p.arrived);
            self.sender_report(k, p);
        }
        write_rtp(&mut self.buf, p, SSRC[k]);
        for sink in &self.sinks {
            if let Some((addr, pt)) = sink.tracks[k]
                && pt == p.payload_type
            {
                // Loopback: a full socket buffer or a port not yet bound loses
                // this packet for this destination only.
                let _ = self.socket.send_to(&self.buf, addr);
            }
        }
    }

    /// An RTCP sender report for kind `k`, from packet `p`'s timestamp and
    /// arrival, to every sink's RTCP port.
    fn sender_report(&mut self, k: usize, p: &TapPacket) {
        let wall = if p.arrived >= self.clock.0 {
            self.clock.1 + (p.arrived - self.clock.0)
        } else {
            self.clock.1 - (self.clock.0 - p.arrived)
        };
        let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ntp_secs = since.as_secs() + 2_208_988_800;
        let ntp_frac = ((since.subsec_nanos() as u64) << 32) / 1_000_000_000;
        let mut sr = [0u8; 28];
        sr[0] = 0x80;
        sr[1] = 200;
        sr[2..4].copy_from_slice(&6u16.to_be_bytes());
        sr[4..8].copy_from_slice(&SSRC[k].to_be_bytes());
        sr[8..12].copy_from_slice(&(ntp_secs as u32).to_be_bytes());
        sr[12..16].copy_from_slice(&(ntp_frac as u32).to_be_bytes());
        sr[16..20].copy_from_slice(&p.timestamp.to_be_bytes());
        for sink in &self.sinks {
            if let Some((addr, _)) = sink.tracks[k] {
                let rtcp = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
                let _ = self.socket.send_to(&sr, rtcp);
            }
        }
    }

    /// Publishes the media once each open track's packets arrived (or one
    /// alone after a while), and again if a payload type changes.
    fn describe(&mut self, now: Instant) {
        // Per packet this is one flag test: the codecs are read on a change.
        let any = self.seen.iter().any(|s| s.is_some());
        if !self.dirty || !any {
            return;
        }
        // Tracks open one after the other: a lone track is described once
        // the other had [`OTHER_TRACK_GRACE`] to show up, or [`LONE_TRACK_AFTER`]
        // to send.
        let both = self.seen.iter().all(|s| s.is_some());
        let expected_seen = (0..2).all(|k| !self.expected[k] || self.seen[k].is_some());
        let waited = |d: Duration| {
            self.first_packet
                .is_some_and(|t| now.saturating_duration_since(t) >= d)
        };
        if !(both || (expected_seen && waited(OTHER_TRACK_GRACE)) || waited(LONE_TRACK_AFTER)) {
            return;
        }
        let codecs = self
            .shared
            .codecs
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let track = |k: usize| -> Option<TrackMedia> {
            let pt = self.seen[k]?;
            let codec = codecs[k].as_ref()?.iter().find(|c| c.payload_type == pt)?;
            Some(TrackMedia {
                payload_type: pt,
                codec: codec.clone(),
            })
        };
        let media = Media {
            audio: track(MediaKind::Audio.index()),
            video: track(MediaKind::Video.index()),
        };
        self.dirty = false;
        if media.audio.is_none() && media.video.is_none() {
            return;
        }
        self.publish(Some(media));
    }

    fn publish(&mut self, media: Option<Media>) {
        if self.published != media {
            self.published.clone_from(&media);
            self.shared.media.send_replace(media);
        }
    }
}

/// `p` as an RTP packet (12-byte header, no extensions) into `buf`, reusing
/// its capacity.
pub fn write_rtp(buf: &mut Vec<u8>, p: &TapPacket, ssrc: u32) {
    buf.clear();
    buf.push(0x80);
    buf.push((p.payload_type & 0x7f) | if p.marker { 0x80 } else { 0 });
    buf.extend_from_slice(&p.sequence_number.to_be_bytes());
    buf.extend_from_slice(&p.timestamp.to_be_bytes());
    buf.extend_from_slice(&ssrc.to_be_bytes());
    buf.extend_from_slice(&p.payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(kind: MediaKind, pt: u8, seq: u16) -> TapPacket {
        TapPacket {
            kind,
            payload_type: pt,
            sequence_number: seq,
            timestamp: 1000 + seq as u32,
            marker: seq.is_multiple_of(2),
            payload: Bytes::from_static(b"payload"),
            arrived: Instant::now(),
        }
    }

    fn codecs(pt: u8, mime: &str) -> Vec<TapCodec> {
        vec![TapCodec {
            payload_type: pt,
            mime_type: mime.into(),
            clock_rate: 90000,
            channels: 0,
            fmtp: String::new(),
        }]
    }

    #[test]
    fn rtp_header_is_written_in_place() {
        let mut buf = Vec::with_capacity(64);
        write_rtp(&mut buf, &packet(MediaKind::Video, 96, 2), 7);
        assert_eq!(
            &buf[..12],
            &[0x80, 0x80 | 96, 0, 2, 0, 0, 0x03, 0xea, 0, 0, 0, 7]
        );
        assert_eq!(&buf[12..], b"payload");
        let cap = buf.capacity();
        write_rtp(&mut buf, &packet(MediaKind::Audio, 111, 3), 7);
        assert_eq!(buf[1], 111, "no marker");
        assert_eq!(buf.capacity(), cap, "the buffer is reused");
    }

    #[tokio::test]
    async fn forwards_to_sinks_and_describes_the_media() {
        let feed = Feed::start("s", 64, IntCounter::new("d", "d").unwrap()).unwrap();
        let tap = feed.tap();
        let mut media = feed.media();
        let video = UdpSocket::bind("127.0.0.1:0").unwrap();
        video
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        feed.add_sink(Sink {
            id: 1,
            tracks: [None, Some((video.local_addr().unwrap(), 96))],
        });
        tap.track_opened(MediaKind::Video, &codecs(96, "video/VP8"));
        // Packets until the feed thread has described the media (it polls).
        let described = async {
            let mut seq = 0;
            loop {
                tap.packet(packet(MediaKind::Video, 96, seq));
                seq += 1;
                if media.borrow_and_update().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), described)
            .await
            .expect("media described");
        let m = media.borrow().clone().unwrap();
        assert_eq!(m.video.unwrap().codec.mime_type, "video/VP8");
        assert!(m.audio.is_none());
        let mut buf = [0u8; 1500];
        let n = video.recv(&mut buf).unwrap();
        assert_eq!(buf[1] & 0x7f, 96);
        assert_eq!(&buf[12..n], b"payload");
        tap.publisher_left();
        tokio::time::timeout(Duration::from_secs(5), media.wait_for(|m| m.is_none()))
            .await
            .expect("gone")
            .unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dropped = IntCounter::new("d", "d").unwrap();
        let feed = Feed::start("s", 16, dropped.clone()).unwrap();
        let tap = feed.tap();
        for i in 0..10_000 {
            tap.packet(packet(MediaKind::Audio, 111, i as u16));
        }
        assert!(dropped.get() > 0, "some dropped, none waited for");
    }
}
