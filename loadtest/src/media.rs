//! Synthetic media for the load generator's publisher: VP8-shaped frames and Opus-sized
//! packets generated once, plus the send-time trailer every viewer reads back.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// The trailer at the end of every RTP payload the publisher sends: a magic and
/// the send time in µs since [`base`] (publisher and viewers share one process).
pub const TRAILER_MAGIC: [u8; 4] = *b"TDLT";
pub const TRAILER_LEN: usize = 12;
/// Largest RTP payload the publisher produces (descriptor + data + trailer).
pub const MAX_PAYLOAD: usize = 1200;
/// Payload types the load generator offers (the server answers with the offerer's numbers).
pub const PT_VP8: u8 = 96;
pub const PT_OPUS: u8 = 111;

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

/// Appends the send-time trailer.
pub fn put_trailer(buf: &mut BytesMut, sent_us: u64) {
    buf.put_slice(&TRAILER_MAGIC);
    buf.put_u64(sent_us);
}

/// Reads the send time from a payload's trailer, if it carries one.
pub fn read_trailer(payload: &[u8]) -> Option<u64> {
    if payload.len() < TRAILER_LEN {
        return None;
    }
    let t = &payload[payload.len() - TRAILER_LEN..];
    if t[..4] != TRAILER_MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(t[4..12].try_into().ok()?))
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

/// One RTP packet's worth of media, before the RTP header.
pub struct Chunk {
    pub payload: Bytes,
    pub marker: bool,
}

/// Video frames shaped like VP8 (payload descriptor, frame tag, key frames with
/// the start code) filled from random bytes generated once: no encoder runs.
pub struct VideoSource {
    noise: Bytes,
    frame_bytes: usize,
    pub fps: u32,
    keyframe_every: u32,
    frame_no: u64,
    since_key: u32,
    force_key: bool,
}

impl VideoSource {
    pub fn new(bitrate_bps: u64, fps: u32, keyframe_interval_s: f64) -> Self {
        let fps = fps.max(1);
        let frame_bytes = ((bitrate_bps / 8) / fps as u64).max(64) as usize;
        let noise: Vec<u8> = (0..(frame_bytes + 4096)).map(|_| rand::random()).collect();
        Self {
            noise: Bytes::from(noise),
            frame_bytes,
            fps,
            keyframe_every: ((keyframe_interval_s * fps as f64).round() as u32).max(1),
            frame_no: 0,
            since_key: 0,
            force_key: false,
        }
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
        let header: &[u8] = if key {
            // Frame tag (P=0, show_frame), start code, 320x240.
            &[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]
        } else {
            &[0x11, 0x02, 0x00]
        };
        let room = MAX_PAYLOAD - 1 - TRAILER_LEN;
        let mut chunks = Vec::with_capacity(self.frame_bytes / room + 2);
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
            put_trailer(&mut p, sent_us);
            pos = end;
            chunks.push(Chunk {
                payload: p.freeze(),
                marker: pos >= total,
            });
        }
        (chunks, key)
    }
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
        put_trailer(&mut p, sent_us);
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
        let mut v = VideoSource::new(2_500_000, 30, 2.0);
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
    fn foreign_payloads_have_no_trailer() {
        assert_eq!(read_trailer(b"short"), None);
        assert_eq!(read_trailer(&[0u8; 40]), None);
    }
}
