//! The NACK cache as the SFU uses it: webrtc-rs's NACK responder inside every viewer's
//! peer connection stores each sent packet (insert) and answers NACKs from it (lookup).

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, NackResponderBuilder, NackResponderInterceptor,
    Packet, RTCPFeedback, StreamInfo, TaggedPacket,
};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::rtp::header::Header;
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;

const SSRC: u32 = 0x1234_5678;

fn responder() -> NackResponderInterceptor {
    let mut r = NackResponderBuilder::new().with_size(1024).build();
    r.bind_local_stream(&StreamInfo {
        ssrc: SSRC,
        payload_type: 96,
        mime_type: "video/VP8".into(),
        clock_rate: 90_000,
        rtcp_feedback: vec![RTCPFeedback {
            typ: "nack".into(),
            parameter: String::new(),
        }],
        ..Default::default()
    });
    r
}

fn rtp(seq: u16, payload: &Bytes) -> TaggedPacket {
    TaggedPacket {
        now: Instant::now(),
        transport: TransportContext::default(),
        message: AttributedPacket::new(Packet::Rtp(rtc::rtp::Packet {
            header: Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                ssrc: SSRC,
                ..Default::default()
            },
            payload: payload.clone(),
        })),
    }
}

fn bench(c: &mut Criterion) {
    let payload = Bytes::from(vec![0u8; 1100]);
    let mut g = c.benchmark_group("nack_cache");
    g.throughput(Throughput::Elements(1));
    let mut r = responder();
    let mut seq = 0u16;
    g.bench_function("insert (write one packet)", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            r.handle_write(rtp(seq, &payload)).expect("write");
            black_box(r.poll_write());
        })
    });
    // Fill the cache, then answer NACKs for one packet (and for 17 via the bitmap).
    let mut r = responder();
    for s in 0..1024u16 {
        r.handle_write(rtp(s, &payload)).expect("write");
        while r.poll_write().is_some() {}
    }
    for (name, lost) in [
        ("lookup 1 (NACK → retransmit)", 0u16),
        ("lookup 17 (bitmap)", 0xffff),
    ] {
        let nack = |id: u16| TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc: SSRC,
                nacks: vec![NackPair {
                    packet_id: id,
                    lost_packets: lost,
                }],
            })])),
        };
        let mut id = 100u16;
        g.bench_function(name, |b| {
            b.iter(|| {
                id = 100 + (id + 37) % 800;
                r.handle_read(nack(id)).expect("read");
                while let Some(p) = r.poll_write() {
                    black_box(
                        p.message
                            .attributes
                            .iter()
                            .any(|a| matches!(a, Attribute::Retransmission)),
                    );
                }
                while r.poll_read().is_some() {}
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
