//! The forwarding path of the media core: one packet to every viewer of its stream
//! on this worker, NACKs answered from the shared cache, viewers' sender reports,
//! and a peer connection's own output. Writes into an [`Egress`]; nothing here
//! allocates per viewer per packet.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::BytesMut;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::TransportProtocol;
use rtc::shared::time::SystemInstant;

use super::egress::{Egress, Forward, TcpDrop};
use crate::kinds::{MediaKind, Transport};
use crate::layers::{MAX_ENCODINGS, NO_ENCODING};
use crate::metrics::MediaMetrics;
use crate::registry::{StreamShared, log_id};
use crate::session::{
    self, PT_UNKNOWN, PT_UNSUPPORTED, Role, Session, Viewer, ViewerTrack, ViewerVideo,
};
use crate::srtp::{SrtpIndex, SrtpSender};
use crate::track::RetransmitCache;

/// Packets per track kept for retransmission (about 1 s of 2.5 Mbps video).
pub const RETRANSMIT_CACHE: usize = 512;
/// A joiner starts from the last key frame still in the cache (sent at once,
/// instead of waiting for the one its PLI brings) if it is at most this old
/// and at most [`CATCH_UP_PACKETS`] back: the pictures it shows first are
/// this much behind live, a delay Chromium's jitter buffer absorbs within a
/// second (measured in docs/PERFORMANCE.md, issue 15).
pub const CATCH_UP_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(500);
pub const CATCH_UP_PACKETS: u16 = 300;

/// A stream as one worker serves it.
pub struct LocalStream {
    pub shared: Arc<StreamShared>,
    /// Recent packets for viewers' NACKs: audio, then video per encoding
    /// (see [`cache_slot`]).
    pub caches: [RetransmitCache; 1 + MAX_ENCODINGS],
    /// Connected viewers on this worker, in fan-out order.
    pub viewers: Vec<u64>,
    /// Per cache slot: the last key frame's first packet (sequence, arrival,
    /// publisher epoch), where a joiner can start.
    pub last_key: [Option<(u16, Instant, u32)>; 1 + MAX_ENCODINGS],
    /// Sessions of this stream on this worker (publisher and viewers).
    pub sessions: usize,
    /// This worker's index (its place in `StreamShared::watching`).
    pub worker: usize,
}

impl LocalStream {
    pub fn new(shared: Arc<StreamShared>, worker: usize) -> Self {
        Self {
            shared,
            caches: std::array::from_fn(|_| RetransmitCache::new(RETRANSMIT_CACHE)),
            viewers: Vec::new(),
            last_key: [None; 1 + MAX_ENCODINGS],
            sessions: 0,
            worker,
        }
    }
}

/// The retransmission cache of a kind and encoding: audio 0, video 1 + encoding.
pub fn cache_slot(kind: MediaKind, encoding: u8) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1 + (encoding as usize).min(MAX_ENCODINGS - 1),
    }
}

/// What a viewer does with a video packet of `encoding`: `None` drops it (not
/// the viewer's encoding, or not the key frame a switch waits for); otherwise
/// the viewer's (sequence, timestamp) for it. A switch happens here, at the
/// first packet of the target encoding's key frame: the viewer's numbering
/// continues from its last packet, its timestamps advance by the wall time
/// since (encodings need not share a timestamp base).
#[allow(clippy::too_many_arguments)]
pub fn map_video(
    video: &mut ViewerVideo,
    stream: &StreamShared,
    encoding: u8,
    keyframe: bool,
    seq: u16,
    ts: u32,
    now: Instant,
    metrics: &MediaMetrics,
) -> Option<(u16, u32)> {
    if encoding != video.current {
        if encoding != video.target || !keyframe {
            return None;
        }
        let (seq_offset, ts_offset) = match video.last_out {
            Some((last_seq, last_ts, at)) => {
                let gap = (now.saturating_duration_since(at).as_secs_f64() * 90_000.0) as u32;
                (
                    last_seq.wrapping_add(1).wrapping_sub(seq),
                    last_ts.wrapping_add(gap.max(1)).wrapping_sub(ts),
                )
            }
            None => (0, 0),
        };
        let before = video.watching();
        let first_after = seq.wrapping_add(seq_offset);
        if video.current != NO_ENCODING {
            // Without an earlier switch the old mapping covered everything
            // sent (as far back as a sequence number can say: half its range).
            let since = video.since.unwrap_or(first_after.wrapping_sub(0x7fff));
            video.before = Some((
                video.current,
                video.seq_offset,
                video.ts_offset,
                since,
                first_after,
            ));
            metrics.layer_viewers[video.current as usize].dec();
        }
        video.since = Some(first_after);
        metrics.layer_viewers[(encoding as usize).min(MAX_ENCODINGS - 1)].inc();
        video.current = encoding;
        stream.rewatch(video.worker, before, video.watching());
        video.seq_offset = seq_offset;
        video.ts_offset = ts_offset;
        if let Some((decided, reason)) = video.switch.take() {
            metrics.switches[reason.index()].inc();
            metrics
                .switch_delay
                .observe(now.saturating_duration_since(decided).as_secs_f64());
        }
        video.shared.current.store(encoding, Ordering::Release);
    }
    let out = (
        seq.wrapping_add(video.seq_offset),
        ts.wrapping_add(video.ts_offset),
    );
    video.last_out = Some((out.0, out.1, now));
    Some(out)
}

