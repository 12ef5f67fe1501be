//! Simulcast in the media core, driven in memory: a publisher with three VP8
//! encodings (q, h, f), viewers that start, switch and are repaired. One
//! behaviour per test; what a viewer receives is decrypted and read back.

use super::*;
use crate::layers::{LayerRequest, NO_ENCODING, SwitchReason};
use rtc::rtp::Packet;

const SSRCS: [u32; 3] = [0xa0, 0xa1, 0xa2];

/// A key frame's first packet, a delta frame's first packet, and a packet
/// inside a frame: the VP8 payload descriptor and frame tag the SFU reads.
const KEY: &[u8] = &[0x10, 0x00, 0x00, 0x00];
const DELTA: &[u8] = &[0x10, 0x01, 0x00, 0x00];
const INNER: &[u8] = &[0x00, 0x00, 0x00, 0x00];

/// A bench whose publisher (key returned) sends three encodings.
fn simulcast_bench(out: &mut Collected) -> (Bench, u64) {
    let mut bench = Bench::new();
    bench.simulcast = true;
    let publisher = bench.session(SessionKind::Publisher, 0, out);
    assert_eq!(*bench.stream.rids(), ["q", "h", "f"]);
    for (e, ssrc) in SSRCS.iter().enumerate() {
        bench.core.open_track(
            publisher,
            MediaKind::Video,
            e as u8,
            *ssrc,
            90_000,
            bench.at(0),
        );
        // Sizes as their key frames would announce them: q < h < f.
        let w = 320 << e;
        bench.stream.encodings[e].width.store(w, Ordering::Relaxed);
        bench.stream.encodings[e]
            .height
            .store(w * 9 / 16, Ordering::Relaxed);
    }
    (bench, publisher)
}

/// Encoding `e`'s packet `seq` (timestamps as one frame per packet, per
/// encoding's own base: encodings do not share one).
fn packet(e: usize, seq: u16, payload: &'static [u8]) -> Packet {
    let mut p = rtp(seq, 1_000_000 * e as u32 + u32::from(seq) * 3000);
    p.header.ssrc = SSRCS[e];
    p.payload = Bytes::from_static(payload);
    p
}

fn send(
    bench: &mut Bench,
    publisher: u64,
    ms: u64,
    e: usize,
    seq: u16,
    payload: &'static [u8],
    out: &mut Collected,
) {
    bench.core.publisher_rtp(
        bench.at(ms),
        publisher,
        MediaKind::Video,
        packet(e, seq, payload),
        out,
    );
}

/// What the viewer got: (sequence, timestamp, payload's first two bytes).
fn got(viewer: &mut Viewer, out: &Collected) -> Vec<(u16, u32, [u8; 2])> {
    viewer
        .packets(out)
        .iter()
        .map(|p| {
            (
                p.header.sequence_number,
                p.header.timestamp,
                [p.payload[0], p.payload[1]],
            )
        })
        .collect()
}

/// A simulcast bench with one viewer that received f's key frame (100) and a
/// delta (101).
fn viewer_on_f(out: &mut Collected) -> (Bench, u64, Viewer) {
    let (mut bench, publisher) = simulcast_bench(out);
    let viewer = bench.viewer(1, Transport::Udp, out);
    send(&mut bench, publisher, 10, 2, 100, KEY, out);
    send(&mut bench, publisher, 20, 2, 101, DELTA, out);
    (bench, publisher, viewer)
}

/// Pins `viewer` to `rid` at `ms` through the layer extension's handle.
fn pin(bench: &mut Bench, viewer: &Viewer, rid: &str, ms: u64, out: &mut Collected) {
    let request = LayerRequest {
        rid: Some(rid.into()),
        ..Default::default()
    };
    bench
        .core
        .select_layer(bench.at(ms), viewer.key, request, out)
        .unwrap();
}

fn layer(bench: &Bench, viewer: &Viewer) -> (u8, u8) {
    bench.core.viewer_video(viewer.key).expect("a viewer")
}

