//! The media core driven in memory: a virtual clock in milliseconds, no sockets,
//! one behaviour per test. Sessions are built from real offers by the core;
//! what a DTLS handshake would give a viewer (SRTP keys, a selected address) is
//! handed in directly, and what the viewer receives is decrypted with
//! webrtc-rs's own SRTP context to read it back.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::peer_connection::transport::RTCSrtpKeying;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters};
use rtc::shared::marshal::Unmarshal;
use rtc::shared::time::SystemInstant;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

use super::egress::{Egress, Event, Forward, TcpDrop};
use super::machine::{Core, MAX_HANDOVER_AGE, NewSession, REPLACED};
use crate::admission::{Admission, SessionHolder};
use crate::config::MediaConfig;
use crate::error::MediaError;
use crate::feedback::KeyframeThrottle;
use crate::kinds::{MediaKind, SessionKind, Transport};
use crate::metrics::MediaMetrics;
use crate::registry::{
    RATE_WINDOW, RecentlyEnded, Registry, Reservation, SessionObserver, SessionSummary,
    StreamShared,
};
use crate::sdp;
use crate::srtp::SrtpSender;

/// Everything the core put out, in order.
#[derive(Default)]
struct Collected {
    slot: BytesMut,
    udp: Vec<(SocketAddr, Vec<u8>)>,
    tcp: Vec<(SocketAddr, Bytes)>,
    /// ICE-TCP peers whose connection's queue is full.
    full: HashSet<SocketAddr>,
    media: Vec<usize>,
}

impl Egress for Collected {
    fn udp_slot(&mut self) -> &mut BytesMut {
        self.slot.clear();
        &mut self.slot
    }
    fn commit_udp(&mut self, to: SocketAddr) {
        self.udp.push((to, self.slot.to_vec()));
    }
    fn send_tcp(&mut self, to: SocketAddr, data: Bytes) -> Result<(), TcpDrop> {
        if self.full.contains(&to) {
            return Err(TcpDrop::Full);
        }
        self.tcp.push((to, data));
        Ok(())
    }
    fn media(&mut self, worker: usize, _forward: Forward) -> bool {
        self.media.push(worker);
        true
    }
    fn hand_over(&mut self, _: usize, _: SocketAddr, _: &[u8], _: Instant) -> bool {
        true
    }
    fn forget(&mut self, _: Vec<(SocketAddr, Transport)>) {}
    fn event(&mut self, _: Event) {}
    fn fanned_out(&mut self, _: Instant) {}
}

struct Quiet;
impl SessionObserver for Quiet {
    fn session_started(&self, _: &SessionSummary) {}
    fn session_ended(&self, _: &SessionSummary) {}
}

fn offer(direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
a=fingerprint:sha-256 36:2D:A1:C0:36:B5:33:F0:7C:16:21:CF:CC:17:9B:06:41:D5:9B:32:34:6C:6C:93:8D:13:26:5B:58:F5:1C:7E\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\na=rtcp-mux\r\na={direction}\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=setup:actpass\r\na=rtcp-mux\r\na={direction}\r\na=rtpmap:96 VP8/90000\r\n"
    )
}

fn vp8() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: 96,
    }
}

/// A publisher's offer with three VP8 encodings, as Chromium makes it.
fn simulcast_offer() -> String {
    offer("sendonly").replace(
        "a=rtpmap:96 VP8/90000\r\n",
        "a=rtpmap:96 VP8/90000\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n",
    )
}

/// SRTP keys for viewer `n`, as its DTLS handshake would leave them.
fn keying(n: u8) -> RTCSrtpKeying {
    let profile = ProtectionProfile::AeadAes128Gcm;
    RTCSrtpKeying {
        profile,
        master_key: (0..profile.key_len() as u8).map(|i| i ^ n).collect(),
        master_salt: (0..profile.salt_len() as u8).map(|i| i * 3 + n).collect(),
    }
}

/// A worker's core, one stream, and a virtual clock.
struct Bench {
    core: Core,
    stream: Arc<StreamShared>,
    admission: Arc<Admission>,
    config: MediaConfig,
    metrics: MediaMetrics,
    t0: Instant,
    next_key: u64,
    /// Publishers offer three encodings (q, h, f).
    simulcast: bool,
    /// The SDP answer of the last session built.
    last_answer: String,
}

