//! A lightweight WHIP/WHEP client on webrtc-rs's sans-IO `rtc`: full ICE (controlling),
//! DTLS, SRTP; many peers per thread on one epoll loop, no decoding, counts what arrives.
//!
//! Each peer has its own UDP socket: the server (like every SFU) tells sessions apart
//! by the client's address, so peers cannot share one. What they do share is the
//! thread: a [`Driver`] runs hundreds of them on one `mio` poll loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::marshal::{MarshalSize, Unmarshal};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::media::{self, AudioSource, PT_H264, PT_OPUS, VideoCodec, VideoSource};
use crate::rxtime;
use crate::stats::{LayerCtl, UNTAGGED, ViewerStats, new_histogram};

/// The RTP header extensions that bind a simulcast SSRC to its rid (RFC 8852).
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
/// How long each simulcast SSRC carries the mid and rid extensions after its
/// first packet: a browser sends them until a receiver report acknowledges the
/// SSRC; the server binds the SSRC at its first packet.
const RID_EXTENSION_FOR: Duration = Duration::from_secs(3);

/// What the publisher sends.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub codec: VideoCodec,
    pub video_bitrate_bps: u64,
    pub fps: u32,
    pub keyframe_interval_s: f64,
    pub audio: bool,
    /// Video packets leave at this multiple of the bitrate, spread over the frame
    /// interval like libwebrtc's pacer (2.5); 0 sends each frame as one burst.
    pub pacing_factor: f64,
    /// Simulcast encodings offered (1: none, as before; 2–3: rids `q`, `h`, `f`
    /// with `a=rid`/`a=simulcast`, each its own SSRC).
    pub simulcast: usize,
    /// Per-encoding video bitrates, lowest first; empty: `video_bitrate_bps`
    /// split 1:3:9 (1:3 for two encodings).
    pub layer_bitrates_bps: Vec<u64>,
}

impl PublishOptions {
    /// The bitrate of each encoding sent (one entry without simulcast).
    pub fn encoding_rates(&self) -> Vec<u64> {
        let n = self.simulcast.clamp(1, media::RIDS.len());
        if n == 1 {
            return vec![self.video_bitrate_bps];
        }
        if self.layer_bitrates_bps.len() == n {
            return self.layer_bitrates_bps.clone();
        }
        let weights = &[1u64, 3, 9][..n];
        let total: u64 = weights.iter().sum();
        weights
            .iter()
            .map(|w| self.video_bitrate_bps * w / total)
            .collect()
    }

    /// The rids offered (empty without simulcast).
    pub fn rids(&self) -> Vec<&'static str> {
        let n = self.simulcast.clamp(1, media::RIDS.len());
        if n == 1 {
            Vec::new()
        } else {
            media::RIDS[..n].to_vec()
        }
    }
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            codec: VideoCodec::Vp8,
            video_bitrate_bps: 2_500_000,
            fps: 30,
            keyframe_interval_s: 2.0,
            audio: true,
            pacing_factor: 2.5,
            simulcast: 1,
            layer_bitrates_bps: Vec::new(),
        }
    }
}

/// Counters every driver updates; read by the progress bar and the report.
#[derive(Default)]
pub struct Counters {
    pub stop: AtomicBool,
    /// Latency samples are recorded only while this is set.
    pub measuring: AtomicBool,
    pub viewers_connected: AtomicUsize,
    pub viewers_failed: AtomicUsize,
    pub publisher_connected: AtomicBool,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub keyframes_sent: AtomicU64,
    pub keyframe_requests: AtomicU64,
}

fn codec(mime: &str, clock: u32, channels: u16, fmtp: &str, fb: &[(&str, &str)]) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.to_string(),
        clock_rate: clock,
        channels,
        sdp_fmtp_line: fmtp.to_string(),
        rtcp_feedback: fb
            .iter()
            .map(|(t, p)| RTCPFeedback {
                typ: t.to_string(),
                parameter: p.to_string(),
            })
            .collect(),
    }
}

fn vp8() -> RTCRtpCodec {
    codec(
        "video/VP8",
        90000,
        0,
        "",
        &[("nack", ""), ("nack", "pli"), ("ccm", "fir")],
    )
}

fn h264() -> RTCRtpCodec {
    codec(
        "video/H264",
        90000,
        0,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        &[("nack", ""), ("nack", "pli"), ("ccm", "fir")],
    )
}

fn video_codec(c: VideoCodec) -> RTCRtpCodec {
    match c {
        VideoCodec::Vp8 => vp8(),
        VideoCodec::H264 => h264(),
    }
}

