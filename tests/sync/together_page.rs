//! The Watch Together page out of the box (issue 13, item 1), in headless Chromium
//! (tests/peers/together-page.js): a server with no media files plays the shipped
//! demo video, muted until Unmute is clicked, host controls for the host only; a
//! guest joins through the host's invite link; no token, a bad token, a full room
//! and a ban each show an error panel instead of reconnecting. The screenshots are
//! left in the test's temp dir (TANDEM_SCREENSHOTS=DIR keeps them there instead). And the
//! embedded demo video's HTTP: ranges, and a file in `data_dir/media` replacing it.

use std::process::Command;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn together_page_plays_the_demo_video_invites_and_shows_errors() {
    chromium();
    let peers = playwright_peers();
    let tmp = TempDir::new("together-page");
    let shots = std::env::var("TANDEM_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    std::fs::create_dir_all(&shots).unwrap();
    // Two members fill the room: the third page meets `room_full`.
    let app = TestApp::builder()
        .config(|c| {
            c.rooms.max_members_per_room = 2;
            c.media.ice_tcp = false;
        })
        .spawn()
        .await;
    assert!(
        !app.data_dir().join("media").exists(),
        "no media files: the demo video is the embedded one"
    );
    let room = "first-hour";
    let host = app.room_token(room, "host", true);
    let third = app.room_token(room, "third", false);
    let base = app.base.clone();
    let shots_arg = shots.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(&peers)
            .arg("together-page.js")
            .args([&base, room, &host, &third, &shots_arg])
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    println!("{stdout}");
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| panic!("together-page.js printed no result: {stdout}"));
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["host"]["muted_after_click"], false, "{result}");
    assert!(result["host"]["current_time"].as_f64().unwrap() > 0.5);
    for (k, text) in [
        ("no_token", "tandem token --room"),
        ("bad_token", "refused"),
        ("room_full", "full"),
        ("banned", "banned"),
    ] {
        let shown = result[k].as_str().unwrap_or_default();
        assert!(shown.contains(text), "{k}: {shown}");
    }
    assert!(shots.join("together-host.png").exists());
    app.shutdown().await;
}

/// `/media/demo.mp4` without any media file: the embedded video, whole (200) or in
/// ranges (206, 416 past the end); a file in `data_dir/media` replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_video_is_embedded_with_ranges_and_can_be_replaced() {
    let app = TestApp::builder()
        .config(|c| c.media.ice_tcp = false)
        .spawn()
        .await;
    let url = app.url("/media/demo.mp4");
    let whole = reqwest::get(&url).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "video/mp4");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    let body = whole.bytes().await.unwrap();
    let len = body.len();
    assert!(
        (50_000..2_000_000).contains(&len),
        "a few hundred KB: {len}"
    );
    assert_eq!(&body[4..8], b"ftyp", "an MP4");

    let client = reqwest::Client::new();
    for (range, status, want) in [
        ("bytes=0-99", 206, Some((0, 99))),
        ("bytes=100-", 206, Some((100, len - 1))),
        ("bytes=-10", 206, Some((len - 10, len - 1))),
        ("bytes=5-999999999", 206, Some((5, len - 1))),
        (&*format!("bytes={len}-"), 416, None),
    ] {
        let r = client
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{range}");
        let cr = r.headers()["content-range"].to_str().unwrap().to_string();
        let got = r.bytes().await.unwrap();
        match want {
            Some((a, b)) => {
                assert_eq!(cr, format!("bytes {a}-{b}/{len}"), "{range}");
                assert_eq!(&got[..], &body[a..=b], "{range}");
            }
            None => assert_eq!(cr, format!("bytes */{len}")),
        }
    }

    let media = app.data_dir().join("media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("demo.mp4"), b"my own demo").unwrap();
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"my own demo");
    let r = reqwest::get(app.url("/media/missing.mp4")).await.unwrap();
    assert_eq!(r.status(), 404);
    app.shutdown().await;
}
