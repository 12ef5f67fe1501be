//! One WebRTC session (a publisher or a viewer): its sans-IO peer connection and
//! what the SFU tracks about it, publisher and viewer state apart ([`Role`]).
//! Built here, driven by the media core (`crate::core`) of the worker that owns it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::Registry;
use rtc::interceptor::{NackGeneratorBuilder, ReceiverReportBuilder, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use crate::admission::SessionSlot;
use crate::bwe::Bwe;
use crate::codec::VideoCodec;
use crate::error::MediaError;
use crate::kinds::{MediaKind, SessionKind, Transport};
use crate::layers::{MAX_ENCODINGS, NO_ENCODING, SwitchReason, ViewerLayerShared};
use crate::registry::StreamShared;
use crate::sdp::CheckedOffer;
use crate::simulcast::{Preference, Selector};
use crate::srtp::{SrtpIndex, SrtpSender};
use crate::tap::{TapCodec, Taps};
use crate::track::Continuity;

/// Payload-type map entries: not computed yet / the viewer cannot take this codec.
pub const PT_UNKNOWN: u8 = 255;
pub const PT_UNSUPPORTED: u8 = 254;

/// A viewer's outgoing track of one kind.
pub struct ViewerTrack {
    pub sender: RTCRtpSenderId,
    pub ssrc: u32,
    /// The codec the sender is bound to; its clock rate times this track's sender reports.
    pub bound_codec: RTCRtpCodec,
    /// Publisher payload type → this viewer's payload type, valid for `epoch`.
    pub pt_map: [u8; 128],
    pub epoch: u32,
    /// Where this SSRC's SRTP packet index (and rollover counter) stands.
    pub srtp_index: SrtpIndex,
    /// What the next sender report says (RFC 3550 §6.4.1).
    pub report: SenderReportState,
}

/// A viewer track's sending statistics, for the sender reports the worker writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct SenderReportState {
    pub packets: u32,
    pub octets: u32,
    pub last_rtp_timestamp: u32,
    pub last_sent_at: Option<Instant>,
}

/// One video encoding a publisher sends (the only one without simulcast).
pub struct PublisherEncoding {
    pub ssrc: u32,
    pub receiver: RTCRtpReceiverId,
    /// Received payload bytes, turned into the encoding's rate by the tick.
    pub rate: RateMeter,
    pub last_packet: Instant,
    pub keyframes: crate::feedback::KeyframeThrottle,
}

pub struct Session {
    pub key: u64,
    pub id: Arc<str>,
    pub stream: Arc<StreamShared>,
    pub pc: RTCPeerConnection,
    /// The client's offer as last applied (ICE restarts rewrite its credentials).
    pub remote_offer: String,
    pub local_ufrag: String,
    /// Addresses (and transport) this session's packets come from.
    pub addrs: Vec<(SocketAddr, Transport)>,
    pub created: Instant,
    pub last_rx: Instant,
    pub next_timeout: Option<Instant>,
    pub connected: bool,
    pub role: Role,
    /// The session's place in the admission counts (sessions per token, per user,
    /// in all): given back when the session is dropped, whatever ended it.
    pub(crate) _slot: SessionSlot,
}

impl Session {
    pub fn kind(&self) -> SessionKind {
        match self.role {
            Role::Publisher(_) => SessionKind::Publisher,
            Role::Viewer(_) => SessionKind::Viewer,
        }
    }
}

/// What a session does for its stream, and the state only that side needs.
// The viewer's state is read for every packet of the fan-out, so it stays inline
// (no pointer to follow per viewer); sessions live in a map, one per peer, so the
// bytes a publisher leaves unused cost nothing per packet.
#[allow(clippy::large_enum_variant)]
pub enum Role {
    Publisher(Publisher),
    Viewer(Viewer),
}