fn opus() -> RTCRtpCodec {
    codec("audio/opus", 48000, 2, "minptime=10;useinbandfec=1", &[])
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

#[allow(clippy::large_enum_variant)]
enum Role {
    Publisher(Box<Publisher>),
    Viewer(ViewerStats),
}

struct Publisher {
    /// False for a relaying publisher: its packets come from [`Peer::forward`].
    synthetic: bool,
    opts: PublishOptions,
    /// One per encoding (one without simulcast), lowest first.
    video: Vec<VideoOut>,
    audio: Option<Outgoing>,
    audio_src: AudioSource,
    next_video: Option<Instant>,
    next_audio: Option<Instant>,
    keyframe_requests: u64,
    /// Paced video packets waiting for their slot: the encoding, the packet and the
    /// frame's RTP timestamp. One pacer for all encodings, as a browser has.
    pending: std::collections::VecDeque<(usize, media::Chunk, u32)>,
    next_packet: Option<Instant>,
    /// The server's SRTCP, decrypted here to read which SSRC a PLI names (the
    /// peer connection does not hand a sender its RTCP; see [`is_keyframe_request`]).
    srtcp_in: Option<rtc::srtp::context::Context>,
}

/// One video encoding being sent: its RTP stream and its frames.
struct VideoOut {
    out: Outgoing,
    src: VideoSource,
}

struct Outgoing {
    sender: RTCRtpSenderId,
    ssrc: u32,
    pt: u8,
    seq: u16,
    ts: u32,
    /// The mid and rid header extensions a simulcast SSRC carries on its first
    /// packets (empty without simulcast) …
    exts: Vec<rtc::rtp::header::Extension>,
    /// … until this instant (set at the first packet).
    exts_until: Option<Instant>,
}

/// One WebRTC peer (publisher or viewer) with its socket.
pub struct Peer {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    /// The session URL from `Location` (absolute).
    pub session_url: String,
    connected: bool,
    closed: bool,
    next_timeout: Option<Instant>,
    role: Role,
    /// A viewer's SRTP context for the media it receives, once DTLS is done: RTP is
    /// decrypted here rather than through the peer connection's handler chain, so
    /// the generator's own CPU per packet (on the server's cores) stays small.
    /// RTCP, ICE and DTLS still go through the peer connection.
    srtp_in: Option<rtc::srtp::context::Context>,
    /// RTP decrypted by `srtp_in`, with the kernel's receive time (µs since
    /// [`media::base`]), counted at the next `service`.
    inbox: Vec<(rtc::rtp::Header, bytes::Bytes, Option<u64>)>,
}

/// A peer connection offering `publish`'s video codec, or (a viewer) every codec the
/// publisher might send, so the server's answer picks the publisher's; a simulcast
/// publisher also offers the mid and rid header extensions.
fn build_pc(publish: Option<VideoCodec>, simulcast: bool) -> Result<RTCPeerConnection, String> {
    let publisher = publish.is_some();
    let mut engine = MediaEngine::default();
    let videos = match publish {
        Some(c) => vec![c],
        None => vec![VideoCodec::Vp8, VideoCodec::H264],
    };
    for c in videos {
        let video = RTCRtpCodecParameters {
            rtp_codec: video_codec(c),
            payload_type: c.payload_type(),
        };
        engine
            .register_codec(video, RtpCodecKind::Video)
            .map_err(err("codec"))?;
    }
    let audio = RTCRtpCodecParameters {
        rtp_codec: opus(),
        payload_type: PT_OPUS,
    };
    engine
        .register_codec(audio, RtpCodecKind::Audio)
        .map_err(err("codec"))?;
    if simulcast {
        configure_simulcast_extension_headers(&mut engine).map_err(err("header extensions"))?;
    }
    // A publisher keeps the default interceptors (sender reports, NACK responder) as a
    // browser would; viewers run none: they count, they do not repair or report.
    let registry = if publisher {
        register_default_interceptors(Registry::new(), &mut engine).map_err(err("interceptors"))?
    } else {
        Registry::new()
    };
    let settings = SettingEngineBuilder::new()
        .with_network_types(vec![rtc::ice::network_type::NetworkType::Udp4])
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .map_err(err("peer connection"))
}

/// A track of one encoding per `(ssrc, rid)` (rid empty without simulcast).
fn track(kind: RtpCodecKind, encodings: &[(u32, &str)], video: VideoCodec) -> MediaStreamTrack {
    let (id, codec) = match kind {
        RtpCodecKind::Audio => ("audio", opus()),
        _ => ("video", video_codec(video)),
    };
    MediaStreamTrack::new(
        "loadtest".to_string(),
        format!("loadtest-{id}"),
        id.to_string(),
        kind,
        encodings
            .iter()
            .map(|(ssrc, rid)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(*ssrc),
                    rid: rid.to_string(),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            })
            .collect(),
    )
}

/// The `a=mid` of the first video section of an SDP.
fn video_mid(sdp: &str) -> Option<String> {
    let mut in_video = false;
    for line in sdp.lines() {
        if line.starts_with("m=") {
            in_video = line.starts_with("m=video");
        } else if in_video && let Some(mid) = line.strip_prefix("a=mid:") {
            return Some(mid.trim().to_string());
        }
    }
    None
}

/// Resolves a `Location` header against the request URL.
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{}", &base[..origin_end], location)
}

impl Peer {
    /// Creates a peer, POSTs its offer to `url` (WHIP or WHEP) with `token`, and
    /// applies the answer. ICE and DTLS run once a [`Driver`] owns the peer.
    pub async fn connect(
        http: &reqwest::Client,
        url: &str,
        token: &str,
        publish: Option<PublishOptions>,
    ) -> Result<Peer, String> {
        Self::connect_with(http, url, token, publish, None).await
    }

