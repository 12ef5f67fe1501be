//! RTP payloads → frames (access units), per codec: VP8, VP9, H.264
//! (packetization-mode 1), AV1 and Opus. Also what a key frame tells about
//! the stream (size, profile, parameter sets) for the MP4 sample entry.
//!
//! Written here rather than taken from `rtc`'s depacketizers: those index
//! payloads without bounds checks in places (an H.264 STAP-A with a trailing
//! odd byte panics), and the recorder sees whatever a publisher sends. Every
//! parser below reads through bounds-checked slices and answers `None` on
//! garbage (see the fuzz-ish test at the end).
//!
//! The pieces, in packet order:
//! - [`Reorder`]: a small reorder buffer per track (extended sequence numbers,
//!   duplicates and late retransmissions dropped, a gap it cannot fill within
//!   its window becomes [`Ordered::Gap`]).
//! - [`TrackDepacketizer`]: frames from ordered packets. A frame ends at the
//!   marker bit or a timestamp change; after a gap, video is dropped until the
//!   next complete key frame (counted, and a key frame is asked for).
//! - [`video_info`]: width/height and codec configuration from a key frame.
//!
//! Imports only the media crate's tap vocabulary and its bit reader and SPS
//! parser (`tandem_media::codec`, which the SFU uses to size simulcast layers).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use tandem_media::codec::{Av1SequenceHeader, av1_sequence_header, h264_sps_size};
use tandem_media::codec::{BitReader, leb128};
use tandem_media::kinds::MediaKind;
use tandem_media::tap::TapPacket;

/// The codecs the recorder understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Vp8,
    Vp9,
    H264,
    Av1,
    Opus,
}

impl Codec {
    /// From an SDP mime type (`video/VP8`, `audio/opus`, any case); `None`
    /// for codecs the recorder does not keep (RTX, RED, FEC, G.711…).
    pub fn from_mime(mime: &str) -> Option<Codec> {
        let sub = mime.rsplit('/').next().unwrap_or(mime).to_ascii_lowercase();
        match sub.as_str() {
            "vp8" => Some(Codec::Vp8),
            "vp9" => Some(Codec::Vp9),
            "h264" => Some(Codec::H264),
            "av1" | "av1x" => Some(Codec::Av1),
            "opus" => Some(Codec::Opus),
            _ => None,
        }
    }

    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Opus => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }
}

/// One access unit, as it goes into an MP4 sample.
#[derive(Debug, Clone)]
pub struct Frame {
    /// VP8/VP9: the frame; H.264: AVCC (4-byte lengths) NAL units, parameter
    /// sets kept in-band; AV1: low-overhead OBUs with sizes, no temporal
    /// delimiter; Opus: the packet.
    pub data: Vec<u8>,
    /// RTP timestamp.
    pub timestamp: u32,
    pub keyframe: bool,
    /// When the frame's first packet arrived.
    pub arrived: Instant,
}

// ---------------------------------------------------------------- reorder

/// What the reorder buffer hands on, in sequence order.
#[derive(Debug)]
pub enum Ordered {
    Packet(TapPacket),
    /// This many packets never came (or came too late).
    Gap(u64),
}

/// A reorder buffer over extended sequence numbers.
#[derive(Debug)]
pub struct Reorder {
    highest: Option<u64>,
    next: Option<u64>,
    buf: BTreeMap<u64, TapPacket>,
    window: usize,
}

/// A jump this large is a new numbering (or garbage), not loss to wait for.
const RESTART_JUMP: u64 = 3000;

impl Reorder {
    /// `window`: how many packets may wait behind a hole before it is given up.
    pub fn new(window: usize) -> Self {
        Reorder {
            highest: None,
            next: None,
            buf: BTreeMap::new(),
            window: window.max(1),
        }
    }

    fn extend(&mut self, seq: u16) -> u64 {
        match self.highest {
            // Start high so a packet from just before the first never goes negative.
            None => {
                let e = (1u64 << 32) + u64::from(seq);
                self.highest = Some(e);
                e
            }
            Some(h) => {
                let diff = i64::from(seq.wrapping_sub(h as u16) as i16);
                let e = (h as i64 + diff).max(0) as u64;
                if e > h {
                    self.highest = Some(e);
                }
                e
            }
        }
    }