impl Bench {
    fn new() -> Self {
        let config = MediaConfig::default();
        let metrics = MediaMetrics::register(&prometheus::Registry::new()).unwrap();
        let registry = Arc::new(Registry::new(
            config.clone(),
            5000,
            2,
            metrics.clone(),
            Arc::new(Quiet),
        ));
        let stream = Arc::new(StreamShared::new(1, Arc::from("live"), 2));
        *stream.codecs.write().unwrap() = Arc::new(vec![vp8()]);
        let t0 = Instant::now();
        Self {
            core: Core::new(0, registry, t0, SystemInstant::now(t0)),
            stream,
            admission: Arc::default(),
            config,
            metrics,
            t0,
            next_key: 1,
            simulcast: false,
            last_answer: String::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// A session of user "u"; a publisher reserves the stream first, as `Sfu` does.
    fn session(&mut self, kind: SessionKind, ms: u64, out: &mut Collected) -> u64 {
        if kind == SessionKind::Publisher {
            let reserved = self.stream.reserve_publisher(self.next_key, 0, "u");
            assert_eq!(reserved, Reservation::Free);
        }
        self.build(kind, ms, out).unwrap()
    }

    /// Builds the next session (a publisher's place must be reserved already).
    fn build(
        &mut self,
        kind: SessionKind,
        ms: u64,
        out: &mut Collected,
    ) -> Result<u64, MediaError> {
        let key = self.next_key;
        self.next_key += 1;
        let offer = match kind {
            SessionKind::Publisher if self.simulcast => simulcast_offer(),
            SessionKind::Publisher => offer("sendonly"),
            SessionKind::Viewer => offer("recvonly"),
        };
        let holder = SessionHolder {
            user: "u",
            token: "t",
            limited: false,
        };
        if kind == SessionKind::Viewer {
            self.stream.viewers.fetch_add(1, Ordering::AcqRel);
        }
        let req = NewSession {
            key,
            id: Arc::from(format!("{key:032x}")),
            kind,
            stream: self.stream.clone(),
            checked: sdp::check_offer(&offer, kind).unwrap(),
            offer,
            user: Arc::from("u"),
            slot: self.admission.admit(&self.config, kind, &holder).unwrap(),
        };
        self.last_answer = self.core.create_session(self.at(ms), req, out)?.sdp;
        Ok(key)
    }

    /// A viewer whose handshake is done: `n` picks its keys and port.
    fn viewer(&mut self, n: u8, transport: Transport, out: &mut Collected) -> Viewer {
        self.viewer_at(n, transport, 0, out)
    }

    /// A viewer whose handshake is done at `ms`.
    fn viewer_at(&mut self, n: u8, transport: Transport, ms: u64, out: &mut Collected) -> Viewer {
        let key = self.session(SessionKind::Viewer, 0, out);
        let addr: SocketAddr = format!("127.0.0.1:{}", 6000 + u16::from(n))
            .parse()
            .unwrap();
        let keys = keying(n);
        self.core.connect_viewer(
            key,
            SrtpSender::new(&keys).unwrap(),
            (addr, transport),
            self.at(ms),
        );
        let provider = rtc::crypto::default_provider().unwrap();
        let crypto = provider.crypto();
        let ctx = Context::new(
            &keys.master_key,
            &keys.master_salt,
            keys.profile,
            None,
            None,
            crypto,
        )
        .unwrap();
        Viewer { key, addr, ctx }
    }

    fn stale_drops(&self) -> u64 {
        self.metrics.dropped.stale.get()
    }
}

/// A viewer as the test sees it: where its packets go, and its SRTP context.
struct Viewer {
    key: u64,
    addr: SocketAddr,
    ctx: Context,
}

impl Viewer {
    /// The (sequence number, SSRC) of each RTP packet the viewer was sent over UDP.
    fn received(&mut self, out: &Collected) -> Vec<(u16, u32)> {
        self.packets(out)
            .iter()
            .map(|p| (p.header.sequence_number, p.header.ssrc))
            .collect()
    }

    /// Every RTP packet the viewer was sent over UDP, decrypted.
    fn packets(&mut self, out: &Collected) -> Vec<rtc::rtp::Packet> {
        out.udp
            .iter()
            .filter(|(to, _)| *to == self.addr)
            .map(|(_, wire)| {
                let plain = self.ctx.decrypt_rtp(wire).unwrap();
                rtc::rtp::Packet::unmarshal(&mut &plain[..]).unwrap()
            })
            .collect()
    }
}

fn rtp(seq: u16, ts: u32) -> rtc::rtp::Packet {
    let mut p = rtc::rtp::Packet::default();
    p.header.version = 2;
    p.header.payload_type = 96;
    p.header.sequence_number = seq;
    p.header.timestamp = ts;
    p.header.ssrc = 0xfeed;
    p.payload = Bytes::from_static(&[0x10; 100]);
    p
}

fn media(bench: &Bench, seq: u16, arrived_ms: u64) -> Forward {
    Forward {
        stream: bench.stream.id,
        epoch: 0,
        kind: MediaKind::Video,
        encoding: 0,
        keyframe: false,
        packet: rtp(seq, u32::from(seq) * 3000),
        arrived: bench.at(arrived_ms),
    }
}

#[path = "simulcast_tests.rs"]
mod simulcast_tests;

#[test]
fn keyframe_requests_on_viewer_joins_are_throttled_to_one_per_interval() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let interval = bench.config.pli_interval;
    let mut throttle = KeyframeThrottle::default();
    bench.viewer(1, Transport::Udp, &mut out);
    assert!(bench.stream.keyframe_wanted.load(Ordering::Acquire));
    assert!(throttle.due(&bench.stream.keyframe_wanted, bench.at(10), interval));
    // A second viewer joins 100 ms later: its wish waits for the interval.
    bench.viewer(2, Transport::Udp, &mut out);
    assert!(!throttle.due(&bench.stream.keyframe_wanted, bench.at(110), interval));
    assert!(!throttle.due(&bench.stream.keyframe_wanted, bench.at(509), interval));
    assert!(throttle.due(&bench.stream.keyframe_wanted, bench.at(510), interval));
    // Nobody asks: nothing goes, however long it has been.
    assert!(!throttle.due(&AtomicBool::new(false), bench.at(5_000), interval));
}

#[test]
fn nack_is_answered_from_the_cache_and_a_repeated_nack_again() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let mut viewer = bench.viewer(1, Transport::Udp, &mut out);
    for seq in 10..13 {
        let m = media(&bench, seq, 20);
        bench.core.handle_media(bench.at(20), &m, &mut out);
    }
    let sent = viewer.received(&out);
    assert_eq!(sent.iter().map(|p| p.0).collect::<Vec<_>>(), [10, 11, 12]);
    let ssrc = sent[0].1;
    let nack = TransportLayerNack {
        sender_ssrc: 1,
        media_ssrc: ssrc,
        nacks: vec![NackPair {
            packet_id: 11,
            lost_packets: 0,
        }],
    };
    out.udp.clear();
    bench
        .core
        .viewer_nacks(viewer.key, std::slice::from_ref(&nack), &mut out);
    bench
        .core
        .viewer_nacks(viewer.key, std::slice::from_ref(&nack), &mut out);
    assert_eq!(viewer.received(&out), [(11, ssrc), (11, ssrc)]);
    // A packet the cache never saw is not invented.
    out.udp.clear();
    let unknown = TransportLayerNack {
        nacks: vec![NackPair {
            packet_id: 500,
            lost_packets: 0,
        }],
        ..nack
    };
    bench.core.viewer_nacks(viewer.key, &[unknown], &mut out);
    assert!(out.udp.is_empty());
}