    /// [`Peer::connect`]; a viewer given `layer` reports the encoding it receives
    /// there and times the switches asked through it.
    pub async fn connect_with(
        http: &reqwest::Client,
        url: &str,
        token: &str,
        publish: Option<PublishOptions>,
        layer: Option<Arc<LayerCtl>>,
    ) -> Result<Peer, String> {
        let offer = Peer::offer(publish, layer)?;
        let resp = http
            .post(url)
            .header("Content-Type", "application/sdp")
            .header("Authorization", format!("Bearer {token}"))
            .body(offer.sdp.clone())
            .send()
            .await
            .map_err(err("POST offer"))?;
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| absolute(url, l));
        let body = resp.text().await.map_err(err("answer body"))?;
        if status.as_u16() != 201 {
            return Err(format!("POST {url}: {status}: {body}"));
        }
        let session_url = location.ok_or("201 without Location")?;
        offer.accept(body, session_url)
    }

    /// A peer with its offer made (`Offer::sdp`), for a caller that delivers the
    /// offer itself (the cluster edge hands its re-publishing offer to its own SFU,
    /// not over HTTP); [`Offer::accept`] applies the answer.
    pub fn offer(
        publish: Option<PublishOptions>,
        layer: Option<Arc<LayerCtl>>,
    ) -> Result<Offer, String> {
        Self::offer_on(std::net::Ipv4Addr::LOCALHOST.into(), publish, layer)
    }

    /// [`Peer::offer`] from a socket on `ip` (see [`Peer::prepare`]).
    pub fn offer_on(
        ip: std::net::IpAddr,
        publish: Option<PublishOptions>,
        layer: Option<Arc<LayerCtl>>,
    ) -> Result<Offer, String> {
        let (mut pc, socket, local, senders) = Self::prepare(publish.as_ref(), ip)?;
        let offer = pc.create_offer(None).map_err(err("create offer"))?;
        pc.set_local_description(Instant::now(), offer)
            .map_err(err("local description"))?;
        let sdp = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or("no local description")?;
        let mid = video_mid(&sdp).unwrap_or_default();
        Ok(Offer {
            sdp,
            pc,
            socket,
            local,
            senders,
            mid,
            publish,
            layer,
            synthetic: true,
        })
    }
}

/// What the two halves of a video and an audio sender are: the sender and its SSRCs.
type Senders = (
    Option<(RTCRtpSenderId, Vec<u32>)>,
    Option<(RTCRtpSenderId, u32)>,
);

/// A peer whose offer is made and whose answer is awaited ([`Peer::offer`]).
pub struct Offer {
    /// The SDP offer to send.
    pub sdp: String,
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    senders: Senders,
    mid: String,
    publish: Option<PublishOptions>,
    layer: Option<Arc<LayerCtl>>,
    synthetic: bool,
}

impl Offer {
    /// A publisher that sends no media of its own: the caller writes each packet
    /// with [`Peer::forward`] (the cluster edge re-publishing what it pulls).
    pub fn relayed(mut self) -> Self {
        self.synthetic = false;
        self
    }

    /// Applies the answer; `session_url` is the session's (absolute) URL.
    pub fn accept(self, answer: String, session_url: String) -> Result<Peer, String> {
        let Offer {
            mut pc,
            socket,
            local,
            senders,
            mid,
            publish,
            layer,
            synthetic,
            ..
        } = self;
        let answer = RTCSessionDescription::answer(answer).map_err(err("answer"))?;
        pc.set_remote_description(Instant::now(), answer)
            .map_err(err("remote description"))?;
        let role = match publish {
            Some(opts) => {
                let rids = opts.rids();
                let mut out = |kind: RtpCodecKind, sender: RTCRtpSenderId, ssrc: u32, rid: &str| {
                    let mut rtp = pc.rtp_sender(sender)?;
                    let params = rtp.get_parameters();
                    let pt = params
                        .rtp_parameters
                        .codecs
                        .first()
                        .map(|c| c.payload_type)
                        .unwrap_or(if kind == RtpCodecKind::Audio {
                            PT_OPUS
                        } else {
                            opts.codec.payload_type()
                        });
                    // A simulcast SSRC names its mid and rid (the ids the answer kept).
                    let mut exts = Vec::new();
                    if !rid.is_empty() {
                        for (uri, value) in [(MID_URI, mid.as_str()), (RID_URI, rid)] {
                            if let Some(e) = params
                                .rtp_parameters
                                .header_extensions
                                .iter()
                                .find(|e| e.uri == uri)
                            {
                                exts.push(rtc::rtp::header::Extension {
                                    id: e.id as u8,
                                    payload: bytes::Bytes::copy_from_slice(value.as_bytes()),
                                });
                            }
                        }
                    }
                    Some(Outgoing {
                        sender,
                        ssrc,
                        pt,
                        seq: rand::random(),
                        ts: rand::random(),
                        exts,
                        exts_until: None,
                    })
                };
                let rates = opts.encoding_rates();
                let mut video = Vec::new();
                if let Some((sender, ssrcs)) = &senders.0 {
                    for (i, ssrc) in ssrcs.iter().enumerate() {
                        let rid = rids.get(i).copied().unwrap_or("");
                        let Some(o) = out(RtpCodecKind::Video, *sender, *ssrc, rid) else {
                            continue;
                        };
                        let src = VideoSource::new(
                            opts.codec,
                            rates.get(i).copied().unwrap_or(opts.video_bitrate_bps),
                            opts.fps,
                            opts.keyframe_interval_s,
                        );
                        let src = if rid.is_empty() {
                            src
                        } else {
                            src.for_encoding(i)
                        };
                        video.push(VideoOut { out: o, src });
                    }
                }
                let audio = senders
                    .1
                    .and_then(|(sender, ssrc)| out(RtpCodecKind::Audio, sender, ssrc, ""));
                Role::Publisher(Box::new(Publisher {
                    synthetic,
                    audio_src: AudioSource::default(),
                    opts,
                    video,
                    audio,
                    next_video: None,
                    next_audio: None,
                    keyframe_requests: 0,
                    pending: Default::default(),
                    next_packet: None,
                    srtcp_in: None,
                }))
            }
            None => Role::Viewer(ViewerStats::new(Instant::now(), layer)),
        };
        Ok(Peer {
            srtp_in: None,
            inbox: Vec::new(),
            pc,
            socket,
            local,
            session_url,
            connected: false,
            closed: false,
            next_timeout: None,
            role,
        })
    }
}

