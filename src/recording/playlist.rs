//! A recording's layout and state: segment/part bookkeeping (kept as
//! `recording.json`, which repair reads after a crash) and the HLS text
//! rendered from it: the media playlist `index.m3u8` (growing with LL-HLS
//! parts while live, `#EXT-X-ENDLIST` when finished) and the multivariant
//! playlist `master.m3u8` naming the codecs.
//!
//! All URIs are relative (the server serves the folder under a signed
//! prefix). Imports nothing from its siblings.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub const INIT: &str = "init.mp4";
pub const INDEX: &str = "index.m3u8";
pub const MASTER: &str = "master.m3u8";
pub const STATE: &str = "recording.json";

/// `seg00001.m4s`, …
pub fn segment_name(number: u32) -> String {
    format!("seg{number:05}.m4s")
}

/// One fragment (`moof`+`mdat`) of a segment file: an LL-HLS part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Seconds.
    pub duration: f64,
    pub offset: u64,
    pub length: u64,
    /// Starts with a video key frame (or is audio only).
    pub independent: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub parts: Vec<Part>,
}

impl Segment {
    pub fn duration(&self) -> f64 {
        self.parts.iter().map(|p| p.duration).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.length).sum()
    }
}

/// What `recording.json` holds: enough to rewrite both playlists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingState {
    /// Closed segments, each starting with a key frame.
    pub segments: Vec<Segment>,
    /// The segment being appended to (its complete parts).
    pub open: Option<Segment>,
    pub finished: bool,
    /// RFC 6381, e.g. `vp08.00.41.08,opus`.
    pub codecs: String,
    /// 0 without video.
    pub width: u32,
    pub height: u32,
    /// Seconds.
    pub part_target: f64,
    pub segment_target: f64,
}

impl RecordingState {
    pub fn new(
        codecs: String,
        width: u32,
        height: u32,
        part_target: f64,
        segment_target: f64,
    ) -> Self {
        RecordingState {
            segments: Vec::new(),
            open: None,
            finished: false,
            codecs,
            width,
            height,
            part_target,
            segment_target,
        }
    }

    /// Seconds in closed segments and complete parts of the open one.
    pub fn duration(&self) -> f64 {
        self.segments
            .iter()
            .chain(&self.open)
            .map(Segment::duration)
            .sum()
    }

    /// Bytes of media in segments (the init segment not counted).
    pub fn bytes(&self) -> u64 {
        self.segments
            .iter()
            .chain(&self.open)
            .map(Segment::bytes)
            .sum()
    }

    /// Closes the open segment (if it has parts) and marks the recording finished.
    pub fn finish(&mut self) {
        if let Some(open) = self.open.take()
            && !open.parts.is_empty()
        {
            self.segments.push(open);
        }
        self.finished = true;
    }

    /// The peak segment bitrate in bit/s (HLS `BANDWIDTH`); before a segment
    /// is closed, the parts so far.
    pub fn bandwidth(&self) -> u64 {
        let rate = |s: &Segment| {
            let d = s.duration();
            if d > 0.0 {
                (s.bytes() as f64 * 8.0 / d) as u64
            } else {
                0
            }
        };
        let peak = self
            .segments
            .iter()
            .chain(&self.open)
            .map(rate)
            .max()
            .unwrap_or(0);
        // A floor so a player never sees 0 (silence-only Opus is ~1 kbit/s).
        peak.max(64_000)
    }

    fn target_duration(&self) -> u64 {
        // Segments are cut at the first key frame after the target, so they
        // run over it by the key-frame round trip: announce 1.5× the target
        // while live so the number rarely has to grow (players expect it fixed).
        let floor = (self.segment_target * 1.5).ceil() as u64;
        let longest = self
            .segments
            .iter()
            .chain(&self.open)
            .map(|s| s.duration().round() as u64)
            .max()
            .unwrap_or(0);
        floor.max(longest).max(1)
    }

    /// `index.m3u8`: while live an EVENT playlist with the open segment's parts
    /// (and the last closed segment's, for players behind the edge) and a
    /// preload hint for the next part; finished, a VOD playlist with ENDLIST.
    pub fn media_playlist(&self) -> String {
        let live = !self.finished;
        let mut s = String::new();
        let _ = writeln!(s, "#EXTM3U");
        let _ = writeln!(s, "#EXT-X-VERSION:7");
        let _ = writeln!(s, "#EXT-X-TARGETDURATION:{}", self.target_duration());
        let _ = writeln!(s, "#EXT-X-MEDIA-SEQUENCE:1");
        let _ = writeln!(
            s,
            "#EXT-X-PLAYLIST-TYPE:{}",
            if live { "EVENT" } else { "VOD" }
        );
        let _ = writeln!(s, "#EXT-X-INDEPENDENT-SEGMENTS");
        if live {
            let _ = writeln!(
                s,
                "#EXT-X-SERVER-CONTROL:PART-HOLD-BACK={:.3}",
                self.part_target * 3.0
            );
            let _ = writeln!(s, "#EXT-X-PART-INF:PART-TARGET={:.3}", self.part_target);
        }
        let _ = writeln!(s, "#EXT-X-MAP:URI=\"{INIT}\"");
        let last_closed = self.segments.len().checked_sub(1);
        for (i, seg) in self.segments.iter().enumerate() {
            if live && Some(i) == last_closed {
                write_parts(&mut s, seg);
            }
            let _ = writeln!(s, "#EXTINF:{:.3},", seg.duration());
            let _ = writeln!(s, "{}", seg.name);
        }
        if live {
            if let Some(open) = &self.open {
                write_parts(&mut s, open);
                let next = open.parts.last().map_or(0, |p| p.offset + p.length);
                let _ = writeln!(
                    s,
                    "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\",BYTERANGE-START={next}",
                    open.name
                );
            }
        } else {
            let _ = writeln!(s, "#EXT-X-ENDLIST");
        }
        s
    }

