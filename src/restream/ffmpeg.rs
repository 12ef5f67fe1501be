//! The ffmpeg of one destination: what it is told (an SDP describing the
//! stream's RTP on local ports, a command line per codec) and what it says
//! (`-progress` lines on stdout, errors on stderr, classified and redacted).
//!
//! Transcoding rules (docs/RESTREAM.md): H.264 passes through (`-c:v copy`);
//! VP8, VP9 and AV1 become H.264 (libx264 `veryfast`, `zerolatency`, a key
//! frame every `keyframe_interval_seconds`, `transcode_bitrate_kbps`); Opus
//! becomes AAC 48 kHz. The output is FLV over RTMP, or RTMPS (ffmpeg's TLS).
//!
//! The destination URL carries the stream key. ffmpeg takes its output URL
//! only as an argument, so the key is in the child's command line, which other
//! local users can read in `/proc/PID/cmdline` unless `/proc` is mounted with
//! `hidepid=2` (docs/RESTREAM.md: run tandem on a host or in a container of its
//! own). Nowhere else: every stderr line is redacted before it is logged or
//! becomes a `last_error`, and logs show only `scheme://host`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tandem_media::TapCodec;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::supervisor::ExitClass;
use crate::config::RestreamConfig;

/// One track of the publisher as a destination's ffmpeg receives it: the
/// payload type in use and its codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackMedia {
    pub payload_type: u8,
    pub codec: TapCodec,
}

/// The publisher's media as the SDP describes it (a track may be missing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Media {
    pub video: Option<TrackMedia>,
    pub audio: Option<TrackMedia>,
}

/// What happens to the video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoPlan {
    /// H.264: copied as it is.
    Copy,
    /// VP8, VP9, AV1: transcoded to H.264.
    Transcode,
}

/// The plan for a video codec (a MIME type like `video/VP8`).
pub fn video_plan(mime_type: &str) -> VideoPlan {
    if encoding_name(mime_type).eq_ignore_ascii_case("H264") {
        VideoPlan::Copy
    } else {
        VideoPlan::Transcode
    }
}

/// `video/H264` → `H264`.
fn encoding_name(mime_type: &str) -> &str {
    mime_type.rsplit('/').next().unwrap_or(mime_type)
}

/// The RTP ports a destination's ffmpeg listens on (RTCP on each + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub video: Option<u16>,
    pub audio: Option<u16>,
}

impl Ports {
    pub fn video_addr(&self) -> Option<SocketAddr> {
        self.video.map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }

    pub fn audio_addr(&self) -> Option<SocketAddr> {
        self.audio.map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }
}

/// The SDP ffmpeg reads: one m-line per track on 127.0.0.1.
pub fn sdp(media: &Media, ports: &Ports) -> String {
    let mut out = String::from(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=tandem restream\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n",
    );
    for (kind, track, port) in [
        ("video", &media.video, ports.video),
        ("audio", &media.audio, ports.audio),
    ] {
        let (Some(track), Some(port)) = (track, port) else {
            continue;
        };
        let pt = track.payload_type;
        let c = &track.codec;
        out.push_str(&format!("m={kind} {port} RTP/AVP {pt}\r\n"));
        let name = encoding_name(&c.mime_type);
        if c.channels > 0 {
            out.push_str(&format!(
                "a=rtpmap:{pt} {name}/{}/{}\r\n",
                c.clock_rate, c.channels
            ));
        } else {
            out.push_str(&format!("a=rtpmap:{pt} {name}/{}\r\n", c.clock_rate));
        }
        if !c.fmtp.is_empty() {
            out.push_str(&format!("a=fmtp:{pt} {}\r\n", c.fmtp));
        }
    }
    out
}