impl Peer {
    /// The peer's socket is bound to `ip` (port 0) and offered as its host
    /// candidate: loopback for the load generator; the address that routes to
    /// the server for the cluster edge.
    fn prepare(
        publish: Option<&PublishOptions>,
        ip: std::net::IpAddr,
    ) -> Result<(RTCPeerConnection, UdpSocket, SocketAddr, Senders), String> {
        let simulcast = publish.is_some_and(|o| !o.rids().is_empty());
        let mut pc = build_pc(publish.map(|o| o.codec), simulcast)?;
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(err("bind"))?;
        std_socket.set_nonblocking(true).map_err(err("socket"))?;
        rxtime::enable(std_socket.as_raw_fd()).map_err(err("SO_TIMESTAMPNS"))?;
        let local = std_socket.local_addr().map_err(err("socket"))?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(err("candidate"))?;
        let init = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(err("candidate"))?;
        pc.add_local_candidate(init).map_err(err("candidate"))?;
        let mut senders = (None, None);
        match publish {
            Some(opts) => {
                let rids = opts.rids();
                let encodings: Vec<(u32, &str)> = if rids.is_empty() {
                    vec![(rand::random(), "")]
                } else {
                    rids.iter().map(|r| (rand::random(), *r)).collect()
                };
                senders.0 = Some((
                    pc.add_track(track(RtpCodecKind::Video, &encodings, opts.codec))
                        .map_err(err("video track"))?,
                    encodings.iter().map(|(s, _)| *s).collect(),
                ));
                if opts.audio {
                    let ssrc: u32 = rand::random();
                    senders.1 = Some((
                        pc.add_track(track(RtpCodecKind::Audio, &[(ssrc, "")], opts.codec))
                            .map_err(err("audio track"))?,
                        ssrc,
                    ));
                }
            }
            None => {
                for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
                    pc.add_transceiver_from_kind(
                        kind,
                        Some(RTCRtpTransceiverInit {
                            direction: RTCRtpTransceiverDirection::Recvonly,
                            streams: vec![],
                            send_encodings: vec![],
                        }),
                    )
                    .map_err(err("transceiver"))?;
                }
            }
        }
        Ok((pc, UdpSocket::from_std(std_socket), local, senders))
    }

    pub(crate) fn handle_datagram(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        arrived: Option<u64>,
    ) {
        if let Role::Publisher(p) = &mut self.role
            && is_srtcp(data)
        {
            p.on_rtcp(data);
        }
        if let Some(ctx) = self.srtp_in.as_mut()
            && is_srtp_rtp(data)
        {
            match ctx.decrypt_rtp(data) {
                Ok(plain) => {
                    let mut buf = &plain[..];
                    if let Ok(header) = rtc::rtp::Header::unmarshal(&mut buf) {
                        let mut end = plain.len();
                        if header.padding {
                            // RFC 3550 §5.1: the last octet counts the padding octets.
                            end = end.saturating_sub(usize::from(plain[end - 1]));
                        }
                        let start = header.marshal_size().min(end);
                        let payload = plain.freeze().slice(start..end);
                        self.inbox.push((header, payload, arrived));
                    }
                }
                Err(e) => log::debug!("loadtest peer {}: SRTP refused: {e}", self.local),
            }
            return;
        }
        let r = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        });
        if let Err(e) = r {
            log::debug!("loadtest peer {}: packet refused: {e}", self.local);
        }
    }

    pub(crate) fn flush(&mut self) {
        while let Some(msg) = self.pc.poll_write() {
            // A full socket buffer drops the datagram, as a network would.
            let _ = self.socket.send_to(&msg.message, msg.transport.peer_addr);
        }
    }

    /// Drains events, received media and outgoing datagrams after anything happened.
    pub(crate) fn service(&mut self, now: Instant, c: &Counters, latency: &mut Latencies) {
        self.flush();
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                match state {
                    RTCPeerConnectionState::Connected if !self.connected => {
                        self.connected = true;
                        match &mut self.role {
                            Role::Viewer(v) => {
                                v.connected_at = Some(now);
                                c.viewers_connected.fetch_add(1, Ordering::Relaxed);
                                self.srtp_in = self.pc.remote_srtp_keying().and_then(|k| {
                                    let provider = rtc::crypto::default_provider().ok()?;
                                    rtc::srtp::context::Context::new(
                                        &k.master_key,
                                        &k.master_salt,
                                        k.profile,
                                        Some(rtc::srtp::option::srtp_replay_protection(64)),
                                        None,
                                        provider.crypto(),
                                    )
                                    .ok()
                                });
                            }
                            Role::Publisher(p) => {
                                if p.synthetic {
                                    p.next_video = Some(now);
                                    p.next_audio = p.audio.as_ref().map(|_| now);
                                }
                                p.srtcp_in = self.pc.remote_srtp_keying().and_then(|k| {
                                    let provider = rtc::crypto::default_provider().ok()?;
                                    rtc::srtp::context::Context::new(
                                        &k.master_key,
                                        &k.master_salt,
                                        k.profile,
                                        None,
                                        Some(rtc::srtp::option::srtcp_replay_protection(64)),
                                        provider.crypto(),
                                    )
                                    .ok()
                                });
                                c.publisher_connected.store(true, Ordering::Release);
                            }
                        }
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                        if !self.closed =>
                    {
                        self.closed = true;
                        if let Role::Viewer(v) = &mut self.role {
                            v.failed = true;
                            c.viewers_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Role::Publisher(p) = &mut self.role
            && p.keyframe_requests > 0
        {
            c.keyframe_requests
                .fetch_add(p.keyframe_requests, Ordering::Relaxed);
            p.keyframe_requests = 0;
        }
        let measuring = c.measuring.load(Ordering::Relaxed);
        if let Role::Viewer(v) = &mut self.role {
            for (header, payload, arrived) in self.inbox.drain(..) {
                let at = Arrival {
                    read: now,
                    socket_us: arrived,
                };
                on_viewer_rtp(v, &header, &payload, at, c, measuring, latency);
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            match (&mut self.role, message) {
                (Role::Viewer(v), RTCMessage::RtpPacket(_, packet)) => {
                    on_viewer_rtp(
                        v,
                        &packet.header,
                        &packet.payload,
                        Arrival {
                            read: now,
                            socket_us: None,
                        },
                        c,
                        measuring,
                        latency,
                    );
                }
                (Role::Publisher(p), RTCMessage::RtcpPacket(_, packets)) => {
                    for pkt in &packets {
                        if let Some(ssrcs) = keyframe_request_ssrcs(pkt.as_ref()) {
                            c.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                            p.request_keyframes(&ssrcs);
                        }
                    }
                }
                _ => {}
            }
        }
        self.flush();
        self.next_timeout = self.pc.poll_timeout();
    }

    /// The earliest instant this peer needs attention without input.
    pub(crate) fn due(&self) -> Option<Instant> {
        let media = match &self.role {
            Role::Publisher(p) => [
                p.next_video,
                p.next_audio,
                p.next_packet.filter(|_| !p.pending.is_empty()),
            ]
            .into_iter()
            .flatten()
            .min(),
            Role::Viewer(_) => None,
        };
        match (self.next_timeout, media) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn on_due(&mut self, now: Instant, c: &Counters, latency: &mut Latencies) {
        if self.next_timeout.is_some_and(|t| t <= now) {
            let _ = self.pc.handle_timeout(now);
        }
        if let Role::Publisher(p) = &mut self.role {
            send_media(&mut self.pc, p, now, c);
        }
        self.service(now, c, latency);
    }
}

/// What the cluster edge's relay (`crate::relay`) needs of a peer: its socket,
/// the RTP it decrypted, its state, and writing or asking for media by hand.
impl Peer {
    pub(crate) fn socket_mut(&mut self) -> &mut UdpSocket {
        &mut self.socket
    }

    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// Moves the RTP decrypted so far into `into` (emptied first): a relay
    /// takes the packets before [`Peer::service`] would count them. The two
    /// buffers swap, so neither allocates once warm.
    pub(crate) fn take_inbox(
        &mut self,
        into: &mut Vec<(rtc::rtp::Header, bytes::Bytes, Option<u64>)>,
    ) {
        into.clear();
        std::mem::swap(into, &mut self.inbox);
    }

    /// ICE and DTLS are done.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The connection failed or was closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closes the peer connection (DTLS close_notify goes out at once).
    pub fn close(&mut self) {
        let _ = self.pc.close();
        self.flush();
    }

    /// A relaying publisher ([`Offer::relayed`]) sends one RTP packet received
    /// on another leg as its own: Opus on its audio sender, anything else on its
    /// (first) video sender, with that sender's SSRC and payload type and the
    /// packet's own sequence number, timestamp and marker. Header extensions are
    /// dropped: their ids belong to the other leg.
    pub fn forward(
        &mut self,
        header: &rtc::rtp::Header,
        payload: &bytes::Bytes,
        now: Instant,
    ) -> bool {
        let Role::Publisher(p) = &mut self.role else {
            return false;
        };
        let out = if header.payload_type == PT_OPUS {
            p.audio.as_mut()
        } else {
            p.video.first_mut().map(|v| &mut v.out)
        };
        let Some(out) = out else { return false };
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: header.marker,
                payload_type: out.pt,
                sequence_number: header.sequence_number,
                timestamp: header.timestamp,
                ssrc: out.ssrc,
                ..Default::default()
            },
            payload: payload.clone(),
        };
        match self.pc.rtp_sender(out.sender) {
            Some(mut s) => s.write_rtp(now, packet).is_ok(),
            None => false,
        }
    }

    /// A viewer asks the sender of `media_ssrc` for a key frame (RTCP PLI).
    pub fn request_keyframe(&mut self, media_ssrc: u32, now: Instant) -> bool {
        let receivers: Vec<_> = self.pc.get_receivers().collect();
        for id in receivers {
            if let Some(mut r) = self.pc.rtp_receiver(id) {
                let pli = PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                };
                if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                    self.flush();
                    return true;
                }
            }
        }
        false
    }
}

/// Counts one RTP packet a viewer received: loss and order per track, first
/// keyframe, and (while measuring) the end-to-end latency from the sender's trailer.
fn on_viewer_rtp(
    v: &mut ViewerStats,
    header: &rtc::rtp::Header,
    payload: &[u8],
    at: Arrival,
    c: &Counters,
    measuring: bool,
    latency: &mut Latencies,
) {
    v.packets += 1;
    v.bytes += payload.len() as u64;
    c.rx_packets.fetch_add(1, Ordering::Relaxed);
    c.rx_bytes
        .fetch_add(payload.len() as u64, Ordering::Relaxed);
    let now = at.read;
    if v.first_packet_at.is_none() {
        v.first_packet_at = Some(now);
    }
    if header.payload_type == PT_OPUS {
        v.audio.on_packet(header.sequence_number);
    } else {
        v.video.on_packet(header.sequence_number);
        let starts_key = || match header.payload_type {
            PT_H264 => media::h264_starts_keyframe(payload),
            _ => media::vp8_starts_keyframe(payload),
        };
        if v.first_keyframe_at.is_none() && starts_key() {
            v.first_keyframe_at = Some(now);
        }
        on_viewer_layer(v, header, payload, at, measuring, starts_key);
    }
    if measuring && let Some(sent) = media::read_trailer(payload) {
        let _ = latency
            .read
            .record(media::us_of(at.read).saturating_sub(sent).max(1));
        if let Some(socket) = at.socket_us {
            let _ = latency.socket.record(socket.saturating_sub(sent).max(1));
        }
    }
}

/// Which encoding a viewer's video packet came from: counted per encoding, a
/// change of encoding checked (on a key frame, after a whole frame, with the RTP
/// timestamp moving forward), and a pending switch asked through `/layer` timed
/// to this packet if it is the first of the encoding asked for.
fn on_viewer_layer(
    v: &mut ViewerStats,
    header: &rtc::rtp::Header,
    payload: &[u8],
    at: Arrival,
    measuring: bool,
    starts_key: impl Fn() -> bool,
) {
    let enc = media::encoding_of(payload).unwrap_or(UNTAGGED);
    let l = &mut v.layers;
    l.packets[enc] += 1;
    if measuring {
        l.window_packets[enc] += 1;
    }
    if l.current != Some(enc) {
        if l.current.is_some() {
            l.changes += 1;
            if !starts_key() {
                l.change_not_on_keyframe += 1;
            }
            if !l.last_marker {
                l.change_mid_frame += 1;
            }
            if header.timestamp.wrapping_sub(l.last_ts) as i32 <= 0 {
                l.change_ts_not_forward += 1;
            }
        }
        l.current = Some(enc);
        if let Some(ctl) = &v.ctl {
            ctl.current.store(enc as u8, Ordering::Release);
        }
    }
    l.last_marker = header.marker;
    l.last_ts = header.timestamp;
    if let Some(ctl) = &v.ctl {
        let asked = ctl.asked_us.load(Ordering::Acquire);
        if asked != 0
            && usize::from(ctl.want.load(Ordering::Acquire)) == enc
            && ctl
                .asked_us
                .compare_exchange(asked, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let arrived = at.socket_us.unwrap_or_else(|| media::us_of(at.read));
            l.switch_us.push(arrived.saturating_sub(asked).max(1));
        }
    }
}

impl Publisher {
    /// An SRTCP datagram from the server: every PLI or FIR in it asks a key frame of
    /// the encoding whose SSRC it names (a PLI's media SSRC, a FIR entry's SSRC), as
    /// a browser's encoder does per simulcast stream. When the datagram cannot be
    /// read (no keys yet), a request in its clear first header asks every encoding.
    fn on_rtcp(&mut self, data: &[u8]) {
        let decrypted = self
            .srtcp_in
            .as_mut()
            .and_then(|c| c.decrypt_rtcp(data).ok());
        let Some(plain) = decrypted else {
            if is_keyframe_request(data) {
                self.keyframe_requests += 1;
                self.request_keyframes(&[]);
            }
            return;
        };
        let mut buf = &plain[..];
        let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut buf) else {
            return;
        };
        for pkt in &packets {
            if let Some(ssrcs) = keyframe_request_ssrcs(pkt.as_ref()) {
                self.keyframe_requests += 1;
                self.request_keyframes(&ssrcs);
            }
        }
    }

    /// Key frames on the encodings with these SSRCs; on every encoding when none
    /// of them is one of ours (an SSRC of 0, or a request without one).
    fn request_keyframes(&mut self, ssrcs: &[u32]) {
        let mut any = false;
        for v in &mut self.video {
            if ssrcs.contains(&v.out.ssrc) {
                v.src.request_keyframe();
                any = true;
            }
        }
        if !any {
            for v in &mut self.video {
                v.src.request_keyframe();
            }
        }
    }
}