#[test]
fn publisher_reconnect_keeps_a_viewers_numbering_continuous() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let mut viewer = bench.viewer(1, Transport::Udp, &mut out);
    let first = bench.session(SessionKind::Publisher, 0, &mut out);
    bench
        .core
        .open_track(first, MediaKind::Video, 0, 0xfeed, 90_000, bench.at(0));
    for seq in 65_534..=65_535u16 {
        bench.core.publisher_rtp(
            bench.at(40),
            first,
            MediaKind::Video,
            rtp(seq, 1_000),
            &mut out,
        );
    }
    assert!(
        bench
            .core
            .end_session(bench.at(100), first, "deleted", &mut out)
    );
    // The publisher comes back a second later, numbering from somewhere else.
    let second = bench.session(SessionKind::Publisher, 1_000, &mut out);
    bench
        .core
        .open_track(second, MediaKind::Video, 0, 0xfeed, 90_000, bench.at(0));
    for seq in 7..9u16 {
        bench.core.publisher_rtp(
            bench.at(1_040),
            second,
            MediaKind::Video,
            rtp(seq, 50),
            &mut out,
        );
    }
    let seqs: Vec<u16> = viewer.received(&out).iter().map(|p| p.0).collect();
    assert_eq!(seqs, [65_534, 65_535, 0, 1]);
}

