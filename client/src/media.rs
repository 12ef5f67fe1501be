//! Synthetic media for the load generator's publisher: VP8- or H.264-shaped frames and
//! Opus-sized packets generated once, plus the send-time trailer every viewer reads back.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// The trailer at the end of every RTP payload the publisher sends: a magic and
/// the send time in µs since [`base`] (publisher and viewers share one process).
/// The magic's last byte is a tag naming the encoding: `T` ([`TAG_SINGLE`]) for a
/// publisher without simulcast and for audio, `0`–`2` for simulcast encoding 0–2
/// (`q`, `h`, `f`), so a viewer can tell which encoding the SFU forwards it
/// without changing the payload size single-layer runs measured before.
pub const TRAILER_MAGIC: [u8; 4] = *b"TDLT";
pub const TRAILER_LEN: usize = 12;
/// The tag of payloads that belong to no simulcast encoding.
pub const TAG_SINGLE: u8 = b'T';
/// The rids the publisher gives its encodings, lowest first (browsers' names).
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// Largest RTP payload the publisher produces (descriptor + data + trailer).
pub const MAX_PAYLOAD: usize = 1200;
/// Payload types the load generator offers (the server answers with the offerer's numbers).
pub const PT_VP8: u8 = 96;
pub const PT_H264: u8 = 102;
pub const PT_OPUS: u8 = 111;

/// The video codec the publisher's frames are shaped like. The server forwards
/// either without looking inside; viewers use it to spot key frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    #[default]
    Vp8,
    /// RFC 6184, packetization-mode 1, constrained baseline (`42e01f`).
    H264,
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "VP8",
            VideoCodec::H264 => "H.264",
        }
    }

    pub fn payload_type(self) -> u8 {
        match self {
            VideoCodec::Vp8 => PT_VP8,
            VideoCodec::H264 => PT_H264,
        }
    }
}

/// Parameter sets a key frame carries ahead of its IDR slice: shaped like a
/// constrained-baseline stream's, not meant to be decoded (the slices are noise).
const H264_SPS: &[u8] = &[0x67, 0x42, 0xe0, 0x1f, 0x95, 0xa0, 0x50, 0x7e, 0x40];
const H264_PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

static BASE: OnceLock<Instant> = OnceLock::new();

/// The process-wide time base of send-time trailers.
pub fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// Microseconds since [`base`].
pub fn now_us() -> u64 {
    base().elapsed().as_micros() as u64
}

/// Microseconds since [`base`] of a given instant (0 before the base).
pub fn us_of(t: Instant) -> u64 {
    t.saturating_duration_since(base()).as_micros() as u64
}

/// The trailer tag of simulcast encoding `index` (0–2).
pub fn encoding_tag(index: usize) -> u8 {
    b'0' + index.min(9) as u8
}

/// Appends the send-time trailer with its encoding tag.
pub fn put_trailer(buf: &mut BytesMut, tag: u8, sent_us: u64) {
    buf.put_slice(&TRAILER_MAGIC[..3]);
    buf.put_u8(tag);
    buf.put_u64(sent_us);
}

/// Reads the encoding tag and the send time from a payload's trailer, if it
/// carries one.
pub fn read_tagged_trailer(payload: &[u8]) -> Option<(u8, u64)> {
    if payload.len() < TRAILER_LEN {
        return None;
    }
    let t = &payload[payload.len() - TRAILER_LEN..];
    if t[..3] != TRAILER_MAGIC[..3] {
        return None;
    }
    let tag = t[3];
    if tag != TAG_SINGLE && !tag.is_ascii_digit() {
        return None;
    }
    Some((tag, u64::from_be_bytes(t[4..12].try_into().ok()?)))
}

/// Reads the send time from a payload's trailer, if it carries one.
pub fn read_trailer(payload: &[u8]) -> Option<u64> {
    read_tagged_trailer(payload).map(|(_, t)| t)
}

/// The simulcast encoding a payload belongs to (`None`: untagged, no simulcast).
pub fn encoding_of(payload: &[u8]) -> Option<usize> {
    match read_tagged_trailer(payload)? {
        (TAG_SINGLE, _) => None,
        (tag, _) => Some(usize::from(tag - b'0')),
    }
}

