//! A recording's thumbnail: one key frame of the stream as a JPEG (at most 640 px
//! wide), for `GET /v1/streams/{id}/thumbnail.jpg` and the replay page's poster.
//!
//! The recorder stores what the publisher sent without decoding it, so a picture
//! needs a decoder: ffmpeg as a child process (as the restream path already uses it),
//! fed the recording's init segment and one media segment on stdin as one fragmented
//! MP4. That keeps every codec ffmpeg decodes (VP8, VP9, H.264, AV1) out of this
//! process, and a crash or hang of the decoder is the child's alone: it is killed on
//! drop and after [`TIMEOUT`]. Measured here (ffmpeg 5.1, testsrc2 pattern): a
//! 640×360 JPEG at quality 5 (ffmpeg's 2 = best … 31 = worst) is 14–17 KB, and one
//! render from a 2 s 1280×720 H.264 fragment takes 0.14 s wall, 0.05–0.07 s CPU.
//!
//! The JPEG is written to a temporary file beside `out` and renamed over it, so a
//! reader (the HTTP handler) sees the old picture or the new one, never half of one.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// How long one render may take before the child is killed.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Wider pictures are scaled down to this width (aspect kept); narrower ones are kept.
pub const MAX_WIDTH: u32 = 640;
/// ffmpeg's JPEG quality scale (`-q:v`): 2 is best, 31 worst.
const JPEG_QUALITY: &str = "5";
/// How much of ffmpeg's stderr an error carries (its last lines say what went wrong).
const STDERR_TAIL: usize = 600;

/// Renders the first video frame of `init` + `segment` (a fragmented MP4: the
/// recording's `init.mp4` and one `seg*.m4s` that starts with a key frame) to a JPEG
/// at `out`, replacing it atomically. `init` may be empty when `segment` is a whole
/// fragmented MP4. Errors say what failed, with the tail of ffmpeg's stderr.
pub async fn render(ffmpeg: &Path, init: &[u8], segment: &[u8], out: &Path) -> io::Result<()> {
    render_within(ffmpeg, init, segment, out, TIMEOUT).await
}

/// [`render`] with another time limit (tests).
pub async fn render_within(
    ffmpeg: &Path,
    init: &[u8],
    segment: &[u8],
    out: &Path,
    limit: Duration,
) -> io::Result<()> {
    let tmp = temp_beside(out)?;
    let result = run(ffmpeg, init, segment, &tmp, limit).await;
    let result = match result {
        Ok(()) => check_jpeg(&tmp).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tokio::fs::rename(&tmp, out).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "thumbnail: could not move the JPEG to {}: {e}",
                    out.display()
                ),
            )
        }),
        Err(e) => {
            // Nothing half-written stays behind; a missing file is fine.
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

/// A name in `out`'s folder (so the rename cannot cross file systems) that no other
/// render in this process or another one uses at the same time.
fn temp_beside(out: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = out.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("thumbnail: {} is not a file path", out.display()),
        )
    })?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(
        ".{}.{}.{n}.tmp.jpg",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(out.with_file_name(tmp))
}

async fn run(
    ffmpeg: &Path,
    init: &[u8],
    segment: &[u8],
    tmp: &Path,
    limit: Duration,
) -> io::Result<()> {
    let scale = format!("scale='min({MAX_WIDTH},iw)':-2");
    let mut child = Command::new(ffmpeg)
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-threads",
            "1",
        ])
        .args(["-f", "mp4", "-i", "pipe:0", "-an", "-frames:v", "1", "-vf"])
        .arg(&scale)
        .args(["-q:v", JPEG_QUALITY, "-c:v", "mjpeg", "-f", "image2", "-y"])
        .arg(tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("thumbnail: could not start {}: {e}", ffmpeg.display()),
            )
        })?;
    let mut stdin = child.stdin.take();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            stdin.write_all(init).await?;
            stdin.write_all(segment).await?;
            stdin.shutdown().await?;
        }
        drop(stdin); // EOF: ffmpeg stops reading
        Ok::<(), io::Error>(())
    };
    let work = async { tokio::join!(feed, child.wait_with_output()) };
    // On timeout the future, and with it the child (kill_on_drop), is dropped.
    let (fed, output) = tokio::time::timeout(limit, work).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "thumbnail: ffmpeg did not finish within {} s and was killed",
                limit.as_secs_f32()
            ),
        )
    })?;
    let output = output?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "thumbnail: ffmpeg failed ({}): {}",
            output.status,
            tail(&output.stderr)
        )));
    }
    // ffmpeg may stop reading once it has its frame: a broken pipe after a success is fine.
    if let Err(e) = fed
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(io::Error::new(
            e.kind(),
            format!("thumbnail: feeding ffmpeg failed: {e}"),
        ));
    }
    Ok(())
}