    pub fn push(&mut self, packet: TapPacket, out: &mut Vec<Ordered>) {
        let e = self.extend(packet.sequence_number);
        let next = *self.next.get_or_insert(e);
        if e < next {
            return; // duplicate or a retransmission after the hole was given up
        }
        if e - next > RESTART_JUMP {
            // Drain what we hold, then start over at the new number.
            self.skip_all(out);
            out.push(Ordered::Gap(1));
            self.next = Some(e);
        }
        self.buf.entry(e).or_insert(packet);
        self.drain(out);
        if self.buf.len() > self.window {
            self.skip_to_first(out);
        }
    }

    /// Gives up a hole whose first waiting packet arrived more than `max_wait`
    /// before `now` (a stalled stream behind a hole would otherwise sit here).
    pub fn expire(&mut self, now: Instant, max_wait: Duration, out: &mut Vec<Ordered>) {
        let oldest = self.buf.values().map(|p| p.arrived).min();
        if let Some(oldest) = oldest
            && now.saturating_duration_since(oldest) > max_wait
        {
            self.skip_to_first(out);
        }
    }

    /// Hands on everything held (holes become gaps) and forgets the numbering.
    pub fn reset(&mut self, out: &mut Vec<Ordered>) {
        self.skip_all(out);
        self.highest = None;
        self.next = None;
    }

    fn skip_all(&mut self, out: &mut Vec<Ordered>) {
        while !self.buf.is_empty() {
            self.skip_to_first(out);
        }
    }

    fn skip_to_first(&mut self, out: &mut Vec<Ordered>) {
        if let (Some(&first), Some(next)) = (self.buf.keys().next(), self.next) {
            if first > next {
                out.push(Ordered::Gap(first - next));
            }
            self.next = Some(first);
            self.drain(out);
        }
    }

    fn drain(&mut self, out: &mut Vec<Ordered>) {
        while let Some(next) = self.next {
            match self.buf.remove(&next) {
                Some(p) => {
                    out.push(Ordered::Packet(p));
                    self.next = Some(next + 1);
                }
                None => break,
            }
        }
    }
}

// ---------------------------------------------------------------- frames

struct Pending {
    timestamp: u32,
    arrived: Instant,
    payloads: Vec<Bytes>,
    broken: bool,
}

/// Packets of one track → frames.
pub struct TrackDepacketizer {
    codec: Codec,
    reorder: Reorder,
    pending: Option<Pending>,
    /// Video after a gap (or at the start): only a key frame may come next.
    waiting_key: bool,
    /// Video frames not handed on (broken by loss, or waiting for a key frame).
    pub dropped_frames: u64,
    /// Set when a key frame would help (start, loss); the owner clears it.
    pub want_keyframe: bool,
    ordered: Vec<Ordered>,
}

/// Reorder windows in packets: video at 2.5 Mbit/s is ~230 packets/s, so 96
/// is ~0.4 s of waiting behind a hole; Opus is 50 packets/s.
const VIDEO_WINDOW: usize = 96;
const AUDIO_WINDOW: usize = 10;

