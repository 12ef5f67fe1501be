//! The [`Recorder`]: a stream's tapped packets in, CMAF files and HLS
//! playlists out, synchronously (the shell runs it on a thread of its own and
//! feeds it from a bounded queue).
//!
//! How it cuts (why: a crash loses at most a part, players get segments that
//! start with a key frame):
//! - A **part** (one `moof`+`mdat` fragment, appended to the segment file at
//!   once) is closed before it would exceed `part_target` (1 s) on the main
//!   track (video when there is video, else audio). Each track keeps its last
//!   sample back until the next one gives its duration.
//! - A **segment** (`segNNNNN.m4s`) is closed at the first video key frame
//!   once it holds `segment_target` (4 s); at that point a key frame is asked
//!   for ([`Recorder::take_keyframe_request`]) so the cut comes soon after.
//! - After each part, `recording.json` and `index.m3u8` are replaced whole.
//!
//! Timeline: the recording starts at the first video key frame (audio before
//! it is dropped); a stream whose publisher announced no video track records
//! its audio at once. Each track's first sample is placed by its arrival time
//! relative to that start (A/V sync), later samples by RTP timestamp
//! differences; decode times only grow. When the publisher leaves, what is
//! complete is written, and the next publisher's first frame continues right
//! after the last one (the gap is collapsed; RTP numbering is not trusted to
//! continue).
//!
//! Imports [`super::store`], [`super::depacketize`], [`super::fmp4`],
//! [`super::playlist`].

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_media::kinds::MediaKind;
use tandem_media::tap::{TapCodec, TapPacket};

use super::depacketize::{Codec, Frame, TrackDepacketizer, VideoInfo, video_info};
use super::fmp4::{
    AUDIO_TIMESCALE, AUDIO_TRACK_ID, AudioInfo, Sample, TrackRun, VIDEO_TIMESCALE, VIDEO_TRACK_ID,
    fragment, init_segment, video_codec_string,
};
use super::playlist::{INDEX, INIT, MASTER, Part, RecordingState, STATE, Segment, segment_name};
use super::store::Store;

#[derive(Debug, Clone, Copy)]
pub struct RecorderConfig {
    /// Longest LL-HLS part (fragment); also what a crash loses at most.
    pub part_target: Duration,
    /// Segments are cut at the first key frame after this.
    pub segment_target: Duration,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            part_target: Duration::from_secs(1),
            segment_target: Duration::from_secs(4),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Bytes appended to segments plus the init segment.
    pub bytes_written: u64,
    pub fragments: u64,
    /// Closed segments.
    pub segments: u64,
    /// Video frames not recorded: broken by loss, behind a gap, before the
    /// first key frame, or of a codec the recording's init segment lacks.
    pub dropped_frames: u64,
    /// Media written so far.
    pub duration: Duration,
}

/// What a finished recording is.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub duration: Duration,
    pub codecs: String,
    /// Bytes of the init segment and all segments.
    pub bytes: u64,
}

/// A part never holds more samples than this, whatever the timestamps say
/// (a publisher whose timestamps stand still must not grow memory): 1000 is
/// 16 s of 60 fps video, 20 s of Opus.
const MAX_PART_SAMPLES: usize = 1000;

/// A reorder hole older than this is given up on `tick`.
const REORDER_WAIT: Duration = Duration::from_millis(300);

/// How long audio that came first waits for the video's first key frame before
/// the recording is made audio-only. Chromium's microphone starts before its
/// camera and encoder; on a loaded 2-core machine the first video packet came
/// more than a part (1 s) after the first audio, and an audio-only init segment
/// then kept the video out of the whole class (seen in CI). 3 s of Opus is
/// ~150 samples, well under [`MAX_PART_SAMPLES`].
const VIDEO_GRACE: Duration = Duration::from_secs(3);

struct Held {
    sample: Sample,
    dts: u64,
}