/// The output exists and is a JPEG (SOI marker FF D8): ffmpeg exits 0 without writing
/// anything when its input has no video frame.
async fn check_jpeg(tmp: &Path) -> io::Result<()> {
    let bytes = match tokio::fs::read(tmp).await {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "thumbnail: ffmpeg wrote no picture (no video frame in the segment?)",
            ));
        }
        Err(e) => return Err(e),
    };
    if bytes.len() < 4 || bytes[..2] != [0xFF, 0xD8] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "thumbnail: ffmpeg's output is not a JPEG ({} bytes)",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// The last [`STDERR_TAIL`] bytes of ffmpeg's stderr as one trimmed line.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(STDERR_TAIL);
    // Cut on a character boundary.
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    let cut = &text[start..];
    if cut.is_empty() {
        "(no message)".to_string()
    } else {
        cut.replace('\n', " | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FFMPEG: &str = "/usr/bin/ffmpeg";
    const FFPROBE: &str = "/usr/bin/ffprobe";

    /// A fresh folder under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("tandem-thumb-{name}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn have_ffmpeg() -> bool {
        let ok = Path::new(FFMPEG).exists() && Path::new(FFPROBE).exists();
        if !ok {
            eprintln!("SKIPPED: {FFMPEG} or {FFPROBE} missing (apt-get install ffmpeg)");
        }
        ok
    }

    /// A 2 s fragmented MP4 (H.264, a key frame every 30 frames) made by ffmpeg.
    fn fragmented_mp4(dir: &Path, size: &str) -> Vec<u8> {
        let path = dir.join("in.mp4");
        let status = std::process::Command::new(FFMPEG)
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg(format!("testsrc2=size={size}:rate=30"))
            .args([
                "-t", "2", "-c:v", "libx264", "-g", "30", "-pix_fmt", "yuv420p",
            ])
            .args(["-movflags", "frag_keyframe+empty_moov+default_base_moof"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "ffmpeg could not make the test input");
        std::fs::read(&path).unwrap()
    }

    /// Splits a fragmented MP4 into (init = everything before the first `moof`, the
    /// first `moof` + `mdat`), as the recorder's `init.mp4` and first segment.
    fn split(mp4: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut at = 0;
        let mut boxes = vec![];
        while at + 8 <= mp4.len() {
            let size = u32::from_be_bytes(mp4[at..at + 4].try_into().unwrap()) as usize;
            boxes.push((at, size, mp4[at + 4..at + 8].to_vec()));
            assert!(size >= 8, "a box of size {size} at {at}");
            at += size;
        }
        let moof = boxes
            .iter()
            .position(|b| b.2 == b"moof")
            .expect("a moof box");
        assert_eq!(boxes[moof + 1].2, b"mdat", "moof is followed by mdat");
        let start = boxes[moof].0;
        let end = boxes[moof + 1].0 + boxes[moof + 1].1;
        (mp4[..start].to_vec(), mp4[start..end].to_vec())
    }

    fn width_of(jpeg: &Path) -> u32 {
        let out = std::process::Command::new(FFPROBE)
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .args(["stream=width,codec_name", "-of", "csv=p=0"])
            .arg(jpeg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(text.starts_with("mjpeg,"), "ffprobe says {text:?}");
        text["mjpeg,".len()..].parse().unwrap()
    }

    /// The recorder's case: init segment + first media segment of a 720p stream →
    /// a JPEG scaled down to 640 px wide, replacing an older picture.
    #[tokio::test]
    async fn renders_a_jpeg_at_most_640_wide_from_init_and_segment() {
        if !have_ffmpeg() {
            return;
        }
        let dir = TempDir::new("720p");
        let (init, segment) = split(&fragmented_mp4(&dir.0, "1280x720"));
        assert!(!init.is_empty() && !segment.is_empty());
        let out = dir.0.join("thumbnail.jpg");
        std::fs::write(&out, b"old picture").unwrap();
        render(Path::new(FFMPEG), &init, &segment, &out)
            .await
            .unwrap();
        let jpeg = std::fs::read(&out).unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG magic");
        assert_eq!(width_of(&out), 640);
        // Only the picture is left in the folder: no temporary file.
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.ends_with(".tmp.jpg")),
            "left behind: {names:?}"
        );
    }

    /// A whole fragmented MP4 as the "segment" with an empty init; a narrow picture
    /// is not scaled up.
    #[tokio::test]
    async fn a_whole_file_with_empty_init_and_no_upscaling() {
        if !have_ffmpeg() {
            return;
        }
        let dir = TempDir::new("small");
        let whole = fragmented_mp4(&dir.0, "320x240");
        let out = dir.0.join("thumb.jpg");
        render(Path::new(FFMPEG), &[], &whole, &out).await.unwrap();
        assert_eq!(&std::fs::read(&out).unwrap()[..2], &[0xFF, 0xD8]);
        assert_eq!(width_of(&out), 320);
    }

    /// Bytes that are no MP4: an error carrying ffmpeg's own words, and `out` untouched.
    #[tokio::test]
    async fn garbage_input_fails_with_ffmpegs_message() {
        if !have_ffmpeg() {
            return;
        }
        let dir = TempDir::new("garbage");
        let out = dir.0.join("thumbnail.jpg");
        std::fs::write(&out, b"old picture").unwrap();
        let err = render(Path::new(FFMPEG), b"", &[0x55; 4096], &out)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("thumbnail: ffmpeg failed"), "{msg}");
        assert!(msg.contains("pipe:0") || msg.contains("nvalid"), "{msg}");
        assert_eq!(std::fs::read(&out).unwrap(), b"old picture");
        assert_eq!(
            std::fs::read_dir(&dir.0).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[tokio::test]
    async fn a_missing_ffmpeg_is_named() {
        let dir = TempDir::new("missing");
        let err = render(
            Path::new("/nonexistent/ffmpeg"),
            b"",
            b"",
            &dir.0.join("t.jpg"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/ffmpeg"), "{err}");
    }

    /// A decoder that hangs is killed at the limit, and says so.
    #[tokio::test]
    async fn a_hanging_ffmpeg_is_killed_at_the_limit() {
        let dir = TempDir::new("hang");
        // Stands in for ffmpeg: reads nothing, never exits by itself.
        let fake = dir.0.join("fake-ffmpeg");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = dir.0.join("t.jpg");
        let err = render_within(&fake, b"", &[0; 16], &out, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("killed"), "{err}");
        assert!(!out.exists());
    }
}
