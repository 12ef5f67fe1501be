//! Home of tandem's criterion benchmarks (`cargo bench -p tandem-bench`): fan-out,
//! NACK cache, room broadcast, clock estimator. The benchmarks live in `benches/`.
//!
//! [`connected_viewer`] builds a connected pair of webrtc-rs peer connections in memory
//! (an ICE-lite, DTLS-server answerer like tandem's viewer session, and a full-ICE
//! offerer like a browser), so a bench can drive the real per-viewer send path.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "video/VP8".into(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: "pli".into(),
            },
        ],
    }
}

fn engine() -> MediaEngine {
    let mut e = MediaEngine::default();
    e.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: vp8(),
            payload_type: 96,
        },
        RtpCodecKind::Video,
    )
    .expect("VP8");
    e
}

fn candidate(addr: SocketAddr) -> RTCIceCandidateInit {
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .expect("candidate");
    RTCIceCandidate::from(&c).to_json().expect("candidate")
}

fn deliver(
    from: &mut RTCPeerConnection,
    to: &mut RTCPeerConnection,
    to_addr: SocketAddr,
    now: Instant,
) -> bool {
    let mut any = false;
    while let Some(m) = from.poll_write() {
        any = true;
        let _ = to.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: to_addr,
                peer_addr: m.transport.local_addr,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(&m.message[..]),
        });
    }
    any
}

fn connected(pc: &mut RTCPeerConnection, flag: &mut bool) {
    while let Some(e) = pc.poll_event() {
        if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
            RTCPeerConnectionState::Connected,
        ) = e
        {
            *flag = true;
        }
    }
}

/// A viewer session as tandem builds it (ICE-lite, DTLS server, AES-GCM, default
/// interceptors, one VP8 track with `ssrc`), connected in memory to a client.
/// Returns the server-side peer connection and its sender.
pub fn connected_viewer(ssrc: u32) -> (RTCPeerConnection, RTCPeerConnectionClient, RTCRtpSenderId) {
    let server_addr: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
    let client_addr: SocketAddr = "127.0.0.1:6000".parse().expect("addr");
    let now = Instant::now();
    let mut client = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine())
        .with_interceptor_registry(Registry::new())
        .build(now)
        .expect("client");
    client
        .add_transceiver_from_kind(
            RtpCodecKind::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .expect("transceiver");
    client
        .add_local_candidate(candidate(client_addr))
        .expect("candidate");
    let offer = client.create_offer(None).expect("offer");
    client
        .set_local_description(now, offer.clone())
        .expect("local");

    let mut e = engine();
    let registry = register_default_interceptors(Registry::new(), &mut e).expect("interceptors");
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_srtp_protection_profiles(vec![
            rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        ])
        .build();
    let mut server = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(e)
        .with_interceptor_registry(registry)
        .build(now)
        .expect("server");
    let sender = server
        .add_track(MediaStreamTrack::new(
            "s".into(),
            "s-video".into(),
            "video".into(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: vp8(),
                ..Default::default()
            }],
        ))
        .expect("track");
    server
        .set_remote_description(now, RTCSessionDescription::offer(offer.sdp).expect("offer"))
        .expect("remote");
    server
        .add_local_candidate(candidate(server_addr))
        .expect("candidate");
    let answer = server.create_answer(None).expect("answer");
    server
        .set_local_description(now, answer.clone())
        .expect("local");
    client
        .set_remote_description(
            now,
            RTCSessionDescription::answer(answer.sdp).expect("answer"),
        )
        .expect("remote");

    let (mut up_c, mut up_s) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(up_c && up_s) {
        assert!(Instant::now() < deadline, "in-memory peers did not connect");
        let now = Instant::now();
        let a = deliver(&mut client, &mut server, server_addr, now);
        let b = deliver(&mut server, &mut client, client_addr, now);
        connected(&mut client, &mut up_c);
        connected(&mut server, &mut up_s);
        if !a && !b {
            let _ = client.handle_timeout(Instant::now() + Duration::from_millis(10));
            let _ = server.handle_timeout(Instant::now() + Duration::from_millis(10));
        }
        while client.poll_read().is_some() {}
        while server.poll_read().is_some() {}
    }
    (server, RTCPeerConnectionClient(client), sender)
}

/// The client end of [`connected_viewer`] (kept alive; unused by the benches).
pub struct RTCPeerConnectionClient(pub RTCPeerConnection);
