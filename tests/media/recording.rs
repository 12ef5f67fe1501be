//! Issue 14 with real peers: a class broadcast from Chromium (VP8 + Opus, the
//! fake camera) is recorded while live (the playlist grows; a student joining
//! late plays from the live edge), ends, and plays at once: `ffprobe` reads the
//! published size, an Opus track and the published length through the signed
//! URL, and the replay page in Chromium plays and seeks. An aiortc publisher
//! (H.264) that drops and reconnects mid-class leaves one recording with
//! continuous timestamps. The access rules are `tests/api/replay.rs`; a server
//! killed mid-class is `tests/server/recording.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Runs the replay page in Chromium (tests/peers/replay.js) and returns its result.
async fn replay_page(app: &TestApp, stream: &str, token: &str, flags: &[&str]) -> Value {
    let peers = playwright_peers();
    let mut cmd = Command::new("node");
    cmd.current_dir(&peers)
        .arg("replay.js")
        .arg(app.url(""))
        .arg(stream)
        .arg(token)
        .args(flags)
        .env("TANDEM_CHROMIUM", chromium());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("node runs"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| panic!("replay.js printed no result: {stdout}\n{stderr}"));
    assert_eq!(
        result["ok"],
        true,
        "replay page {flags:?}: {result}\n{}",
        stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    result
}

/// A free class by ines with ulla enrolled; returns its id and ines's publish token.
async fn class(app: &TestApp) -> (String, String) {
    let s = app.create_stream("ines", 0).await;
    let r = app
        .post(
            &format!("/v1/streams/{s}/enrollments"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/streams/{s}/publish-token"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    (s, r.body["token"].as_str().unwrap().to_string())
}

fn media_api_app() -> TestAppBuilder {
    api_app(Backend::Sqlite)
}

/// Waits until the recording's media playlist lists at least `parts` parts or
/// segments (the recorder writes it after every fragment).
async fn wait_playlist(folder: &Path, parts: usize, within: Duration) -> String {
    let file = folder.join("index.m3u8");
    let mut last = String::new();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if count_media(&text) >= parts {
                return text;
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "{} lists {parts} parts within {within:?}; last:\n{last}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parts and segments a media playlist lists.
fn count_media(playlist: &str) -> usize {
    playlist
        .lines()
        .filter(|l| l.starts_with("#EXTINF") || l.starts_with("#EXT-X-PART:"))
        .count()
}

/// The size of the video the broadcast page sends now (its largest layer).
fn sent_size(stats: &Value) -> (f64, f64) {
    (
        num(&stats["video"]["frameWidth"]),
        num(&stats["video"]["frameHeight"]),
    )
}

/// The sizes of every layer the broadcast page sends now: with simulcast the
/// recording starts on whichever layer sends first (Chromium sends `f` only
/// once its bandwidth estimate allows, seconds later) and moves up.
fn layer_sizes(stats: &Value) -> Vec<(f64, f64)> {
    let mut sizes: Vec<(f64, f64)> = stats["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| (num(&l["frameWidth"]), num(&l["frameHeight"])))
        .filter(|(w, h)| *w > 0.0 && *h > 0.0)
        .collect();
    sizes.push(sent_size(stats));
    sizes
}

async fn replay_of(app: &TestApp, stream: &str) -> Value {
    let r = app
        .get(&format!("/v1/streams/{stream}/replay"), Some(&user("ulla")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

fn recording_folders(app: &TestApp) -> Vec<PathBuf> {
    let root = app.state().recordings.root().to_path_buf();
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("rec_")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chromium_class_is_recorded_live_and_replayed_after_the_end() {
    let _guard = media_lock().await;
    let app = media_api_app().spawn().await;
    let (s, token) = class(&app).await;
    let mut browser = Browser::launch().await;
    browser
        .open(
            "pub",
            &page_url(&app, "broadcast", &s, &token, "&codec=VP8"),
        )
        .await;
    browser
        .wait_stats(
            &["pub"],
            "the broadcast live and sending",
            Duration::from_secs(30),
            |s| {
                let p = &s[0];
                if p["state"] == "live" && num(&p["video"]["framesSent"]) > 0.0 {
                    Ok(())
                } else {
                    Err(p.to_string())
                }
            },
        )
        .await;
    let live_at = Instant::now();
    // Chromium starts low and raises the camera's resolution as its estimate
    // grows: the recording's sample entry has the size of its first key frame,
    // of the first simulcast layer that sent.
    let stats = browser.stats("pub").await;
    let mut sizes = vec![sent_size(&stats)];
    let mut layers = layer_sizes(&stats);
    let folder = app
        .state()
        .recordings
        .folder_of(&s)
        .expect("the class is being recorded");

    // While live: the playlist grows, with no end, and a student who opens the
    // replay page now plays from the live edge.
    let first = wait_playlist(&folder, 2, Duration::from_secs(20)).await;
    assert!(!first.contains("#EXT-X-ENDLIST"), "{first}");
    let r = replay_of(&app, &s).await;
    assert_eq!(r["live"], true, "{r}");
    let live = replay_page(&app, &s, &user("ulla"), &["--live"]).await;
    eprintln!("live replay page: {live}");
    let later = wait_playlist(&folder, count_media(&first) + 2, Duration::from_secs(20)).await;
    assert!(count_media(&later) > count_media(&first));

    let stats = browser.stats("pub").await;
    eprintln!("layers sent: {}", stats["layers"]);
    sizes.push(sent_size(&stats));
    layers.extend(layer_sizes(&stats));
    for (width, height) in &sizes {
        assert!(
            *width >= 160.0 && *height >= 120.0,
            "the camera's size: {sizes:?}"
        );
    }

    // Ulla watches live from her platform's link; after the end her watch page
    // offers the replay.
    let r = app
        .post(
            &format!("/v1/streams/{s}/viewer-token"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    browser
        .open("watch", r.body["watch_url"].as_str().unwrap())
        .await;

    // The end: the replay plays at once.
    let published = live_at.elapsed().as_secs_f64();
    let asked = Instant::now();
    let r = app
        .post(
            &format!("/v1/streams/{s}/end"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let replay = replay_of(&app, &s).await;
    let playable_after = asked.elapsed();
    eprintln!("end → replay URL: {playable_after:?}; published {published:.2} s; {replay}");
    assert_eq!(replay["live"], false);
    let hls = replay["hls_url"].as_str().unwrap();
    let index = std::fs::read_to_string(folder.join("index.m3u8")).unwrap();
    assert!(index.contains("#EXT-X-ENDLIST"), "{index}");

    let probe = ffprobe(hls, false);
    let video = stream_of(&probe, "video");
    assert_eq!(video["codec_name"], "vp8", "{probe}");
    let recorded = (num(&video["width"]), num(&video["height"]));
    assert!(
        layers.contains(&recorded),
        "recorded {recorded:?}, sent {layers:?}: {probe}"
    );
    assert_eq!(stream_of(&probe, "audio")["codec_name"], "opus", "{probe}");
    let duration = duration_of(&probe);
    eprintln!("recorded {duration:.2} s of {published:.2} s published");
    assert!(
        (duration - published).abs() < 1.0,
        "recorded {duration:.2} s of {published:.2} s: {probe}"
    );
    let said = replay["duration_seconds"].as_f64().unwrap();
    assert!((said - duration).abs() < 0.5, "{said} vs {duration}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while browser.eval("watch", "window.tandem.replayOffered").await != Ok(json!(true)) {
        assert!(
            Instant::now() < deadline,
            "the watch page offers the replay within 20 s of the end: {}",
            browser
                .eval("watch", "window.tandem.stateText")
                .await
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let link = browser
        .eval("watch", "document.getElementById('replay-link').href")
        .await
        .unwrap();
    assert!(
        link.as_str().unwrap().ends_with(&format!("/replay/{s}")),
        "{link}"
    );

    // The replay page plays it and seeks to the middle.
    let vod = replay_page(&app, &s, &user("ulla"), &[]).await;
    eprintln!("replay page: {vod}");
    assert!(num(&vod["after_seek"]) > num(&vod["seeked_to"]), "{vod}");

    // A thumbnail was taken from a key frame.
    let thumb = app.url(&format!("/v1/streams/{s}/thumbnail.jpg"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = app.http.get(&thumb).send().await.unwrap();
        if r.status() == StatusCode::OK {
            let bytes = r.bytes().await.unwrap();
            assert_eq!(&bytes[..2], &[0xFF, 0xD8], "a JPEG");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a thumbnail within 15 s of the end"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(app.metric("tandem_recording_fragments_total", &[]).await >= 5.0);
    assert!(
        app.metric("tandem_recording_bytes_written_total", &[])
            .await
            > 10_000.0
    );
    assert_eq!(app.metric("tandem_recordings_active", &[]).await, 0.0);
    browser.quit().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aiortc_h264_publisher_that_reconnects_leaves_one_continuous_recording() {
    let _guard = media_lock().await;
    let app = media_api_app().spawn().await;
    let (s, token) = class(&app).await;
    let url = app.whip_url(&s);
    let mut took = 0.0;
    for round in 0..2 {
        let mut publisher = PyPeer::spawn(
            &format!("publisher {round}"),
            "publisher.py",
            &[
                "--url",
                &url,
                "--token",
                &token,
                "--codec",
                "H264",
                "--duration",
                "5",
            ],
        );
        publisher
            .wait_event("connected", Duration::from_secs(20))
            .await;
        let connected = Instant::now();
        let done = publisher.done(Duration::from_secs(30)).await;
        took += connected.elapsed().as_secs_f64();
        assert_eq!(done["ok"], true, "{done}");
        assert_eq!(done["codec"], "video/H264", "{done}");
    }
    let r = app
        .post(
            &format!("/v1/streams/{s}/end"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        recording_folders(&app).len(),
        1,
        "one recording for both takes"
    );

    let replay = replay_of(&app, &s).await;
    let hls = replay["hls_url"].as_str().unwrap();
    let probe = ffprobe(hls, true);
    let video = stream_of(&probe, "video");
    assert_eq!(video["codec_name"], "h264", "{probe}");
    assert_eq!(
        (num(&video["width"]), num(&video["height"])),
        (320.0, 240.0)
    );
    let duration = duration_of(&probe);
    eprintln!("recorded {duration:.2} s of {took:.2} s published in two takes");
    assert!(
        (duration - took).abs() < 1.5,
        "recorded {duration:.2} s of {took:.2} s"
    );
    // Continuous: every packet after the one before, no hole over a second.
    let times: Vec<f64> = probe["packets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pts_time"].as_str()?.parse().ok())
        .collect();
    assert!(times.len() > 100, "{} packets", times.len());
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    for w in sorted.windows(2) {
        assert!(w[1] > w[0], "no two frames at {}", w[0]);
        assert!(w[1] - w[0] < 1.0, "a hole from {} to {}", w[0], w[1]);
    }
    app.shutdown().await;
}