/// ffmpeg's arguments for `media` read from `sdp_path`, pushed to `url`.
pub fn args(config: &RestreamConfig, sdp_path: &Path, media: &Media, url: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-nostats",
        "-progress",
        "pipe:1",
        "-stats_period",
        "0.5",
        "-protocol_whitelist",
        "file,udp,rtp",
        // Timestamps from the RTP clock; a few packets out of order are fine on loopback.
        "-fflags",
        "+genpts",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(sdp_path.display().to_string());
    if let Some(video) = &media.video {
        a.extend(["-map".into(), "0:v:0".into()]);
        match video_plan(&video.codec.mime_type) {
            VideoPlan::Copy => a.extend(["-c:v".into(), "copy".into()]),
            VideoPlan::Transcode => {
                let kbps = config.transcode_bitrate_kbps.max(100);
                let interval = config.keyframe_interval_seconds.max(1);
                a.extend(
                    [
                        "-c:v",
                        "libx264",
                        "-preset",
                        "veryfast",
                        "-tune",
                        "zerolatency",
                        "-pix_fmt",
                        "yuv420p",
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
                a.extend([
                    "-b:v".into(),
                    format!("{kbps}k"),
                    "-maxrate".into(),
                    format!("{kbps}k"),
                    "-bufsize".into(),
                    format!("{}k", kbps * 2),
                    // A key frame every `interval` seconds whatever the frame
                    // rate (WebRTC's is variable), none in between.
                    "-force_key_frames".into(),
                    format!("expr:gte(t,n_forced*{interval})"),
                    "-g".into(),
                    format!("{}", interval * 60),
                    "-sc_threshold".into(),
                    "0".into(),
                ]);
            }
        }
    }
    if media.audio.is_some() {
        a.extend(
            ["-map", "0:a:0", "-c:a", "aac", "-ar", "48000", "-ac", "2"]
                .iter()
                .map(|s| s.to_string()),
        );
        a.extend([
            "-b:a".into(),
            format!("{}k", config.audio_bitrate_kbps.max(32)),
        ]);
    }
    a.extend(
        ["-flvflags", "no_duration_filesize", "-f", "flv"]
            .iter()
            .map(|s| s.to_string()),
    );
    a.push(url.to_string());
    a
}

/// `scheme://host[:port]` of a URL: all a log or an error may show of a
/// destination (the path carries the stream key).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(url)".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // No user:password either.
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}")
}

/// `line` with every trace of `url` replaced: the URL itself (as given and
/// as ffmpeg may print it), its path and query, and each path segment long
/// enough to be a key.
pub fn redact(line: &str, url: &str) -> String {
    let shown = redact_url(url);
    let mut out = line.replace(url, &shown);
    if let Some((_, rest)) = url.split_once("://") {
        if let Some(i) = rest.find(['/', '?']) {
            let tail = &rest[i..];
            if tail.len() > 1 {
                out = out.replace(tail, "/…");
            }
            for part in tail.split(['/', '?', '&', '=']) {
                if part.len() >= 4 {
                    out = out.replace(part, "…");
                }
            }
        }
        if let Some((userinfo, _)) = rest.split('/').next().unwrap_or("").rsplit_once('@') {
            out = out.replace(userinfo, "…");
        }
    }
    out
}

/// What an ffmpeg stderr line says about the run's end, if anything, and how
/// sure it is (the most telling line of a run wins): a server's explicit
/// refusal (3), a network failure (2), or the output failing to open with a
/// bare I/O error (1): what ffmpeg prints when an RTMP server closes the
/// connection in answer to the publish command, as nginx-rtmp does when
/// `on_publish` refuses and as the large platforms do for a wrong key.
pub fn classify(line: &str) -> Option<(ExitClass, u8)> {
    let l = line.to_ascii_lowercase();
    const REFUSED: [&str; 8] = [
        "netstream.publish.badname",
        "netstream.publish.rejected",
        "netconnection.connect.rejected",
        "unauthorized",
        "authentication failed",
        "forbidden",
        "server error",
        "publish failed",
    ];
    const NETWORK: [&str; 12] = [
        "connection refused",
        "connection reset",
        "connection timed out",
        "broken pipe",
        "no route to host",
        "network is unreachable",
        "failed to resolve",
        "name or service not known",
        "temporary failure in name resolution",
        "tls",
        "gnutls",
        "certificate",
    ];
    if REFUSED.iter().any(|p| l.contains(p)) {
        Some((ExitClass::Refused, 3))
    } else if NETWORK.iter().any(|p| l.contains(p)) {
        Some((ExitClass::Network, 2))
    } else if l.ends_with(": input/output error") || l.ends_with(": end of file") {
        Some((ExitClass::Refused, 1))
    } else {
        None
    }
}

/// What one `-progress` block says: bytes written so far (`total_size`) and
/// video frames written (`frame`, copied or encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub total_bytes: u64,
    pub video_frames: u64,
}

/// Reads `-progress` output line by line; a block ends with `progress=…`.
#[derive(Debug, Default)]
pub struct ProgressParser {
    block: Progress,
}

impl ProgressParser {
    /// The block's figures when `line` ends it.
    pub fn line(&mut self, line: &str) -> Option<Progress> {
        let (key, value) = line.trim().split_once('=')?;
        match key {
            "total_size" => {
                self.block.total_bytes = value.parse().unwrap_or(self.block.total_bytes)
            }
            "frame" => self.block.video_frames = value.parse().unwrap_or(self.block.video_frames),
            "progress" => return Some(self.block),
            _ => {}
        }
        None
    }
}