struct Track {
    timescale: u32,
    codecs: HashMap<u8, Codec>,
    channels: u16,
    /// Announced by `track_opened` since the last `publisher_left`.
    opened: bool,
    depack: Option<TrackDepacketizer>,
    dropped_before: u64,
    /// RTP timestamp unwrapping within an epoch (one publisher's session):
    /// (last timestamp, its extended value, the epoch's first extended value, first dts).
    epoch: Option<(u32, i64, i64, u64)>,
    held: Option<Held>,
    /// The held sample's duration guess (the last real one).
    last_duration: u32,
    pending: Vec<Sample>,
    pending_start: u64,
    /// The end of the last sample moved to `pending` (written or not).
    end: u64,
    last_arrival: Option<Instant>,
}

impl Track {
    fn new(kind: MediaKind) -> Self {
        let (timescale, last_duration) = match kind {
            MediaKind::Video => (VIDEO_TIMESCALE, 3000), // 30 fps
            MediaKind::Audio => (AUDIO_TIMESCALE, 960),  // 20 ms Opus
        };
        Track {
            timescale,
            codecs: HashMap::new(),
            channels: 2,
            opened: false,
            depack: None,
            dropped_before: 0,
            epoch: None,
            held: None,
            last_duration,
            pending: Vec::new(),
            pending_start: 0,
            end: 0,
            last_arrival: None,
        }
    }

    /// Where the next sample may start (after the held one and its guess).
    fn next_dts(&self) -> u64 {
        match &self.held {
            Some(h) => h.dts + u64::from(self.last_duration),
            None => self.end,
        }
    }

    fn pending_duration(&self) -> u64 {
        self.pending.iter().map(|s| u64::from(s.duration)).sum()
    }

    fn seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / f64::from(self.timescale)
    }

    fn dropped(&self) -> u64 {
        self.dropped_before + self.depack.as_ref().map_or(0, |d| d.dropped_frames)
    }

    /// Moves the held sample into the pending run with its guessed duration.
    fn release_held(&mut self) {
        if let Some(mut h) = self.held.take() {
            h.sample.duration = self.last_duration.max(1);
            self.push_pending(h.sample, h.dts);
        }
    }

    fn push_pending(&mut self, sample: Sample, dts: u64) {
        if self.pending.is_empty() {
            self.pending_start = dts;
        }
        self.end = dts + u64::from(sample.duration);
        self.pending.push(sample);
    }
}

/// A stream's recording in progress.
pub struct Recorder {
    store: Arc<dyn Store>,
    config: RecorderConfig,
    video: Track,
    audio: Track,
    /// The init segment's tracks, once written.
    init: Option<(Option<VideoInfo>, Option<AudioInfo>)>,
    /// The first video key frame's information, before the init is written.
    first_video: Option<VideoInfo>,
    /// This epoch's anchor: an arrival time and the recording time (seconds) it maps to.
    anchor: Option<(Instant, f64)>,
    /// Set while the publisher leaves: the init is written with what there is.
    leaving: bool,
    /// Seconds: the end of the media written so far (of whichever track reaches further).
    written_end: f64,
    state: Option<RecordingState>,
    segment_number: u32,
    fragment_number: u32,
    keyframe_request: bool,
    requested_this_segment: bool,
    stats: RecorderStats,
    frames: Vec<Frame>,
}

impl Recorder {
    pub fn new(store: Arc<dyn Store>, config: RecorderConfig) -> Self {
        Recorder {
            store,
            config,
            video: Track::new(MediaKind::Video),
            audio: Track::new(MediaKind::Audio),
            init: None,
            first_video: None,
            anchor: None,
            leaving: false,
            written_end: 0.0,
            state: None,
            segment_number: 1,
            fragment_number: 1,
            keyframe_request: false,
            requested_this_segment: false,
            stats: RecorderStats::default(),
            frames: Vec::new(),
        }
    }

    fn track(&mut self, kind: MediaKind) -> &mut Track {
        match kind {
            MediaKind::Video => &mut self.video,
            MediaKind::Audio => &mut self.audio,
        }
    }