/// The SSRCs a PLI or FIR asks key frames of (`None`: not a key-frame request).
fn keyframe_request_ssrcs(pkt: &dyn rtc::rtcp::packet::Packet) -> Option<Vec<u32>> {
    let any = pkt.as_any();
    if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
        return Some(vec![pli.media_ssrc]);
    }
    if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
        return Some(fir.fir.iter().map(|e| e.ssrc).collect());
    }
    None
}

/// An SRTCP datagram: RTP version 2 and a packet type in RTCP's 192–223 (RFC 5761 §4).
fn is_srtcp(data: &[u8]) -> bool {
    data.len() >= 8 && data[0] >> 6 == 2 && (192..=223).contains(&data[1])
}

/// An SRTP (not SRTCP, DTLS or STUN) datagram: RTP version 2 and a payload type
/// outside RTCP's 192–223 (RFC 5761 §4).
fn is_srtp_rtp(data: &[u8]) -> bool {
    data.len() >= 12 && data[0] >> 6 == 2 && !(192..=223).contains(&data[1])
}

/// A PLI (PT 206, FMT 1) or FIR (PT 206, FMT 4) heads this SRTCP datagram. The
/// first RTCP header of an SRTCP packet is sent in the clear (RFC 3711 §3.4).
///
/// webrtc-rs `rtc` 0.21.1 does not hand a sending peer the PLIs it receives (nor
/// any RTCP: see docs/PERFORMANCE.md), so the publisher reads the request from the
/// datagram itself, as an encoder's feedback path would: decrypted with its own
/// SRTCP context to learn the SSRC asked for ([`Publisher::on_rtcp`]), or, before
/// it has the keys, from this clear header (then every encoding answers).
pub fn is_keyframe_request(data: &[u8]) -> bool {
    data.len() >= 12 && data[0] >> 6 == 2 && data[1] == 206 && matches!(data[0] & 0x1f, 1 | 4)
}