impl TrackDepacketizer {
    pub fn new(codec: Codec) -> Self {
        let window = if codec == Codec::Opus {
            AUDIO_WINDOW
        } else {
            VIDEO_WINDOW
        };
        TrackDepacketizer {
            codec,
            reorder: Reorder::new(window),
            pending: None,
            waiting_key: codec != Codec::Opus,
            dropped_frames: 0,
            want_keyframe: false,
            ordered: Vec::new(),
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn push(&mut self, packet: TapPacket, out: &mut Vec<Frame>) {
        let mut ordered = std::mem::take(&mut self.ordered);
        self.reorder.push(packet, &mut ordered);
        self.consume(&mut ordered, out);
        self.ordered = ordered;
    }

    pub fn expire(&mut self, now: Instant, max_wait: Duration, out: &mut Vec<Frame>) {
        let mut ordered = std::mem::take(&mut self.ordered);
        self.reorder.expire(now, max_wait, &mut ordered);
        self.consume(&mut ordered, out);
        self.ordered = ordered;
    }

    /// The publisher left: hand on what is complete, drop a frame without its
    /// end, and wait for a key frame from whoever publishes next.
    pub fn reset(&mut self, out: &mut Vec<Frame>) {
        let mut ordered = std::mem::take(&mut self.ordered);
        self.reorder.reset(&mut ordered);
        self.consume(&mut ordered, out);
        self.ordered = ordered;
        if let Some(p) = self.pending.take() {
            if self.codec == Codec::Opus {
                self.finish(p, out);
            } else {
                self.dropped_frames += 1;
            }
        }
        if self.codec != Codec::Opus {
            self.waiting_key = true;
        }
    }

    fn consume(&mut self, ordered: &mut Vec<Ordered>, out: &mut Vec<Frame>) {
        for o in ordered.drain(..) {
            match o {
                Ordered::Gap(_) => {
                    if self.codec != Codec::Opus {
                        if let Some(p) = self.pending.as_mut() {
                            p.broken = true;
                        }
                        self.waiting_key = true;
                        self.want_keyframe = true;
                    }
                }
                Ordered::Packet(p) => self.packet(p, out),
            }
        }
    }

    fn packet(&mut self, p: TapPacket, out: &mut Vec<Frame>) {
        if self.codec == Codec::Opus {
            if !p.payload.is_empty() {
                out.push(Frame {
                    data: p.payload.to_vec(),
                    timestamp: p.timestamp,
                    keyframe: true,
                    arrived: p.arrived,
                });
            }
            return;
        }
        if let Some(cur) = self.pending.take() {
            if cur.timestamp == p.timestamp {
                self.pending = Some(cur);
            } else {
                // The frame ended without its marker: its tail may be lost,
                // but a loss shows as a gap; hand it on as complete.
                self.finish(cur, out);
            }
        }
        let cur = self.pending.get_or_insert_with(|| Pending {
            timestamp: p.timestamp,
            arrived: p.arrived,
            payloads: Vec::new(),
            broken: false,
        });
        // Bound a frame: 16 MB of payload is far beyond any real frame.
        if cur.payloads.iter().map(Bytes::len).sum::<usize>() > 16 << 20 {
            cur.broken = true;
        } else {
            cur.payloads.push(p.payload);
        }
        if p.marker
            && let Some(cur) = self.pending.take()
        {
            self.finish(cur, out);
        }
    }

    fn finish(&mut self, p: Pending, out: &mut Vec<Frame>) {
        if self.codec == Codec::Opus {
            return;
        }
        let built = if p.broken {
            None
        } else {
            build_video(self.codec, &p.payloads)
        };
        match built {
            Some((data, keyframe)) if keyframe || !self.waiting_key => {
                if keyframe {
                    self.waiting_key = false;
                }
                out.push(Frame {
                    data,
                    timestamp: p.timestamp,
                    keyframe,
                    arrived: p.arrived,
                });
            }
            _ => {
                self.dropped_frames += 1;
                self.waiting_key = true;
                self.want_keyframe = true;
            }
        }
    }
}

/// A frame's payloads → (access unit, key frame?), `None` when it is
/// incomplete or not understood.
pub fn build_video(codec: Codec, payloads: &[Bytes]) -> Option<(Vec<u8>, bool)> {
    let (data, key) = match codec {
        Codec::Vp8 => vp8_frame(payloads)?,
        Codec::Vp9 => vp9_frame(payloads)?,
        Codec::H264 => h264_frame(payloads)?,
        Codec::Av1 => av1_frame(payloads)?,
        Codec::Opus => return None,
    };
    if data.is_empty() {
        return None;
    }
    Some((data, key))
}

// ---------------------------------------------------------------- VP8

/// RFC 7741 payload descriptor → (start of partition 0?, header length).
fn vp8_descriptor(p: &[u8]) -> Option<(bool, usize)> {
    let b0 = *p.first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut n = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(n)?;
        n += 1;
        if x & 0x80 != 0 {
            let pid = *p.get(n)?;
            n += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            n += 1;
        }
        if x & 0x30 != 0 {
            n += 1;
        }
    }
    (n <= p.len()).then_some((start, n))
}

fn vp8_frame(payloads: &[Bytes]) -> Option<(Vec<u8>, bool)> {
    let mut data = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let (start, n) = vp8_descriptor(p)?;
        if i == 0 && !start {
            return None;
        }
        data.extend_from_slice(&p[n..]);
    }
    let key = data.first()? & 0x01 == 0;
    Some((data, key))
}

// ---------------------------------------------------------------- VP9