#[test]
fn stale_media_is_dropped_at_the_worker() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let mut viewer = bench.viewer(1, Transport::Udp, &mut out);
    let age = MAX_HANDOVER_AGE.as_millis() as u64;
    let now = 1_000;
    let fresh = media(&bench, 1, now - age);
    bench.core.handle_media(bench.at(now), &fresh, &mut out);
    let stale = media(&bench, 2, now - age - 1);
    bench.core.handle_media(bench.at(now), &stale, &mut out);
    assert_eq!(viewer.received(&out).len(), 1);
    assert_eq!(viewer.received(&out)[0].0, 1);
    assert_eq!(bench.stale_drops(), 1);
}

#[test]
fn a_slow_viewer_never_delays_the_others() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    // The slow viewer is first in fan-out order, over ICE-TCP with a full queue.
    let slow = bench.viewer(1, Transport::Tcp, &mut out);
    let mut fast = bench.viewer(2, Transport::Udp, &mut out);
    out.full.insert(slow.addr);
    for seq in 1..=3 {
        let m = media(&bench, seq, 50);
        bench.core.handle_media(bench.at(50), &m, &mut out);
    }
    assert_eq!(
        fast.received(&out).iter().map(|p| p.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(out.tcp.is_empty());
    assert_eq!(bench.metrics.dropped.socket_full.get(), 3);
}

#[test]
fn media_crosses_only_to_workers_with_viewers_of_the_stream() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let publisher = bench.session(SessionKind::Publisher, 0, &mut out);
    bench
        .core
        .open_track(publisher, MediaKind::Video, 0, 0xfeed, 90_000, bench.at(0));
    bench.core.publisher_rtp(
        bench.at(10),
        publisher,
        MediaKind::Video,
        rtp(1, 0),
        &mut out,
    );
    assert!(out.media.is_empty());
    // A viewer on worker 1 that does not watch this encoding yet: nothing crosses.
    bench.stream.viewers_on[1].fetch_add(1, Ordering::AcqRel);
    bench.core.publisher_rtp(
        bench.at(15),
        publisher,
        MediaKind::Video,
        rtp(2, 0),
        &mut out,
    );
    assert!(out.media.is_empty());
    bench.stream.rewatch(1, [false; 3], [true, false, false]);
    bench.core.publisher_rtp(
        bench.at(20),
        publisher,
        MediaKind::Video,
        rtp(3, 0),
        &mut out,
    );
    assert_eq!(out.media, [1]);
}

#[test]
fn the_same_users_new_publisher_takes_over_and_viewers_keep_their_numbering() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let mut viewer = bench.viewer(1, Transport::Udp, &mut out);
    let first = bench.session(SessionKind::Publisher, 0, &mut out);
    bench.core.connect_publisher(first, bench.at(10));
    bench
        .core
        .open_track(first, MediaKind::Video, 0, 0xfeed, 90_000, bench.at(0));
    for seq in 100..102u16 {
        bench.core.publisher_rtp(
            bench.at(40),
            first,
            MediaKind::Video,
            rtp(seq, 1_000),
            &mut out,
        );
    }
    // The broadcaster's page crashed: its session is still there when the same
    // user's new offer comes. The new one reserves the place over the old one...
    let second_key = bench.next_key;
    assert_eq!(
        bench.stream.reserve_publisher(second_key, 0, "u"),
        Reservation::Takeover {
            key: first,
            worker: 0
        }
    );
    // ...which is closed as a DELETE would before the new one is built.
    assert!(
        bench
            .core
            .end_session(bench.at(500), first, REPLACED, &mut out)
    );
    assert!(
        bench.stream.holds_publisher(second_key),
        "closing the replaced session leaves its successor's place alone"
    );
    assert!(
        !bench.core.recently_ended("live", bench.at(500)),
        "a takeover is not an end"
    );
    let second = bench.build(SessionKind::Publisher, 500, &mut out).unwrap();
    bench
        .core
        .open_track(second, MediaKind::Video, 0, 0xfeed, 90_000, bench.at(0));
    for seq in 9_000..9_002u16 {
        bench.core.publisher_rtp(
            bench.at(540),
            second,
            MediaKind::Video,
            rtp(seq, 77),
            &mut out,
        );
    }
    let seqs: Vec<u16> = viewer.received(&out).iter().map(|p| p.0).collect();
    assert_eq!(seqs, [100, 101, 102, 103]);
}