fn write(
    pc: &mut RTCPeerConnection,
    out: &mut Outgoing,
    chunk: media::Chunk,
    ts: u32,
    now: Instant,
) -> bool {
    // Stamp the send time now (a paced packet waited after it was made).
    let mut payload = BytesMut::from(&chunk.payload[..]);
    let n = payload.len();
    if media::read_trailer(&payload).is_some() {
        payload[n - 8..].copy_from_slice(&media::now_us().to_be_bytes());
    }
    let mut header = rtc::rtp::header::Header {
        version: 2,
        marker: chunk.marker,
        payload_type: out.pt,
        sequence_number: out.seq,
        timestamp: ts,
        ssrc: out.ssrc,
        ..Default::default()
    };
    if !out.exts.is_empty() && *out.exts_until.get_or_insert(now + RID_EXTENSION_FOR) > now {
        header.extension = true;
        header.extension_profile = rtc::rtp::header::EXTENSION_PROFILE_ONE_BYTE;
        header.extensions = out.exts.clone();
    }
    let packet = rtc::rtp::Packet {
        header,
        payload: payload.freeze(),
    };
    out.seq = out.seq.wrapping_add(1);
    match pc.rtp_sender(out.sender) {
        Some(mut s) => s.write_rtp(now, packet).is_ok(),
        None => false,
    }
}

