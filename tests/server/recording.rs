//! Issue 14: a server killed (`kill -9`) in the middle of a recorded stream.
//! The recording is on disk fragment by fragment, so after a restart, whose
//! repair finishes what the killed process left open, it plays up to about
//! the last second before the kill. The real binary, a real aiortc publisher
//! (VP8 + Opus), an operator's stream recorded with `other_streams` on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;
use tandem::auth::{Grants, MediaTokens, TokenRequest};

/// The one recording folder under `data/recordings/other`.
fn the_recording(data: &Path) -> Option<PathBuf> {
    let dir = data.join("recordings/other");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert!(found.len() <= 1, "{found:?}");
    found.pop()
}

/// `http://127.0.0.1:PORT` of a banner link.
fn base_of(link: &str) -> String {
    let rest = link.split("://").nth(1).unwrap();
    let host = rest.split('/').next().unwrap();
    format!("{}://{host}", link.split("://").next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_the_recording_plays_up_to_the_last_second() {
    let _guard = media_lock().await;
    let cwd = TempDir::new("tandem-kill-recording");
    let env = [
        ("TANDEM_HTTP_ADDR", "127.0.0.1:0"),
        ("TANDEM_MEDIA_PORT", "0"),
        ("TANDEM_RECORDING__OTHER_STREAMS", "true"),
    ];
    let (mut server, banner) = spawn_tandem(cwd.path(), &env, Stdio::null()).await;
    let base = base_of(&banner.link("streams"));
    let data = cwd.path().join("data");
    let tokens = MediaTokens::from_config("", &data).unwrap();
    let (token, _) = tokens.mint(&TokenRequest {
        user: "operator".into(),
        stream: Some("kill-me".into()),
        grants: Grants {
            publish: true,
            ..Default::default()
        },
        ttl_secs: 600,
        ..Default::default()
    });
    let url = format!("{base}/v1/whip/kill-me");
    let mut publisher = PyPeer::spawn(
        "publisher",
        "publisher.py",
        &["--url", &url, "--token", &token, "--codec", "VP8"],
    );
    publisher
        .wait_event("connected", Duration::from_secs(20))
        .await;
    let connected = Instant::now();

    // About six seconds on disk (fragments of about a second), then the kill.
    let deadline = Instant::now() + Duration::from_secs(30);
    let folder = loop {
        if let Some(folder) = the_recording(&data) {
            let parts = std::fs::read_to_string(folder.join("index.m3u8"))
                .map(|t| t.matches("#EXT-X-PART:").count() + t.matches("#EXTINF").count())
                .unwrap_or(0);
            if connected.elapsed() > Duration::from_secs(6) && parts >= 4 {
                break folder;
            }
        }
        assert!(
            Instant::now() < deadline,
            "a recording with parts within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.start_kill().unwrap();
    let killed_after = connected.elapsed().as_secs_f64();
    server.wait().await.unwrap();
    drop(publisher);
    let before = std::fs::read_to_string(folder.join("index.m3u8")).unwrap();
    assert!(
        !before.contains("#EXT-X-ENDLIST"),
        "killed mid-stream:\n{before}"
    );

    // The restart repairs it before it serves anything.
    let (mut again, _banner) = spawn_tandem(cwd.path(), &env, Stdio::null()).await;
    let after = std::fs::read_to_string(folder.join("index.m3u8")).unwrap();
    assert!(
        after.contains("#EXT-X-ENDLIST"),
        "repaired at start:\n{after}"
    );
    let probe = ffprobe(folder.join("index.m3u8").to_str().unwrap(), false);
    let duration = duration_of(&probe);
    eprintln!(
        "killed after {killed_after:.2} s of media; the repaired recording has {duration:.2} s"
    );
    assert!(
        duration > killed_after - 2.0 && duration <= killed_after + 0.5,
        "{duration:.2} s recorded of {killed_after:.2} s before the kill: {probe}"
    );
    let decoded = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(folder.join("index.m3u8"))
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "the repaired recording decodes without errors: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    sigterm(&again);
    let _ = again.wait().await;
}