#[test]
fn the_answer_receives_the_offered_encodings() {
    let mut out = Collected::default();
    let (bench, _) = simulcast_bench(&mut out);
    let answer = &bench.last_answer;
    // What Chromium needs to keep sending all three (RFC 8853 §5.3): the rids
    // received, in the offer's order, and the rid and mid extensions.
    for line in [
        "a=rid:q recv",
        "a=rid:h recv",
        "a=rid:f recv",
        "a=simulcast:recv q;h;f",
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "urn:ietf:params:rtp-hdrext:sdes:mid",
    ] {
        assert!(
            answer.contains(line),
            "no '{line}' in the answer:\n{answer}"
        );
    }
}

#[test]
fn a_simulcast_viewer_starts_on_a_key_frame_of_the_best_encoding_only() {
    let mut out = Collected::default();
    let (mut bench, publisher) = simulcast_bench(&mut out);
    let mut viewer = bench.viewer(1, Transport::Udp, &mut out);
    assert_eq!(layer(&bench, &viewer), (NO_ENCODING, 2), "waits for f");
    assert!(
        bench.stream.encodings[2]
            .keyframe_wanted
            .load(Ordering::Acquire)
    );
    assert!(
        !bench.stream.encodings[0]
            .keyframe_wanted
            .load(Ordering::Acquire)
    );
    // Deltas of every encoding, and q's key frame: nothing for this viewer.
    send(&mut bench, publisher, 10, 2, 100, DELTA, &mut out);
    send(&mut bench, publisher, 10, 1, 200, DELTA, &mut out);
    send(&mut bench, publisher, 10, 0, 300, KEY, &mut out);
    assert!(got(&mut viewer, &out).is_empty());
    // f's key frame and what follows it.
    send(&mut bench, publisher, 20, 2, 101, KEY, &mut out);
    send(&mut bench, publisher, 20, 2, 102, INNER, &mut out);
    send(&mut bench, publisher, 20, 0, 301, DELTA, &mut out);
    send(&mut bench, publisher, 30, 2, 103, DELTA, &mut out);
    let seqs: Vec<u16> = got(&mut viewer, &out).iter().map(|p| p.0).collect();
    assert_eq!(seqs, [101, 102, 103]);
    assert_eq!(layer(&bench, &viewer), (2, 2));
    assert_eq!(bench.metrics.layer_viewers[2].get(), 1);
    assert_eq!(bench.metrics.switches[SwitchReason::Start.index()].get(), 1);
}

#[test]
fn a_switch_waits_for_the_key_frame_and_keeps_the_numbering_continuous() {
    let mut out = Collected::default();
    let (mut bench, publisher, mut viewer) = viewer_on_f(&mut out);
    // Pin q: f keeps flowing until q's key frame, asked for now.
    bench.stream.encodings[0]
        .keyframe_wanted
        .store(false, Ordering::Release);
    pin(&mut bench, &viewer, "q", 25, &mut out);
    assert_eq!(layer(&bench, &viewer), (2, 0));
    assert!(
        bench.stream.encodings[0]
            .keyframe_wanted
            .load(Ordering::Acquire)
    );
    // Watched here: f (sent) and q (waited for); h by nobody, so not walked.
    let watched = |b: &Bench| [0u8, 1, 2].map(|e| b.stream.watched(0, e));
    assert_eq!(watched(&bench), [true, false, true]);
    send(&mut bench, publisher, 30, 0, 5000, DELTA, &mut out);
    send(&mut bench, publisher, 30, 2, 102, DELTA, &mut out);
    send(&mut bench, publisher, 63, 0, 5001, KEY, &mut out);
    send(&mut bench, publisher, 63, 0, 5002, INNER, &mut out);
    send(&mut bench, publisher, 63, 2, 103, DELTA, &mut out);
    send(&mut bench, publisher, 96, 0, 5003, DELTA, &mut out);
    let packets = got(&mut viewer, &out);
    let seqs: Vec<u16> = packets.iter().map(|p| p.0).collect();
    assert_eq!(
        seqs,
        [100, 101, 102, 103, 104, 105],
        "one numbering, no gap"
    );
    // f's three packets, then q's from its key frame on.
    assert_eq!(packets[3].2, [0x10, 0x00]);
    assert_eq!(layer(&bench, &viewer), (0, 0));
    assert_eq!(watched(&bench), [true, false, false]);
    // Timestamps never go back, and advance by the wall time at the switch
    // (33 ms at 90 kHz) although q's own timestamps are far from f's.
    let ts: Vec<u32> = packets.iter().map(|p| p.1).collect();
    assert!(
        ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) < 0x8000_0000),
        "{ts:?}"
    );
    assert_eq!(ts[3].wrapping_sub(ts[2]), 33 * 90);
    assert_eq!(ts[5].wrapping_sub(ts[3]), 2 * 3000);
    assert_eq!(
        bench.metrics.switches[SwitchReason::Request.index()].get(),
        1
    );
}