/// VP9 RTP payload descriptor → (B: start of frame, header length).
fn vp9_descriptor(p: &[u8]) -> Option<(bool, usize)> {
    let b0 = *p.first()?;
    let (i, pbit, l, f, b, v) = (
        b0 & 0x80 != 0,
        b0 & 0x40 != 0,
        b0 & 0x20 != 0,
        b0 & 0x10 != 0,
        b0 & 0x08 != 0,
        b0 & 0x02 != 0,
    );
    let mut n = 1;
    if i {
        let m = *p.get(n)?;
        n += if m & 0x80 != 0 { 2 } else { 1 };
    }
    if l {
        n += 1;
        if !f {
            n += 1; // TL0PICIDX
        }
    }
    if f && pbit {
        for _ in 0..3 {
            let d = *p.get(n)?;
            n += 1;
            if d & 0x01 == 0 {
                break;
            }
        }
    }
    if v {
        let ss = *p.get(n)?;
        n += 1;
        let ns = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            n += 4 * ns;
        }
        if ss & 0x08 != 0 {
            let ng = *p.get(n)?;
            n += 1;
            for _ in 0..ng {
                let g = *p.get(n)?;
                n += 1 + usize::from((g >> 2) & 0x03);
            }
        }
    }
    (n <= p.len()).then_some((b, n))
}

fn vp9_frame(payloads: &[Bytes]) -> Option<(Vec<u8>, bool)> {
    let mut data = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let (start, n) = vp9_descriptor(p)?;
        if i == 0 && !start {
            return None;
        }
        data.extend_from_slice(&p[n..]);
    }
    let key = vp9_header(&data).is_some_and(|h| h.key);
    Some((data, key))
}

/// What a VP9 uncompressed header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp9Header {
    pub key: bool,
    pub profile: u8,
    pub bit_depth: u8,
    /// 0 4:2:0, 1 4:2:2, 3 4:4:4 (vpcC chroma_subsampling); only for key frames.
    pub chroma: u8,
    pub full_range: bool,
    pub width: u32,
    pub height: u32,
}

/// Parses the start of a VP9 uncompressed header (the first frame of a
/// superframe is at offset 0). Width/height only for key frames.
pub fn vp9_header(data: &[u8]) -> Option<Vp9Header> {
    let mut r = BitReader::new(data);
    if r.bits(2)? != 2 {
        return None; // frame_marker
    }
    let lo = r.bits(1)?;
    let hi = r.bits(1)?;
    let profile = ((hi << 1) | lo) as u8;
    if profile == 3 {
        r.bits(1)?;
    }
    let mut h = Vp9Header {
        key: false,
        profile,
        bit_depth: 8,
        chroma: 1,
        full_range: false,
        width: 0,
        height: 0,
    };
    if r.bits(1)? == 1 {
        return Some(h); // show_existing_frame
    }
    let frame_type = r.bits(1)?;
    r.bits(2)?; // show_frame, error_resilient_mode
    if frame_type != 0 {
        return Some(h);
    }
    if r.bits(24)? != 0x49_83_42 {
        return None;
    }
    if profile >= 2 {
        h.bit_depth = if r.bits(1)? == 1 { 12 } else { 10 };
    }
    let color_space = r.bits(3)?;
    if color_space != 7 {
        h.full_range = r.bits(1)? == 1;
        if profile == 1 || profile == 3 {
            let sx = r.bits(1)?;
            let sy = r.bits(1)?;
            r.bits(1)?;
            h.chroma = match (sx, sy) {
                (1, 1) => 1,
                (1, 0) => 2,
                _ => 3,
            };
        }
    } else {
        h.full_range = true;
        h.chroma = 3;
        if profile == 1 || profile == 3 {
            r.bits(1)?;
        }
    }
    h.width = r.bits(16)? + 1;
    h.height = r.bits(16)? + 1;
    h.key = true;
    Some(h)
}

// ---------------------------------------------------------------- H.264