/// One packet to every connected viewer of its stream on this worker: the
/// payload `Bytes` is shared, only the header fields and SRTP are per viewer.
pub fn fanout(
    sessions: &mut HashMap<u64, Session>,
    ls: &mut LocalStream,
    forward: &Forward,
    now: Instant,
    metrics: &MediaMetrics,
    out: &mut impl Egress,
) {
    if ls.viewers.is_empty() {
        return;
    }
    let slot = forward.kind.index();
    let watched =
        forward.kind == MediaKind::Audio || ls.shared.watched(ls.worker, forward.encoding);
    let cache = cache_slot(forward.kind, forward.encoding);
    ls.caches[cache].insert(&forward.packet);
    if forward.keyframe {
        ls.last_key[cache] = Some((
            forward.packet.header.sequence_number,
            forward.arrived,
            forward.epoch,
        ));
    }
    if !watched {
        // Cached for a joiner or a switch; nobody here wants it now.
        return;
    }
    let ls = &*ls;
    let video = forward.kind == MediaKind::Video;
    let (seq_in, ts_in) = (
        forward.packet.header.sequence_number,
        forward.packet.header.timestamp,
    );
    let pt_in = (forward.packet.header.payload_type & 0x7f) as usize;
    let payload = &forward.packet.payload[..];
    // One header, rewritten per viewer in place (SSRC, payload type).
    let mut header = forward.packet.header.clone();
    let mut sent = 0u64;
    for key in &ls.viewers {
        let Some(Session {
            pc,
            role: Role::Viewer(viewer),
            ..
        }) = sessions.get_mut(key)
        else {
            continue;
        };
        let Viewer {
            tracks,
            srtp,
            media_dest,
            video: viewer_video,
            ..
        } = viewer;
        let Some(track) = tracks[slot].as_mut() else {
            continue;
        };
        let mut twcc = None;
        if video {
            if viewer_video.catch_up {
                viewer_video.catch_up = false;
                let caught_up = catch_up(
                    pc,
                    viewer_video,
                    track,
                    srtp,
                    *media_dest,
                    ls,
                    forward,
                    now,
                    metrics,
                    out,
                );
                if !caught_up {
                    // Counted on at the join (so no key frame was asked for
                    // then), but the cache no longer serves it: ask now.
                    let e = match viewer_video.target {
                        NO_ENCODING => forward.encoding,
                        t => t,
                    };
                    ls.shared.want_keyframe(e as usize);
                }
            }
            let Some((seq, ts)) = map_video(
                viewer_video,
                &ls.shared,
                forward.encoding,
                forward.keyframe,
                seq_in,
                ts_in,
                now,
                metrics,
            ) else {
                continue;
            };
            header.sequence_number = seq;
            header.timestamp = ts;
            if let Some(bwe) = viewer_video.bwe.as_deref_mut() {
                twcc = Some((bwe.ext_id(), bwe.stamp(now, payload.len() + 40)));
            }
        }
        let pt = viewer_payload_type(&ls.shared, pc, track, forward.epoch, pt_in);
        if pt == PT_UNSUPPORTED {
            metrics.dropped.codec_mismatch.inc();
            continue;
        }
        let (Some(srtp), Some(dest)) = (srtp.as_mut(), *media_dest) else {
            metrics.dropped.session_not_ready.inc();
            continue;
        };
        header.ssrc = track.ssrc;
        header.payload_type = pt;
        if send_protected(
            srtp,
            dest,
            &mut track.srtp_index,
            &header,
            twcc,
            payload,
            metrics,
            out,
        ) {
            let report = &mut track.report;
            report.packets = report.packets.wrapping_add(1);
            report.octets = report.octets.wrapping_add(payload.len() as u32);
            report.last_rtp_timestamp = header.timestamp;
            report.last_sent_at = Some(now);
            sent += 1;
        }
    }
    if sent > 0 {
        metrics.packets_out.inc_by(sent);
        metrics
            .bytes_out
            .inc_by(sent * forward.packet.payload.len() as u64);
        out.fanned_out(forward.arrived);
    }
}