/// A publisher: its incoming tracks and the stream numbering it writes.
pub struct Publisher {
    /// Its incoming tracks' kinds, by track id (video encodings: `encodings`).
    pub tracks: HashMap<String, MediaKind>,
    /// Video encodings by index (the rid's place in the offer; 0 without simulcast).
    pub encodings: [Option<PublisherEncoding>; MAX_ENCODINGS],
    /// The video codec by the publisher's payload type (key-frame detection).
    pub video_codecs: [Option<VideoCodec>; 128],
    /// This publisher's numbering mapped to the stream's (handed on at
    /// reconnect): audio, then video per encoding.
    pub continuity: [Continuity; 1 + MAX_ENCODINGS],
    /// The stream's publisher generation (payload types are cached per epoch).
    pub epoch: u32,
    pub keyframes: crate::feedback::KeyframeThrottle,
    /// Received payload bytes, turned into the stream's `bitrate_bps` by the tick.
    pub rate: RateMeter,
    /// The stream's taps (recorder, restream feed), as of `tap_generation` of
    /// the registry.
    pub tap: Option<Taps>,
    pub tap_generation: u64,
    /// The codecs of the tapped tracks (audio, video), as opened: told to a tap
    /// that is added while the publisher is on.
    pub tap_codecs: [Option<Vec<TapCodec>>; 2],
    /// The video encoding the tap prefers (with simulcast: `f` if offered,
    /// else the last rid; browsers list them low to high).
    pub tap_encoding: u8,
    /// The video encoding the tap gets now (`None` before the first video
    /// packet). With simulcast a browser opens its top layer only once its
    /// bandwidth estimate allows (Chromium: `f` seconds after `q` and `h`, or
    /// never on a narrow link), so the tap starts on whichever layer comes
    /// first and moves up, at a key frame, to the best layer up to
    /// `tap_encoding` (down when its layer stops).
    pub tap_layer: Option<u8>,
    /// The tapped video in one numbering across those layer changes (each
    /// encoding has its own): a tap sees one continuous track.
    pub tap_video: Continuity,
}

/// A publisher's received bytes and the window they are measured over: plain
/// counters on the publisher's own worker (one addition per packet), published
/// to the stream as a rate once per window.
pub struct RateMeter {
    pub bytes: u64,
    window_bytes: u64,
    window_start: Instant,
}

impl RateMeter {
    pub fn new(now: Instant) -> Self {
        Self {
            bytes: 0,
            window_bytes: 0,
            window_start: now,
        }
    }

    /// The rate over the window just closed, in bits per second, once `window`
    /// has passed since the last one; `None` before.
    pub fn roll(&mut self, now: Instant, window: std::time::Duration) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < window {
            return None;
        }
        let bits = self.bytes.saturating_sub(self.window_bytes) * 8;
        self.window_bytes = self.bytes;
        self.window_start = now;
        Some(bits * 1000 / (elapsed.as_millis() as u64).max(1))
    }
}

/// A viewer's video as simulcast sees it: the encoding forwarded, the one
/// being switched to, and how the encoding's numbering maps to the viewer's
/// single SSRC (continuous across switches).
pub struct ViewerVideo {
    /// The encoding forwarded ([`NO_ENCODING`] before the first packet).
    pub current: u8,
    /// The encoding wanted; a switch happens at its next key frame.
    pub target: u8,
    /// Why and since when the switch to `target` is waiting.
    pub switch: Option<(Instant, SwitchReason)>,
    pub pref: Preference,
    /// Viewer sequence = encoding sequence + `seq_offset` (and timestamps alike).
    pub seq_offset: u16,
    pub ts_offset: u32,
    /// The viewer sequence of the first packet of the current mapping, since
    /// the last switch (`None`: no switch yet, every packet sent is under it).
    pub since: Option<u16>,
    /// The mapping before the last switch, for NACKs of packets sent under it:
    /// (encoding, seq offset, ts offset, its first viewer sequence, the first
    /// viewer sequence after the switch). Older packets are not answered: their
    /// encoding is no longer known, and a packet of another would corrupt the
    /// picture.
    pub before: Option<(u8, u16, u32, u16, u16)>,
    /// The last packet sent: viewer sequence and timestamp, and when.
    pub last_out: Option<(u16, u32, Instant)>,
    /// A joiner's first video packet brings the cached packets since the last
    /// key frame first (`core::forward::catch_up`).
    pub catch_up: bool,
    pub selector: Selector,
    /// When the encoding is next reconsidered.
    pub next_decision: Instant,
    /// With simulcast and a negotiated `transport-cc`: the bandwidth estimate.
    pub bwe: Option<Box<Bwe>>,
    /// The `transport-cc` extension id of the viewer's answer (0: none).
    pub twcc_ext: u8,
    /// What the HTTP side reads.
    pub shared: Arc<ViewerLayerShared>,
    /// The worker this viewer lives on (its place in `StreamShared::watching`).
    pub worker: usize,
}

