//! What the `fuzz/` crate's `media_core` target drives (only with the `fuzzing`
//! feature; not part of the crate's API): one worker's [`Core`] with a publisher
//! and a viewer built from real offers, each bound to an address by a valid ICE
//! check (so what arrives from there is handed to their peer connections), fed
//! arbitrary datagrams from those known addresses and from unknown ones, media
//! from another worker, trickle fragments and timer ticks on a virtual clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::peer_connection::transport::RTCSrtpKeying;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters};
use rtc::shared::marshal::Unmarshal;
use rtc::shared::time::SystemInstant;
use rtc::srtp::protection_profile::ProtectionProfile;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
use rtc::stun::textattrs::Username;

use crate::admission::{Admission, SessionHolder};
use crate::config::MediaConfig;
use crate::core::{Core, Egress, Event, Forward, NewSession, TcpDrop};
use crate::kinds::{MediaKind, SessionKind, Transport};
use crate::metrics::MediaMetrics;
use crate::registry::{Registry, Route, SessionObserver, SessionSummary, StreamShared};
use crate::sdp;
use crate::srtp::SrtpSender;

/// Where the publisher's and the viewer's checks come from.
const PUBLISHER_ADDR: ([u8; 4], u16) = ([10, 0, 0, 1], 5000);
const VIEWER_ADDR: ([u8; 4], u16) = ([10, 0, 0, 2], 6000);
/// A ufrag the registry routes to another worker.
const FOREIGN_UFRAG: &str = "frgn";

/// Everything the core sends is written and dropped.
#[derive(Default)]
struct Sink {
    slot: BytesMut,
}