fn send_media(pc: &mut RTCPeerConnection, p: &mut Publisher, now: Instant, c: &Counters) {
    let frame_interval = Duration::from_secs_f64(1.0 / p.opts.fps.max(1) as f64);
    while let Some(at) = p.next_video.filter(|t| *t <= now) {
        // Every encoding's frame of this instant, lowest first.
        for (i, v) in p.video.iter_mut().enumerate() {
            let (chunks, key) = v.src.next_frame(0);
            if key {
                c.keyframes_sent.fetch_add(1, Ordering::Relaxed);
            }
            for chunk in chunks {
                p.pending.push_back((i, chunk, v.out.ts));
            }
            v.out.ts = v.out.ts.wrapping_add(v.src.ts_step());
            if p.next_packet.is_none_or(|t| t < at) {
                p.next_packet = Some(at);
            }
        }
        // Catch up after a stall rather than bursting every missed frame.
        let next = at + frame_interval;
        p.next_video = Some(if next + frame_interval < now {
            now
        } else {
            next
        });
    }
    let rate = p.opts.pacing_factor * p.opts.encoding_rates().iter().sum::<u64>() as f64;
    while let Some(at) = p.next_packet.filter(|t| *t <= now) {
        let Some((i, chunk, ts)) = p.pending.pop_front() else {
            break;
        };
        let Some(out) = p.video.get_mut(i).map(|v| &mut v.out) else {
            continue;
        };
        let n = chunk.payload.len() as u64;
        if write(pc, out, chunk, ts, now) {
            c.tx_packets.fetch_add(1, Ordering::Relaxed);
            c.tx_bytes.fetch_add(n, Ordering::Relaxed);
        }
        let gap = if rate > 0.0 {
            Duration::from_secs_f64((n + 40) as f64 * 8.0 / rate)
        } else {
            Duration::ZERO
        };
        p.next_packet = Some(at + gap);
    }
    while let Some(at) = p.next_audio.filter(|t| *t <= now) {
        if let Some(out) = p.audio.as_mut() {
            let chunk = p.audio_src.next_packet(0);
            let n = chunk.payload.len() as u64;
            let ts = out.ts;
            if write(pc, out, chunk, ts, now) {
                c.tx_packets.fetch_add(1, Ordering::Relaxed);
                c.tx_bytes.fetch_add(n, Ordering::Relaxed);
            }
            out.ts = out.ts.wrapping_add(AudioSource::TS_STEP);
        }
        let ptime = Duration::from_millis(AudioSource::PTIME_MS);
        let next = at + ptime;
        p.next_audio = Some(if next + ptime < now { now } else { next });
    }
}