#[test]
fn a_nack_after_a_switch_is_answered_from_the_encoding_that_was_sent() {
    let mut out = Collected::default();
    let (mut bench, publisher, mut viewer) = viewer_on_f(&mut out);
    pin(&mut bench, &viewer, "h", 25, &mut out);
    send(&mut bench, publisher, 30, 1, 7000, KEY, &mut out);
    send(&mut bench, publisher, 40, 1, 7001, DELTA, &mut out);
    let sent = got(&mut viewer, &out);
    assert_eq!(
        sent.iter().map(|p| p.0).collect::<Vec<_>>(),
        [100, 101, 102, 103]
    );
    let ssrc = viewer.received(&out)[0].1;
    out.udp.clear();
    let nack = TransportLayerNack {
        sender_ssrc: 1,
        media_ssrc: ssrc,
        nacks: vec![NackPair {
            packet_id: 101,
            lost_packets: 0b101, // 102 and 104 (104 was never sent)
        }],
    };
    bench.core.viewer_nacks(viewer.key, &[nack], &mut out);
    let again = got(&mut viewer, &out);
    // 101 is f's delta (before the switch), 102 is h's key frame (after it);
    // each with the viewer's numbering and timestamps as first sent.
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!((again[0].0, again[0].1, again[0].2), sent[1]);
    assert_eq!((again[1].0, again[1].1, again[1].2), sent[2]);
}

#[test]
fn a_bad_layer_request_changes_nothing() {
    let mut out = Collected::default();
    let (mut bench, publisher) = simulcast_bench(&mut out);
    let viewer = bench.viewer(1, Transport::Udp, &mut out);
    send(&mut bench, publisher, 10, 2, 100, KEY, &mut out);
    for bad in [
        LayerRequest {
            rid: Some("x".into()),
            ..Default::default()
        },
        LayerRequest {
            media_id: Some("0".into()),
            rid: Some("q".into()),
            ..Default::default()
        },
        LayerRequest {
            spatial_layer_id: Some(2),
            ..Default::default()
        },
    ] {
        let e = bench
            .core
            .select_layer(bench.at(20), viewer.key, bad, &mut out);
        assert!(matches!(e, Err(MediaError::BadLayer(_))), "{e:?}");
        assert_eq!(layer(&bench, &viewer), (2, 2));
    }
    // A publisher's session has no layers to pick.
    let e = bench
        .core
        .select_layer(bench.at(20), publisher, LayerRequest::default(), &mut out);
    assert!(matches!(e, Err(MediaError::BadLayer(_))));
    let e = bench
        .core
        .select_layer(bench.at(20), 999, LayerRequest::default(), &mut out);
    assert_eq!(e, Err(MediaError::UnknownSession));
}

