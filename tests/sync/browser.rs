//! Headless Chromium on /together/{room}: three pages play one video, stay within
//! 50 ms of each other after a seek and a rate change, and a reloaded page rejoins in sync.

use std::process::Command;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_chromium_pages_stay_in_sync_through_seek_rate_and_reload() {
    let chromium = std::env::var("TANDEM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let peers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    assert!(
        std::path::Path::new(&chromium).exists(),
        "Chromium is needed at {chromium} (apt-get install chromium)"
    );
    assert!(
        peers.join("node_modules/playwright-core").exists(),
        "run `npm ci` in tests/peers first"
    );
    let dir = TempDir::new("sync-browser");
    // A 60 s test video with a keyframe every 0.5 s, served from data_dir/media.
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc=size=320x240:rate=30")
        .args([
            "-t",
            "60",
            "-c:v",
            "libvpx",
            "-g",
            "15",
            "-b:v",
            "200k",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
        ])
        .arg(media.join("sample.webm"))
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let room = "browser-sync";
    let tokens: Vec<String> = (0..3)
        .map(|i| s.room_token(room, &format!("user{i}"), false))
        .collect();
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(&peers)
            .arg("together.js")
            .arg(&base)
            .arg(room)
            .arg("/media/sample.webm")
            .args(&tokens)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!("{stdout}");
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| panic!("together.js printed no result: {stdout}"));
    assert_eq!(result["ok"], true, "{result}");
    for k in ["start", "after_seek_rate", "after_reload"] {
        assert!(
            result["spreads"][k].as_f64().unwrap() < 50.0,
            "{k}: {result}"
        );
    }
    assert_eq!(result["resumed_same_session"], true);
    s.shutdown().await;
}
