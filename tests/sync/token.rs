//! `POST /v1/rooms/{room}/token` (API.md "Watch Together and calls"): the only way a
//! platform user gets into a Watch Together room. It had no test (issue 3): these prove
//! that an identity JWT is checked (signature, expiry, `sub`), that the platform role
//! decides the `moderate` grant, that room names are validated, and that the minted
//! token opens the room's WebSocket (also under `/.proxy`) and no other room's.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn server(dir: &TempDir) -> TestApp {
    TestApp::builder()
        .data_dir(dir.path())
        .config(|c| c.jwt_secret = JWT_SECRET.to_string())
        .spawn()
        .await
}

/// A valid identity JWT for `sub` with `extra` claims merged in (role placement varies).
fn identity(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": unix_secs() + 600});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    identity_jwt(JWT_SECRET, &claims)
}

/// POSTs to `path` (relative to the server) with an optional bearer and JSON body.
async fn post(s: &TestApp, path: &str, bearer: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{}{path}", s.base));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// Mints a room token for `jwt`, asserting success; returns the body.
async fn mint(s: &TestApp, prefix: &str, room: &str, jwt: &str, body: Option<Value>) -> Value {
    let (status, v) = post(
        s,
        &format!("{prefix}/v1/rooms/{room}/token"),
        Some(jwt),
        body,
    )
    .await;
    assert!(
        status == 200 || status == 201,
        "mint for {room}: {status} {v}"
    );
    v
}

/// `expires_at` (RFC 3339 UTC, whole seconds) as Unix seconds.
fn parse_rfc3339(s: &str) -> i64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("expires_at {s:?} is not RFC 3339: {e}"));
    assert_eq!(t.offset(), time::UtcOffset::UTC, "expires_at {s:?} is UTC");
    t.unix_timestamp()
}

fn assert_unauthorized(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: the error says why: {body}"
    );
}

fn assert_http_status(
    r: Result<Client, tokio_tungstenite::tungstenite::Error>,
    want: u16,
    url: &str,
) {
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), want, "{url}")
        }
        Err(e) => panic!("expected HTTP {want} for {url}, got {e}"),
        Ok(_) => panic!("upgrade accepted for {url}"),
    }
}

#[tokio::test]
async fn a_user_gets_a_token_that_opens_its_room_and_no_other() {
    let dir = TempDir::new("sync-token");
    let s = server(&dir).await;
    let room = "movie-night:42";
    let jwt = identity("user-ann", json!({"role": "user"}));
    let before = unix_secs();
    let v = mint(&s, "", room, &jwt, Some(json!({"name": "  Ann  "}))).await;

    let token = v["token"].as_str().expect("token is a string");
    assert_eq!(
        v["ws_url"].as_str().unwrap(),
        format!("{}/v1/rooms/{room}/ws", s.ws_base),
        "ws_url is this server's WebSocket route for the room"
    );
    let expires = parse_rfc3339(v["expires_at"].as_str().expect("expires_at"));
    // API.md: room tokens live 6 h (like media tokens).
    assert!(
        (before + 6 * 3600 - 5..=unix_secs() + 6 * 3600 + 5).contains(&expires),
        "expires_at {} is about 6 h from now",
        v["expires_at"]
    );

    // The claims say who, which room, and no moderation for a plain user.
    let claims = s
        .running
        .as_ref()
        .unwrap()
        .state
        .tokens
        .verify(token)
        .expect("the minted token verifies");
    assert_eq!(claims.sub, "user-ann");
    assert_eq!(claims.room.as_deref(), Some(room));
    assert!(claims.grants.chat);
    assert!(!claims.grants.moderate, "a plain user cannot moderate");
    assert!(!claims.grants.publish && !claims.grants.subscribe);
    assert_eq!(claims.exp as i64, expires, "expires_at is the token's exp");

    // It opens the room (the returned ws_url as is), under the identity and name given.
    let mut c = Client::connect(
        &format!("{}?token={token}", v["ws_url"].as_str().unwrap()),
        0.0,
        None,
    )
    .await;
    assert_eq!(c.welcome["type"], "welcome");
    assert_eq!(c.welcome["room"]["id"], room);
    assert_eq!(c.welcome["you"]["id"], "user-ann");
    assert_eq!(
        c.welcome["you"]["name"], "Ann",
        "the trimmed name from the body"
    );
    // ... also with Authorization: Bearer instead of ?token=.
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("{}/v1/rooms/{room}/ws", s.ws_base)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("bearer upgrade");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let _ = ws.close(None).await;
    }
    // ... and nothing else: another room, a prefix of the name, a token that is not ours.
    for other in ["movie-night", "movie-night:43", "other"] {
        let url = s.ws_url(other, token);
        assert_http_status(Client::open(&url, 0.0).await, 401, &url);
    }
    // An identity JWT is not a room token.
    let url = s.ws_url(room, &jwt);
    assert_http_status(Client::open(&url, 0.0).await, 401, &url);

    // The room still works for the connected client.
    c.send(json!({"type":"chat.send","text":"hi","client_msg_id":"m1"}))
        .await;
    let m = c.wait_type("chat.message").await;
    assert_eq!(m["user"]["id"], "user-ann");
    s.shutdown().await;
}