#[test]
fn another_users_publisher_finds_the_stream_busy() {
    let bench = Bench::new();
    assert_eq!(bench.stream.reserve_publisher(1, 0, "u"), Reservation::Free);
    assert_eq!(bench.stream.reserve_publisher(2, 1, "v"), Reservation::Busy);
    assert!(
        bench.stream.holds_publisher(1),
        "a refused takeover changes nothing"
    );
}

#[test]
fn a_publisher_replaced_before_it_was_built_is_refused() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let first_key = bench.next_key;
    assert_eq!(
        bench.stream.reserve_publisher(first_key, 0, "u"),
        Reservation::Free
    );
    // The same user's second offer overtakes the first while it is in flight.
    assert_eq!(
        bench.stream.reserve_publisher(first_key + 1, 0, "u"),
        Reservation::Takeover {
            key: first_key,
            worker: 0
        }
    );
    let refused = bench.build(SessionKind::Publisher, 0, &mut out);
    assert!(matches!(refused, Err(MediaError::StreamBusy(_))));
    assert!(bench.build(SessionKind::Publisher, 0, &mut out).is_ok());
    assert!(bench.stream.holds_publisher(first_key + 1));
}

#[test]
fn a_live_publisher_that_leaves_marks_the_stream_ended_until_the_next_one() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let first = bench.session(SessionKind::Publisher, 0, &mut out);
    bench.core.connect_publisher(first, bench.at(10));
    assert!(bench.stream.publisher_status().is_some());
    assert!(
        bench
            .core
            .end_session(bench.at(1_000), first, "deleted", &mut out)
    );
    assert!(bench.stream.publisher_status().is_none());
    assert!(bench.core.recently_ended("live", bench.at(1_000)));
    let second = bench.session(SessionKind::Publisher, 2_000, &mut out);
    assert!(
        bench.core.recently_ended("live", bench.at(2_000)),
        "a publisher that has not connected yet does not make the stream live"
    );
    bench.core.connect_publisher(second, bench.at(2_050));
    assert!(!bench.core.recently_ended("live", bench.at(2_050)));
}

#[test]
fn recently_ended_names_are_bounded_in_count_and_age() {
    let t0 = Instant::now();
    let mut ended = RecentlyEnded::new(2, Duration::from_secs(60));
    ended.insert(Arc::from("a"), t0);
    ended.insert(Arc::from("b"), t0);
    ended.insert(Arc::from("c"), t0);
    assert_eq!(ended.len(), 2);
    assert!(!ended.contains("a", t0), "the oldest name goes first");
    assert!(ended.contains("c", t0));
    // Re-inserting a name keeps it past its first entry's eviction.
    ended.insert(Arc::from("b"), t0 + Duration::from_secs(30));
    assert!(ended.contains("b", t0 + Duration::from_secs(61)));
    assert!(!ended.contains("c", t0 + Duration::from_secs(61)));
    assert!(!ended.contains("b", t0 + Duration::from_secs(91)));
}

#[test]
fn the_publishers_bitrate_is_published_once_per_window() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let publisher = bench.session(SessionKind::Publisher, 0, &mut out);
    bench
        .core
        .open_track(publisher, MediaKind::Video, 0, 0xfeed, 90_000, bench.at(0));
    // 100 payload bytes every 10 ms: 80 kbit/s.
    let window = RATE_WINDOW.as_millis() as u64;
    for i in 0..window / 10 {
        let seq = i as u16;
        bench.core.publisher_rtp(
            bench.at(i * 10),
            publisher,
            MediaKind::Video,
            rtp(seq, 0),
            &mut out,
        );
    }
    bench.core.handle_timeout(bench.at(window - 10), &mut out);
    assert_eq!(bench.stream.bitrate_bps.load(Ordering::Relaxed), 0);
    bench.core.handle_timeout(bench.at(window), &mut out);
    assert_eq!(bench.stream.bitrate_bps.load(Ordering::Relaxed), 80_000);
}
