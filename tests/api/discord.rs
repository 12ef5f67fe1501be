//! Discord Activity sign-in (issue 17): `POST /v1/discord/token` against a
//! stand-in Discord (tests/support/discord.rs). A good code answers Discord's
//! access token and user plus a session token that opens the instance's room
//! over the real WebSocket; with a bot token only members of the instance get
//! one; Discord's refusals come back in plain words, and no secret of the
//! server's appears in any answer. Nothing here touches the database, so one
//! backend (SQLite) is enough.

use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::discord::{self, Discord};
use crate::support::*;

async fn spawn_with(d: &Discord, bot: bool) -> TestApp {
    api_app(Backend::Sqlite)
        .config(|c| d.configure(c, bot))
        .spawn()
        .await
}

async fn sign_in(app: &TestApp, body: Value) -> Resp {
    let r = app.post("/v1/discord/token", None, body).await;
    for secret in [discord::CLIENT_SECRET, discord::BOT_TOKEN] {
        assert!(!r.text.contains(secret), "{secret} in {}", r.text);
    }
    r
}

#[tokio::test]
async fn good_code_answers_a_session_token_that_opens_the_room() {
    let d = Discord::spawn().await;
    let app = spawn_with(&d, false).await;
    let r = sign_in(
        &app,
        json!({"code": discord::GOOD_CODE, "instance_id": discord::INSTANCE}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["access_token"], discord::ACCESS_TOKEN);
    assert_eq!(r.body["user"]["id"], discord::USER_ID);
    assert_eq!(r.body["user"]["username"], "nelly");
    assert_eq!(r.body["user"]["global_name"], "Nelly");
    assert_eq!(r.body["user"]["avatar"], "8342729096ea3675442027381ff50dfe");
    let room = format!("discord:{}", discord::INSTANCE);
    assert_eq!(r.body["room"], room.as_str());
    assert!(
        r.body["expires_at"].as_str().unwrap().ends_with('Z'),
        "{}",
        r.text
    );
    // No bot token: the instance is not asked about.
    assert_eq!(d.state.instance_calls.load(Ordering::SeqCst), 0);

    // The token is the server's own room token for that room and that user...
    let token = r.body["session_token"].as_str().unwrap();
    let claims = app.state().tokens.verify(token).unwrap();
    assert_eq!(claims.sub, format!("discord:{}", discord::USER_ID));
    assert!(claims.allows_room(&room));
    assert!(!claims.allows_room("some-other-room"));
    assert_eq!(claims.name.as_deref(), Some("Nelly"));
    assert!(claims.grants.chat && !claims.grants.moderate);

    // ...and it opens the room over the real WebSocket (and no other room).
    let c = Client::connect(&app.ws_url(&room, token), 0.0, None).await;
    assert_eq!(
        c.welcome["you"]["id"],
        format!("discord:{}", discord::USER_ID),
        "{}",
        c.welcome
    );
    assert_eq!(c.welcome["room"]["id"], room.as_str(), "{}", c.welcome);
    assert!(
        Client::open(&app.ws_url("some-other-room", token), 0.0)
            .await
            .is_err(),
        "a session token opened another room"
    );
}

#[tokio::test]
async fn with_a_bot_token_only_members_of_the_instance_get_in() {
    let d = Discord::spawn().await;
    let app = spawn_with(&d, true).await;
    let member = sign_in(
        &app,
        json!({"code": discord::GOOD_CODE, "instance_id": discord::INSTANCE}),
    )
    .await;
    assert_eq!(member.status, StatusCode::OK, "{}", member.text);
    assert!(member.body["session_token"].is_string());

    let outsider = sign_in(
        &app,
        json!({"code": discord::GOOD_CODE, "instance_id": discord::OTHER_INSTANCE}),
    )
    .await;
    assert_eq!(outsider.status, StatusCode::FORBIDDEN, "{}", outsider.text);
    assert_eq!(outsider.code(), "not_in_instance");
    assert!(outsider.body.get("session_token").is_none());

    let unknown = sign_in(
        &app,
        json!({"code": discord::GOOD_CODE, "instance_id": "i-0000000000-gc-1"}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN, "{}", unknown.text);
    assert_eq!(unknown.code(), "not_in_instance");
    assert_eq!(d.state.instance_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bad_code_relays_discords_words_and_no_secret() {
    let d = Discord::spawn().await;
    let app = spawn_with(&d, true).await;
    let r = sign_in(
        &app,
        json!({"code": "stale-code", "instance_id": discord::INSTANCE}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.code(), "bad_request");
    assert_eq!(r.body["error"]["field"], "code");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Discord refused the code") && msg.contains("Invalid \"code\" in request."),
        "{msg}"
    );
    // Refused at the exchange: Discord's user API was not called.
    assert_eq!(d.state.me_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bad_bodies_name_the_field_before_calling_discord() {
    let d = Discord::spawn().await;
    let app = spawn_with(&d, false).await;
    for (body, field) in [
        (json!({"instance_id": discord::INSTANCE}), "code"),
        (
            json!({"code": "", "instance_id": discord::INSTANCE}),
            "code",
        ),
        (json!({"code": discord::GOOD_CODE}), "instance_id"),
        (
            json!({"code": discord::GOOD_CODE, "instance_id": "bad/id"}),
            "instance_id",
        ),
        (
            json!({"code": discord::GOOD_CODE, "instance_id": "x".repeat(121)}),
            "instance_id",
        ),
    ] {
        let r = sign_in(&app, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(
            r.body["error"]["field"] == field || r.text.contains(field),
            "{body}: {}",
            r.text
        );
    }
    assert_eq!(d.state.token_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn wrong_app_credentials_and_unreachable_discord_are_bad_gateway() {
    let d = Discord::spawn().await;
    let app = api_app(Backend::Sqlite)
        .config(|c| {
            d.configure(c, false);
            c.discord.client_secret = "not-the-secret-do-not-log".into();
        })
        .spawn()
        .await;
    let r = sign_in(
        &app,
        json!({"code": discord::GOOD_CODE, "instance_id": discord::INSTANCE}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert_eq!(r.code(), "discord_error");
    assert!(r.text.contains("client_secret"), "{}", r.text);
    assert!(!r.text.contains("not-the-secret-do-not-log"), "{}", r.text);

    // A closed port: Discord unreachable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let app = api_app(Backend::Sqlite)
        .config(|c| {
            d.configure(c, false);
            c.discord.api_base_url = format!("http://{closed}/api");
        })
        .spawn()
        .await;
    let r = sign_in(
        &app,
        json!({"code": discord::GOOD_CODE, "instance_id": discord::INSTANCE}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert_eq!(r.code(), "discord_error");
}

#[tokio::test]
async fn not_configured_says_which_keys_to_set() {
    let app = spawn_api(Backend::Sqlite).await;
    let r = sign_in(
        &app,
        json!({"code": discord::GOOD_CODE, "instance_id": discord::INSTANCE}),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("[discord]") && msg.contains("client_id") && msg.contains("client_secret"),
        "{msg}"
    );
    // Also under the Activity's URL mapping prefix.
    let r = app
        .post(
            "/.proxy/v1/discord/token",
            None,
            json!({"code": "x", "instance_id": discord::INSTANCE}),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
}