/// NAL units of a frame (RFC 6184 single NAL, STAP-A, FU-A) → AVCC.
fn h264_frame(payloads: &[Bytes]) -> Option<(Vec<u8>, bool)> {
    let mut nals: Vec<Vec<u8>> = Vec::new();
    let mut fu: Option<Vec<u8>> = None;
    for p in payloads {
        let b0 = *p.first()?;
        match b0 & 0x1f {
            1..=23 => nals.push(p.to_vec()),
            24 => {
                let mut rest = p.get(1..)?;
                while !rest.is_empty() {
                    let size = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
                    let nal = rest.get(2..2 + size)?;
                    if !nal.is_empty() {
                        nals.push(nal.to_vec());
                    }
                    rest = &rest[2 + size..];
                }
            }
            28 => {
                let h = *p.get(1)?;
                let body = p.get(2..)?;
                if h & 0x80 != 0 {
                    let mut nal = vec![(b0 & 0xe0) | (h & 0x1f)];
                    nal.extend_from_slice(body);
                    fu = Some(nal);
                } else {
                    // A continuation without its start: the start was lost.
                    fu.as_mut()?.extend_from_slice(body);
                }
                if h & 0x40 != 0 {
                    nals.push(fu.take()?);
                }
            }
            _ => return None, // STAP-B, MTAP, FU-B: not in packetization-mode 1
        }
    }
    if fu.is_some() {
        return None; // an FU-A without its end
    }
    let mut data = Vec::new();
    let mut key = false;
    for nal in nals {
        let t = nal.first().map(|b| b & 0x1f).unwrap_or(0);
        if t == 9 || t == 0 {
            continue; // access unit delimiters do not belong in MP4 samples
        }
        key |= t == 5;
        data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        data.extend_from_slice(&nal);
    }
    Some((data, key))
}

/// The NAL units of an AVCC access unit.
pub fn avcc_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let nal = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(nal)
    })
}

// ---------------------------------------------------------------- AV1

fn put_leb128(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_FRAME_HEADER: u8 = 3;
const OBU_FRAME: u8 = 6;
const OBU_TILE_LIST: u8 = 8;
const OBU_PADDING: u8 = 15;

/// RTP AV1 (aggregation header, OBU elements) → low-overhead OBUs with sizes.
fn av1_frame(payloads: &[Bytes]) -> Option<(Vec<u8>, bool)> {
    let mut obus: Vec<Vec<u8>> = Vec::new();
    let mut partial: Option<Vec<u8>> = None;
    for (pi, p) in payloads.iter().enumerate() {
        let agg = *p.first()?;
        let (z, y, w) = (
            agg & 0x80 != 0,
            agg & 0x40 != 0,
            usize::from((agg >> 4) & 3),
        );
        if pi == 0 && z {
            return None; // continues an OBU from a packet of an earlier frame
        }
        let mut rest = p.get(1..)?;
        let mut index = 0;
        while !rest.is_empty() {
            let last_by_count = w != 0 && index + 1 == w;
            let element = if last_by_count {
                let e = rest;
                rest = &[];
                e
            } else {
                let (len, n) = leb128(rest)?;
                let e = rest.get(n..n.checked_add(len as usize)?)?;
                rest = &rest[n + len as usize..];
                e
            };
            let is_last = rest.is_empty();
            let mut obu = if index == 0 && z {
                let mut prev = partial.take()?;
                prev.extend_from_slice(element);
                prev
            } else {
                if partial.is_some() {
                    return None; // a fragment that was never continued
                }
                element.to_vec()
            };
            if is_last && y {
                partial = Some(std::mem::take(&mut obu));
            } else if !obu.is_empty() {
                obus.push(obu);
            }
            index += 1;
            if w != 0 && index >= w && !rest.is_empty() {
                return None;
            }
        }
    }
    if partial.is_some() {
        return None;
    }
    let mut data = Vec::new();
    let mut seq: Option<Av1SequenceHeader> = None;
    let mut key = false;
    let mut saw_frame = false;
    for obu in &obus {
        let header = *obu.first()?;
        let t = (header >> 3) & 0x0f;
        let ext = header & 0x04 != 0;
        let body_start = 1 + usize::from(ext);
        let mut body = obu.get(body_start..)?;
        if header & 0x02 != 0 {
            let (len, n) = leb128(body)?;
            body = body.get(n..n.checked_add(len as usize)?)?;
        }
        if matches!(t, OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING) {
            continue;
        }
        if t == OBU_SEQUENCE_HEADER {
            seq = av1_sequence_header(body);
        }
        if (t == OBU_FRAME || t == OBU_FRAME_HEADER) && !saw_frame {
            saw_frame = true;
            key = match seq {
                Some(s) if s.reduced_still_picture_header => true,
                Some(_) => {
                    let b = *body.first()?;
                    // show_existing_frame(1) then frame_type(2): KEY_FRAME is 0.
                    b & 0x80 == 0 && (b >> 5) & 0x03 == 0
                }
                None => false,
            };
        }
        data.push(header | 0x02);
        if ext {
            data.push(*obu.get(1)?);
        }
        put_leb128(&mut data, body.len());
        data.extend_from_slice(body);
    }
    Some((data, key))
}

/// The OBUs of a low-overhead (sized) AV1 temporal unit: (type, whole OBU).
pub fn av1_obus(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let header = *rest.first()?;
        let hl = 1 + usize::from(header & 0x04 != 0);
        if header & 0x02 == 0 {
            return None;
        }
        let (len, n) = leb128(rest.get(hl..)?)?;
        let end = hl.checked_add(n)?.checked_add(len as usize)?;
        let obu = rest.get(..end)?;
        rest = &rest[end..];
        Some(((header >> 3) & 0x0f, obu))
    })
}

