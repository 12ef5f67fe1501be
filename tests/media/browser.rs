//! Issue 2, "Prove it" item 1: what a person does, with real browsers. Headless
//! Chromium (fake camera and microphone) publishes through the `/broadcast` page,
//! two Chromium pages watch through `/watch`, and `getStats()` must show both
//! viewers decoding video frames and playing audio samples. A third viewer that
//! joins 10 s later must decode its first frame within 2 s of joining — the SFU
//! asks the publisher for a keyframe when a viewer arrives. Once with VP8 and
//! once with H.264 (chosen with `setCodecPreferences` on the publisher). And the
//! watch page recovers by itself when its session is lost.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

/// The bound for a late joiner's first frame.
const FIRST_FRAME_WITHIN_MS: f64 = 2000.0;

fn frames(s: &Value) -> f64 {
    num(&s["video"]["framesDecoded"])
}

fn samples(s: &Value) -> f64 {
    num(&s["audio"]["totalSamplesReceived"])
}

async fn publish_and_watch(codec: &str) {
    let _guard = media_lock().await;
    let app = spawn_app().await;
    let mut browser = Browser::launch().await;
    let mime = format!("video/{codec}");
    let stream = format!("class-{}", codec.to_lowercase());

    let publish = page_url(
        &app,
        "broadcast",
        &stream,
        &app.publish_token(&stream),
        &format!("&codec={codec}"),
    );
    browser.open("pub", &publish).await;
    browser
        .wait_stats(
            &["pub"],
            "the broadcast page live and sending",
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
    let pub_stats = browser.stats("pub").await;
    assert_eq!(
        pub_stats["video"]["codec"], mime,
        "the publisher sends {codec}: {pub_stats}"
    );

    let watch = page_url(&app, "watch", &stream, &app.subscribe_token(&stream), "");
    browser.open("v1", &watch).await;
    browser.open("v2", &watch).await;
    let joined = Instant::now();

    // Both viewers decode video and play audio.
    browser
        .wait_stats(
            &["v1", "v2"],
            "both viewers decoding 30 frames and 0.5 s of audio",
            Duration::from_secs(45),
            |s| {
                if s.iter()
                    .all(|v| frames(v) >= 30.0 && samples(v) >= 24_000.0)
                {
                    Ok(())
                } else {
                    Err(format!("v1 {} / v2 {}", s[0], s[1]))
                }
            },
        )
        .await;
    for page in ["v1", "v2"] {
        let s = browser.stats(page).await;
        assert_eq!(s["video"]["codec"], mime, "{page} receives {codec}: {s}");
        assert!(
            num(&s["video"]["frameWidth"]) >= 320.0,
            "{page} decodes real frames: {s}"
        );
        assert!(
            s["audio"]["codec"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case("audio/opus"),
            "{page} receives Opus: {s}"
        );
        let latency = num(&s["latencyMs"]);
        assert!(
            latency > 0.0 && latency < 1000.0,
            "{page}: sub-second receive latency estimate, got {latency} ms: {s}"
        );
    }
    assert_eq!(app.session_count(), 3, "publisher + 2 viewers");

    // Ten seconds after the first viewers joined, a third one arrives. Meanwhile
    // the first two must keep decoding (checked every second, not slept through).
    let mut last = [0.0f64; 2];
    while joined.elapsed() < Duration::from_secs(10) {
        for (i, page) in ["v1", "v2"].iter().enumerate() {
            let s = browser.stats(page).await;
            assert_eq!(s["connectionState"], "connected", "{page}: {s}");
            last[i] = frames(&s);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    browser.open("late", &watch).await;
    let first = browser
        .wait_stats(
            &["late"],
            "the late viewer's first frame",
            Duration::from_secs(30),
            |s| {
                let v = &s[0];
                if frames(v) > 0.0 && !v["timeToFirstFrameMs"].is_null() {
                    Ok(num(&v["timeToFirstFrameMs"]))
                } else {
                    Err(v.to_string())
                }
            },
        )
        .await;
    eprintln!("{codec}: the late viewer's first frame came {first} ms after it joined");
    assert!(
        first <= FIRST_FRAME_WITHIN_MS,
        "a viewer joining 10 s later decodes its first frame within 2 s of joining; took {first} ms"
    );
    browser
        .wait_stats(
            &["late", "v1", "v2"],
            "the late viewer playing audio and the early ones still decoding",
            Duration::from_secs(30),
            |s| {
                let ok = samples(&s[0]) > 0.0
                    && frames(&s[0]) >= 15.0
                    && frames(&s[1]) > last[0]
                    && frames(&s[2]) > last[1];
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "late {} v1 {} v2 {}",
                        s[0],
                        frames(&s[1]),
                        frames(&s[2])
                    ))
                }
            },
        )
        .await;
    if let Ok(dir) = std::env::var("TANDEM_SCREENSHOTS") {
        for page in ["pub", "late"] {
            let path = std::path::Path::new(&dir).join(format!("{codec}-{page}.png"));
            let _ = browser.screenshot(page, &path).await;
        }
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "tandem_sessions", &[("kind", "viewer")]),
        3.0
    );

    // Viewers leave (DELETE from the page), then the broadcaster stops.
    for (page, left) in [("v1", 3usize), ("v2", 2), ("late", 1), ("pub", 0)] {
        browser
            .eval(page, "window.tandem.stop()")
            .await
            .unwrap_or_else(|e| panic!("stopping {page}: {e}"));
        app.wait_sessions(left, Duration::from_secs(10)).await;
        browser.close(page).await;
    }
    browser.quit().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_vp8_publisher_two_viewers_and_a_late_joiner() {
    publish_and_watch("VP8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_h264_publisher_two_viewers_and_a_late_joiner() {
    publish_and_watch("H264").await;
}

/// The watch page must recover by itself when its session goes away (server
/// restart, idle timeout, a node draining): it notices the dead connection,
/// backs off, POSTs a new WHEP offer and plays again — no reload needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_page_reconnects_after_losing_its_session() {
    let _guard = media_lock().await;
    let app = spawn_app().await;
    let mut publisher = PyPeer::publisher(&app, "resilient", &["--codec", "VP8"]);
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let mut browser = Browser::launch().await;
    let watch = page_url(
        &app,
        "watch",
        "resilient",
        &app.subscribe_token("resilient"),
        "",
    );
    browser.open("view", &watch).await;
    browser
        .wait_stats(
            &["view"],
            "the viewer decoding",
            Duration::from_secs(45),
            |s| {
                if frames(&s[0]) >= 15.0 {
                    Ok(())
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await;
    let url = browser
        .eval("view", "window.tandem.session.sessionUrl")
        .await
        .unwrap();
    let session = url
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();

    // The server ends the viewer's session behind the page's back.
    app.state()
        .sfu
        .end(&session)
        .await
        .expect("ending the viewer's session");
    browser
        .wait_stats(
            &["view"],
            "the page reconnecting on a new session and decoding again",
            Duration::from_secs(60),
            |s| {
                let v = &s[0];
                if num(&v["reconnects"]) >= 1.0 && v["state"] == "playing" && frames(v) >= 15.0 {
                    Ok(())
                } else {
                    Err(v.to_string())
                }
            },
        )
        .await;
    let url2 = browser
        .eval("view", "window.tandem.session.sessionUrl")
        .await
        .unwrap();
    assert_ne!(url, url2, "a new WHEP session");
    assert_eq!(
        app.session_count(),
        2,
        "publisher + the one new viewer session"
    );

    browser.eval("view", "window.tandem.stop()").await.unwrap();
    app.wait_sessions(1, Duration::from_secs(10)).await;
    browser.quit().await;
    let done = publisher.stop(Duration::from_secs(30)).await;
    assert_eq!(done["delete_status"], 200, "{done}");
    app.shutdown().await;
}