/// True when a VP8 RTP payload (RFC 7741) starts a key frame: S=1, PID=0 and
/// the VP8 frame tag's P bit clear.
pub fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    if first & 0x10 == 0 || first & 0x07 != 0 {
        return false;
    }
    let mut i = 1;
    if first & 0x80 != 0 {
        let Some(&x) = payload.get(1) else {
            return false;
        };
        i = 2;
        if x & 0x80 != 0 {
            // PictureID, 7 or 15 bits.
            i += match payload.get(i) {
                Some(b) if b & 0x80 != 0 => 2,
                Some(_) => 1,
                None => return false,
            };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    payload.get(i).is_some_and(|b| b & 0x01 == 0)
}

/// True when an H.264 RTP payload (RFC 6184) starts a key frame: an IDR slice or an
/// SPS, alone, first in a FU-A, or inside a STAP-A.
pub fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let is_key = |nal_header: u8| matches!(nal_header & 0x1f, 5 | 7);
    match first & 0x1f {
        24 => {
            let mut i = 1;
            while let (Some(&hi), Some(&lo), Some(&nal)) =
                (payload.get(i), payload.get(i + 1), payload.get(i + 2))
            {
                if is_key(nal) {
                    return true;
                }
                i += 2 + usize::from(u16::from_be_bytes([hi, lo]));
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(*fu)),
        _ => is_key(first),
    }
}

/// One RTP packet's worth of media, before the RTP header.
pub struct Chunk {
    pub payload: Bytes,
    pub marker: bool,
}

/// Video frames shaped like VP8 (payload descriptor, frame tag, key frames with the
/// start code) or H.264 (parameter sets, IDR and non-IDR slices in FU-A fragments),
/// filled from random bytes generated once: no encoder runs.
pub struct VideoSource {
    codec: VideoCodec,
    /// The trailer tag of this source's payloads.
    tag: u8,
    /// The picture size a VP8 key frame announces.
    size: (u16, u16),
    noise: Bytes,
    frame_bytes: usize,
    pub fps: u32,
    keyframe_every: u32,
    frame_no: u64,
    since_key: u32,
    force_key: bool,
}

impl VideoSource {
    pub fn new(codec: VideoCodec, bitrate_bps: u64, fps: u32, keyframe_interval_s: f64) -> Self {
        let fps = fps.max(1);
        let frame_bytes = ((bitrate_bps / 8) / fps as u64).max(64) as usize;
        let noise: Vec<u8> = (0..(frame_bytes + 4096)).map(|_| rand::random()).collect();
        Self {
            codec,
            tag: TAG_SINGLE,
            size: (320, 240),
            noise: Bytes::from(noise),
            frame_bytes,
            fps,
            keyframe_every: ((keyframe_interval_s * fps as f64).round() as u32).max(1),
            frame_no: 0,
            since_key: 0,
            force_key: false,
        }
    }

    /// The source of simulcast encoding `index` (0 = `q`, 1 = `h`, 2 = `f`): its
    /// payloads carry the encoding's tag and its VP8 key frames announce 1280×720
    /// scaled down by 4, 2 or 1 (as a browser's q/h/f), so the server sees three sizes.
    pub fn for_encoding(mut self, index: usize) -> Self {
        self.tag = encoding_tag(index);
        let down = [4u16, 2, 1][index.min(2)];
        self.size = (1280 / down, 720 / down);
        self
    }

    /// The next frame is a key frame (a PLI or FIR arrived).
    pub fn request_keyframe(&mut self) {
        self.force_key = true;
    }

    /// RTP timestamp increment per frame at 90 kHz.
    pub fn ts_step(&self) -> u32 {
        90_000 / self.fps
    }

    /// The next frame's packets, trailers stamped with `sent_us`; returns (chunks, key).
    pub fn next_frame(&mut self, sent_us: u64) -> (Vec<Chunk>, bool) {
        let key = self.frame_no == 0 || self.force_key || self.since_key >= self.keyframe_every;
        if key {
            self.since_key = 0;
            self.force_key = false;
        }
        self.since_key += 1;
        self.frame_no += 1;
        let offset = (self.frame_no as usize * 131) % 4096;
        let data = self.noise.slice(offset..offset + self.frame_bytes);
        let chunks = match self.codec {
            VideoCodec::Vp8 => vp8_packets(key, self.size, &data, self.tag, sent_us),
            VideoCodec::H264 => h264_packets(key, &data, self.tag, sent_us),
        };
        (chunks, key)
    }
}

/// RFC 7741: a payload descriptor on every packet (S=1 on the first), the frame tag
/// (and a key frame's start code) ahead of the data.
fn vp8_packets(key: bool, size: (u16, u16), data: &[u8], tag: u8, sent_us: u64) -> Vec<Chunk> {
    let (w, h) = (size.0.to_le_bytes(), size.1.to_le_bytes());
    let key_header = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, w[0], w[1], h[0], h[1]];
    let header: &[u8] = if key {
        // Frame tag (P=0, show_frame), start code, width and height (scale 0).
        &key_header
    } else {
        &[0x11, 0x02, 0x00]
    };
    let room = MAX_PAYLOAD - 1 - TRAILER_LEN;
    let mut chunks = Vec::with_capacity(data.len() / room + 2);
    let mut pos = 0usize;
    let total = header.len() + data.len();
    while pos < total {
        let n = room.min(total - pos);
        let mut p = BytesMut::with_capacity(1 + n + TRAILER_LEN);
        p.put_u8(if pos == 0 { 0x10 } else { 0x00 });
        let end = pos + n;
        if pos < header.len() {
            let h_end = end.min(header.len());
            p.put_slice(&header[pos..h_end]);
            if end > header.len() {
                p.put_slice(&data[..end - header.len()]);
            }
        } else {
            p.put_slice(&data[pos - header.len()..end - header.len()]);
        }
        put_trailer(&mut p, tag, sent_us);
        pos = end;
        chunks.push(Chunk {
            payload: p.freeze(),
            marker: pos >= total,
        });
    }
    chunks
}

