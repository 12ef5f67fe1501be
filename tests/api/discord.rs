//! Discord Activity sign-in (issue 17): `POST /v1/discord/token` against a
//! stand-in Discord (tests/support/discord.rs). A good code answers Discord's
//! access token and user plus a session token that opens the instance's room
//! over the real WebSocket; with a bot token only members of the instance get
//! one; Discord's refusals come back in plain words, and no secret of the
//! server's appears in any answer. The sign-in touches no database, so one
//! backend (SQLite) is enough for it.
//!
//! Account linking (`/v1/discord/link`, the callback, `/v1/me/discord`) runs on
//! both backends: the flow through the stand-in's authorize page with PKCE, the
//! state single use, bound to its user and expiring, refused codes relayed with
//! nothing stored, tokens sealed at rest, `links::access_token` refreshing once
//! for concurrent callers, a refused refresh marking the link `needs_relink`.

use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::support::discord::{self, Discord, callback, link_account};
use crate::support::*;
use tandem::discord::links;

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

// ---- Account linking ----

async fn linking_app(backend: Backend, d: &Discord) -> TestApp {
    api_app(backend)
        .config(|c| d.configure(c, false))
        .spawn()
        .await
}

async fn links_count(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM discord_links")
        .fetch_one(app.pool())
        .await
        .unwrap();
    n
}

