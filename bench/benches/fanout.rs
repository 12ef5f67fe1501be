//! Fan-out of one RTP packet to 1,000 viewers as the SFU does it per viewer:
//! rewrite SSRC/PT, marshal, SRTP-protect into a reused send slot (`tandem_direct`,
//! the worker's path), against webrtc-rs' allocating SRTP context and against real
//! webrtc-rs viewer peer connections (`write_rtp`, the path before the direct one).

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rtc::peer_connection::transport::RTCSrtpKeying;
use rtc::rtp::{Packet, header::Header};
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use tandem_media::srtp::{SrtpIndex, SrtpSender};

const VIEWERS: usize = 1000;
const QUEUE: usize = 512;

struct Viewer {
    ctx: Context,
    ssrc: u32,
    pt: u8,
    queue: VecDeque<BytesMut>,
}

fn viewers(profile: ProtectionProfile) -> Vec<Viewer> {
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    (0..VIEWERS)
        .map(|i| {
            let key: Vec<u8> = (0..profile.key_len()).map(|j| (i + j) as u8).collect();
            let salt: Vec<u8> = (0..profile.salt_len()).map(|j| (i * 7 + j) as u8).collect();
            Viewer {
                ctx: Context::new(&key, &salt, profile, None, None, provider.crypto())
                    .expect("SRTP context"),
                ssrc: 0x1000_0000 + i as u32,
                pt: 96 + (i % 2) as u8,
                queue: VecDeque::with_capacity(QUEUE),
            }
        })
        .collect()
}

fn packet(size: usize) -> Packet {
    Packet {
        header: Header {
            version: 2,
            marker: false,
            payload_type: 96,
            sequence_number: 4242,
            timestamp: 90_000,
            ssrc: 0xdead_beef,
            ..Default::default()
        },
        payload: Bytes::from(vec![0x5a; size]),
    }
}

/// One packet to every viewer; returns bytes queued.
fn fan_out(p: &Packet, viewers: &mut [Viewer], encrypt: bool) -> usize {
    let mut bytes = 0;
    for v in viewers.iter_mut() {
        let mut out = p.clone();
        out.header.ssrc = v.ssrc;
        out.header.payload_type = v.pt;
        let raw = out.marshal().expect("marshal");
        let wire = if encrypt {
            v.ctx.encrypt_rtp(&raw).expect("protect")
        } else {
            BytesMut::from(&raw[..])
        };
        bytes += wire.len();
        if v.queue.len() == QUEUE {
            v.queue.pop_front();
        }
        v.queue.push_back(wire);
    }
    bytes
}

/// The worker's path: one header rewritten in place per viewer, protected straight
/// into one of 64 reused datagram slots (as `SendBatch` does between flushes).
fn fan_out_direct(
    p: &Packet,
    viewers: &mut [(SrtpSender, SrtpIndex, u32)],
    slots: &mut [BytesMut],
) -> usize {
    let mut bytes = 0;
    let mut header = p.header.clone();
    for (i, (sender, index, ssrc)) in viewers.iter_mut().enumerate() {
        header.ssrc = *ssrc;
        header.payload_type = 96 + (i % 2) as u8;
        let slot = &mut slots[i % slots.len()];
        slot.clear();
        sender
            .protect(index, &header, &p.payload, slot)
            .expect("protect");
        bytes += slot.len();
    }
    bytes
}

fn direct_viewers(profile: ProtectionProfile) -> Vec<(SrtpSender, SrtpIndex, u32)> {
    (0..VIEWERS)
        .map(|i| {
            let keying = RTCSrtpKeying {
                profile,
                master_key: (0..profile.key_len()).map(|j| (i + j) as u8).collect(),
                master_salt: (0..profile.salt_len()).map(|j| (i * 7 + j) as u8).collect(),
            };
            (
                SrtpSender::new(&keying).expect("SRTP sender"),
                SrtpIndex::default(),
                0x1000_0000 + i as u32,
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_1000_viewers");
    g.throughput(Throughput::Elements(VIEWERS as u64));
    for size in [1100usize, 160] {
        let mut p = packet(size);
        let mut direct = direct_viewers(ProtectionProfile::AeadAes128Gcm);
        let mut slots: Vec<BytesMut> = (0..64).map(|_| BytesMut::with_capacity(1500)).collect();
        g.bench_with_input(
            BenchmarkId::new("tandem_direct_aes128gcm", size),
            &size,
            |b, _| {
                b.iter(|| {
                    p.header.sequence_number = p.header.sequence_number.wrapping_add(1);
                    black_box(fan_out_direct(&p, &mut direct, &mut slots))
                })
            },
        );
        let mut gcm = viewers(ProtectionProfile::AeadAes128Gcm);
        g.bench_with_input(BenchmarkId::new("aes128gcm", size), &size, |b, _| {
            b.iter(|| {
                p.header.sequence_number = p.header.sequence_number.wrapping_add(1);
                black_box(fan_out(&p, &mut gcm, true))
            })
        });
        let mut cm = viewers(ProtectionProfile::Aes128CmHmacSha1_80);
        g.bench_with_input(BenchmarkId::new("aes128cm_sha1_80", size), &size, |b, _| {
            b.iter(|| {
                p.header.sequence_number = p.header.sequence_number.wrapping_add(1);
                black_box(fan_out(&p, &mut cm, true))
            })
        });
        let mut plain = viewers(ProtectionProfile::AeadAes128Gcm);
        g.bench_with_input(BenchmarkId::new("no_srtp", size), &size, |b, _| {
            b.iter(|| {
                p.header.sequence_number = p.header.sequence_number.wrapping_add(1);
                black_box(fan_out(&p, &mut plain, false))
            })
        });
    }
    g.finish();

    // The real path: `RTCRtpSender::write_rtp` + `poll_write` on tandem-shaped viewer
    // sessions (interceptors, SRTP, stats), connected in memory. 100 viewers (a
    // thousand in-memory DTLS handshakes would dominate the bench's setup time).
    const RTC_VIEWERS: usize = 100;
    let mut pcs: Vec<_> = (0..RTC_VIEWERS)
        .map(|i| tandem_bench::connected_viewer(0x2000_0000 + i as u32))
        .collect();
    let mut g = c.benchmark_group("fanout_rtc_write_rtp");
    g.throughput(Throughput::Elements(RTC_VIEWERS as u64));
    let mut p = packet(1100);
    g.bench_function(BenchmarkId::new("100_viewers", 1100), |b| {
        b.iter(|| {
            p.header.sequence_number = p.header.sequence_number.wrapping_add(1);
            let now = std::time::Instant::now();
            let mut bytes = 0;
            for (i, (pc, _, sender)) in pcs.iter_mut().enumerate() {
                let mut out = p.clone();
                out.header.ssrc = 0x2000_0000 + i as u32;
                if let Some(mut s) = pc.rtp_sender(*sender) {
                    let _ = s.write_rtp(now, out);
                }
                while let Some(m) = rtc::sansio::Protocol::poll_write(pc) {
                    bytes += m.message.len();
                }
            }
            black_box(bytes)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