impl ViewerVideo {
    pub fn new(now: Instant, worker: usize, twcc_ext: u8, shared: Arc<ViewerLayerShared>) -> Self {
        Self {
            current: NO_ENCODING,
            target: NO_ENCODING,
            switch: None,
            pref: Preference::default(),
            seq_offset: 0,
            ts_offset: 0,
            since: None,
            before: None,
            last_out: None,
            catch_up: false,
            selector: Selector::new(now),
            next_decision: now,
            bwe: None,
            twcc_ext,
            shared,
            worker,
        }
    }

    /// The encodings this viewer receives or waits for.
    pub fn watching(&self) -> [bool; MAX_ENCODINGS] {
        std::array::from_fn(|e| self.current as usize == e || self.target as usize == e)
    }
}

/// A viewer: its outgoing tracks and where forwarded RTP goes.
pub struct Viewer {
    pub tracks: [Option<ViewerTrack>; 2],
    pub video: ViewerVideo,
    /// In the stream's fan-out on this worker.
    pub forwarding: bool,
    /// Once DTLS is done: protects forwarded RTP (see `crate::srtp`).
    pub srtp: Option<SrtpSender>,
    /// Where forwarded RTP goes (the selected ICE pair), refreshed whenever the
    /// session is serviced.
    pub media_dest: Option<(SocketAddr, Transport)>,
    pub next_sender_report: Instant,
}

/// The transport-wide congestion control header extension (draft-holmer-rmcat).
pub const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// The id an SDP gives `uri` in an `a=extmap` line of its video section (0: none).
pub fn video_extmap_id(sdp: &str, uri: &str) -> u8 {
    let mut in_video = false;
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            in_video = m.starts_with("video");
        } else if in_video && let Some(rest) = line.strip_prefix("a=extmap:") {
            let mut parts = rest.split_whitespace();
            let id = parts.next().unwrap_or("").split('/').next().unwrap_or("");
            if parts.next() == Some(uri) {
                return id.parse().unwrap_or(0);
            }
        }
    }
    0
}

/// The RTP/RTCP pipeline of a session.
///
/// Publishers: NACKs for ingest loss, receiver reports, TWCC feedback so the
/// publisher's encoder adapts. Viewers: none but the feedback tap. Their forwarded
/// RTP bypasses the pipeline (`crate::srtp`), so the worker writes their sender
/// reports, and answers their NACKs from one retransmission cache per track shared
/// by every viewer, not from a per-viewer copy of every packet.
fn interceptors(kind: SessionKind, engine: &mut MediaEngine) -> Result<Registry, MediaError> {
    let internal =
        |e: rtc::shared::error::Error| MediaError::Internal(format!("interceptors: {e}"));
    for parameter in ["", "pli"] {
        engine.register_feedback(
            RTCPFeedback {
                typ: "nack".into(),
                parameter: parameter.into(),
            },
            RtpCodecKind::Video,
        );
    }
    Ok(match kind {
        SessionKind::Publisher => {
            configure_simulcast_extension_headers(engine).map_err(internal)?;
            let registry = Registry::new()
                .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
                .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
            configure_twcc_receiver_only(registry, engine).map_err(internal)?
        }
        SessionKind::Viewer => {
            // Negotiated so that a viewer of a simulcast stream reports what
            // arrives (TWCC); the SFU stamps the sequence numbers itself
            // (`crate::bwe`), so no sender interceptor is configured.
            engine
                .register_header_extension(
                    rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                        uri: TRANSPORT_CC_URI.to_owned(),
                    },
                    RtpCodecKind::Video,
                    None,
                )
                .map_err(internal)?;
            engine.register_feedback(
                RTCPFeedback {
                    typ: "transport-cc".into(),
                    parameter: String::new(),
                },
                RtpCodecKind::Video,
            );
            Registry::new()
                // Marks inbound PLI/FIR/NACK for the application.
                .with(
                    Slot::from(14_000),
                    crate::feedback::ViewerFeedback::default(),
                )
        }
    })
}

