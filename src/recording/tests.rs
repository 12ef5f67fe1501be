//! End-to-end tests of the recording core with real bitstreams: ffmpeg
//! encodes a test pattern (VP8, VP9, H.264, AV1) and a tone (Opus), the test
//! packetises them into RTP with `rtc`'s payloaders, feeds a [`Recorder`]
//! writing to a temporary [`LocalStore`], and ffprobe/ffmpeg read the result.
//! Skipped (with a note) where /usr/bin/ffmpeg is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtp::codec::av1::Av1Payloader;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::codec::vp9::Vp9Payloader;
use rtc::rtp::packetizer::Payloader;
use serde_json::Value;
use tandem_media::kinds::MediaKind;
use tandem_media::tap::{TapCodec, TapPacket};

use super::playlist::{RecordingState, STATE};
use super::{LocalStore, Recorder, RecorderConfig, Store, repair};

const FFMPEG: &str = "/usr/bin/ffmpeg";
const FPS: u32 = 30;

fn have_ffmpeg() -> bool {
    let ok = Path::new(FFMPEG).exists();
    if !ok {
        eprintln!("note: {FFMPEG} missing: recording media test skipped");
    }
    ok
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum V {
    Vp8,
    Vp9,
    H264,
    Av1,
}

/// ffmpeg's output for one test: video frames and Opus packets.
struct Media {
    video: Vec<Vec<u8>>,
    audio: Vec<Vec<u8>>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn encode(dir: &Path, codec: Option<V>, audio: bool, seconds: u32, size: (u32, u32)) -> Media {
    let mut cmd = Command::new(FFMPEG);
    cmd.args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc=size={}x{}:rate={FPS}:duration={seconds}",
            size.0.max(16),
            size.1.max(16)
        ))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate=48000:duration={seconds}"
        ));
    let vfile = dir.join("v.bin");
    if let Some(codec) = codec {
        cmd.args([
            "-map", "0:v", "-g", "60", "-b:v", "400k", "-pix_fmt", "yuv420p",
        ]);
        match codec {
            V::Vp8 => cmd.args([
                "-c:v",
                "libvpx",
                "-deadline",
                "realtime",
                "-auto-alt-ref",
                "0",
                "-f",
                "ivf",
            ]),
            V::Vp9 => cmd.args([
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-lag-in-frames",
                "0",
                "-row-mt",
                "1",
                "-f",
                "ivf",
            ]),
            V::Av1 => cmd.args([
                "-c:v",
                "libaom-av1",
                "-usage",
                "realtime",
                "-cpu-used",
                "8",
                "-lag-in-frames",
                "0",
                "-f",
                "ivf",
            ]),
            V::H264 => cmd.args([
                "-c:v",
                "libx264",
                "-profile:v",
                "baseline",
                "-bf",
                "0",
                "-tune",
                "zerolatency",
                "-x264-params",
                "aud=1:repeat-headers=1",
                "-f",
                "h264",
            ]),
        };
        cmd.arg(&vfile);
    }
    let afile = dir.join("a.ogg");
    if audio {
        cmd.args([
            "-map",
            "1:a",
            "-c:a",
            "libopus",
            "-ac",
            "2",
            "-frame_duration",
            "20",
            "-b:a",
            "48k",
        ])
        .arg(&afile);
    }
    run(&mut cmd);
    let video = match codec {
        None => Vec::new(),
        Some(V::H264) => h264_access_units(&std::fs::read(&vfile).unwrap()),
        Some(_) => ivf_frames(&std::fs::read(&vfile).unwrap()),
    };
    let audio = if audio {
        ogg_packets(&std::fs::read(&afile).unwrap()).split_off(2)
    } else {
        Vec::new()
    };
    Media { video, audio }
}

fn ivf_frames(data: &[u8]) -> Vec<Vec<u8>> {
    let header = u16::from_le_bytes([data[6], data[7]]) as usize;
    let mut at = header;
    let mut frames = Vec::new();
    while at + 12 <= data.len() {
        let size = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        frames.push(data[at + 12..at + 12 + size].to_vec());
        at += 12 + size;
    }
    frames
}