/// `GET /v1/discord/link` as `bearer`, then the stand-in's authorize page as
/// `discord_user`: the callback's query.
async fn start(app: &TestApp, d: &Discord, bearer: &str, discord_user: &str) -> String {
    let r = app.get("/v1/discord/link", Some(bearer)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    d.authorize(r.body["url"].as_str().unwrap(), discord_user)
        .await
}

fn state_of(query: &str) -> String {
    url_param(query, "state")
}

fn url_param(query: &str, key: &str) -> String {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn link_flow_end_to_end(backend: Backend) {
    let d = Discord::spawn().await;
    let app = linking_app(backend, &d).await;
    let alice = user("alice");

    // The answer: Discord's authorize page with everything the flow needs.
    let r = app.get("/v1/discord/link", Some(&alice)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let url = reqwest::Url::parse(r.body["url"].as_str().unwrap()).unwrap();
    assert_eq!(url.path(), "/oauth2/authorize");
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["scope"], "identify guilds.join");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], discord::CLIENT_ID);
    assert_eq!(
        q["redirect_uri"],
        format!("{}/v1/discord/callback", app.base)
    );
    let (expires_at,): (i64,) =
        sqlx::query_as("SELECT expires_at FROM oauth_states WHERE state = $1")
            .bind(&q["state"])
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!((expires_at / 1000 - unix_secs() - 600).abs() <= 5);
    assert!(
        r.body["expires_at"].as_str().unwrap().ends_with('Z'),
        "{}",
        r.text
    );

    // The browser: Discord's redirect lands on the callback, which sends it on.
    let query = d.authorize(url.as_str(), "111222333444555666").await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = browser
        .get(app.url(&format!("/v1/discord/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/streams?discord=linked");

    let me = app.get("/v1/me/discord", Some(&alice)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["linked"], true);
    assert_eq!(me.body["discord_user_id"], "111222333444555666");
    assert_eq!(me.body["username"], "user111222333444555666");
    assert_eq!(me.body["global_name"], "User 111222333444555666");
    assert_eq!(me.body["scopes"], json!(["identify", "guilds.join"]));
    assert_eq!(me.body["status"], "ok");
    assert!(
        !me.text.contains("dc-at-") && !me.text.contains("dc-rt-"),
        "{}",
        me.text
    );

    // The library view dguild builds on.
    let acc = links::linked(app.state(), "alice").await.unwrap().unwrap();
    assert_eq!(acc.discord_user_id, "111222333444555666");
    assert_eq!(acc.username, "user111222333444555666");
    let (acc2, token) = links::access_token(app.state(), "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acc2, acc);
    assert!(d.is_live(&token), "the stored token is Discord's live one");
    assert_eq!(d.state.refresh_calls.load(Ordering::SeqCst), 0);
    assert!(links::linked(app.state(), "bob").await.unwrap().is_none());
    assert!(
        links::access_token(app.state(), "bob")
            .await
            .unwrap()
            .is_none()
    );

    // The helper other tests use; one Discord account belongs to one tandem user.
    link_account(&app, &d, &user("bob"), "999888777666555444").await;
    let query = start(&app, &d, &user("carol"), "999888777666555444").await;
    let r = callback(&app, &query, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "discord_account_taken");
    assert_eq!(links_count(&app).await, 2);
    app.shutdown().await;
}

async fn state_is_single_use_bound_and_expiring(backend: Backend) {
    let d = Discord::spawn().await;
    let app = linking_app(backend, &d).await;
    let (alice, mallory) = (user("alice"), user("mallory"));
    let query = start(&app, &d, &alice, "111").await;

    // Another user's bearer with alice's state: refused, the state left usable.
    let r = callback(&app, &query, Some(&mallory)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(links_count(&app).await, 0);

    let r = callback(&app, &query, Some(&alice)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(links::linked(app.state(), "alice").await.unwrap().is_some());
    assert!(
        links::linked(app.state(), "mallory")
            .await
            .unwrap()
            .is_none()
    );

    // Used once: again (even by its owner) is 400 naming the state.
    let r = callback(&app, &query, Some(&alice)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "state");

    // Expired.
    let query = start(&app, &d, &user("bob"), "222").await;
    sqlx::query("UPDATE oauth_states SET expires_at = 1 WHERE state = $1")
        .bind(state_of(&query))
        .execute(app.pool())
        .await
        .unwrap();
    let r = callback(&app, &query, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "state");

    // A platform's state is not a Discord one, and an unknown one is not either.
    sqlx::query(
        "INSERT INTO oauth_states (state, owner, platform, verifier_sealed, verifier_key_id, \
         created_at, expires_at) VALUES ('yt-state', 'bob', 'youtube', 'x', 'k', 0, $1)",
    )
    .bind(i64::MAX / 2)
    .execute(app.pool())
    .await
    .unwrap();
    for q in ["code=c&state=yt-state", "code=c&state=nope", "code=c"] {
        let r = callback(&app, q, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text);
        assert_eq!(r.body["error"]["field"], "state");
    }
    assert_eq!(links_count(&app).await, 1);
    assert!(links::linked(app.state(), "bob").await.unwrap().is_none());
    app.shutdown().await;
}

async fn refused_code_relays_discords_words_and_stores_nothing(backend: Backend) {
    let d = Discord::spawn().await;
    let app = linking_app(backend, &d).await;
    let alice = user("alice");
    let query = start(&app, &d, &alice, "111").await;
    let forged = format!("code=not-a-code&state={}", state_of(&query));
    let r = callback(&app, &forged, Some(&alice)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "code");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("Invalid \"code\" in request."), "{msg}");
    assert!(!r.text.contains(discord::CLIENT_SECRET));
    assert_eq!(links_count(&app).await, 0);

    // PKCE: a code issued for one start, sent back with another start's state
    // (so with that one's verifier), is refused by Discord.
    let first = start(&app, &d, &alice, "111").await;
    let second = start(&app, &d, &alice, "111").await;
    let crossed = format!(
        "code={}&state={}",
        url_param(&first, "code"),
        state_of(&second)
    );
    let r = callback(&app, &crossed, Some(&alice)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("code_verifier"), "{msg}");
    assert_eq!(links_count(&app).await, 0);

    // The browser gets the words on the page, not a JSON error.
    let query = start(&app, &d, &alice, "111").await;
    let forged = format!("code=nope&state={}", state_of(&query));
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url(&format!("/v1/discord/callback?{forged}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("/streams?discord=error&message="),
        "{location}"
    );
    assert!(url_param(location.split_once('?').unwrap().1, "message").contains("Invalid \"code\""));

    // The user said no at Discord.
    let query = start(&app, &d, &alice, "111").await;
    let denied = format!("error=access_denied&state={}", state_of(&query));
    let r = callback(&app, &denied, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("access_denied"), "{}", r.text);
    assert_eq!(links_count(&app).await, 0);
    app.shutdown().await;
}

async fn tokens_are_sealed_at_rest(backend: Backend) {
    let d = Discord::spawn().await;
    let app = linking_app(backend, &d).await;
    link_account(&app, &d, &user("alice"), "111").await;
    let (_, token) = links::access_token(app.state(), "alice")
        .await
        .unwrap()
        .unwrap();
    assert!(token.starts_with("dc-at-"));
    let refresh = token.replace("dc-at-", "dc-rt-");
    assert!(d.is_live(&refresh));
    let row: (String, String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT access_token_sealed, access_token_key_id, refresh_token_sealed, \
         refresh_token_key_id FROM discord_links WHERE user_id = 'alice'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    let dump = format!("{row:?}");
    assert!(
        !dump.contains(&token) && !dump.contains(&refresh) && !dump.contains("dc-"),
        "{dump}"
    );
    assert!(row.2.is_some() && !row.1.is_empty() && row.3.is_some());
    // Every column of the row, as text: no token anywhere.
    let all: Vec<(String,)> = sqlx::query_as(
        "SELECT user_id || discord_user_id || username || scopes || access_token_sealed || \
         COALESCE(refresh_token_sealed, '') || status FROM discord_links",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert!(!all[0].0.contains("dc-at-") && !all[0].0.contains("dc-rt-"));
    app.shutdown().await;
}

async fn access_token_refreshes_once_for_concurrent_callers(backend: Backend) {
    let d = Discord::spawn().await;
    let app = linking_app(backend, &d).await;
    // The linked token expires within the 5-minute margin: the next use refreshes.
    d.state.expires_in.store(60, Ordering::SeqCst);
    link_account(&app, &d, &user("alice"), "111").await;
    let (expires_at,): (Option<i64>,) =
        sqlx::query_as("SELECT token_expires_at FROM discord_links WHERE user_id = 'alice'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(expires_at.unwrap() - unix_secs() * 1000 < 5 * 60 * 1000);
    // Refreshed tokens last a week; the refresh takes a while, so both overlap.
    d.state.expires_in.store(604800, Ordering::SeqCst);
    d.state.refresh_delay_ms.store(300, Ordering::SeqCst);
    let (a, b) = tokio::join!(
        links::access_token(app.state(), "alice"),
        links::access_token(app.state(), "alice"),
    );
    let (a, b) = (a.unwrap().unwrap().1, b.unwrap().unwrap().1);
    assert_eq!(a, b, "both callers get the one refreshed token");
    assert_eq!(
        d.state.refresh_calls.load(Ordering::SeqCst),
        1,
        "two concurrent callers make one refresh"
    );
    assert!(d.is_live(&a));
    // Fresh now: no refresh.
    let (_, c) = links::access_token(app.state(), "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c, a);
    assert_eq!(d.state.refresh_calls.load(Ordering::SeqCst), 1);
    let me = app.get("/v1/me/discord", Some(&user("alice"))).await;
    assert_eq!(me.body["status"], "ok");
    app.shutdown().await;
}

async fn refused_refresh_needs_relink(backend: Backend) {
    let d = Discord::spawn().await;
    let app = linking_app(backend, &d).await;
    d.state.expires_in.store(60, Ordering::SeqCst);
    let alice = user("alice");
    link_account(&app, &d, &alice, "111").await;
    // The user deauthorized the app at Discord.
    d.revoke_refresh_tokens();
    assert!(
        links::access_token(app.state(), "alice")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(d.state.refresh_calls.load(Ordering::SeqCst), 1);
    let me = app.get("/v1/me/discord", Some(&alice)).await;
    assert_eq!(me.body["linked"], true);
    assert_eq!(me.body["status"], "needs_relink");
    // No second try at Discord; the link stays visible until relinked.
    assert!(
        links::access_token(app.state(), "alice")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(d.state.refresh_calls.load(Ordering::SeqCst), 1);
    assert!(links::linked(app.state(), "alice").await.unwrap().is_some());
    // Linking again repairs it.
    d.state.expires_in.store(604800, Ordering::SeqCst);
    link_account(&app, &d, &alice, "111").await;
    let me = app.get("/v1/me/discord", Some(&alice)).await;
    assert_eq!(me.body["status"], "ok");
    assert!(
        links::access_token(app.state(), "alice")
            .await
            .unwrap()
            .is_some()
    );
    app.shutdown().await;
}

async fn me_discord_shows_and_unlinks(backend: Backend) {
    let d = Discord::spawn().await;
    let app = linking_app(backend, &d).await;
    let alice = user("alice");
    let r = app.get("/v1/me/discord", Some(&alice)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"linked": false}));
    link_account(&app, &d, &alice, "111").await;
    let (_, token) = links::access_token(app.state(), "alice")
        .await
        .unwrap()
        .unwrap();
    assert!(d.is_live(&token));

    let r = app
        .send(
            reqwest::Method::DELETE,
            "/v1/me/discord",
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(d.state.revoke_calls.load(Ordering::SeqCst), 1);
    assert!(!d.is_live(&token), "the grant was revoked at Discord");
    assert_eq!(links_count(&app).await, 0);
    let r = app.get("/v1/me/discord", Some(&alice)).await;
    assert_eq!(r.body, json!({"linked": false}));
    // Nothing to unlink: still 204, nothing asked of Discord.
    let r = app
        .send(
            reqwest::Method::DELETE,
            "/v1/me/discord",
            Some(&alice),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(d.state.revoke_calls.load(Ordering::SeqCst), 1);

    app.shutdown().await;
}

async fn unauthenticated_is_401(backend: Backend) {
    let d = Discord::spawn().await;
    let app = linking_app(backend, &d).await;
    for (m, p) in [
        (reqwest::Method::GET, "/v1/discord/link"),
        (reqwest::Method::GET, "/v1/me/discord"),
        (reqwest::Method::DELETE, "/v1/me/discord"),
    ] {
        let r = app.send(m.clone(), p, None, None, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {p}: {}", r.text);
        assert_eq!(r.code(), "unauthorized");
    }
    // A bearer on the callback must be a valid one.
    let query = start(&app, &d, &user("alice"), "111").await;
    let r = callback(&app, &query, Some("not-a-jwt")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(links_count(&app).await, 0);
    app.shutdown().await;
}

both_backends!(
    link_flow_end_to_end,
    state_is_single_use_bound_and_expiring,
    refused_code_relays_discords_words_and_stores_nothing,
    tokens_are_sealed_at_rest,
    access_token_refreshes_once_for_concurrent_callers,
    refused_refresh_needs_relink,
    me_discord_shows_and_unlinks,
    unauthenticated_is_401,
);
