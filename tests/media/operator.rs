//! What is live, with real peers (issue 13, items 4 and 8): the operator view
//! and the pages' status endpoint show a connected aiortc publisher (codecs,
//! transport, a bitrate) and its viewer, say "ended" once it left; ending a
//! business stream closes its publisher's and viewers' sessions at once.

use std::time::Duration;

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn with_api_secrets(c: &mut tandem::config::Config) {
    c.jwt_secret = JWT_SECRET.into();
    c.service_key = SERVICE_KEY.into();
    c.api.jobs_enabled = false;
}

async fn listed(app: &TestApp, stream: &str) -> Value {
    let r = app.get("/v1/media/streams", Some(SERVICE_KEY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == stream)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn status(app: &TestApp, stream: &str, token: &str) -> Value {
    let r = app
        .get(&format!("/v1/media/streams/{stream}"), Some(token))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test]
async fn the_operator_view_and_the_status_follow_a_real_publisher() {
    let _media = media_lock().await;
    let app = TestApp::builder().config(with_api_secrets).spawn().await;
    let token = app.subscribe_token("opview");
    assert_eq!(status(&app, "opview", &token).await["state"], "waiting");

    let mut publisher = PyPeer::publisher(&app, "opview", &[]);
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let mut viewer = PyPeer::viewer(&app, "viewer", "opview", &["--frames", "30", "--hold"]);
    viewer.wait_event("reached", Duration::from_secs(30)).await;

    // The bitrate is the rate over the last window: there once one has passed.
    let entry = eventually(
        "a bitrate in the operator view",
        Duration::from_secs(10),
        || async {
            let s = listed(&app, "opview").await;
            if s["publisher"]["bitrate_kbps"].as_u64().unwrap_or(0) > 0 {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    )
    .await;
    let publisher_out = &entry["publisher"];
    assert_eq!(
        publisher_out["codecs"],
        json!(["video/VP8", "audio/opus"]),
        "{entry}"
    );
    assert_eq!(publisher_out["transport"], "udp", "{entry}");
    assert!(publisher_out["connected_since"].is_string(), "{entry}");
    assert_eq!(entry["viewers"], 1, "{entry}");
    assert!(entry["started_at"].is_string(), "{entry}");
    assert_eq!(entry["business"], Value::Null);
    assert_eq!(
        (entry["recorded"].clone(), entry["restreamed"].clone()),
        (json!(false), json!(false))
    );

    let live = status(&app, "opview", &token).await;
    assert_eq!(live["state"], "live", "{live}");
    assert_eq!(live["viewers"], 1, "{live}");
    let keys: Vec<&str> = live["publisher"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        ["bitrate_kbps", "codecs", "connected_since"],
        "{live}"
    );

    // The broadcaster stops (DELETE): the page says "ended", not "waiting" or
    // "no such stream", while the viewer is still there.
    let done = publisher.stop(Duration::from_secs(20)).await;
    assert_eq!(done["delete_status"], 200, "{done}");
    let ended = status(&app, "opview", &token).await;
    assert_eq!(ended["state"], "ended", "{ended}");
    assert_eq!(ended["publisher"], Value::Null);
    assert_eq!(listed(&app, "opview").await["publisher"], Value::Null);
    viewer.stop(Duration::from_secs(20)).await;
    app.shutdown().await;
}

#[tokio::test]
async fn ending_a_stream_stops_its_publisher_and_viewers_at_once() {
    let _media = media_lock().await;
    let app = TestApp::builder().config(with_api_secrets).spawn().await;
    let id = app.create_stream("ines", 0).await;
    let r = app
        .post(
            &format!("/v1/streams/{id}/publish-token"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The owner's publish token also grants subscribe: one token for both peers.
    let token = r.body["token"].as_str().unwrap().to_string();
    let whip = app.whip_url(&id);
    let whep = app.whep_url(&id);
    let mut publisher = PyPeer::spawn(
        "publisher",
        "publisher.py",
        &["--url", &whip, "--token", &token],
    );
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let mut viewer = PyPeer::spawn(
        "viewer",
        "viewer.py",
        &[
            "--url", &whep, "--token", &token, "--frames", "30", "--hold",
        ],
    );
    viewer.wait_event("reached", Duration::from_secs(30)).await;
    assert_eq!(app.session_count(), 2);
    let live = app.get(&format!("/v1/streams/{id}"), None).await;
    assert_eq!(live.body["status"], "live", "the owner's WHIP started it");
    assert_eq!(live.body["viewers"], 1, "{}", live.text);

    let r = app
        .post(
            &format!("/v1/streams/{id}/end"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.session_count(), 0, "the media stopped with the answer");
    assert_eq!(r.body["viewers"], 0, "{}", r.text);
    eventually(
        "both session records ended",
        Duration::from_secs(10),
        || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM media_sessions WHERE stream = $1 AND ended_at IS NULL",
            )
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
            if open == 0 {
                Ok(())
            } else {
                Err(open.to_string())
            }
        },
    )
    .await;
    let s = status(&app, &id, SERVICE_KEY).await;
    assert_eq!(s["state"], "ended", "{s}");
    // The publisher's retry is refused: the stream is closed.
    let again = post_offer(&app, &whip, Some(&token), CHROMIUM_SENDONLY_OFFER).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "stream_closed", "{body}");
    drop(publisher);
    drop(viewer);
    app.shutdown().await;
}
