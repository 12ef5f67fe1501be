//! Room invites (issue 13): `POST /v1/rooms/{room}/invite` with a moderator's room
//! token makes a link whose token only `POST /v1/rooms/{room}/join` accepts, which
//! trades it and a typed name for a guest's room token. Who may invite, what the
//! invite cannot open, and the guest token's scope. The page flow is in
//! `together_page.rs`.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(app: &TestApp, path: &str, bearer: Option<&str>, body: Option<Value>) -> Resp {
    let body = body.map(|b| b.to_string());
    app.send(reqwest::Method::POST, path, bearer, body.as_deref(), &[])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_links_make_guests_and_nothing_else() {
    let app = TestApp::builder()
        .config(|c| c.media.ice_tcp = false)
        .spawn()
        .await;
    let room = "movie-night";
    let moderator = app.room_token(room, "mo", true);
    let member = app.room_token(room, "mia", false);

    // Only a moderator of this room invites.
    let r = post(&app, &format!("/v1/rooms/{room}/invite"), None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = post(
        &app,
        &format!("/v1/rooms/{room}/invite"),
        Some(&member),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = post(&app, "/v1/rooms/other/invite", Some(&moderator), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "another room's moderator");
    let r = post(
        &app,
        &format!("/v1/rooms/{room}/invite"),
        Some(&moderator),
        Some(json!({"ttl_seconds": 5})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "ttl_seconds");

    let r = post(
        &app,
        &format!("/v1/rooms/{room}/invite"),
        Some(&moderator),
        Some(json!({"ttl_seconds": 3600})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let invite = r.body["invite_token"].as_str().unwrap().to_string();
    assert_eq!(
        r.body["invite_url"].as_str().unwrap(),
        format!("{}/together/{room}?invite={invite}", app.base)
    );
    assert!(r.body["expires_at"].is_string());

    // The invite itself opens nothing: not the room, not another invite.
    let resp = reqwest::get(app.url(&format!("/v1/rooms/{room}/ws?token={invite}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.text().await.unwrap().contains("invite"));
    let r = post(
        &app,
        &format!("/v1/rooms/{room}/invite"),
        Some(&invite),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Join: a name is required; another room's invite or a room token is refused.
    let join = format!("/v1/rooms/{room}/join");
    let r = post(&app, &join, Some(&invite), Some(json!({"name": "  "}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "name");
    let r = post(&app, &join, Some(&member), Some(json!({"name": "x"}))).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a room token is no invite"
    );
    let r = post(
        &app,
        "/v1/rooms/other/join",
        Some(&invite),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "invite of another room");

    let r = post(&app, &join, Some(&invite), Some(json!({"name": "Gina"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let guest = r.body["token"].as_str().unwrap().to_string();
    let user = r.body["user"].as_str().unwrap().to_string();
    assert!(user.starts_with("guest-"), "{user}");
    let r2 = post(&app, &join, Some(&invite), Some(json!({"name": "Gina"}))).await;
    assert_ne!(r2.body["user"], user.as_str(), "each join is a new guest");

    // The guest's token opens the room (chat, no moderation) and no other.
    let claims = app.state().tokens.verify(&guest).unwrap();
    assert_eq!(claims.room.as_deref(), Some(room));
    assert!(claims.grants.chat && !claims.grants.moderate && !claims.grants.publish);
    assert_eq!(claims.name.as_deref(), Some("Gina"));
    let c = Client::connect(&app.ws_url(room, &guest), 0.0, None).await;
    assert_eq!(c.welcome["you"]["name"], "Gina", "{}", c.welcome);
    let resp = reqwest::get(app.url(&format!("/v1/rooms/other/ws?token={guest}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    drop(c);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_room_takes_no_invites() {
    let app = api_app(Backend::Sqlite).spawn().await;
    let id = app.create_stream("ines", 0).await;
    let moderator = app.room_token(&id, "ines", true);
    let r = post(
        &app,
        &format!("/v1/rooms/{id}/invite"),
        Some(&moderator),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "stream_room");
    app.shutdown().await;
}