/// Whether a joiner of this worker can start from the cached last key frame of
/// `encoding` at `now` (then no key frame needs asking for).
pub fn can_catch_up(ls: &LocalStream, encoding: u8, now: Instant) -> bool {
    let slot = cache_slot(MediaKind::Video, encoding);
    ls.last_key[slot].is_some_and(|(seq, at, epoch)| {
        now.saturating_duration_since(at) <= CATCH_UP_MAX_AGE
            && epoch == ls.shared.epoch.load(Ordering::Acquire)
            && ls.caches[slot].get(seq).is_some()
    })
}

/// A joiner's first video packet: the cached packets from the encoding's last
/// key frame up to this one go first, in order, as the fan-out would have
/// sent them, so the viewer decodes a picture at once. Nothing is sent if the
/// key frame is stale, from another publisher, or any packet since is missing
/// from the cache (then false: the caller asks for a key frame).
#[allow(clippy::too_many_arguments)]
fn catch_up(
    pc: &mut RTCPeerConnection,
    video: &mut ViewerVideo,
    track: &mut ViewerTrack,
    srtp: &mut Option<SrtpSender>,
    dest: Option<(std::net::SocketAddr, Transport)>,
    ls: &LocalStream,
    forward: &Forward,
    now: Instant,
    metrics: &MediaMetrics,
    out: &mut impl Egress,
) -> bool {
    let encoding = if video.target != NO_ENCODING {
        video.target
    } else {
        forward.encoding
    };
    if encoding != forward.encoding || !can_catch_up(ls, encoding, now) {
        return false;
    }
    let slot = cache_slot(MediaKind::Video, encoding);
    let Some((key_seq, _, _)) = ls.last_key[slot] else {
        return false;
    };
    let until = forward.packet.header.sequence_number;
    let count = until.wrapping_sub(key_seq);
    if count == 0 || count > CATCH_UP_PACKETS {
        return false;
    }
    let cache = &ls.caches[slot];
    if (0..count).any(|i| cache.get(key_seq.wrapping_add(i)).is_none()) {
        return false;
    }
    let (Some(srtp), Some(dest)) = (srtp.as_mut(), dest) else {
        return false;
    };
    let mut sent = 0u64;
    for i in 0..count {
        let Some(cached) = cache.get(key_seq.wrapping_add(i)) else {
            return false;
        };
        let pt_in = (cached.header.payload_type & 0x7f) as usize;
        let pt = viewer_payload_type(&ls.shared, pc, track, forward.epoch, pt_in);
        let Some((seq, ts)) = map_video(
            video,
            &ls.shared,
            encoding,
            i == 0,
            cached.header.sequence_number,
            cached.header.timestamp,
            now,
            metrics,
        ) else {
            return false;
        };
        if pt == PT_UNSUPPORTED {
            continue;
        }
        let mut header = cached.header.clone();
        header.ssrc = track.ssrc;
        header.payload_type = pt;
        header.sequence_number = seq;
        header.timestamp = ts;
        let twcc = video
            .bwe
            .as_deref_mut()
            .map(|b| (b.ext_id(), b.stamp(now, cached.payload.len() + 40)));
        if send_protected(
            srtp,
            dest,
            &mut track.srtp_index,
            &header,
            twcc,
            &cached.payload,
            metrics,
            out,
        ) {
            sent += 1;
        }
    }
    metrics.catch_ups.inc();
    metrics.packets_out.inc_by(sent);
    true
}

