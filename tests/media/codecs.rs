//! VP9 and AV1 are forwarded like VP8 and H.264 when both sides negotiate them:
//! the SFU never looks inside the payload, it only maps payload types. This test
//! exists to prove that with Chromium on both ends for each codec (the full
//! late-joiner scenario runs for VP8 and H.264 in `media_browser`).

use std::time::Duration;

use crate::support::*;

async fn forwards(codec: &str) {
    let _guard = media_lock().await;
    let app = spawn_app().await;
    let mut browser = Browser::launch().await;
    let stream = format!("codec-{}", codec.to_lowercase());
    let mime = format!("video/{codec}");
    let publish = page_url(
        &app,
        "broadcast",
        &stream,
        &app.publish_token(&stream),
        &format!("&codec={codec}"),
    );
    browser.open("pub", &publish).await;
    let watch = page_url(&app, "watch", &stream, &app.subscribe_token(&stream), "");
    browser.open("viewer", &watch).await;
    let stats = browser
        .wait_stats(
            &["pub", "viewer"],
            &format!("the viewer decoding 30 {codec} frames"),
            Duration::from_secs(45),
            |s| {
                let v = &s[1];
                if num(&v["video"]["framesDecoded"]) >= 30.0 {
                    Ok(s.to_vec())
                } else {
                    Err(format!("pub {} / viewer {}", s[0], s[1]))
                }
            },
        )
        .await;
    assert_eq!(stats[0]["video"]["codec"], mime, "publisher sends {codec}");
    assert_eq!(stats[1]["video"]["codec"], mime, "viewer receives {codec}");
    assert!(
        num(&stats[1]["audio"]["totalSamplesReceived"]) > 0.0,
        "and audio"
    );
    browser.quit().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_vp9_is_forwarded() {
    forwards("VP9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_av1_is_forwarded() {
    forwards("AV1").await;
}