// ---------------------------------------------------------------- key frame info

/// What the sample entry needs, from a key frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoInfo {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub config: VideoConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoConfig {
    Vp8,
    Vp9(Vp9Header),
    Avc {
        sps: Vec<u8>,
        pps: Vec<u8>,
    },
    Av1 {
        seq: Av1SequenceHeader,
        obu: Vec<u8>,
    },
}

/// The sample-entry information carried by a key frame (`None` when the
/// frame is no key frame or its header cannot be read).
pub fn video_info(codec: Codec, data: &[u8]) -> Option<VideoInfo> {
    let (width, height, config) = match codec {
        Codec::Vp8 => {
            if data.len() < 10 || data[0] & 1 != 0 || data[3..6] != [0x9d, 0x01, 0x2a] {
                return None;
            }
            let w = u32::from(u16::from_le_bytes([data[6], data[7]]) & 0x3fff);
            let h = u32::from(u16::from_le_bytes([data[8], data[9]]) & 0x3fff);
            (w, h, VideoConfig::Vp8)
        }
        Codec::Vp9 => {
            let h = vp9_header(data)?;
            if !h.key {
                return None;
            }
            (h.width, h.height, VideoConfig::Vp9(h))
        }
        Codec::H264 => {
            let mut sps = None;
            let mut pps = None;
            for nal in avcc_nals(data) {
                match nal.first().map(|b| b & 0x1f) {
                    Some(7) if sps.is_none() => sps = Some(nal.to_vec()),
                    Some(8) if pps.is_none() => pps = Some(nal.to_vec()),
                    _ => {}
                }
            }
            let (sps, pps) = (sps?, pps?);
            if sps.len() < 4 {
                return None;
            }
            let (w, h) = h264_sps_size(&sps)?;
            (w, h, VideoConfig::Avc { sps, pps })
        }
        Codec::Av1 => {
            let (_, obu) = av1_obus(data).find(|(t, _)| *t == OBU_SEQUENCE_HEADER)?;
            let hl = 1 + usize::from(obu.first()? & 0x04 != 0);
            let (_, n) = leb128(obu.get(hl..)?)?;
            let seq = av1_sequence_header(obu.get(hl + n..)?)?;
            (
                seq.width,
                seq.height,
                VideoConfig::Av1 {
                    seq,
                    obu: obu.to_vec(),
                },
            )
        }
        Codec::Opus => return None,
    };
    (width > 0 && height > 0).then_some(VideoInfo {
        codec,
        width,
        height,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> TapPacket {
        TapPacket {
            kind: MediaKind::Video,
            payload_type: 96,
            sequence_number: seq,
            timestamp: ts,
            marker,
            payload: Bytes::copy_from_slice(payload),
            arrived: Instant::now(),
        }
    }

    fn seqs(out: &[Ordered]) -> Vec<i64> {
        out.iter()
            .map(|o| match o {
                Ordered::Packet(p) => i64::from(p.sequence_number),
                Ordered::Gap(n) => -(*n as i64),
            })
            .collect()
    }

    #[test]
    fn reorder_fixes_swaps_drops_duplicates_and_gives_up_holes() {
        let mut r = Reorder::new(3);
        let mut out = Vec::new();
        for s in [65534u16, 0, 65535, 65535, 1] {
            r.push(pkt(s, 0, false, b"x"), &mut out);
        }
        assert_eq!(seqs(&out), vec![65534, 65535, 0, 1]);
        out.clear();
        // 2 is lost: 3, 4, 5 wait; the fourth waiting packet gives the hole up.
        for s in [3u16, 4, 5, 6] {
            r.push(pkt(s, 0, false, b"x"), &mut out);
        }
        assert_eq!(seqs(&out), vec![-1, 3, 4, 5, 6]);
        out.clear();
        r.push(pkt(2, 0, false, b"x"), &mut out); // too late
        assert!(out.is_empty());
    }

    #[test]
    fn a_hole_is_given_up_after_the_wait() {
        let mut r = Reorder::new(100);
        let mut out = Vec::new();
        let t0 = Instant::now();
        for s in [10u16, 12, 13] {
            let mut p = pkt(s, 0, false, b"x");
            p.arrived = t0;
            r.push(p, &mut out);
        }
        assert_eq!(seqs(&out), vec![10]);
        out.clear();
        r.expire(
            t0 + Duration::from_millis(100),
            Duration::from_millis(300),
            &mut out,
        );
        assert!(out.is_empty(), "still waiting for 11");
        r.expire(
            t0 + Duration::from_millis(400),
            Duration::from_millis(300),
            &mut out,
        );
        assert_eq!(seqs(&out), vec![-1, 12, 13]);
    }

    #[test]
    fn vp8_frames_and_loss_waits_for_a_key_frame() {
        let mut d = TrackDepacketizer::new(Codec::Vp8);
        let mut out = Vec::new();
        // Key frame: tag with bit0 = 0, start code, 64x48.
        let key = [0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 64, 0, 48, 0];
        d.push(pkt(1, 0, true, &key), &mut out);
        d.push(pkt(2, 3000, false, &[0x10, 0x01, 0xaa]), &mut out);
        d.push(pkt(3, 3000, true, &[0x00, 0xbb]), &mut out);
        assert_eq!(out.len(), 2);
        assert!(out[0].keyframe && !out[1].keyframe);
        assert_eq!(out[1].data, vec![0x01, 0xaa, 0xbb]);
        let info = video_info(Codec::Vp8, &out[0].data).unwrap();
        assert_eq!((info.width, info.height), (64, 48));
        out.clear();
        // Packet 5 lost: frame 6000 is broken, 9000 is a delta frame (dropped).
        d.push(pkt(4, 6000, false, &[0x10, 0x01]), &mut out);
        for s in 6..=200u16 {
            let ts = 9000 + u32::from(s - 6) * 3000;
            d.push(pkt(s, ts, true, &[0x10, 0x01]), &mut out);
        }
        assert!(out.is_empty(), "delta frames after a loss are dropped");
        assert!(d.want_keyframe);
        assert!(d.dropped_frames >= 2);
        d.push(pkt(201, 1_000_000, true, &key), &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
    }

    #[test]
    fn h264_stap_a_and_fu_a_make_avcc() {
        let sps = [
            0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x06, 0xd0, 0xa1, 0x35,
        ];
        let pps = [0x68, 0xce, 0x06, 0xe2];
        let mut stap = vec![24];
        for nal in [&sps[..], &pps[..]] {
            stap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            stap.extend_from_slice(nal);
        }
        let fu1 = [0x7c, 0x85, 1, 2, 3];
        let fu2 = [0x7c, 0x45, 4, 5];
        let payloads = [
            Bytes::from(stap),
            Bytes::copy_from_slice(&fu1),
            Bytes::copy_from_slice(&fu2),
        ];
        let (data, key) = build_video(Codec::H264, &payloads).unwrap();
        assert!(key);
        let nals: Vec<&[u8]> = avcc_nals(&data).collect();
        assert_eq!(nals.len(), 3);
        assert_eq!(nals[2], &[0x65, 1, 2, 3, 4, 5]);
        assert!(video_info(Codec::H264, &data).is_some());
        // A continuation without its start is incomplete.
        assert!(build_video(Codec::H264, &[Bytes::copy_from_slice(&fu2)]).is_none());
    }

    #[test]
    fn garbage_never_panics() {
        // A small xorshift generator: reproducible, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::Opus] {
            let mut d = TrackDepacketizer::new(codec);
            let mut out = Vec::new();
            for i in 0..20_000u32 {
                let len = (next() % 64) as usize;
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let seq = if next() % 10 == 0 {
                    next() as u16
                } else {
                    i as u16
                };
                d.push(
                    pkt(seq, (i / 3) * 3000, next() % 3 == 0, &payload),
                    &mut out,
                );
                for f in out.drain(..) {
                    let _ = video_info(codec, &f.data);
                }
                let _ = build_video(codec, &[Bytes::from(payload.clone())]);
                let _ = video_info(codec, &payload);
                let _ = vp9_header(&payload);
                let _ = h264_sps_size(&payload);
                let _ = av1_sequence_header(&payload);
            }
        }
    }
}