#[test]
fn viewers_leave_an_encoding_that_stops_arriving() {
    let mut out = Collected::default();
    let (mut bench, publisher) = simulcast_bench(&mut out);
    let mut viewer = bench.viewer(1, Transport::Udp, &mut out);
    send(&mut bench, publisher, 10, 2, 100, KEY, &mut out);
    // q and h keep coming; f stops (the browser paused it).
    let mut seq = 0u16;
    for ms in (20..=1_500).step_by(20) {
        seq += 1;
        send(&mut bench, publisher, ms, 0, 300 + seq, DELTA, &mut out);
        send(&mut bench, publisher, ms, 1, 600 + seq, DELTA, &mut out);
        bench.core.handle_timeout(bench.at(ms), &mut out);
    }
    assert!(!bench.stream.encodings[2].active.load(Ordering::Acquire));
    assert_eq!(layer(&bench, &viewer), (2, 1), "moves to the nearest, h");
    send(&mut bench, publisher, 1_520, 1, 700, KEY, &mut out);
    assert_eq!(layer(&bench, &viewer), (1, 1));
    let all = got(&mut viewer, &out);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        bench.metrics.switches[SwitchReason::Inactive.index()].get(),
        1
    );
}

#[test]
fn a_viewer_without_simulcast_gets_every_packet_as_before() {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let publisher = bench.session(SessionKind::Publisher, 0, &mut out);
    bench
        .core
        .open_track(publisher, MediaKind::Video, 0, 0xfeed, 90_000, bench.at(0));
    let mut viewer = bench.viewer(1, Transport::Udp, &mut out);
    assert_eq!(layer(&bench, &viewer), (0, 0));
    // Deltas before any key frame are forwarded (the browser waits itself).
    for seq in 1..4 {
        let mut p = rtp(seq, u32::from(seq) * 3000);
        p.payload = Bytes::from_static(DELTA);
        bench
            .core
            .publisher_rtp(bench.at(10), publisher, MediaKind::Video, p, &mut out);
    }
    assert_eq!(viewer.received(&out).len(), 3);
    let e = bench.core.select_layer(
        bench.at(20),
        viewer.key,
        LayerRequest {
            rid: Some("f".into()),
            ..Default::default()
        },
        &mut out,
    );
    assert!(matches!(e, Err(MediaError::BadLayer(m)) if m.contains("no simulcast")));
}

/// A forwarded video packet (from another worker) of encoding 0.
fn video(bench: &Bench, seq: u16, keyframe: bool, ms: u64) -> Forward {
    let mut f = media(bench, seq, ms);
    f.keyframe = keyframe;
    f
}

/// A stream one viewer watches on this worker, whose key frame (10) and four
/// packets after it arrived at 20 ms; no key frame wanted.
fn watched_key_frame_at_20() -> (Bench, Collected) {
    let mut bench = Bench::new();
    let mut out = Collected::default();
    let _first = bench.viewer(1, Transport::Udp, &mut out);
    bench.stream.keyframe_wanted.store(false, Ordering::Release);
    for seq in 10..15 {
        let f = video(&bench, seq, seq == 10, 20);
        bench.core.handle_media(bench.at(20), &f, &mut out);
    }
    (bench, out)
}

#[test]
fn a_joiner_starts_from_the_cached_key_frame_without_asking_for_one() {
    let (mut bench, mut out) = watched_key_frame_at_20();
    // 100 ms after the key frame: the joiner needs no new one.
    let mut joiner = bench.viewer_at(2, Transport::Udp, 120, &mut out);
    assert!(!bench.stream.keyframe_wanted.load(Ordering::Acquire));
    let f = video(&bench, 15, false, 130);
    bench.core.handle_media(bench.at(130), &f, &mut out);
    let seqs: Vec<u16> = joiner.received(&out).iter().map(|p| p.0).collect();
    assert_eq!(
        seqs,
        [10, 11, 12, 13, 14, 15],
        "from the key frame on, in order"
    );
    assert_eq!(bench.metrics.catch_ups.get(), 1);
}

