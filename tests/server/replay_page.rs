//! Issue 14: the replay page and what it loads are served by the binary itself —
//! `/replay/{stream}` (also under `/.proxy`), its WebM rewrap module, and hls.js
//! under `/vendor/` with its licence — and nothing else is reachable under
//! `/vendor/`. (The page's behaviour in a browser: tests/peers/replay.js.)

use crate::support::*;
use reqwest::StatusCode;

fn content_type(r: &Resp) -> String {
    r.headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_page_and_its_player_are_served() {
    let app = spawn_api(Backend::Sqlite).await;
    for path in ["/replay/class-1", "/.proxy/replay/class-1"] {
        let r = app.get(path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(content_type(&r).starts_with("text/html"), "{path}");
        assert!(r.text.contains("<title>tandem · replay</title>"), "{path}");
    }
    let r = app.get("/vendor/hls.min.js", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(content_type(&r).starts_with("text/javascript"));
    assert!(
        r.text.starts_with("/*! hls.js 1.7.4 (Apache-2.0)"),
        "{}",
        &r.text[..r.text.len().min(120)]
    );
    assert!(r.text.contains(".Hls="), "the UMD build defines window.Hls");
    let r = app.get("/vendor/hls.js.LICENSE", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("Apache License"));
    let r = app.get("/web/fmp4-webm.js", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("export class WebmHlsPlayer"));
    for path in [
        "/vendor/nope.js",
        "/vendor/..%2Fweb%2Fstyle.css",
        "/vendor/replay.html",
    ] {
        let r = app.get(path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    app.shutdown().await;
}