    /// A publisher's track with these codecs (payload type → codec). Codecs
    /// the recorder does not keep (RTX, RED, FEC…) are ignored.
    pub fn track_opened(&mut self, kind: MediaKind, codecs: &[TapCodec]) {
        let track = self.track(kind);
        track.codecs.clear();
        for c in codecs {
            if let Some(codec) = Codec::from_mime(&c.mime_type)
                && codec.kind() == kind
            {
                track.codecs.insert(c.payload_type, codec);
                if kind == MediaKind::Audio && c.channels > 0 {
                    track.channels = c.channels;
                }
            }
        }
        track.opened = !track.codecs.is_empty();
    }

    pub fn packet(&mut self, packet: TapPacket) -> io::Result<()> {
        if self.is_finished() {
            return Ok(()); // late packets after `finish` change nothing
        }
        let kind = packet.kind;
        let mut frames = std::mem::take(&mut self.frames);
        let track = self.track(kind);
        let Some(&codec) = track.codecs.get(&packet.payload_type) else {
            return Ok(());
        };
        if track.depack.as_ref().map(|d| d.codec()) != Some(codec) {
            track.dropped_before += track.depack.as_ref().map_or(0, |d| d.dropped_frames);
            track.depack = Some(TrackDepacketizer::new(codec));
        }
        track.last_arrival = Some(packet.arrived);
        if let Some(d) = track.depack.as_mut() {
            d.push(packet, &mut frames);
            if std::mem::take(&mut d.want_keyframe) {
                self.keyframe_request = true;
            }
        }
        let result = self.frames_in(kind, codec, &mut frames);
        self.frames = frames;
        result
    }

    fn frames_in(
        &mut self,
        kind: MediaKind,
        codec: Codec,
        frames: &mut Vec<Frame>,
    ) -> io::Result<()> {
        let mut result = Ok(());
        for f in frames.drain(..) {
            if result.is_ok() {
                result = self.frame(kind, codec, f);
            }
        }
        result
    }

    fn frame(&mut self, kind: MediaKind, codec: Codec, f: Frame) -> io::Result<()> {
        match kind {
            MediaKind::Video => {
                // Which video this recording can hold: the init's codec, or
                // (before the init) the first key frame's.
                let accepted = match (&self.init, &self.first_video) {
                    (Some((Some(v), _)), _) => v.codec == codec,
                    (Some((None, _)), _) => false,
                    (None, Some(v)) => v.codec == codec,
                    (None, None) => {
                        if f.keyframe
                            && let Some(info) = video_info(codec, &f.data)
                        {
                            self.first_video = Some(info);
                            true
                        } else {
                            false
                        }
                    }
                };
                if !accepted {
                    self.video.dropped_before += 1;
                    self.keyframe_request = true;
                    return Ok(());
                }
                if self.anchor.is_none() {
                    if !f.keyframe {
                        self.video.dropped_before += 1;
                        return Ok(());
                    }
                    self.anchor = Some((f.arrived, self.end_seconds()));
                }
            }
            MediaKind::Audio => {
                if self.anchor.is_none() {
                    if self.video.opened || self.init.as_ref().is_some_and(|(_, a)| a.is_none()) {
                        return Ok(()); // wait for the video key frame
                    }
                    self.anchor = Some((f.arrived, self.end_seconds()));
                }
                if self.init.as_ref().is_some_and(|(_, a)| a.is_none()) {
                    return Ok(());
                }
            }
        }
        let Some((anchor_at, anchor_secs)) = self.anchor else {
            return Ok(());
        };
        let track = self.track(kind);
        let dts = match track.epoch {
            None => {
                let secs =
                    anchor_secs + f.arrived.saturating_duration_since(anchor_at).as_secs_f64();
                let dts = ((secs * f64::from(track.timescale)) as u64).max(track.next_dts());
                track.epoch = Some((f.timestamp, 0, 0, dts));
                dts
            }
            Some((last, ext, first_ext, first_dts)) => {
                let ext = ext + i64::from(f.timestamp.wrapping_sub(last) as i32);
                track.epoch = Some((f.timestamp, ext, first_ext, first_dts));
                (first_dts as i64 + (ext - first_ext)).max(0) as u64
            }
        };
        let sample = Sample {
            data: f.data,
            duration: 0,
            keyframe: f.keyframe,
        };
        self.add_sample(kind, sample, dts)
    }