/// The codecs tandem negotiates. Payload types only matter for offers we would
/// create; as answerer the client's numbers are used. Publishers may send RTX
/// (the stack restores the original packets); viewers get plain retransmissions
/// (RFC 4585) from the shared per-track cache, so RTX is not offered to them.
pub fn register_codecs(engine: &mut MediaEngine, kind: SessionKind) -> Result<(), MediaError> {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_string(),
        parameter: parameter.to_string(),
    };
    let video_fb = vec![fb("ccm", "fir")];
    let codec =
        |mime: &str, clock: u32, channels: u16, fmtp: &str, pt: u8, feedback: Vec<RTCPFeedback>| {
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.to_string(),
                    clock_rate: clock,
                    channels,
                    sdp_fmtp_line: fmtp.to_string(),
                    rtcp_feedback: feedback,
                },
                payload_type: pt,
            }
        };
    let internal =
        |e: rtc::shared::error::Error| MediaError::Internal(format!("codec registration: {e}"));
    engine
        .register_codec(
            codec(
                "audio/opus",
                48000,
                2,
                "minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1",
                111,
                vec![],
            ),
            RtpCodecKind::Audio,
        )
        .map_err(internal)?;
    let video: &[(&str, &str, u8)] = &[
        ("video/VP8", "", 96),
        ("video/VP9", "profile-id=0", 98),
        ("video/VP9", "profile-id=2", 100),
        (
            "video/H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
            102,
        ),
        (
            "video/H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            104,
        ),
        (
            "video/H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
            106,
        ),
        (
            "video/H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
            108,
        ),
        ("video/AV1", "", 45),
    ];
    for &(mime, fmtp, pt) in video {
        engine
            .register_codec(
                codec(mime, 90000, 0, fmtp, pt, video_fb.clone()),
                RtpCodecKind::Video,
            )
            .map_err(internal)?;
        if kind == SessionKind::Publisher {
            engine
                .register_codec(
                    codec("video/rtx", 90000, 0, &format!("apt={pt}"), pt + 1, vec![]),
                    RtpCodecKind::Video,
                )
                .map_err(internal)?;
        }
    }
    Ok(())
}

fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
    })
}

/// How well a viewer's negotiated codec fits what the publisher sends (0 = not at all).
pub fn codec_fit(publisher: &RTCRtpCodec, viewer: &RTCRtpCodec) -> u8 {
    if !publisher.mime_type.eq_ignore_ascii_case(&viewer.mime_type) {
        return 0;
    }
    let (p, v) = (&publisher.sdp_fmtp_line, &viewer.sdp_fmtp_line);
    if publisher.mime_type.eq_ignore_ascii_case("video/h264") {
        let pm = |f: &str| {
            fmtp_param(f, "packetization-mode")
                .unwrap_or("0")
                .to_string()
        };
        if pm(p) != pm(v) {
            return 0;
        }
        let plid = |f: &str| {
            fmtp_param(f, "profile-level-id")
                .unwrap_or("42001f")
                .to_ascii_lowercase()
        };
        let (pp, vp) = (plid(p), plid(v));
        if pp == vp {
            3
        } else if pp.get(..4) == vp.get(..4) {
            2
        } else {
            1
        }
    } else if publisher.mime_type.eq_ignore_ascii_case("video/vp9") {
        let profile = |f: &str| fmtp_param(f, "profile-id").unwrap_or("0").to_string();
        if profile(p) == profile(v) { 3 } else { 0 }
    } else {
        3
    }
}

/// Finds the viewer's payload type for a publisher codec.
pub fn map_payload_type(publisher: &RTCRtpCodec, viewer_codecs: &[RTCRtpCodecParameters]) -> u8 {
    viewer_codecs
        .iter()
        .filter(|c| !c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx"))
        .map(|c| (codec_fit(publisher, &c.rtp_codec), c.payload_type))
        .filter(|(fit, _)| *fit > 0)
        .max_by_key(|(fit, _)| *fit)
        .map(|(_, pt)| pt)
        .unwrap_or(PT_UNSUPPORTED)
}

pub struct BuildParams<'a> {
    pub kind: SessionKind,
    pub offer_sdp: &'a str,
    pub offer: &'a CheckedOffer,
    pub stream_name: &'a str,
    pub candidates: &'a [(SocketAddr, Transport)],
    /// The publisher's codecs if one is live (viewers bind their tracks to them).
    pub publisher_codecs: &'a [RTCRtpCodecParameters],
    pub now: Instant,
}