impl Egress for Sink {
    fn udp_slot(&mut self) -> &mut BytesMut {
        self.slot.clear();
        &mut self.slot
    }
    fn commit_udp(&mut self, _: SocketAddr) {}
    fn send_tcp(&mut self, _: SocketAddr, _: Bytes) -> Result<(), TcpDrop> {
        Ok(())
    }
    fn media(&mut self, _: usize, _: Forward) -> bool {
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

/// A worker's core with a publisher (key 1) and a viewer (key 2) of one stream.
pub struct CoreFuzz {
    core: Core,
    stream: Arc<StreamShared>,
    now: Instant,
    out: Sink,
    /// The viewer's track SSRCs, as its answer announces them.
    viewer_ssrcs: Vec<u32>,
}

impl CoreFuzz {
    /// Builds both sessions from `publisher_offer` and `viewer_offer` (real
    /// browser offers) and binds each to its address with a valid ICE check.
    pub fn new(publisher_offer: &str, viewer_offer: &str) -> Self {
        let config = MediaConfig::default();
        let metrics = MediaMetrics::register(&prometheus::Registry::new()).unwrap();
        let registry = Arc::new(Registry::new(
            config.clone(),
            5000,
            2,
            metrics,
            Arc::new(Quiet),
        ));
        registry
            .ufrags
            .insert(FOREIGN_UFRAG.into(), Route { key: 9, worker: 1 });
        let stream = Arc::new(StreamShared::new(1, Arc::from("live"), 2));
        *stream.codecs.write().unwrap() = Arc::new(vec![vp8()]);
        let t0 = Instant::now();
        let mut fuzz = Self {
            core: Core::new(0, registry, t0, SystemInstant::now(t0)),
            stream,
            now: t0,
            out: Sink::default(),
            viewer_ssrcs: Vec::new(),
        };
        let admission = Arc::new(Admission::default());
        let publisher = fuzz.session(1, SessionKind::Publisher, publisher_offer, &admission);
        let viewer = fuzz.session(2, SessionKind::Viewer, viewer_offer, &admission);
        fuzz.bind(&publisher, publisher_offer, addr(PUBLISHER_ADDR));
        fuzz.bind(&viewer, viewer_offer, addr(VIEWER_ADDR));
        for line in viewer.lines() {
            if let Some(ssrc) = line.strip_prefix("a=ssrc:")
                && let Some(Ok(ssrc)) = ssrc.split(' ').next().map(str::parse)
                && !fuzz.viewer_ssrcs.contains(&ssrc)
            {
                fuzz.viewer_ssrcs.push(ssrc);
            }
        }
        let now = fuzz.now;
        fuzz.core
            .open_track(1, MediaKind::Audio, 0, 0xfeed, 48_000, now);
        fuzz.core
            .open_track(1, MediaKind::Video, 0, 0xfeed, 90_000, now);
        let keying = RTCSrtpKeying {
            profile: ProtectionProfile::AeadAes128Gcm,
            master_key: vec![7; 16],
            master_salt: vec![9; 12],
        };
        fuzz.core.connect_viewer(
            2,
            SrtpSender::new(&keying).unwrap(),
            (addr(VIEWER_ADDR), Transport::Udp),
            now,
        );
        fuzz
    }

    /// The session's answer.
    fn session(
        &mut self,
        key: u64,
        kind: SessionKind,
        offer: &str,
        admission: &Arc<Admission>,
    ) -> String {
        let holder = SessionHolder {
            user: "u",
            token: "t",
            limited: false,
        };
        if kind == SessionKind::Publisher {
            // The publisher place, as `Sfu::publish` reserves it.
            self.stream.reserve_publisher(key, 0, "u");
        }
        let req = NewSession {
            key,
            id: Arc::from(format!("{key:032x}")),
            kind,
            stream: self.stream.clone(),
            checked: sdp::check_offer(offer, kind).unwrap(),
            offer: offer.to_string(),
            user: Arc::from("u"),
            slot: admission
                .admit(&MediaConfig::default(), kind, &holder)
                .unwrap(),
        };
        let answer = self.core.create_session(self.now, req, &mut self.out);
        answer.unwrap().sdp
    }

    /// A nominating check from `from`, keyed with the answer's password.
    fn bind(&mut self, answer: &str, offer: &str, from: SocketAddr) {
        let ours = sdp::attribute(answer, "ice-ufrag").unwrap();
        let pwd = sdp::attribute(answer, "ice-pwd").unwrap();
        let theirs = sdp::attribute(offer, "ice-ufrag").unwrap();
        let provider = rtc::crypto::default_provider().unwrap();
        let mut msg = Message::new();
        let setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(ATTR_USERNAME, format!("{ours}:{theirs}"))),
            Box::new(rtc::ice::attributes::use_candidate::UseCandidateAttr),
            Box::new(rtc::ice::attributes::control::AttrControlling(7)),
            Box::new(rtc::ice::attributes::priority::PriorityAttr(0x6e00_1eff)),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_string(),
                provider.crypto(),
            )),
            Box::new(FINGERPRINT),
        ];
        msg.build(&setters).unwrap();
        self.core
            .handle_datagram(self.now, from, Transport::Udp, &msg.raw, &mut self.out);
    }

    /// Runs a script of records, each `[op, len, len bytes]` (a short last
    /// record takes what is left). `op % 8` picks what the bytes are:
    /// 0. a UDP datagram from the publisher's address;
    /// 1. a UDP datagram from the viewer's address;
    /// 2. a UDP datagram from an unknown address (`op` picks its port);
    /// 3. an ICE-TCP datagram from an unknown address;
    /// 4. the clock moves `len` × 10 ms and the timer fires (no bytes);
    /// 5. an RTP packet from a publisher on another worker, for the viewer; or
    ///    (`op & 0x20`) the viewer's NACK of one of its tracks (by `op & 0x10`),
    ///    each 4 bytes a (packet id, lost bitmask) pair;
    /// 6. an RTP packet from the local publisher (after SRTP), audio or video by `op`;
    /// 7. a trickle/restart fragment for the publisher or the viewer, by `op`.
    pub fn run(&mut self, mut data: &[u8]) {
        while let [op, len, rest @ ..] = data {
            let (op, len) = (*op, usize::from(*len));
            if op % 8 == 4 {
                self.now += Duration::from_millis(len as u64 * 10);
                self.core.handle_timeout(self.now, &mut self.out);
                data = rest;
                continue;
            }
            let (bytes, tail) = rest.split_at(len.min(rest.len()));
            data = tail;
            self.record(op, bytes);
        }
    }

    fn record(&mut self, op: u8, bytes: &[u8]) {
        let (now, out) = (self.now, &mut self.out);
        match op % 8 {
            0 => {
                let from = addr(PUBLISHER_ADDR);
                self.core
                    .handle_datagram(now, from, Transport::Udp, bytes, out);
            }
            1 => {
                let from = addr(VIEWER_ADDR);
                self.core
                    .handle_datagram(now, from, Transport::Udp, bytes, out);
            }
            2 | 3 => {
                let from = addr(([192, 0, 2, 1], 40_000 + u16::from(op)));
                let transport = if op % 8 == 2 {
                    Transport::Udp
                } else {
                    Transport::Tcp
                };
                self.core.handle_datagram(now, from, transport, bytes, out);
            }
            5 if op & 0x20 != 0 => {
                let Some(&media_ssrc) = self
                    .viewer_ssrcs
                    .get(usize::from(op >> 4 & 1) % self.viewer_ssrcs.len().max(1))
                else {
                    return;
                };
                let nacks = bytes
                    .chunks_exact(4)
                    .map(|c| NackPair {
                        packet_id: u16::from_be_bytes([c[0], c[1]]),
                        lost_packets: u16::from_be_bytes([c[2], c[3]]),
                    })
                    .collect();
                let nack = TransportLayerNack {
                    sender_ssrc: 1,
                    media_ssrc,
                    nacks,
                };
                self.core.viewer_nacks(2, &[nack], out);
            }
            5 => {
                if let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut &bytes[..]) {
                    let forward = Forward {
                        stream: self.stream.id,
                        epoch: u32::from(op >> 3),
                        kind: kind(op),
                        encoding: op >> 6 & 0x03,
                        keyframe: op & 0x04 != 0,
                        packet,
                        arrived: now,
                    };
                    self.core.handle_media(now, &forward, out);
                }
            }
            6 => {
                if let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut &bytes[..]) {
                    self.core.publisher_rtp(now, 1, kind(op), packet, out);
                }
            }
            _ => {
                if let Ok(frag) = std::str::from_utf8(bytes)
                    && let Ok(fragment) = sdp::parse_fragment(frag)
                {
                    let key = 1 + u64::from(op >> 3 & 1);
                    let _ = self.core.patch_session(now, key, fragment, out);
                }
            }
        }
    }
}

fn kind(op: u8) -> MediaKind {
    if op & 0x10 == 0 {
        MediaKind::Video
    } else {
        MediaKind::Audio
    }
}

fn addr((ip, port): ([u8; 4], u16)) -> SocketAddr {
    SocketAddr::from((ip, port))
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
