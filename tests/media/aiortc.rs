//! Issue 2, "Prove it" item 2: a WebRTC stack that is not libwebrtc. An aiortc
//! publisher (synthetic 320×240 video and a 440 Hz tone) and three aiortc WHEP
//! viewers through the SFU: every viewer decodes video and audio frames, the
//! metrics show the sessions while they run, every viewer gets RTCP sender reports
//! for both tracks (the SFU writes them itself, see docs/MEDIA.md), and each DELETE
//! ends its session until the server's session count is back to zero.

use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const VIEWERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publisher_and_three_viewers_decode_and_delete() {
    let _guard = media_lock().await;
    let app = spawn_app().await;

    let mut publisher = PyPeer::publisher(&app, "lecture", &["--codec", "VP8"]);
    publisher
        .wait_event("answered", Duration::from_secs(30))
        .await;
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;

    let mut viewers: Vec<PyPeer> = (0..VIEWERS)
        .map(|i| {
            PyPeer::viewer(
                &app,
                &format!("viewer{i}"),
                "lecture",
                &[
                    "--frames",
                    "90",
                    "--audio-frames",
                    "100",
                    "--duration",
                    "120",
                    "--hold",
                ],
            )
        })
        .collect();
    // Every viewer reaches its goals (90 video frames, 2 s of audio) and holds.
    for v in viewers.iter_mut() {
        let reached = v.wait_event("reached", Duration::from_secs(120)).await;
        assert!(num(&reached["video_frames"]) >= 90.0, "{reached}");
        assert!(num(&reached["audio_frames"]) >= 100.0, "{reached}");
    }

    // While everyone is connected the server shows them.
    assert_eq!(app.session_count(), 1 + VIEWERS, "publisher + viewers");
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "tandem_sessions", &[("kind", "viewer")]),
        VIEWERS as f64,
        "tandem_sessions{{kind=viewer}}"
    );
    assert_eq!(
        metric_value(&metrics, "tandem_sessions", &[("kind", "publisher")]),
        1.0
    );
    assert_eq!(metric_value(&metrics, "tandem_streams_live", &[]), 1.0);
    let packets_in = metric_value(
        &metrics,
        "tandem_packets_forwarded_total",
        &[("direction", "in")],
    );
    let packets_out = metric_value(
        &metrics,
        "tandem_packets_forwarded_total",
        &[("direction", "out")],
    );
    assert!(packets_in > 0.0, "packets in: {packets_in}");
    assert!(
        packets_out >= packets_in,
        "three viewers get at least what came in once: in {packets_in}, out {packets_out}"
    );

    // Each viewer DELETEs its session; the count drops one by one.
    for (i, v) in viewers.into_iter().enumerate() {
        let done: Value = v.stop(Duration::from_secs(30)).await;
        assert_eq!(done["ok"], true, "viewer{i}: {done}");
        assert_eq!(done["delete_status"], 200, "viewer{i} DELETE: {done}");
        assert_eq!(
            done["width"], 320,
            "viewer{i} decoded the publisher's 320×240: {done}"
        );
        assert_eq!(done["height"], 240, "{done}");
        assert_eq!(done["codec"], "video/VP8", "{done}");
        // Sender reports (lip sync in browsers): one per track, counting what was
        // sent, stamped with the server's wall clock.
        let reports = done["sender_reports"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for kind in ["video", "audio"] {
            let report = reports
                .iter()
                .find(|r| r["kind"] == kind)
                .unwrap_or_else(|| panic!("viewer{i} got a {kind} sender report: {done}"));
            assert!(num(&report["packets_sent"]) > 0.0, "{kind}: {report}");
            assert!(
                num(&report["bytes_sent"]) > num(&report["packets_sent"]),
                "{kind}: {report}"
            );
            assert!(
                num(&report["age_s"]).abs() < 5.0,
                "{kind} report's NTP time is the server's clock: {report}"
            );
        }
        app.wait_sessions(VIEWERS - i, Duration::from_secs(10))
            .await;
    }
    let done = publisher.stop(Duration::from_secs(30)).await;
    assert_eq!(done["ok"], true, "publisher: {done}");
    assert_eq!(done["delete_status"], 200, "publisher DELETE: {done}");
    app.wait_sessions(0, Duration::from_secs(10)).await;

    let metrics = app.metrics().await;
    assert_eq!(metric_value(&metrics, "tandem_sessions", &[]), 0.0);
    assert_eq!(metric_value(&metrics, "tandem_streams_live", &[]), 0.0);
    app.shutdown().await;
}