/// Answers a viewer's NACKs from the worker's per-track cache: the same packet
/// again (same sequence number, RFC 4585), protected for this viewer. A NACK
/// repeated is answered again, as long as the packet is in the cache.
pub fn retransmit(
    viewer: &mut Viewer,
    caches: &[RetransmitCache; 1 + MAX_ENCODINGS],
    nacks: &[TransportLayerNack],
    metrics: &MediaMetrics,
    out: &mut impl Egress,
) {
    let Viewer {
        tracks,
        srtp,
        media_dest,
        video,
        ..
    } = viewer;
    let (Some(srtp), Some(dest)) = (srtp.as_mut(), *media_dest) else {
        return;
    };
    for nack in nacks {
        let Some(slot) = tracks
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| t.ssrc == nack.media_ssrc))
        else {
            continue;
        };
        let Some(track) = tracks[slot].as_mut() else {
            continue;
        };
        for pair in &nack.nacks {
            for seq in pair.packet_list() {
                // The viewer's sequence back to the encoding's: audio and
                // single-encoding video map one to one.
                let (cache, seq_in, ts_offset) = if slot == MediaKind::Video.index() {
                    if video.current == NO_ENCODING {
                        continue;
                    }
                    // Sent under the current mapping, the one before it, or
                    // earlier (not answered: which encoding is not known).
                    let last = video.last_out.map_or(seq, |l| l.0);
                    let current = video
                        .since
                        .is_none_or(|s| seq.wrapping_sub(s) <= last.wrapping_sub(s));
                    match video.before {
                        _ if current => (
                            cache_slot(MediaKind::Video, video.current),
                            seq.wrapping_sub(video.seq_offset),
                            video.ts_offset,
                        ),
                        Some((enc, seq_off, ts_off, from, until))
                            if seq.wrapping_sub(from) < until.wrapping_sub(from) =>
                        {
                            (
                                cache_slot(MediaKind::Video, enc),
                                seq.wrapping_sub(seq_off),
                                ts_off,
                            )
                        }
                        _ => continue,
                    }
                } else {
                    (0, seq, 0)
                };
                let Some(cached) = caches[cache].get(seq_in) else {
                    continue;
                };
                let pt = track.pt_map[(cached.header.payload_type & 0x7f) as usize];
                if pt >= 128 {
                    continue;
                }
                let mut header = cached.header.clone();
                header.ssrc = track.ssrc;
                header.payload_type = pt;
                header.sequence_number = seq;
                header.timestamp = header.timestamp.wrapping_add(ts_offset);
                if send_protected(
                    srtp,
                    dest,
                    &mut track.srtp_index,
                    &header,
                    None,
                    &cached.payload,
                    metrics,
                    out,
                ) {
                    metrics.retransmitted.inc();
                }
            }
        }
    }
}

/// A sender report per viewer track that has sent something (RFC 3550 §6.4.1): the
/// RTP timestamp is the last one sent, advanced by the time since at the codec's
/// clock rate, so the report maps the same instant in both clocks.
pub fn write_sender_reports(
    id: &str,
    pc: &mut RTCPeerConnection,
    viewer: &Viewer,
    clock: &SystemInstant,
    now: Instant,
) {
    for track in viewer.tracks.iter().flatten() {
        let report = track.report;
        let Some(last_sent_at) = report.last_sent_at else {
            continue;
        };
        let elapsed = now.saturating_duration_since(last_sent_at);
        let advance = (elapsed.as_secs_f64() * f64::from(track.bound_codec.clock_rate)) as u32;
        let sr = SenderReport {
            ssrc: track.ssrc,
            ntp_time: clock.ntp(now),
            rtp_time: report.last_rtp_timestamp.wrapping_add(advance),
            packet_count: report.packets,
            octet_count: report.octets,
            ..Default::default()
        };
        if let Some(mut sender) = pc.rtp_sender(track.sender)
            && let Err(e) = sender.write_rtcp(now, vec![Box::new(sr)])
        {
            tracing::debug!(session = log_id(id), error = %e, "sender report");
        }
    }
}