pub struct Built {
    pub pc: RTCPeerConnection,
    pub answer: String,
    pub local_ufrag: String,
    pub viewer_tracks: [Option<ViewerTrack>; 2],
    /// The m-line index of the offer's (first) video section.
    pub video_media_id: Option<usize>,
    /// The `transport-cc` extension id the answer negotiated for video (0: none).
    pub twcc_ext: u8,
}

fn pc_error(what: &str) -> impl Fn(rtc::shared::error::Error) -> MediaError + '_ {
    move |e| MediaError::BadSdp(format!("{what}: {e}"))
}

fn default_codec(kind: MediaKind) -> RTCRtpCodec {
    match kind {
        MediaKind::Audio => RTCRtpCodec {
            mime_type: "audio/opus".into(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: vec![],
        },
        MediaKind::Video => RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
    }
}

/// The codec a viewer track should be bound with: the publisher's if one is live.
pub fn track_codec(kind: MediaKind, publisher_codecs: &[RTCRtpCodecParameters]) -> RTCRtpCodec {
    let prefix = match kind {
        MediaKind::Audio => "audio/",
        MediaKind::Video => "video/",
    };
    publisher_codecs
        .iter()
        .map(|c| &c.rtp_codec)
        .find(|c| {
            c.mime_type.to_ascii_lowercase().starts_with(prefix)
                && !c.mime_type.eq_ignore_ascii_case("video/rtx")
        })
        .cloned()
        .unwrap_or_else(|| default_codec(kind))
}

pub fn viewer_track(
    kind: MediaKind,
    stream_name: &str,
    ssrc: u32,
    codec: RTCRtpCodec,
) -> MediaStreamTrack {
    let (rtp_kind, id) = match kind {
        MediaKind::Audio => (RtpCodecKind::Audio, "audio"),
        MediaKind::Video => (RtpCodecKind::Video, "video"),
    };
    MediaStreamTrack::new(
        stream_name.to_string(),
        format!("{stream_name}-{id}"),
        id.to_string(),
        rtp_kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )
}

/// Builds the peer connection for an offer and produces the answer: ICE-lite,
/// DTLS server (setup:passive), host candidates on the shared media port.
pub fn build(params: BuildParams<'_>) -> Result<Built, MediaError> {
    let mut engine = MediaEngine::default();
    register_codecs(&mut engine, params.kind)?;
    let registry = interceptors(params.kind, &mut engine)?;
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_srtp_protection_profiles(vec![
            rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .build(params.now)
        .map_err(|e| MediaError::Internal(format!("peer connection: {e}")))?;

    let mut viewer_tracks: [Option<ViewerTrack>; 2] = [None, None];
    let mut seen = [false; 2];
    for media in params.offer.media.iter().filter(|m| !m.rejected) {
        let slot = media.kind.index();
        match params.kind {
            SessionKind::Viewer => {
                if seen[slot] {
                    continue;
                }
                seen[slot] = true;
                let ssrc: u32 = rand::random();
                let codec = track_codec(media.kind, params.publisher_codecs);
                let sender = pc
                    .add_track(viewer_track(
                        media.kind,
                        params.stream_name,
                        ssrc,
                        codec.clone(),
                    ))
                    .map_err(|e| MediaError::Internal(format!("add track: {e}")))?;
                viewer_tracks[slot] = Some(ViewerTrack {
                    sender,
                    ssrc,
                    bound_codec: codec,
                    pt_map: [PT_UNKNOWN; 128],
                    epoch: u32::MAX,
                    srtp_index: SrtpIndex::default(),
                    report: SenderReportState::default(),
                });
            }
            SessionKind::Publisher => {
                let kind = match media.kind {
                    MediaKind::Audio => RtpCodecKind::Audio,
                    MediaKind::Video => RtpCodecKind::Video,
                };
                pc.add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .map_err(|e| MediaError::Internal(format!("add transceiver: {e}")))?;
            }
        }
    }

    let offer =
        RTCSessionDescription::offer(params.offer_sdp.to_string()).map_err(pc_error("offer"))?;
    pc.set_remote_description(params.now, offer)
        .map_err(pc_error("offer rejected"))?;
    for &(addr, transport) in params.candidates {
        let tcp = transport == Transport::Tcp;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: if tcp { "tcp" } else { "udp" }.to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            tcp_type: if tcp {
                rtc::ice::tcp_type::TcpType::Passive
            } else {
                rtc::ice::tcp_type::TcpType::Unspecified
            },
        }
        .new_candidate_host()
        .map_err(|e| MediaError::Internal(format!("candidate: {e}")))?;
        let init = RTCIceCandidate::from(&candidate)
            .to_json()
            .map_err(|e| MediaError::Internal(format!("candidate: {e}")))?;
        pc.add_local_candidate(init)
            .map_err(|e| MediaError::Internal(format!("candidate: {e}")))?;
    }
    pc.add_local_candidate(RTCIceCandidateInit::default())
        .map_err(|e| MediaError::Internal(format!("end of candidates: {e}")))?;
    let answer = pc
        .create_answer(None)
        .map_err(|e| MediaError::NoCommonCodec(format!("cannot answer the offer: {e}")))?;
    pc.set_local_description(params.now, answer)
        .map_err(|e| MediaError::Internal(format!("local description: {e}")))?;
    let answer = pc
        .local_description()
        .map(|d| d.sdp)
        .ok_or_else(|| MediaError::Internal("no local description".into()))?;
    if !answer_has_media(&answer) {
        return Err(MediaError::NoCommonCodec(
            "no offered codec is one tandem forwards (opus, VP8, VP9, H264 packetization-mode=1, AV1)".into(),
        ));
    }
    let local_ufrag = crate::sdp::attribute(&answer, "ice-ufrag")
        .ok_or_else(|| MediaError::Internal("answer without ice-ufrag".into()))?
        .to_string();
    let video_media_id = params
        .offer
        .media
        .iter()
        .find(|m| m.kind == MediaKind::Video && !m.rejected)
        .map(|m| m.index);
    let twcc_ext = video_extmap_id(&answer, TRANSPORT_CC_URI);
    Ok(Built {
        pc,
        answer,
        local_ufrag,
        viewer_tracks,
        video_media_id,
        twcc_ext,
    })
}

/// True when at least one audio/video section of the answer is active.
fn answer_has_media(answer: &str) -> bool {
    let mut active = false;
    let mut in_av = false;
    let mut section_ok = false;
    for line in answer.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(m) = line.strip_prefix("m=") {
            if in_av && section_ok {
                active = true;
            }
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port = parts.next().unwrap_or("0");
            in_av = kind == "audio" || kind == "video";
            section_ok = port != "0";
        } else if in_av && line == "a=inactive" {
            section_ok = false;
        }
    }
    active || (in_av && section_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(mime: &str, fmtp: &str) -> RTCRtpCodec {
        RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: vec![],
        }
    }

    #[test]
    fn h264_keeps_profile_and_needs_packetization_mode() {
        let publisher = c("video/H264", "packetization-mode=1;profile-level-id=42e01f");
        let viewer = vec![
            RTCRtpCodecParameters {
                rtp_codec: c("video/H264", "packetization-mode=0;profile-level-id=42e01f"),
                payload_type: 100,
            },
            RTCRtpCodecParameters {
                rtp_codec: c("video/H264", "packetization-mode=1;profile-level-id=4d001f"),
                payload_type: 101,
            },
            RTCRtpCodecParameters {
                rtp_codec: c("video/H264", "packetization-mode=1;profile-level-id=42e01f"),
                payload_type: 102,
            },
            RTCRtpCodecParameters {
                rtp_codec: c("video/rtx", "apt=102"),
                payload_type: 103,
            },
        ];
        assert_eq!(map_payload_type(&publisher, &viewer), 102);
        assert_eq!(map_payload_type(&publisher, &viewer[..1]), PT_UNSUPPORTED);
    }

    #[test]
    fn vp8_maps_by_name() {
        let viewer = vec![RTCRtpCodecParameters {
            rtp_codec: c("video/vp8", ""),
            payload_type: 120,
        }];
        assert_eq!(map_payload_type(&c("video/VP8", ""), &viewer), 120);
        assert_eq!(
            map_payload_type(&c("video/AV1", ""), &viewer),
            PT_UNSUPPORTED
        );
    }

    #[test]
    fn answers_without_active_media_are_detected() {
        assert!(answer_has_media(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n"
        ));
        assert!(!answer_has_media(
            "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 0\r\n"
        ));
        assert!(!answer_has_media(
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=inactive\r\n"
        ));
    }
}