/// RFC 6184, packetization-mode 1: a key frame's SPS and PPS in one STAP-A, then the
/// slice (IDR or not) in FU-A fragments, each with the trailer after its data.
fn h264_packets(key: bool, data: &[u8], tag: u8, sent_us: u64) -> Vec<Chunk> {
    let room = MAX_PAYLOAD - 2 - TRAILER_LEN;
    let mut chunks = Vec::with_capacity(data.len() / room + 3);
    if key {
        let mut p = BytesMut::with_capacity(64);
        p.put_u8(0x78); // F=0, NRI=3, type 24: STAP-A
        for nal in [H264_SPS, H264_PPS] {
            p.put_u16(nal.len() as u16);
            p.put_slice(nal);
        }
        // The trailer rides in a last aggregation unit (an SEI NAL unit), so the
        // packet stays well formed and still ends with it.
        p.put_u16(1 + TRAILER_LEN as u16);
        p.put_u8(0x06);
        put_trailer(&mut p, tag, sent_us);
        chunks.push(Chunk {
            payload: p.freeze(),
            marker: false,
        });
    }
    // NRI 3 for an IDR slice (type 5), 2 for a non-IDR one (type 1).
    let nal_header: u8 = if key { 0x65 } else { 0x41 };
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + room).min(data.len());
        let mut p = BytesMut::with_capacity(2 + end - pos + TRAILER_LEN);
        p.put_u8((nal_header & 0xe0) | 28); // FU indicator: type 28, FU-A
        let mut fu_header = nal_header & 0x1f;
        if pos == 0 {
            fu_header |= 0x80;
        }
        if end == data.len() {
            fu_header |= 0x40;
        }
        p.put_u8(fu_header);
        p.put_slice(&data[pos..end]);
        put_trailer(&mut p, tag, sent_us);
        chunks.push(Chunk {
            payload: p.freeze(),
            marker: end == data.len(),
        });
        pos = end;
    }
    chunks
}

/// Opus-sized audio packets (20 ms, ~48 kbps) of random bytes.
pub struct AudioSource {
    noise: Bytes,
}

impl Default for AudioSource {
    fn default() -> Self {
        let noise: Vec<u8> = (0..108).map(|_| rand::random()).collect();
        Self {
            noise: Bytes::from(noise),
        }
    }
}

impl AudioSource {
    pub const PTIME_MS: u64 = 20;
    pub const TS_STEP: u32 = 960;