/// When a viewer got a packet: when its thread read it, and when the kernel put it
/// in the socket (µs since [`media::base`]; see [`rxtime`]).
#[derive(Clone, Copy)]
struct Arrival {
    read: Instant,
    socket_us: Option<u64>,
}

/// Publisher send → viewer, in µs: to the viewer's read, and to its socket.
pub struct Latencies {
    pub read: Histogram<u64>,
    pub socket: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Self {
        Latencies {
            read: new_histogram(),
            socket: new_histogram(),
        }
    }

    pub fn add(&mut self, other: &Latencies) {
        let _ = self.read.add(&other.read);
        let _ = self.socket.add(&other.socket);
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

/// What a driver hands back when it stops.
pub struct DriverResult {
    pub viewers: Vec<ViewerStats>,
    pub latency: Latencies,
    pub session_urls: Vec<String>,
}

const WAKER: Token = Token(usize::MAX);

/// A thread running many peers on one poll loop.
pub struct Driver {
    tx: mpsc::Sender<Peer>,
    waker: Arc<Waker>,
    join: Option<JoinHandle<DriverResult>>,
}

impl Driver {
    pub fn spawn(name: &str, counters: Arc<Counters>) -> std::io::Result<Driver> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let join = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(poll, rx, counters))?;
        Ok(Driver {
            tx,
            waker,
            join: Some(join),
        })
    }

    /// Hands a connected-to-be peer to this driver's thread.
    pub fn add(&self, peer: Peer) {
        if self.tx.send(peer).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Wakes the thread so it sees the stop flag.
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    /// Waits for the thread after the stop flag was set.
    pub fn join(mut self) -> DriverResult {
        let _ = self.waker.wake();
        self.join
            .take()
            .and_then(|j| j.join().ok())
            .unwrap_or_else(|| DriverResult {
                viewers: Vec::new(),
                latency: Latencies::new(),
                session_urls: Vec::new(),
            })
    }
}

fn run(mut poll: Poll, rx: mpsc::Receiver<Peer>, c: Arc<Counters>) -> DriverResult {
    let mut peers: HashMap<usize, Peer> = HashMap::new();
    let mut next_token = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 2048];
    let mut latency = Latencies::new();
    // Kernel stamps are wall-clock µs; trailers count µs since media::base().
    let wall_base = rxtime::wall_us_at(media::base());
    let mut due: Vec<usize> = Vec::new();
    while !c.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let mut deadline = now + Duration::from_millis(50);
        for p in peers.values() {
            if let Some(t) = p.due()
                && t < deadline
            {
                deadline = t;
            }
        }
        let wait = deadline.saturating_duration_since(now);
        if poll.poll(&mut events, Some(wait)).is_err() {
            continue;
        }
        for ev in events.iter() {
            if ev.token() == WAKER {
                while let Ok(mut peer) = rx.try_recv() {
                    let token = next_token;
                    next_token += 1;
                    if poll
                        .registry()
                        .register(&mut peer.socket, Token(token), Interest::READABLE)
                        .is_ok()
                    {
                        peer.service(Instant::now(), &c, &mut latency);
                        peers.insert(token, peer);
                    }
                }
                continue;
            }
            let Some(peer) = peers.get_mut(&ev.token().0) else {
                continue;
            };
            let now = Instant::now();
            let mut got = false;
            let fd = peer.socket.as_raw_fd();
            while let Ok((n, from, stamp)) = rxtime::recv(fd, &mut buf) {
                let Some(from) = from else { continue };
                let arrived = stamp.map(|t| t.saturating_sub(wall_base));
                peer.handle_datagram(from, &buf[..n], now, arrived);
                got = true;
            }
            if got {
                // Read once the socket is drained: every packet in the inbox reached
                // its socket before this instant, so no latency to the read is
                // shorter than the same packet's latency to the socket.
                peer.service(Instant::now(), &c, &mut latency);
            }
        }
        let now = Instant::now();
        due.clear();
        due.extend(
            peers
                .iter()
                .filter(|(_, p)| p.due().is_some_and(|t| t <= now))
                .map(|(k, _)| *k),
        );
        for k in &due {
            if let Some(p) = peers.get_mut(k) {
                p.on_due(now, &c, &mut latency);
            }
        }
    }
    let mut viewers = Vec::new();
    let mut session_urls = Vec::new();
    for (_, mut p) in peers {
        let _ = p.pc.close();
        p.flush();
        session_urls.push(p.session_url.clone());
        if let Role::Viewer(v) = p.role {
            viewers.push(v);
        }
    }
    DriverResult {
        viewers,
        latency,
        session_urls,
    }
}
