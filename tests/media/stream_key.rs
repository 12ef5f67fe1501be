//! WHIP with a stream key (issue 13, item 6), as OBS sends it: the key as the
//! bearer token opens a real publisher session (201 with Location, Chromium's
//! offer), turns the owner's scheduled stream live, and ends the session with the
//! key on DELETE; after a rotation the old key is 401 and the new one publishes.

use reqwest::{Method, StatusCode, header};
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_style_publish_with_a_stream_key_and_rotation() {
    let app = api_app(Backend::Sqlite)
        .config(|c| c.api.whip_starts_stream = true)
        .spawn()
        .await;
    let ines = instructor("ines");
    let id = app.create_stream("ines", 0).await;
    let key_path = format!("/v1/streams/{id}/stream-key");
    let r = app.post(&key_path, Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["stream_key"].as_str().unwrap().to_string();
    let whip_url = r.body["whip_url"].as_str().unwrap().to_string();
    assert_eq!(whip_url, app.whip_url(&id));

    let resp = post_offer(&app, &whip_url, Some(&key), CHROMIUM_SENDONLY_OFFER).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        location.starts_with(&format!("/v1/whip/{id}/")),
        "{location}"
    );
    let answer = resp.text().await.unwrap();
    assert!(answer.starts_with("v=0"), "an SDP answer: {answer}");
    let r = app.get(&format!("/v1/streams/{id}"), None).await;
    assert_eq!(
        r.body["status"], "live",
        "the owner's WHIP started it: {}",
        r.text
    );

    // OBS ends its session with the key as the bearer token.
    let resp = request(
        &app,
        Method::DELETE,
        &app.url(&location),
        Some(&key),
        None,
        "",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    app.wait_sessions(0, std::time::Duration::from_secs(10))
        .await;

    // Rotation: the old key is refused at once, the new one publishes.
    let r = app.post(&key_path, Some(&ines), json!({})).await;
    let new_key = r.body["stream_key"].as_str().unwrap().to_string();
    let resp = post_offer(&app, &whip_url, Some(&key), CHROMIUM_SENDONLY_OFFER).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body = resp.text().await.unwrap();
    assert!(!body.contains(&key), "the key is not echoed: {body}");
    let resp = post_offer(&app, &whip_url, Some(&new_key), CHROMIUM_SENDONLY_OFFER).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
    assert_eq!(app.session_count(), 1);
    app.shutdown().await;
}
