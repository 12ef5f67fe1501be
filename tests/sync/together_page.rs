//! The Watch Together page out of the box (issue 13, item 1), in headless Chromium
//! (tests/peers/together-page.js): a server with no media files plays the shipped
//! demo video, muted until Unmute is clicked, host controls for the host only; a
//! guest joins through the host's invite link; no token, a bad token, a full room
//! and a ban each show an error panel instead of reconnecting. The screenshots are
//! left in the test's temp dir (TANDEM_SHOTS=DIR keeps them there instead).

use std::process::Command;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn together_page_plays_the_demo_video_invites_and_shows_errors() {
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "Chromium is needed at {} (apt-get install chromium)",
        chromium.display()
    );
    let peers = peers_dir();
    assert!(
        peers.join("node_modules/playwright-core").exists(),
        "run `npm ci` in tests/peers first"
    );
    let tmp = TempDir::new("together-page");
    let shots = std::env::var("TANDEM_SHOTS")
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