/// What stderr said by the end of a run: the class of the most telling line
/// and that line, redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StderrSummary {
    pub class: Option<ExitClass>,
    pub error: Option<String>,
}

/// Reserves an RTP port pair (even RTP port, RTCP on the next) on 127.0.0.1:
/// ffmpeg's RTP demuxer binds both for each m-line. The sockets are held until
/// ffmpeg is about to start, so two destinations never pick the same pair; a
/// port taken in the short gap makes ffmpeg fail to bind, and the retry picks
/// new ones.
pub fn reserve_pair() -> io::Result<(u16, [UdpSocket; 2])> {
    for _ in 0..64 {
        let a = UdpSocket::bind("127.0.0.1:0")?;
        let port = a.local_addr()?.port();
        let (rtp_port, held) = if port % 2 == 0 {
            (port, a)
        } else {
            drop(a);
            match UdpSocket::bind(("127.0.0.1", port.wrapping_sub(1))) {
                Ok(s) => (port - 1, s),
                Err(_) => continue,
            }
        };
        if rtp_port == 0 || rtp_port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", rtp_port + 1)) {
            return Ok((rtp_port, [held, rtcp]));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free UDP port pair on 127.0.0.1",
    ))
}

/// Whether a UDP socket is bound to `port` (ffmpeg listens), read from
/// `/proc/net/udp` rather than by binding, which could take the port from
/// ffmpeg. Without procfs: true (the caller stops waiting).
pub fn udp_port_bound(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return true;
    };
    let wanted = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        line.split_whitespace()
            .nth(1)
            .is_some_and(|local| local.ends_with(&wanted))
    })
}

/// A temporary folder removed when dropped (a destination's SDP).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "tandem-restream-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running ffmpeg of one destination.
pub struct Run {
    pub child: Child,
    pub pid: Option<u32>,
    pub ports: Ports,
    /// Each `-progress` block's figures.
    pub progress: mpsc::Receiver<Progress>,
    /// Finishes when stderr closes (the process ended).
    pub stderr: JoinHandle<StderrSummary>,
    /// The SDP's folder, removed with the run.
    _dir: TempDir,
}