    /// The recording's end in seconds: where the next epoch continues.
    fn end_seconds(&self) -> f64 {
        let v = self.video.seconds(self.video.next_dts());
        let a = self.audio.seconds(self.audio.next_dts());
        v.max(a)
    }

    fn main_kind(&self) -> MediaKind {
        match &self.init {
            Some((Some(_), _)) => MediaKind::Video,
            Some((None, _)) => MediaKind::Audio,
            None if self.first_video.is_some() => MediaKind::Video,
            None => MediaKind::Audio,
        }
    }

    fn add_sample(&mut self, kind: MediaKind, sample: Sample, dts: u64) -> io::Result<()> {
        let main = self.main_kind() == kind;
        let part_target = self.config.part_target.as_secs_f64();
        let track = self.track(kind);
        let mut dts = dts;
        if let Some(mut h) = track.held.take() {
            if dts <= h.dts {
                dts = h.dts + 1; // decode times only grow
            }
            let d = u32::try_from(dts - h.dts).unwrap_or(u32::MAX);
            // A duration over 10 s is a stall or a timestamp jump: keep the
            // timeline but do not let one sample claim it all as a guess later.
            h.sample.duration = d;
            if d <= track.timescale * 10 {
                track.last_duration = d;
            }
            track.push_pending(h.sample, h.dts);
        }
        let keyframe = sample.keyframe;
        let held_guess = u64::from(track.last_duration);
        let pending_ticks = track.pending_duration();
        let pending_empty = track.pending.is_empty();
        let pending_len = track.pending.len();
        let pending_secs = track.seconds(pending_ticks);
        let next_secs = track.seconds(pending_ticks + held_guess);
        track.held = Some(Held { sample, dts });
        if pending_empty {
            return Ok(());
        }
        if main {
            let segment_secs = self.open_segment_seconds() + pending_secs;
            let segment_target = self.config.segment_target.as_secs_f64();
            if kind == MediaKind::Video
                && segment_secs >= segment_target
                && !self.requested_this_segment
            {
                self.requested_this_segment = true;
                self.keyframe_request = true;
            }
            if keyframe && segment_secs >= segment_target {
                // Cut before the held key frame: the pending run ends at it.
                self.flush_fragment()?;
                self.close_segment()?;
            } else if next_secs > part_target || pending_len >= MAX_PART_SAMPLES {
                self.flush_fragment()?;
            }
        } else if pending_secs > 3.0 * part_target || pending_len >= MAX_PART_SAMPLES {
            // The main track stalled (camera off): do not sit on audio.
            self.flush_fragment()?;
        }
        Ok(())
    }

    fn open_segment_seconds(&self) -> f64 {
        self.state
            .as_ref()
            .and_then(|s| s.open.as_ref())
            .map_or(0.0, Segment::duration)
    }

    fn ensure_init(&mut self) -> io::Result<bool> {
        if self.init.is_some() {
            return Ok(true);
        }
        let video = self.first_video.clone();
        let audio = (self.audio.opened && self.audio.codecs.values().any(|c| *c == Codec::Opus))
            .then_some(AudioInfo {
                channels: self.audio.channels,
            });
        if video.is_none() && audio.is_none() {
            return Ok(false);
        }
        if video.is_none() && !self.leaving {
            // Audio only so far: give the video its grace (see VIDEO_GRACE).
            let waited = match (self.anchor, self.audio.last_arrival) {
                (Some((at, _)), Some(last)) => last.saturating_duration_since(at),
                _ => Duration::ZERO,
            };
            if waited < VIDEO_GRACE {
                return Ok(false);
            }
        }
        let bytes = init_segment(video.as_ref(), audio)?;
        self.store.put(INIT, &bytes)?;
        self.stats.bytes_written += bytes.len() as u64;
        let mut codecs = Vec::new();
        if let Some(v) = &video {
            codecs.push(video_codec_string(v));
        }
        if audio.is_some() {
            codecs.push("opus".to_string());
        }
        let (w, h) = video.as_ref().map_or((0, 0), |v| (v.width, v.height));
        self.state = Some(RecordingState::new(
            codecs.join(","),
            w,
            h,
            self.config.part_target.as_secs_f64(),
            self.config.segment_target.as_secs_f64(),
        ));
        self.init = Some((video, audio));
        Ok(true)
    }

