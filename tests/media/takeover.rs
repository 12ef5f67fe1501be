//! Publisher takeover (issue 13, item 3): a broadcaster whose page or OBS
//! crashed comes back at once. A new WHIP session of the same user (the token's
//! `sub`) replaces the stream's old publisher session, as MediaMTX's
//! `overridePublisher` does; another user still gets 409 `stream_busy`.
//! Viewers stay connected and keep one SSRC and continuous numbering.

use std::time::Duration;

use crate::continuity::wait_frames;
use crate::support::*;
use reqwest::{Method, StatusCode, header};
use serde_json::Value;
use tandem::auth::{Grants, TokenRequest};

fn publish_token_of(app: &TestApp, user: &str, stream: &str) -> String {
    app.token_for(TokenRequest {
        user: user.into(),
        stream: Some(stream.into()),
        grants: Grants {
            publish: true,
            ..Default::default()
        },
        ttl_secs: 3600,
        ..Default::default()
    })
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_string()
}

/// At the protocol level (canned offers, sessions that never connect): the same
/// user's second POST is 201 and the first session is gone at once.
#[tokio::test]
async fn the_same_users_new_whip_session_replaces_the_old_one() {
    let app = spawn_app().await;
    let first = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&publish_token_of(&app, "ann", "cam")),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_location = location(&first);

    // Another token of the same user (a reloaded page mints a new one).
    let second = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&publish_token_of(&app, "ann", "cam")),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(second.status(), StatusCode::CREATED, "takeover");
    let second_location = location(&second);
    assert_ne!(first_location, second_location);
    assert_eq!(app.session_count(), 1, "the old session was closed at once");
    let gone = request(
        &app,
        Method::DELETE,
        &app.url(&first_location),
        None,
        None,
        "",
    )
    .await;
    assert_eq!(
        gone.status(),
        StatusCode::NOT_FOUND,
        "the replaced session is gone"
    );

    let busy = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&publish_token_of(&app, "bob", "cam")),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    let body: Value = busy.json().await.unwrap();
    assert_eq!(body["error"]["code"], "stream_busy", "{body}");
    assert_eq!(app.session_count(), 1);
    let del = request(
        &app,
        Method::DELETE,
        &app.url(&second_location),
        None,
        None,
        "",
    )
    .await;
    assert_eq!(
        del.status(),
        StatusCode::OK,
        "the new session is the live one"
    );
    app.shutdown().await;
}

/// With real peers: an aiortc publisher killed without DELETE, the same user's
/// new publisher gets in immediately, and a Chromium viewer that never
/// reconnected decodes the new publisher's media with the same SSRC and without
/// a jump in sequence numbers.
#[tokio::test]
async fn a_crashed_publisher_is_replaced_at_once_and_viewers_keep_decoding() {
    let _media = media_lock().await;
    let app = spawn_app().await;
    let mut browser = Browser::launch().await;
    let watch = app.url(&format!(
        "/watch/crash?token={}",
        app.subscribe_token("crash")
    ));
    browser.open("viewer", &watch).await;

    let mut first = PyPeer::publisher(&app, "crash", &[]);
    first.wait_event("connected", Duration::from_secs(30)).await;
    let before = wait_frames(&mut browser, 60, Duration::from_secs(30)).await;
    // The broadcaster crashes: SIGKILL, no DELETE; its session is still there.
    let pid = first.pid();
    drop(first);
    eventually(
        "the first publisher's process is gone",
        Duration::from_secs(10),
        || async {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                Err("still running".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert_eq!(
        app.session_count(),
        2,
        "publisher and viewer, before the takeover"
    );

    // The same user (publish_token: "test-user") comes back at once: no 409.
    let mut second = PyPeer::publisher(&app, "crash", &[]);
    let answered = second.wait_event("answered", Duration::from_secs(10)).await;
    assert!(answered["location"].is_string(), "{answered}");
    assert_eq!(
        app.session_count(),
        2,
        "the old publisher session was replaced"
    );
    second
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let target = before["frames"].as_u64().unwrap() + 60;
    let after = wait_frames(&mut browser, target, Duration::from_secs(30)).await;
    assert_eq!(
        before["ssrc"], after["ssrc"],
        "one SSRC across the takeover: before {before}, after {after}"
    );
    let lost = after["lost"].as_i64().unwrap() - before["lost"].as_i64().unwrap();
    assert!(
        (0..100).contains(&lost),
        "sequence numbers continue across the takeover: lost {lost}, before {before}, after {after}"
    );
    second.stop(Duration::from_secs(20)).await;
    browser.quit().await;
    app.shutdown().await;
}