#[tokio::test]
async fn instructors_and_admins_moderate_plain_users_do_not() {
    let dir = TempDir::new("sync-token");
    let s = server(&dir).await;
    let room = "class-7";
    let tokens = s.running.as_ref().unwrap().state.tokens.clone();
    // (sub, claims, moderates): the role in `role` or (Supabase) in `app_metadata.role`,
    // where app_metadata wins over the top-level claim.
    let cases = [
        ("host-user", json!({"role": "user"}), false),
        ("plain", json!({}), false),
        ("supabase-user", json!({"role": "authenticated"}), false),
        ("teacher", json!({"role": "instructor"}), true),
        (
            "teacher-sb",
            json!({"role": "authenticated", "app_metadata": {"role": "instructor"}}),
            true,
        ),
        ("boss", json!({"role": "admin"}), true),
        ("boss-sb", json!({"app_metadata": {"role": "admin"}}), true),
        (
            "demoted",
            json!({"role": "admin", "app_metadata": {"role": "user"}}),
            false,
        ),
    ];
    let mut minted = Vec::new();
    for (sub, extra, moderates) in &cases {
        // No body at all is fine too.
        let v = mint(&s, "", room, &identity(sub, extra.clone()), None).await;
        let t = v["token"].as_str().unwrap().to_string();
        let c = tokens.verify(&t).unwrap();
        assert_eq!(c.grants.moderate, *moderates, "{sub} {extra}: moderate");
        assert!(c.grants.chat, "{sub}: chat");
        minted.push(t);
    }

    // What the grant does in the room: the first member hosts; the others show as
    // moderator or viewer, and only moderators may take the host role.
    let mut host = Client::connect(&s.ws_url(room, &minted[0]), 0.0, None).await;
    assert_eq!(host.welcome["you"]["role"], "host");
    for ((sub, _, moderates), t) in cases.iter().zip(&minted).skip(1) {
        let mut c = Client::connect(&s.ws_url(room, t), 0.0, None).await;
        let want = if *moderates { "moderator" } else { "viewer" };
        assert_eq!(c.welcome["you"]["role"], want, "{sub}");
        c.send(json!({"type":"host.transfer","to":sub})).await;
        if *moderates {
            let h = c.wait_type("host.changed").await;
            assert_eq!(h["host"], *sub);
            let h = host.wait_type("host.changed").await;
            assert_eq!(h["host"], *sub);
            // Back to the first host's seat is not needed: the next case just tries again.
        } else {
            let e = c.wait_type("error").await;
            assert_eq!(e["code"], "not_host", "{sub} may not take the host role");
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_missing_expired_or_forged_identity_is_401_with_the_error_shape() {
    let dir = TempDir::new("sync-token");
    let s = server(&dir).await;
    let path = "/v1/rooms/r1/token";
    let now = unix_secs();
    let room_token = s.room_token("r1", "u1", false);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization", None),
        ("not a JWT", Some("garbage".into())),
        (
            "expired",
            Some(identity_jwt(
                JWT_SECRET,
                &json!({"sub": "u1", "exp": now - 5}),
            )),
        ),
        (
            "signed with another secret",
            Some(identity_jwt(
                "not-the-configured-secret-0123456789",
                &json!({"sub": "u1", "exp": now + 600, "role": "admin"}),
            )),
        ),
        (
            "no exp",
            Some(identity_jwt(JWT_SECRET, &json!({"sub": "u1"}))),
        ),
        (
            "no sub",
            Some(identity_jwt(JWT_SECRET, &json!({"exp": now + 600}))),
        ),
        ("a room token is not an identity", Some(room_token)),
    ];
    for (what, bearer) in &cases {
        let (status, body) = post(&s, path, bearer.as_deref(), None).await;
        assert_unauthorized(status, &body, what);
        // The /.proxy route is the same handler, with the same checks.
        let (status, body) = post(&s, &format!("/.proxy{path}"), bearer.as_deref(), None).await;
        assert_unauthorized(status, &body, &format!("/.proxy: {what}"));
    }
    // A scheme other than Bearer is no identity either.
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", s.base))
        .basic_auth("u1", Some("pw"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_unauthorized(status, &resp.json().await.unwrap(), "Basic auth");
    // The same JWT that is refused when expired is accepted while valid (control).
    let ok = identity_jwt(JWT_SECRET, &json!({"sub": "u1", "exp": now + 600}));
    mint(&s, "", "r1", &ok, None).await;
    s.shutdown().await;

    // A server without TANDEM_JWT_SECRET accepts no identity at all.
    let dir = TempDir::new("sync-token");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let (status, body) = post(&s, path, Some(&ok), None).await;
    assert_unauthorized(status, &body, "no jwt_secret configured");
    s.shutdown().await;
}

#[tokio::test]
async fn invalid_room_names_are_refused() {
    let dir = TempDir::new("sync-token");
    let s = server(&dir).await;
    let jwt = identity("u1", json!({}));
    let long = "a".repeat(129);
    // Path segments as sent (percent-encoded where needed), the empty one included:
    // 400 from the handler, naming the field.
    for room in [
        "",
        long.as_str(),
        "a%20b",
        "caf%C3%A9",
        "a%2Fb",
        "r%3Fx",
        "a*b",
    ] {
        let (status, body) = post(&s, &format!("/v1/rooms/{room}/token"), Some(&jwt), None).await;
        assert_eq!(status, 400, "{room:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{room:?}: {body}");
        assert_eq!(body["error"]["field"], "room", "{room:?}: {body}");
    }
    // A name with a path separator in it is another route.
    let (status, body) = post(&s, "/v1/rooms/a/b/token", Some(&jwt), None).await;
    assert_eq!(status, 404, "a/b: {body}");
    // The longest and the most exotic valid names are fine.
    let longest = "Z".repeat(128);
    for room in [longest.as_str(), "a", "1234567890123456789", "A-z_0.9:x"] {
        let v = mint(&s, "", room, &jwt, None).await;
        assert!(
            v["ws_url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/v1/rooms/{room}/ws"))
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn the_proxy_route_mints_tokens_that_open_the_proxy_websocket() {
    let dir = TempDir::new("sync-token");
    let s = server(&dir).await;
    let room = "1234567890123456789"; // a Discord instanceId
    let jwt = identity(
        "discord-user",
        json!({"app_metadata": {"role": "instructor"}}),
    );
    let v = mint(&s, "/.proxy", room, &jwt, Some(json!({"name": "Dee"}))).await;
    let token = v["token"].as_str().unwrap();
    parse_rfc3339(v["expires_at"].as_str().unwrap());
    let c = s
        .running
        .as_ref()
        .unwrap()
        .state
        .tokens
        .verify(token)
        .unwrap();
    assert_eq!(c.room.as_deref(), Some(room));
    assert!(c.grants.moderate);

    let url = format!("{}/.proxy/v1/rooms/{room}/ws?token={token}", s.ws_base);
    let c = Client::connect(&url, 0.0, None).await;
    assert_eq!(c.welcome["you"]["id"], "discord-user");
    assert_eq!(c.welcome["you"]["name"], "Dee");
    // The same token, another room, through the proxy: refused.
    let url = format!("{}/.proxy/v1/rooms/other/ws?token={token}", s.ws_base);
    assert_http_status(Client::open(&url, 0.0).await, 401, &url);
    s.shutdown().await;
}

/// A plain HTTP request to the WebSocket route (no upgrade headers) gets a 400 that
/// says how to connect, and opens no room.
#[tokio::test]
async fn a_plain_get_on_the_websocket_route_says_how_to_connect() {
    let dir = TempDir::new("sync-token");
    let s = server(&dir).await;
    let token = s.room_token("lobby", "u1", false);
    let url = format!("{}/v1/rooms/lobby/ws?token={token}", s.base);
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Upgrade: websocket")),
        "{body}"
    );
    assert_eq!(
        s.running.as_ref().unwrap().state.rooms.room_count(),
        0,
        "no room was opened"
    );
    s.shutdown().await;
}