    /// Writes the pending samples of both tracks as one fragment (a part).
    fn flush_fragment(&mut self) -> io::Result<()> {
        if self.video.pending.is_empty() && self.audio.pending.is_empty() {
            return Ok(());
        }
        if !self.ensure_init()? {
            return Ok(());
        }
        let (has_video, has_audio) = match &self.init {
            Some((v, a)) => (v.is_some(), a.is_some()),
            None => (false, false),
        };
        if !has_video {
            self.video.pending.clear();
        }
        if !has_audio {
            self.audio.pending.clear();
        }
        let main_is_video = has_video;
        // The part's duration is how far the recording's end moves: the sum
        // of parts is then the media's length even when the tracks' runs in
        // a fragment cover different spans (audio ahead of a stalled video).
        let mut end = self.written_end;
        for t in [&self.video, &self.audio] {
            if !t.pending.is_empty() {
                end = end.max(t.seconds(t.pending_start + t.pending_duration()));
            }
        }
        let duration = end - self.written_end;
        self.written_end = end;
        let independent = if main_is_video {
            self.video.pending.first().is_some_and(|s| s.keyframe)
        } else {
            true
        };
        let runs = [
            TrackRun {
                track_id: VIDEO_TRACK_ID,
                base_decode_time: self.video.pending_start,
                samples: &self.video.pending,
            },
            TrackRun {
                track_id: AUDIO_TRACK_ID,
                base_decode_time: self.audio.pending_start,
                samples: &self.audio.pending,
            },
        ];
        if runs.iter().all(|r| r.samples.is_empty()) {
            return Ok(());
        }
        let bytes = fragment(self.fragment_number, &runs)?;
        let name = segment_name(self.segment_number);
        self.store.append(&name, &bytes)?;
        self.fragment_number += 1;
        self.video.pending.clear();
        self.audio.pending.clear();
        self.stats.bytes_written += bytes.len() as u64;
        self.stats.fragments += 1;
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        let open = state.open.get_or_insert_with(|| Segment {
            name,
            parts: Vec::new(),
        });
        let offset = open.parts.last().map_or(0, |p| p.offset + p.length);
        open.parts.push(Part {
            duration,
            offset,
            length: bytes.len() as u64,
            independent,
        });
        let first_part = state.segments.is_empty() && open.parts.len() == 1;
        self.write_state(first_part)
    }

    fn close_segment(&mut self) -> io::Result<()> {
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        if let Some(open) = state.open.take() {
            state.segments.push(open);
            self.segment_number += 1;
            self.stats.segments += 1;
            self.requested_this_segment = false;
            self.write_state(true)?;
        }
        Ok(())
    }

    fn write_state(&mut self, master: bool) -> io::Result<()> {
        let Some(state) = self.state.as_ref() else {
            return Ok(());
        };
        self.stats.duration = Duration::from_secs_f64(state.duration().max(0.0));
        let json = serde_json::to_vec(state).map_err(io::Error::other)?;
        // The state first: a crash between the two leaves a playlist that
        // repair rewrites from it.
        self.store.put(STATE, &json)?;
        self.store.put(INDEX, state.media_playlist().as_bytes())?;
        if master || state.finished {
            self.store
                .put(MASTER, state.multivariant_playlist().as_bytes())?;
        }
        Ok(())
    }

    /// Flushes a track's depacketizer (the publisher left or the end) and
    /// records what comes out.
    fn drain_track(&mut self, kind: MediaKind) -> io::Result<()> {
        let mut frames = std::mem::take(&mut self.frames);
        let track = self.track(kind);
        let Some(d) = track.depack.as_mut() else {
            return Ok(());
        };
        let codec = d.codec();
        d.reset(&mut frames);
        let result = self.frames_in(kind, codec, &mut frames);
        self.frames = frames;
        result
    }

