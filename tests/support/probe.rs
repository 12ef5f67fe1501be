//! ffprobe as the recording tests ask it: what a recording (a URL or a file)
//! holds, read by a tool that is not ours.

use std::process::Command;

use serde_json::Value;

/// `ffprobe` of `input` (a URL or a file) as JSON: streams, format, and with
/// `packets` the video packets' times.
pub fn ffprobe(input: &str, packets: bool) -> Value {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-show_streams",
        "-show_format",
        "-of",
        "json",
    ]);
    if packets {
        cmd.args([
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
        ]);
    }
    let out = cmd
        .arg(input)
        .output()
        .expect("ffprobe runs (apt install ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe {input}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// The first stream of `kind` (`video`, `audio`) in an [`ffprobe`] answer.
pub fn stream_of<'a>(probe: &'a Value, kind: &str) -> &'a Value {
    probe["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == kind))
        .unwrap_or_else(|| panic!("a {kind} stream in {probe}"))
}

/// The container's duration in seconds in an [`ffprobe`] answer.
pub fn duration_of(probe: &Value) -> f64 {
    probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("a duration in {}", probe["format"]))
}