    pub fn next_packet(&mut self, sent_us: u64) -> Chunk {
        let mut p = BytesMut::with_capacity(self.noise.len() + TRAILER_LEN);
        p.put_slice(&self.noise);
        put_trailer(&mut p, TAG_SINGLE, sent_us);
        Chunk {
            payload: p.freeze(),
            marker: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_trailers_and_keyframes_are_recognised() {
        let mut v = VideoSource::new(VideoCodec::Vp8, 2_500_000, 30, 2.0);
        let (chunks, key) = v.next_frame(42);
        assert!(key);
        assert!(chunks.len() >= 8, "{} packets", chunks.len());
        assert!(vp8_starts_keyframe(&chunks[0].payload));
        assert!(!vp8_starts_keyframe(&chunks[1].payload));
        assert!(chunks.last().unwrap().marker && !chunks[0].marker);
        assert!(chunks.iter().all(|c| read_trailer(&c.payload) == Some(42)));
        assert!(chunks.iter().all(|c| c.payload.len() <= MAX_PAYLOAD));
        let (chunks, key) = v.next_frame(43);
        assert!(!key && !vp8_starts_keyframe(&chunks[0].payload));
        v.request_keyframe();
        let (chunks, key) = v.next_frame(44);
        assert!(key && vp8_starts_keyframe(&chunks[0].payload));
        let total: usize = chunks.iter().map(|c| c.payload.len()).sum();
        assert!(total > 2_500_000 / 8 / 30, "{total}");
    }

    #[test]
    fn h264_frames_are_fragmented_and_key_frames_carry_parameter_sets() {
        let mut v = VideoSource::new(VideoCodec::H264, 2_500_000, 30, 2.0);
        let (chunks, key) = v.next_frame(7);
        assert!(key);
        // STAP-A with SPS, PPS and the trailer's SEI unit, then FU-A fragments.
        let stap = &chunks[0].payload;
        assert_eq!(stap[0] & 0x1f, 24);
        assert!(h264_starts_keyframe(stap));
        assert_eq!(&stap[3..3 + H264_SPS.len()], H264_SPS);
        let fus = &chunks[1..];
        assert!(fus.len() >= 8, "{} fragments", fus.len());
        assert!(fus.iter().all(|c| c.payload[0] & 0x1f == 28));
        assert_eq!(fus[0].payload[1], 0x80 | 5, "start bit, IDR");
        assert_eq!(fus.last().unwrap().payload[1], 0x40 | 5, "end bit, IDR");
        assert!(fus[1..fus.len() - 1].iter().all(|c| c.payload[1] == 5));
        assert!(h264_starts_keyframe(&fus[0].payload));
        assert!(!h264_starts_keyframe(&fus[1].payload));
        assert!(chunks.iter().all(|c| read_trailer(&c.payload) == Some(7)));
        assert!(chunks.iter().all(|c| c.payload.len() <= MAX_PAYLOAD));
        assert!(chunks.last().unwrap().marker);
        assert_eq!(chunks.iter().filter(|c| c.marker).count(), 1);

        let (chunks, key) = v.next_frame(8);
        assert!(!key);
        assert_eq!(chunks[0].payload[0], 0x40 | 28, "NRI 2, FU-A");
        assert_eq!(chunks[0].payload[1], 0x80 | 1, "start bit, non-IDR");
        assert!(chunks.iter().all(|c| !h264_starts_keyframe(&c.payload)));
        // Slice data (without the FU headers and trailers) is the frame's size.
        let data: usize = chunks
            .iter()
            .map(|c| c.payload.len() - 2 - TRAILER_LEN)
            .sum();
        assert_eq!(data, 2_500_000 / 8 / 30);
    }

    #[test]
    fn h264_key_frames_are_recognised_in_every_packetization() {
        assert!(h264_starts_keyframe(&[0x65, 1, 2])); // single IDR NAL unit
        assert!(h264_starts_keyframe(&[0x67, 0x42])); // single SPS
        assert!(!h264_starts_keyframe(&[0x41, 1, 2])); // non-IDR slice
        assert!(!h264_starts_keyframe(&[0x7c, 0x01])); // FU-A, non-IDR
        assert!(!h264_starts_keyframe(&[0x7c, 0x05])); // FU-A, IDR, not its start
        // STAP-A of an SEI then an IDR; and one cut short.
        assert!(h264_starts_keyframe(&[0x78, 0, 1, 0x06, 0, 2, 0x65, 9]));
        assert!(!h264_starts_keyframe(&[0x78, 0, 1, 0x06, 0]));
        assert!(!h264_starts_keyframe(&[]));
    }

    #[test]
    fn simulcast_payloads_name_their_encoding_and_size() {
        let mut q = VideoSource::new(VideoCodec::Vp8, 200_000, 30, 2.0).for_encoding(0);
        let mut f = VideoSource::new(VideoCodec::Vp8, 1_800_000, 30, 2.0).for_encoding(2);
        let (qc, _) = q.next_frame(5);
        let (fc, _) = f.next_frame(6);
        assert!(qc.iter().all(|c| encoding_of(&c.payload) == Some(0)));
        assert!(fc.iter().all(|c| encoding_of(&c.payload) == Some(2)));
        assert!(fc.iter().all(|c| read_trailer(&c.payload) == Some(6)));
        // 320×180 and 1280×720 after the start code (descriptor byte, 3-byte tag, 3-byte code).
        assert_eq!(&qc[0].payload[7..11], &[0x40, 0x01, 0xb4, 0x00]);
        assert_eq!(&fc[0].payload[7..11], &[0x00, 0x05, 0xd0, 0x02]);
        let mut single = VideoSource::new(VideoCodec::H264, 500_000, 30, 2.0);
        let (sc, _) = single.next_frame(7);
        assert!(sc.iter().all(|c| encoding_of(&c.payload).is_none()));
        assert!(sc.iter().all(|c| read_trailer(&c.payload) == Some(7)));
        let mut audio = AudioSource::default();
        assert_eq!(encoding_of(&audio.next_packet(1).payload), None);
    }

    #[test]
    fn foreign_payloads_have_no_trailer() {
        assert_eq!(read_trailer(b"short"), None);
        assert_eq!(read_trailer(&[0u8; 40]), None);
    }
}