    fn is_finished(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.finished)
    }

    /// The publisher went away: write what is complete; a later
    /// `track_opened` continues this recording right after it.
    pub fn publisher_left(&mut self) -> io::Result<()> {
        self.drain_track(MediaKind::Video)?;
        self.drain_track(MediaKind::Audio)?;
        for t in [&mut self.video, &mut self.audio] {
            t.release_held();
            t.epoch = None;
            t.opened = false;
        }
        self.anchor = None;
        self.leaving = true;
        let written = self.flush_fragment();
        self.leaving = false;
        written
    }

    /// Time-based work, ~every 250 ms: gives up reorder holes, and writes a
    /// stalled stream's pending samples so they are on disk.
    pub fn tick(&mut self, now: Instant) -> io::Result<()> {
        if self.is_finished() {
            return Ok(());
        }
        for kind in [MediaKind::Video, MediaKind::Audio] {
            let mut frames = std::mem::take(&mut self.frames);
            let track = self.track(kind);
            let Some(d) = track.depack.as_mut() else {
                continue;
            };
            let codec = d.codec();
            d.expire(now, REORDER_WAIT, &mut frames);
            if std::mem::take(&mut d.want_keyframe) {
                self.keyframe_request = true;
            }
            let result = self.frames_in(kind, codec, &mut frames);
            self.frames = frames;
            result?;
        }
        let stalled = |t: &Track| {
            t.last_arrival
                .is_some_and(|a| now.saturating_duration_since(a) > 2 * self.config.part_target)
        };
        let all_stalled = [&self.video, &self.audio]
            .iter()
            .all(|t| t.last_arrival.is_none() || stalled(t));
        if all_stalled && (!self.video.pending.is_empty() || !self.audio.pending.is_empty()) {
            self.flush_fragment()?;
        }
        Ok(())
    }

    /// Ends the recording: the last samples, the last segment,
    /// `#EXT-X-ENDLIST`. `None` when nothing was ever recorded.
    pub fn finish(&mut self) -> io::Result<Option<Finished>> {
        self.publisher_left()?;
        let Some(state) = self.state.as_mut() else {
            return Ok(None);
        };
        if state.finished {
            return Ok(Some(self.finished_summary()));
        }
        state.finish();
        if state.segments.len() as u64 > self.stats.segments {
            self.stats.segments = state.segments.len() as u64;
        }
        self.write_state(true)?;
        Ok(Some(self.finished_summary()))
    }

    fn finished_summary(&self) -> Finished {
        let (duration, codecs) = self
            .state
            .as_ref()
            .map_or((0.0, String::new()), |s| (s.duration(), s.codecs.clone()));
        Finished {
            duration: Duration::from_secs_f64(duration.max(0.0)),
            codecs,
            bytes: self.stats.bytes_written,
        }
    }

    /// True when the recorder wants a key frame (segment target reached, a
    /// loss, or no key frame yet); reading clears it.
    pub fn take_keyframe_request(&mut self) -> bool {
        for t in [&mut self.video, &mut self.audio] {
            if let Some(d) = t.depack.as_mut()
                && std::mem::take(&mut d.want_keyframe)
            {
                self.keyframe_request = true;
            }
        }
        std::mem::take(&mut self.keyframe_request)
    }

    pub fn stats(&self) -> RecorderStats {
        RecorderStats {
            dropped_frames: self.video.dropped(),
            ..self.stats
        }
    }

    /// RFC 6381 CODECS, once the init segment is written.
    pub fn codecs(&self) -> Option<String> {
        self.state.as_ref().map(|s| s.codecs.clone())
    }

    /// The last closed segment (it starts with a key frame): a thumbnail
    /// decodes `init.mp4` followed by it.
    pub fn last_keyframe_segment(&self) -> Option<String> {
        self.state
            .as_ref()
            .and_then(|s| s.segments.last())
            .map(|s| s.name.clone())
    }
}