    /// `master.m3u8`: one variant naming bandwidth, resolution and codecs.
    pub fn multivariant_playlist(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "#EXTM3U");
        let _ = writeln!(s, "#EXT-X-VERSION:7");
        let _ = writeln!(s, "#EXT-X-INDEPENDENT-SEGMENTS");
        let mut inf = format!("#EXT-X-STREAM-INF:BANDWIDTH={}", self.bandwidth());
        if self.width > 0 && self.height > 0 {
            let _ = write!(inf, ",RESOLUTION={}x{}", self.width, self.height);
        }
        let _ = write!(inf, ",CODECS=\"{}\"", self.codecs);
        let _ = writeln!(s, "{inf}");
        let _ = writeln!(s, "{INDEX}");
        s
    }
}

fn write_parts(s: &mut String, seg: &Segment) {
    for p in &seg.parts {
        let _ = writeln!(
            s,
            "#EXT-X-PART:DURATION={:.3},URI=\"{}\",BYTERANGE=\"{}@{}\"{}",
            p.duration,
            seg.name,
            p.length,
            p.offset,
            if p.independent {
                ",INDEPENDENT=YES"
            } else {
                ""
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(duration: f64, offset: u64, length: u64, independent: bool) -> Part {
        Part {
            duration,
            offset,
            length,
            independent,
        }
    }

    fn state() -> RecordingState {
        let mut st = RecordingState::new("vp08.00.41.08,opus".into(), 640, 480, 1.0, 4.0);
        st.segments.push(Segment {
            name: segment_name(1),
            parts: vec![
                part(1.0, 0, 100, true),
                part(1.0, 100, 50, false),
                part(1.0, 150, 50, false),
                part(1.2, 200, 60, false),
            ],
        });
        st.open = Some(Segment {
            name: segment_name(2),
            parts: vec![part(1.0, 0, 120, true), part(0.96, 120, 40, false)],
        });
        st
    }

    #[test]
    fn live_playlist_has_parts_and_a_preload_hint() {
        let text = state().media_playlist();
        let expected = "\
#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:6
#EXT-X-MEDIA-SEQUENCE:1
#EXT-X-PLAYLIST-TYPE:EVENT
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-SERVER-CONTROL:PART-HOLD-BACK=3.000
#EXT-X-PART-INF:PART-TARGET=1.000
#EXT-X-MAP:URI=\"init.mp4\"
#EXT-X-PART:DURATION=1.000,URI=\"seg00001.m4s\",BYTERANGE=\"100@0\",INDEPENDENT=YES
#EXT-X-PART:DURATION=1.000,URI=\"seg00001.m4s\",BYTERANGE=\"50@100\"
#EXT-X-PART:DURATION=1.000,URI=\"seg00001.m4s\",BYTERANGE=\"50@150\"
#EXT-X-PART:DURATION=1.200,URI=\"seg00001.m4s\",BYTERANGE=\"60@200\"
#EXTINF:4.200,
seg00001.m4s
#EXT-X-PART:DURATION=1.000,URI=\"seg00002.m4s\",BYTERANGE=\"120@0\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.960,URI=\"seg00002.m4s\",BYTERANGE=\"40@120\"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg00002.m4s\",BYTERANGE-START=160
";
        assert_eq!(text, expected);
        assert!(!text.contains("ENDLIST"));
    }

    #[test]
    fn finished_playlist_is_vod_with_endlist_and_no_parts() {
        let mut st = state();
        st.finish();
        let text = st.media_playlist();
        let expected = "\
#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:6
#EXT-X-MEDIA-SEQUENCE:1
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI=\"init.mp4\"
#EXTINF:4.200,
seg00001.m4s
#EXTINF:1.960,
seg00002.m4s
#EXT-X-ENDLIST
";
        assert_eq!(text, expected);
        assert!((st.duration() - 6.16).abs() < 1e-9);
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<RecordingState>(&json).unwrap(), st);
        let master = st.multivariant_playlist();
        assert!(master.contains("RESOLUTION=640x480,CODECS=\"vp08.00.41.08,opus\"\nindex.m3u8\n"));
        assert!(master.starts_with("#EXTM3U\n"));
    }
}
