//! A publisher that drops and reconnects (a broadcaster's Wi-Fi blips, OBS restarts)
//! must not break its viewers: the SFU keeps the SSRC, sequence numbers and
//! timestamps a viewer sees continuous, so the viewer's decoder carries on.
//! This test exists to prove that with a real browser watching: Chromium counts a
//! jump in sequence numbers as lost packets and a new SSRC as a new stream.

use std::time::Duration;

use crate::support::*;
use serde_json::Value;

/// The watch page's inbound video stream as Chromium reports it.
pub(crate) const INBOUND_VIDEO: &str = r#"(async () => {
  const pc = window.tandem.session && window.tandem.session.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  let v = null;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      v = { ssrc: s.ssrc, lost: s.packetsLost || 0, received: s.packetsReceived || 0,
            frames: s.framesDecoded || 0 };
    }
  });
  return v;
})()"#;

pub(crate) async fn inbound(browser: &mut Browser) -> Value {
    browser
        .eval("viewer", INBOUND_VIDEO)
        .await
        .unwrap_or(Value::Null)
}

pub(crate) async fn wait_frames(browser: &mut Browser, at_least: u64, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = inbound(browser).await;
        if v["frames"].as_u64().unwrap_or(0) >= at_least {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "viewer did not decode {at_least} frames within {within:?}; last stats: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn viewers_keep_decoding_across_a_publisher_reconnect() {
    let _media = media_lock().await;
    let app = spawn_app().await;
    let mut browser = Browser::launch().await;
    let watch = app.url(&format!(
        "/watch/cont?token={}",
        app.subscribe_token("cont")
    ));
    browser.open("viewer", &watch).await;

    let mut first = PyPeer::publisher(&app, "cont", &[]);
    first.wait_event("connected", Duration::from_secs(30)).await;
    let before = wait_frames(&mut browser, 60, Duration::from_secs(30)).await;
    let done = first.stop(Duration::from_secs(20)).await;
    assert_eq!(
        done["delete_status"], 200,
        "first publisher DELETEd: {done}"
    );

    let mut second = PyPeer::publisher(&app, "cont", &[]);
    second
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let target = before["frames"].as_u64().unwrap() + 60;
    let after = wait_frames(&mut browser, target, Duration::from_secs(30)).await;

    assert_eq!(
        before["ssrc"], after["ssrc"],
        "the viewer sees one SSRC across publishers: before {before}, after {after}"
    );
    let lost = after["lost"].as_i64().unwrap() - before["lost"].as_i64().unwrap();
    assert!(
        (0..100).contains(&lost),
        "sequence numbers continue across the reconnect (a jump shows as thousands \
         of lost packets): lost {lost}, before {before}, after {after}"
    );
    second.stop(Duration::from_secs(20)).await;
    app.shutdown().await;
}