/// Protects one RTP packet for a viewer and queues it: over UDP straight into a
/// slot of the send batch (nothing allocated), over ICE-TCP to its connection.
#[allow(clippy::too_many_arguments)]
pub fn send_protected(
    srtp: &mut SrtpSender,
    (to, transport): (std::net::SocketAddr, Transport),
    index: &mut SrtpIndex,
    header: &rtc::rtp::Header,
    twcc: Option<(u8, u16)>,
    payload: &[u8],
    metrics: &MediaMetrics,
    out: &mut impl Egress,
) -> bool {
    match transport {
        Transport::Tcp => {
            let mut buf = BytesMut::with_capacity(payload.len() + 72);
            if let Err(e) = srtp.protect_with(index, header, twcc, payload, &mut buf) {
                tracing::debug!(error = %e, "srtp protect");
                return false;
            }
            match out.send_tcp(to, buf.freeze()) {
                Ok(()) => true,
                Err(TcpDrop::NoLink) => {
                    metrics.dropped.session_not_ready.inc();
                    false
                }
                Err(TcpDrop::Full) => {
                    metrics.dropped.socket_full.inc();
                    false
                }
            }
        }
        Transport::Udp => {
            if let Err(e) = srtp.protect_with(index, header, twcc, payload, out.udp_slot()) {
                tracing::debug!(error = %e, "srtp protect");
                return false;
            }
            out.commit_udp(to);
            true
        }
    }
}

/// The viewer's payload type for the publisher's `pt_in` of publisher
/// generation `epoch`, from the track's map (worked out on first use).
#[inline]
fn viewer_payload_type(
    stream: &StreamShared,
    pc: &mut RTCPeerConnection,
    track: &mut ViewerTrack,
    epoch: u32,
    pt_in: usize,
) -> u8 {
    if track.epoch != epoch {
        track.pt_map = [PT_UNKNOWN; 128];
        track.epoch = epoch;
    }
    let mut pt = track.pt_map[pt_in];
    if pt == PT_UNKNOWN {
        pt = resolve_payload_type(stream, pc, track, pt_in as u8);
        track.pt_map[pt_in] = pt;
    }
    pt
}

/// Works out (once per publisher payload type and epoch) which payload type the
/// viewer negotiated for the publisher's codec.
pub fn resolve_payload_type(
    stream: &StreamShared,
    pc: &mut RTCPeerConnection,
    track: &mut ViewerTrack,
    pt_in: u8,
) -> u8 {
    let codecs = stream.codecs();
    let Some(publisher_codec) = codecs.iter().find(|c| c.payload_type == pt_in) else {
        return PT_UNSUPPORTED;
    };
    let Some(mut sender) = pc.rtp_sender(track.sender) else {
        return PT_UNSUPPORTED;
    };
    let viewer_codecs = sender.get_parameters().rtp_parameters.codecs.clone();
    let pt = session::map_payload_type(&publisher_codec.rtp_codec, &viewer_codecs);
    if pt != PT_UNSUPPORTED
        && session::codec_fit(&publisher_codec.rtp_codec, &track.bound_codec) < 3
    {
        // The viewer came before this publisher (or the publisher changed codec):
        // rebind the sender so its parameters, and the clock rate our sender reports
        // use, follow the codec actually sent.
        let kind = if publisher_codec
            .rtp_codec
            .mime_type
            .to_ascii_lowercase()
            .starts_with("audio/")
        {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let new_track = session::viewer_track(
            kind,
            &stream.name,
            track.ssrc,
            publisher_codec.rtp_codec.clone(),
        );
        match sender.replace_track(new_track) {
            Ok(()) => track.bound_codec = publisher_codec.rtp_codec.clone(),
            Err(e) => tracing::debug!(error = %e, "rebinding viewer track"),
        }
    }
    pt
}

/// Queues everything a peer connection wants to send (UDP into the send batch,
/// ICE-TCP to its connection); never waits.
pub fn drain_writes(pc: &mut RTCPeerConnection, metrics: &MediaMetrics, out: &mut impl Egress) {
    while let Some(msg) = pc.poll_write() {
        let peer = msg.transport.peer_addr;
        match msg.transport.transport_protocol {
            TransportProtocol::UDP => out.send_udp(peer, &msg.message),
            TransportProtocol::TCP => {
                let sent = out.send_tcp(peer, msg.message.freeze());
                if sent == Err(TcpDrop::Full) {
                    metrics.dropped.socket_full.inc();
                }
            }
            _ => {}
        }
    }
}