#[test]
fn a_stale_key_frame_is_not_replayed_and_one_is_asked_for() {
    let (mut bench, mut out) = watched_key_frame_at_20();
    let mut joiner = bench.viewer_at(2, Transport::Udp, 900, &mut out);
    assert!(bench.stream.keyframe_wanted.load(Ordering::Acquire));
    let f = video(&bench, 15, false, 910);
    bench.core.handle_media(bench.at(910), &f, &mut out);
    let seqs: Vec<u16> = joiner.received(&out).iter().map(|p| p.0).collect();
    assert_eq!(seqs, [15], "live from here, as before");
    assert_eq!(bench.metrics.catch_ups.get(), 0);
}

#[test]
fn a_publisher_that_leaves_leaves_no_active_encoding_behind() {
    let mut out = Collected::default();
    let (mut bench, publisher) = simulcast_bench(&mut out);
    assert_eq!(bench.stream.layers().iter().filter(|l| l.active).count(), 3);
    assert!(
        bench
            .core
            .end_session(bench.at(100), publisher, "deleted", &mut out)
    );
    let layers = bench.stream.layers();
    assert!(
        layers.iter().all(|l| !l.active && l.bitrate == 0),
        "{layers:?}"
    );
}

#[test]
fn a_workers_first_viewer_of_an_encoding_asks_past_the_throttle() {
    let mut out = Collected::default();
    let (mut bench, _publisher) = simulcast_bench(&mut out);
    let urgent = |b: &Bench, e: usize| {
        b.stream.encodings[e]
            .keyframe_urgent
            .swap(false, Ordering::AcqRel)
    };
    let first = bench.viewer(1, Transport::Udp, &mut out);
    assert!(
        urgent(&bench, 2),
        "the first viewer of f here: nothing cached"
    );
    let _second = bench.viewer_at(2, Transport::Udp, 50, &mut out);
    assert!(!urgent(&bench, 2), "f is watched here already");
    // Pinning q, watched by nobody here yet, is urgent again.
    let pin = LayerRequest {
        rid: Some("q".into()),
        ..Default::default()
    };
    // (The viewer has had no packet yet, so the pin waits for the next tick.)
    bench
        .core
        .select_layer(bench.at(60), first.key, pin, &mut out)
        .unwrap();
    bench.core.handle_timeout(bench.at(70), &mut out);
    assert_eq!(layer(&bench, &first).1, 0);
    assert!(urgent(&bench, 0), "the first viewer of q here");
}

#[test]
fn a_nack_two_switches_back_is_not_answered_with_another_encodings_packet() {
    let mut out = Collected::default();
    let (mut bench, publisher) = simulcast_bench(&mut out);
    let mut viewer = bench.viewer(1, Transport::Udp, &mut out);
    send(&mut bench, publisher, 10, 2, 100, KEY, &mut out); // viewer 100 (f)
    pin(&mut bench, &viewer, "h", 20, &mut out);
    send(&mut bench, publisher, 30, 1, 7000, KEY, &mut out); // viewer 101 (h)
    pin(&mut bench, &viewer, "q", 40, &mut out);
    send(&mut bench, publisher, 50, 0, 3000, KEY, &mut out); // viewer 102 (q)
    let sent = got(&mut viewer, &out);
    assert_eq!(
        sent.iter().map(|p| p.0).collect::<Vec<_>>(),
        [100, 101, 102]
    );
    let ssrc = viewer.received(&out)[0].1;
    out.udp.clear();
    let nack = TransportLayerNack {
        sender_ssrc: 1,
        media_ssrc: ssrc,
        nacks: vec![NackPair {
            packet_id: 100,
            lost_packets: 0b11, // 101 and 102
        }],
    };
    bench.core.viewer_nacks(viewer.key, &[nack], &mut out);
    let again = got(&mut viewer, &out);
    // 101 (h, the mapping before) and 102 (q, the current one) come again as
    // sent; 100 (f, two switches back) is not guessed at.
    assert_eq!(again, sent[1..].to_vec());
}