/// Annex B → access units, split at access unit delimiters (x264 `aud=1`).
fn h264_access_units(data: &[u8]) -> Vec<Vec<u8>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let begin = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            starts.push((begin, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut aus: Vec<Vec<u8>> = Vec::new();
    for (k, &(_, nal_start)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(data.len(), |s| s.0);
        let nal = &data[nal_start..end];
        if nal[0] & 0x1f == 9 {
            aus.push(Vec::new());
            continue;
        }
        if let Some(au) = aus.last_mut() {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
    }
    aus.retain(|a| !a.is_empty());
    aus
}

fn ogg_packets(data: &[u8]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut cur = Vec::new();
    let mut at = 0;
    while at + 27 <= data.len() {
        assert_eq!(&data[at..at + 4], b"OggS");
        let nseg = data[at + 26] as usize;
        let table = &data[at + 27..at + 27 + nseg];
        let mut body = at + 27 + nseg;
        for &lace in table {
            cur.extend_from_slice(&data[body..body + lace as usize]);
            body += lace as usize;
            if lace < 255 {
                packets.push(std::mem::take(&mut cur));
            }
        }
        at = body;
    }
    packets
}

/// One publisher's RTP: numbering bases, payload types, and the clock.
struct Publisher {
    video_pt: u8,
    audio_pt: u8,
    vseq: u16,
    aseq: u16,
    vts: u32,
    ats: u32,
    /// Drop these video sequence numbers (loss).
    drop_video: Vec<u16>,
}

/// One payloader per stream, as a sender has (picture ids run on; the H.264
/// one keeps SPS/PPS to aggregate them with the IDR).
fn payloader(codec: V) -> Box<dyn Payloader> {
    match codec {
        V::Vp8 => {
            let mut p = Vp8Payloader::default();
            p.enable_picture_id = true;
            Box::new(p)
        }
        V::Vp9 => Box::new(Vp9Payloader::default()),
        V::H264 => Box::new(H264Payloader::default()),
        V::Av1 => Box::new(Av1Payloader::default()),
    }
}

/// Feeds `media` as one publisher starting at wall time `start`; returns the
/// packets fed, in arrival order (video and audio interleaved by time).
fn feed(
    rec: &mut Recorder,
    codec: Option<V>,
    media: &Media,
    p: &Publisher,
    start: Instant,
) -> usize {
    let mut events: Vec<(Duration, TapPacket)> = Vec::new();
    let mut seq = p.vseq;
    if let Some(codec) = codec {
        let mut payloader = payloader(codec);
        for (i, frame) in media.video.iter().enumerate() {
            let t = Duration::from_secs_f64(i as f64 / f64::from(FPS));
            let payloads = payloader
                .payload(1200, &Bytes::copy_from_slice(frame))
                .expect("payload");
            let n = payloads.len();
            for (k, payload) in payloads.into_iter().enumerate() {
                let s = seq;
                seq = seq.wrapping_add(1);
                if p.drop_video.contains(&s) {
                    continue;
                }
                events.push((
                    t + Duration::from_micros(k as u64 * 50),
                    TapPacket {
                        kind: MediaKind::Video,
                        payload_type: p.video_pt,
                        sequence_number: s,
                        timestamp: p.vts.wrapping_add(i as u32 * (90_000 / FPS)),
                        marker: k + 1 == n,
                        payload,
                        arrived: start + t,
                    },
                ));
            }
        }
    }
    for (i, packet) in media.audio.iter().enumerate() {
        let t = Duration::from_millis(i as u64 * 20);
        events.push((
            t,
            TapPacket {
                kind: MediaKind::Audio,
                payload_type: p.audio_pt,
                sequence_number: p.aseq.wrapping_add(i as u16),
                timestamp: p.ats.wrapping_add(i as u32 * 960),
                marker: false,
                payload: Bytes::copy_from_slice(packet),
                arrived: start + t,
            },
        ));
    }
    events.sort_by_key(|(t, _)| *t);
    let n = events.len();
    for (_, packet) in events {
        rec.packet(packet).expect("packet");
    }
    n
}

fn open_tracks(rec: &mut Recorder, codec: Option<V>, audio: bool, p: &Publisher) {
    if audio {
        rec.track_opened(
            MediaKind::Audio,
            &[TapCodec {
                payload_type: p.audio_pt,
                mime_type: "audio/opus".into(),
                clock_rate: 48000,
                channels: 2,
                fmtp: "minptime=10;useinbandfec=1".into(),
            }],
        );
    }
    if let Some(codec) = codec {
        let mime = match codec {
            V::Vp8 => "video/VP8",
            V::Vp9 => "video/VP9",
            V::H264 => "video/H264",
            V::Av1 => "video/AV1",
        };
        rec.track_opened(
            MediaKind::Video,
            &[
                TapCodec {
                    payload_type: p.video_pt,
                    mime_type: mime.into(),
                    clock_rate: 90000,
                    channels: 0,
                    fmtp: "profile-level-id=42e01f;packetization-mode=1".into(),
                },
                TapCodec {
                    payload_type: p.video_pt + 1,
                    mime_type: "video/rtx".into(),
                    clock_rate: 90000,
                    channels: 0,
                    fmtp: format!("apt={}", p.video_pt),
                },
            ],
        );
    }
}

fn publisher(base: u32) -> Publisher {
    Publisher {
        video_pt: 96,
        audio_pt: 111,
        vseq: (base * 7919) as u16,
        aseq: (base * 104_729) as u16,
        vts: base.wrapping_mul(2_654_435_761),
        ats: base.wrapping_mul(40_503),
        drop_video: Vec::new(),
    }
}

fn ffprobe(path: &Path) -> Value {
    let out = Command::new("/usr/bin/ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

fn duration_of(probe: &Value) -> f64 {
    probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("duration")
}

fn stream<'a>(probe: &'a Value, codec_type: &str) -> Option<&'a Value> {
    probe["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == codec_type)
}

/// Decodes everything; answers ffmpeg's error output (empty when clean).
fn decode_errors(path: &Path) -> String {
    let out = Command::new(FFMPEG)
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn recorder(dir: &Path) -> (Recorder, Arc<LocalStore>) {
    let store = Arc::new(LocalStore::new(dir.to_path_buf()).unwrap());
    (
        Recorder::new(store.clone(), RecorderConfig::default()),
        store,
    )
}

fn record_and_check(codec: Option<V>, audio: bool, size: (u32, u32), name: &str) -> PathBuf {
    let tmp = tempfile::tempdir().unwrap();
    let media = encode(tmp.path(), codec, audio, 6, size);
    let out = tmp.path().join("rec");
    let (mut rec, _store) = recorder(&out);
    let p = publisher(3);
    open_tracks(&mut rec, codec, audio, &p);
    feed(&mut rec, codec, &media, &p, Instant::now());
    // While live: an EVENT playlist with parts of the growing segment.
    let live = std::fs::read_to_string(out.join("index.m3u8")).unwrap();
    for tag in [
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-PART-INF:PART-TARGET=1.000",
        "#EXT-X-PART:",
        "#EXT-X-PRELOAD-HINT:",
    ] {
        assert!(
            live.contains(tag),
            "{name}: live playlist lacks {tag}: {live}"
        );
    }
    assert!(!live.contains("ENDLIST"));
    let finished = rec.finish().unwrap().expect("recorded");
    let stats = rec.stats();
    let probe = ffprobe(&out.join("index.m3u8"));
    let duration = duration_of(&probe);
    println!(
        "{name}: codecs {} duration {duration:.3} s (recorder {:.3} s), {} bytes, {} fragments, {} segments, {} dropped",
        finished.codecs,
        finished.duration.as_secs_f64(),
        finished.bytes,
        stats.fragments,
        stats.segments,
        stats.dropped_frames
    );
    assert!((duration - 6.0).abs() < 0.5, "{name}: duration {duration}");
    assert!((finished.duration.as_secs_f64() - 6.0).abs() < 0.5);
    assert_eq!(
        stats.dropped_frames, 0,
        "{name}: nothing lost, nothing dropped"
    );
    if let Some(codec) = codec {
        let v = stream(&probe, "video").expect("video stream");
        let want = match codec {
            V::Vp8 => "vp8",
            V::Vp9 => "vp9",
            V::H264 => "h264",
            V::Av1 => "av1",
        };
        assert_eq!(v["codec_name"], want, "{name}");
        assert_eq!(v["width"], size.0, "{name}");
        assert_eq!(v["height"], size.1, "{name}");
    }
    if audio {
        let a = stream(&probe, "audio").expect("audio stream");
        assert_eq!(a["codec_name"], "opus", "{name}");
    }
    if codec.is_some() {
        // The sample entry's size, as the recorder parsed it from the bitstream.
        let master = std::fs::read_to_string(out.join("master.m3u8")).unwrap();
        assert!(
            master.contains(&format!("RESOLUTION={}x{}", size.0, size.1)),
            "{name}: {master}"
        );
    }
    let master = ffprobe(&out.join("master.m3u8"));
    assert!((duration_of(&master) - duration).abs() < 0.1);
    let errors = decode_errors(&out.join("index.m3u8"));
    assert!(errors.trim().is_empty(), "{name}: decode errors: {errors}");
    let playlist = std::fs::read_to_string(out.join("index.m3u8")).unwrap();
    assert!(playlist.contains("#EXT-X-ENDLIST"));
    assert!(rec.last_keyframe_segment().is_some());
    let _keep = tmp.keep();
    out
}

#[test]
fn vp8_and_opus() {
    if !have_ffmpeg() {
        return;
    }
    let out = record_and_check(Some(V::Vp8), true, (320, 240), "vp8+opus");
    let master = std::fs::read_to_string(out.join("master.m3u8")).unwrap();
    assert!(master.contains("CODECS=\"vp08.00.41.08,opus\""), "{master}");
    assert!(master.contains("RESOLUTION=320x240"), "{master}");
    std::fs::remove_dir_all(out.parent().unwrap()).ok();
}

#[test]
fn h264_and_opus() {
    if !have_ffmpeg() {
        return;
    }
    let out = record_and_check(Some(V::H264), true, (640, 360), "h264+opus");
    let master = std::fs::read_to_string(out.join("master.m3u8")).unwrap();
    assert!(
        master.contains("CODECS=\"avc1.42c01e,opus\"") || master.contains("CODECS=\"avc1.42"),
        "{master}"
    );
    std::fs::remove_dir_all(out.parent().unwrap()).ok();
}

#[test]
fn vp9_video_only() {
    if !have_ffmpeg() {
        return;
    }
    let out = record_and_check(Some(V::Vp9), false, (320, 240), "vp9");
    std::fs::remove_dir_all(out.parent().unwrap()).ok();
}

#[test]
fn av1_and_opus() {
    if !have_ffmpeg() {
        return;
    }
    let out = record_and_check(Some(V::Av1), true, (320, 240), "av1+opus");
    let master = std::fs::read_to_string(out.join("master.m3u8")).unwrap();
    assert!(master.contains("CODECS=\"av01.0."), "{master}");
    std::fs::remove_dir_all(out.parent().unwrap()).ok();
}

#[test]
fn opus_only() {
    if !have_ffmpeg() {
        return;
    }
    let out = record_and_check(None, true, (0, 0), "opus");
    std::fs::remove_dir_all(out.parent().unwrap()).ok();
}

/// Per-stream packet times (pts_time) from ffprobe.
fn packet_times(path: &Path, stream: &str) -> Vec<f64> {
    let out = Command::new("/usr/bin/ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            stream,
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect()
}

/// Chromium's microphone starts before its camera: the video track opens (at
/// its first packet) 1.5 s after the first audio, beyond a part. The recording
/// still holds the video (the init waits VIDEO_GRACE for it), not audio alone.
#[test]
fn video_that_opens_after_the_audio_is_still_recorded() {
    if !have_ffmpeg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let media = encode(tmp.path(), Some(V::Vp8), true, 4, (320, 240));
    let out = tmp.path().join("rec");
    let (mut rec, _store) = recorder(&out);
    let start = Instant::now();
    let p = publisher(5);
    // 1.5 s of audio alone (75 packets of 20 ms).
    open_tracks(&mut rec, None, true, &p);
    let head = Media {
        video: Vec::new(),
        audio: media.audio[..75].to_vec(),
    };
    feed(&mut rec, None, &head, &p, start);
    // Then the camera, and the rest of the audio where it left off.
    open_tracks(&mut rec, Some(V::Vp8), false, &p);
    let rest = Media {
        video: media.video.clone(),
        audio: media.audio[75..].to_vec(),
    };
    let later = Publisher {
        aseq: p.aseq.wrapping_add(75),
        ats: p.ats.wrapping_add(75 * 960),
        ..publisher(5)
    };
    feed(
        &mut rec,
        Some(V::Vp8),
        &rest,
        &later,
        start + Duration::from_millis(1500),
    );
    let finished = rec.finish().unwrap().expect("recorded");
    assert!(
        finished.codecs.starts_with("vp08"),
        "codecs {}",
        finished.codecs
    );
    let probe = ffprobe(&out.join("index.m3u8"));
    let v = stream(&probe, "video").expect("a video stream");
    assert_eq!(v["codec_name"], "vp8");
    assert!(stream(&probe, "audio").is_some(), "and the audio");
}

#[test]
fn publisher_reconnect_continues_one_recording() {
    if !have_ffmpeg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let media = encode(tmp.path(), Some(V::Vp8), true, 3, (320, 240));
    let out = tmp.path().join("rec");
    let (mut rec, _store) = recorder(&out);
    let start = Instant::now();
    let first = publisher(1);
    open_tracks(&mut rec, Some(V::Vp8), true, &first);
    feed(&mut rec, Some(V::Vp8), &media, &first, start);
    rec.publisher_left().unwrap();
    // The second publisher: other payload types, other numbering, 5 s later.
    let mut second = publisher(977);
    second.video_pt = 100;
    second.audio_pt = 109;
    open_tracks(&mut rec, Some(V::Vp8), true, &second);
    feed(
        &mut rec,
        Some(V::Vp8),
        &media,
        &second,
        start + Duration::from_secs(8),
    );
    let finished = rec.finish().unwrap().unwrap();
    let index = out.join("index.m3u8");
    let duration = duration_of(&ffprobe(&index));
    println!(
        "reconnect: duration {duration:.3} s (2 × 3 s published), recorder {:.3} s",
        finished.duration.as_secs_f64()
    );
    assert!((duration - 6.0).abs() < 0.5, "duration {duration}");
    for stream in ["v:0", "a:0"] {
        let times = packet_times(&index, stream);
        assert!(times.len() > 100, "{stream}: {} packets", times.len());
        let mut largest: f64 = 0.0;
        for w in times.windows(2) {
            assert!(w[1] > w[0], "{stream}: times go back: {w:?}");
            largest = largest.max(w[1] - w[0]);
        }
        println!("reconnect: {stream} largest step {largest:.3} s");
        assert!(largest < 1.0, "{stream}: a gap of {largest} s");
    }
    let errors = decode_errors(&index);
    assert!(errors.trim().is_empty(), "decode errors: {errors}");
}

#[test]
fn loss_drops_to_the_next_key_frame() {
    if !have_ffmpeg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let media = encode(tmp.path(), Some(V::Vp8), true, 6, (320, 240));
    let out = tmp.path().join("rec");
    let (mut rec, _store) = recorder(&out);
    let mut p = publisher(5);
    // Lose three packets a little after the first second (key frames every 2 s).
    let mut seq_of_frame_40 = p.vseq;
    let mut payloader = payloader(V::Vp8);
    for frame in media.video.iter().take(40) {
        let n = payloader
            .payload(1200, &Bytes::copy_from_slice(frame))
            .unwrap()
            .len();
        seq_of_frame_40 = seq_of_frame_40.wrapping_add(n as u16);
    }
    p.drop_video = vec![
        seq_of_frame_40,
        seq_of_frame_40.wrapping_add(3),
        seq_of_frame_40.wrapping_add(9),
    ];
    open_tracks(&mut rec, Some(V::Vp8), true, &p);
    feed(&mut rec, Some(V::Vp8), &media, &p, Instant::now());
    assert!(rec.take_keyframe_request(), "a loss asks for a key frame");
    rec.finish().unwrap().unwrap();
    let stats = rec.stats();
    println!("loss: {} frames dropped", stats.dropped_frames);
    // Frames 40..59 at most (the key frame at 60 ends it), at least the broken ones.
    assert!(
        (3..=20).contains(&stats.dropped_frames),
        "dropped {}",
        stats.dropped_frames
    );
    let index = out.join("index.m3u8");
    let errors = decode_errors(&index);
    assert!(errors.trim().is_empty(), "decode errors: {errors}");
    let duration = duration_of(&ffprobe(&index));
    assert!((duration - 6.0).abs() < 0.5, "duration {duration}");
}

#[test]
fn repair_finishes_a_crashed_recording() {
    if !have_ffmpeg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let media = encode(tmp.path(), Some(V::H264), true, 7, (320, 240));
    let out = tmp.path().join("rec");
    let (mut rec, store) = recorder(&out);
    let p = publisher(9);
    open_tracks(&mut rec, Some(V::H264), true, &p);
    feed(&mut rec, Some(V::H264), &media, &p, Instant::now());
    // kill -9: no finish; the last fragment was half appended.
    drop(rec);
    let state: RecordingState = serde_json::from_slice(&store.get(STATE).unwrap()).unwrap();
    assert!(!state.finished);
    let complete = state.duration();
    let open = state.open.clone().expect("an open segment");
    let before = store.get(&open.name).unwrap().len();
    store
        .append(&open.name, &store.get(&open.name).unwrap()[..100])
        .unwrap();
    assert!(
        !std::fs::read_to_string(out.join("index.m3u8"))
            .unwrap()
            .contains("ENDLIST")
    );

    let finished = repair(store.as_ref()).unwrap().expect("a recording");
    assert_eq!(
        store.get(&open.name).unwrap().len(),
        before,
        "the partial fragment is cut"
    );
    let playlist = std::fs::read_to_string(out.join("index.m3u8")).unwrap();
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    assert!(playlist.contains(&open.name));
    let duration = duration_of(&ffprobe(&out.join("index.m3u8")));
    println!(
        "repair: {complete:.3} s complete before the crash, ffprobe {duration:.3} s, {}",
        finished.codecs
    );
    assert!(
        (duration - complete).abs() < 0.5,
        "{duration} vs {complete}"
    );
    assert!(complete > 5.0, "at most ~1 s lost of 7: {complete}");
    assert!((finished.duration.as_secs_f64() - complete).abs() < 1e-6);
    let errors = decode_errors(&out.join("index.m3u8"));
    assert!(errors.trim().is_empty(), "decode errors: {errors}");
    // A second repair leaves the finished recording alone.
    let again = repair(store.as_ref()).unwrap().unwrap();
    assert_eq!(again, finished);
    assert_eq!(
        std::fs::read_to_string(out.join("index.m3u8")).unwrap(),
        playlist
    );
}

#[test]
fn nothing_recorded_finishes_as_none() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut rec, store) = recorder(&tmp.path().join("rec"));
    let p = publisher(2);
    open_tracks(&mut rec, Some(V::Vp8), true, &p);
    // Only delta frames and audio before any key frame: nothing is kept.
    for i in 0..50u16 {
        rec.packet(TapPacket {
            kind: MediaKind::Video,
            payload_type: 96,
            sequence_number: i,
            timestamp: u32::from(i) * 3000,
            marker: true,
            payload: Bytes::from_static(&[0x10, 0x01, 0x02, 0x03]),
            arrived: Instant::now(),
        })
        .unwrap();
    }
    assert!(rec.take_keyframe_request());
    assert_eq!(rec.finish().unwrap(), None);
    assert!(rec.stats().dropped_frames >= 50);
    assert_eq!(repair(store.as_ref()).unwrap(), None);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_recorder_can_move_to_its_thread() {
    fn is_send<T: Send + 'static>() {}
    is_send::<Recorder>();
}