/// Starts ffmpeg for `media` towards `url`: ports reserved, the SDP written,
/// the process spawned (killed if the handle is dropped).
pub fn spawn(config: &RestreamConfig, media: &Media, url: &str) -> io::Result<Run> {
    let dir = TempDir::new()?;
    let video = media.video.as_ref().map(|_| reserve_pair()).transpose()?;
    let audio = media.audio.as_ref().map(|_| reserve_pair()).transpose()?;
    let ports = Ports {
        video: video.as_ref().map(|v| v.0),
        audio: audio.as_ref().map(|a| a.0),
    };
    let sdp_path = dir.path().join("dest.sdp");
    std::fs::write(&sdp_path, sdp(media, &ports))?;
    let mut command = Command::new(&config.ffmpeg);
    command
        .args(args(config, &sdp_path, media, url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The ports are free for ffmpeg from here.
    drop(video);
    drop(audio);
    let mut child = command.spawn()?;
    let pid = child.id();
    let (progress_tx, progress) = mpsc::channel(16);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let Some(stdout) = stdout else { return };
        let mut lines = BufReader::new(stdout).lines();
        let mut parser = ProgressParser::default();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(progress) = parser.line(&line) {
                // A full channel: the reader is behind; the next block tells more.
                let _ = progress_tx.try_send(progress);
            }
        }
    });
    let url = url.to_string();
    let stderr = tokio::spawn(async move {
        let mut summary = StderrSummary::default();
        let mut best = 0u8;
        let Some(stderr) = stderr else {
            return summary;
        };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = redact(line.trim(), &url);
            if line.is_empty() {
                continue;
            }
            tracing::debug!(target: "tandem::restream::ffmpeg", "{line}");
            match classify(&line) {
                Some((class, rank)) if rank > best => {
                    best = rank;
                    summary.class = Some(class);
                    summary.error = Some(match class {
                        ExitClass::Refused => format!(
                            "the server refused the stream (check the stream key): {}",
                            truncate(&line, 240)
                        ),
                        _ => truncate(&line, 300),
                    });
                }
                // Nothing telling yet: the last line says most.
                None if best == 0 => summary.error = Some(truncate(&line, 300)),
                _ => {}
            }
        }
        summary
    });
    Ok(Run {
        child,
        pid,
        ports,
        progress,
        stderr,
        _dir: dir,
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(mime: &str, pt: u8, clock: u32, channels: u16, fmtp: &str) -> TrackMedia {
        TrackMedia {
            payload_type: pt,
            codec: TapCodec {
                payload_type: pt,
                mime_type: mime.into(),
                clock_rate: clock,
                channels,
                fmtp: fmtp.into(),
            },
        }
    }

    fn media(video: &str) -> Media {
        Media {
            video: Some(codec(video, 102, 90000, 0, "packetization-mode=1")),
            audio: Some(codec("audio/opus", 111, 48000, 2, "minptime=10")),
        }
    }

    #[test]
    fn sdp_has_one_m_line_per_track_on_its_port() {
        let s = sdp(
            &media("video/H264"),
            &Ports {
                video: Some(40000),
                audio: Some(40002),
            },
        );
        assert!(s.contains("c=IN IP4 127.0.0.1\r\n"));
        assert!(s.contains("m=video 40000 RTP/AVP 102\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1\r\n"));
        assert!(s.contains("m=audio 40002 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"));
    }

    #[test]
    fn h264_is_copied_and_vp8_transcoded_with_key_frames_every_interval() {
        let config = RestreamConfig::default();
        let url = "rtmp://h/live/k";
        let copy = args(&config, Path::new("/t/d.sdp"), &media("video/H264"), url).join(" ");
        assert!(copy.contains("-c:v copy"), "{copy}");
        assert!(!copy.contains("libx264"));
        assert!(copy.contains("-protocol_whitelist file,udp,rtp -fflags +genpts -i /t/d.sdp"));
        assert!(copy.contains("-c:a aac -ar 48000"));
        assert!(copy.ends_with("-f flv rtmp://h/live/k"));
        for vp in ["video/VP8", "video/VP9", "video/AV1"] {
            let t = args(&config, Path::new("/t/d.sdp"), &media(vp), url).join(" ");
            assert!(
                t.contains("-c:v libx264 -preset veryfast -tune zerolatency"),
                "{t}"
            );
            assert!(t.contains("-b:v 3000k"));
            assert!(t.contains("-force_key_frames expr:gte(t,n_forced*2)"));
        }
    }

    #[test]
    fn redaction_keeps_scheme_and_host_only() {
        let url = "rtmps://user:pw@live.example.com:443/app/sk_live_123456?auth=abcdef";
        assert_eq!(redact_url(url), "rtmps://live.example.com:443");
        let line = format!("[flv] {url}: Connection refused");
        let r = redact(&line, url);
        assert!(!r.contains("sk_live_123456"), "{r}");
        assert!(!r.contains("abcdef"), "{r}");
        assert!(!r.contains("pw"), "{r}");
        assert!(r.contains("rtmps://live.example.com:443"), "{r}");
        // The key alone, as ffmpeg may print a path.
        let r = redact("publishing sk_live_123456 failed", url);
        assert!(!r.contains("sk_live_123456"), "{r}");
        assert_eq!(redact_url("nonsense"), "(url)");
    }

    #[test]
    fn stderr_lines_are_classified() {
        assert_eq!(
            classify("[rtmp @ 0x5] Server error: Publish failed"),
            Some((ExitClass::Refused, 3))
        );
        assert_eq!(
            classify("rtmp://h: Connection refused"),
            Some((ExitClass::Network, 2))
        );
        // ffmpeg 5.1 against nginx-rtmp refusing on_publish with 403.
        assert_eq!(
            classify("rtmp://127.0.0.1:19351/…: Input/output error"),
            Some((ExitClass::Refused, 1))
        );
        assert_eq!(classify("Past duration 0.99 too large"), None);
    }

    #[test]
    fn progress_blocks_give_bytes_and_frames() {
        let mut p = ProgressParser::default();
        for line in ["frame=0", "fps=0.0", "total_size=N/A", "out_time_us=0"] {
            assert_eq!(p.line(line), None);
        }
        assert_eq!(p.line("progress=continue"), Some(Progress::default()));
        for line in ["frame=31", "total_size=12345", "speed=1x"] {
            assert_eq!(p.line(line), None);
        }
        assert_eq!(
            p.line("progress=continue"),
            Some(Progress {
                total_bytes: 12345,
                video_frames: 31
            })
        );
    }

    #[test]
    fn bound_ports_are_seen_in_procfs() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert!(udp_port_bound(port));
        drop(s);
        assert!(!udp_port_bound(port));
    }

    #[test]
    fn port_pairs_are_even_and_distinct() {
        let (a, _ha) = reserve_pair().unwrap();
        let (b, _hb) = reserve_pair().unwrap();
        assert_eq!(a % 2, 0);
        assert_eq!(b % 2, 0);
        assert_ne!(a, b);
        assert!(
            UdpSocket::bind(("127.0.0.1", a + 1)).is_err(),
            "RTCP port held"
        );
    }
}
