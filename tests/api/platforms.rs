//! Platform connections (issue 16): stream keys sealed at rest (the database file
//! holds no plaintext, the API only the hint), key rotation, OAuth 2.0 + PKCE
//! against the stand-in providers (tests/support/providers.rs), token refresh
//! (before expiry, one provider call for concurrent callers, `invalid_grant` →
//! `needs_reconnect`), the push URL of each kind, and bad input storing nothing.

use std::sync::atomic::Ordering;

use crate::both_backends;
use crate::support::*;
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tandem::platforms::connections::{owned_connection, resolve_target};
use tandem::platforms::oauth::refresh_row_locked;
use tandem::secrets::Keyring;

const KEY: &str = "sk_live_TopSecretStreamKey_9f2c";

async fn app_with(backend: Backend, providers: &Providers) -> TestApp {
    api_app(backend)
        .config(|c| providers.configure(c))
        .spawn()
        .await
}

async fn count(app: &TestApp, table: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(app.pool())
        .await
        .unwrap();
    n
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The whole browser round trip: start (as `who`) → provider → callback.
/// Returns the callback's answer (303 to /restream, or 201 JSON with `json`).
async fn connect(app: &TestApp, who: &str, platform: &str, json: bool) -> Resp {
    let r = app
        .get(
            &format!("/v1/platform-connections/oauth/{platform}/start"),
            Some(&instructor(who)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let authorize = r.body["authorize_url"].as_str().unwrap().to_string();
    assert!(
        authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    assert!(
        authorize.contains(&format!("state={}", r.body["state"].as_str().unwrap())),
        "{authorize}"
    );
    let http = no_redirects();
    let consent = http.get(&authorize).send().await.unwrap();
    assert!(consent.status().is_redirection(), "{}", consent.status());
    let back = consent.headers()["location"].to_str().unwrap().to_string();
    assert!(
        back.starts_with(&format!(
            "{}/v1/platform-connections/oauth/{platform}/callback?",
            app.base
        )),
        "{back}"
    );
    let path = &back[app.base.len()..];
    let headers: &[(&str, &str)] = if json {
        &[("accept", "application/json")]
    } else {
        &[]
    };
    let mut req = http.get(app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let hdrs = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Resp {
        status,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
        headers: hdrs,
    }
}

async fn stream_keys_are_sealed_and_only_hinted(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let r = app
        .post(
            "/v1/platform-connections",
            Some(&ines),
            json!({"platform": "rtmp", "name": "My server", "ingest_url": "rtmps://live.example.com:443/app", "stream_key": KEY}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["stream_key_hint"], "…9f2c");
    assert_eq!(r.body["kind"], "stream_key");
    assert_eq!(r.body["status"], "ok");
    assert!(!r.text.contains("TopSecret"), "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();

    // A platform with a documented ingest needs none.
    let r = app
        .post(
            "/v1/platform-connections",
            Some(&ines),
            json!({"platform": "youtube", "name": "YT", "stream_key": "abcd-efgh-ijkl-mnop"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["ingest_url"], "rtmp://a.rtmp.youtube.com/live2");

    let r = app.get("/v1/platform-connections", Some(&ines)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_array().unwrap().len(), 2, "{}", r.text);
    assert!(!r.text.contains("TopSecret") && !r.text.contains("efgh-ijkl"));
    // Another instructor sees none of them.
    let r = app
        .get("/v1/platform-connections", Some(&instructor("omar")))
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 0, "{}", r.text);

    // Stored sealed, under the generated key.
    let (blob, key_id): (String, String) = sqlx::query_as(
        "SELECT stream_key_sealed, stream_key_key_id FROM platform_connections WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(key_id, "local");
    assert!(!blob.contains("TopSecret"));

    // The push URL holds the key; its Debug does not.
    let target = resolve_target(app.state(), "ines", &id, "Yoga")
        .await
        .unwrap();
    assert_eq!(
        target.url,
        format!("rtmps://live.example.com:443/app/{KEY}")
    );
    assert_eq!(target.platform, "rtmp");
    assert!(!format!("{target:?}").contains("TopSecret"));
    let out = owned_connection(app.state(), "ines", &id).await.unwrap();
    assert_eq!(
        (out.platform.as_str(), out.name.as_str()),
        ("rtmp", "My server")
    );
    let err = resolve_target(app.state(), "omar", &id, "Yoga")
        .await
        .unwrap_err();
    assert_eq!(err.status, StatusCode::NOT_FOUND);
    let err = owned_connection(app.state(), "omar", &id)
        .await
        .unwrap_err();
    assert_eq!(err.status, StatusCode::NOT_FOUND);

    // The database file (WAL checkpointed into it) holds no plaintext key.
    if backend == Backend::Sqlite {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(app.pool())
            .await
            .unwrap();
        let mut files = 0;
        for entry in std::fs::read_dir(app.data_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                files += 1;
                for secret in [KEY.as_bytes(), b"efgh-ijkl-mnop".as_slice()] {
                    assert!(
                        !bytes.windows(secret.len()).any(|w| w == secret),
                        "{} holds a plaintext key",
                        path.display()
                    );
                }
            }
        }
        assert!(files >= 2, "the database file and the key file were read");
        let db = std::fs::read(app.data_dir().join("t.db")).unwrap();
        assert!(
            db.windows(b"9f2c".len()).any(|w| w == b"9f2c"),
            "the hint is in the file (the search would find the key if it were)"
        );
    }
    app.shutdown().await;
}

async fn bad_input_stores_nothing(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let cases = [
        (
            json!({"platform": "myspace", "ingest_url": "rtmp://h/app", "stream_key": "k123"}),
            "platform",
        ),
        (
            json!({"platform": "rtmp", "ingest_url": "rtmp://h/app"}),
            "stream_key",
        ),
        (
            json!({"platform": "rtmp", "ingest_url": "rtmp://h/app", "stream_key": ""}),
            "stream_key",
        ),
        (
            json!({"platform": "rtmp", "ingest_url": "rtmp://h/app", "stream_key": "has space"}),
            "stream_key",
        ),
        (
            json!({"platform": "rtmp", "ingest_url": "rtmp://h/app", "stream_key": "k".repeat(513)}),
            "stream_key",
        ),
        (
            json!({"platform": "rtmp", "ingest_url": "https://h/app", "stream_key": "k123"}),
            "ingest_url",
        ),
        (
            json!({"platform": "rtmp", "ingest_url": "rtmp:///app", "stream_key": "k123"}),
            "ingest_url",
        ),
        (
            json!({"platform": "rtmp", "stream_key": "k123"}),
            "ingest_url",
        ),
        (
            json!({"platform": "instagram", "stream_key": "k123"}),
            "ingest_url",
        ),
        (
            json!({"ingest_url": "rtmp://h/app", "stream_key": "k123"}),
            "platform",
        ),
    ];
    for (body, field) in cases {
        let r = app
            .post("/v1/platform-connections", Some(&ines), body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.code(), "bad_request", "{}", r.text);
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.text);
        assert!(
            !r.text.contains("k123"),
            "the key is not echoed: {}",
            r.text
        );
    }
    // Not an instructor.
    let r = app
        .post(
            "/v1/platform-connections",
            Some(&user("bo")),
            json!({"platform": "rtmp", "ingest_url": "rtmp://h/app", "stream_key": "k123"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(count(&app, "platform_connections").await, 0);

    // Another instructor's connection: 404 and nothing changes.
    let r = app
        .post(
            "/v1/platform-connections",
            Some(&ines),
            json!({"platform": "rtmp", "ingest_url": "rtmp://h/app", "stream_key": "k123"}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/platform-connections/{id}");
    let r = app
        .send(Method::DELETE, &path, Some(&instructor("omar")), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(count(&app, "platform_connections").await, 1);
    let r = app
        .send(Method::DELETE, &path, Some(&ines), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(count(&app, "platform_connections").await, 0);
    let r = app
        .send(Method::DELETE, &path, Some(&ines), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

async fn oauth_pkce_flow_and_youtube_broadcast(backend: Backend) {
    let providers = Providers::spawn().await;
    let app = app_with(backend, &providers).await;

    // Not an OAuth platform; not an instructor.
    let r = app
        .get(
            "/v1/platform-connections/oauth/rtmp/start",
            Some(&instructor("ines")),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "platform");
    let r = app
        .get(
            "/v1/platform-connections/oauth/youtube/start",
            Some(&user("bo")),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let r = connect(&app, "ines", "youtube", false).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let location = r.headers["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("/restream?connected=pc_"),
        "{location}"
    );
    let id = location["/restream?connected=".len()..].to_string();
    assert_eq!(Providers::count(&providers.state.code_exchanges), 1);
    assert_eq!(Providers::count(&providers.state.pkce_failures), 0);

    let r = app
        .get("/v1/platform-connections", Some(&instructor("ines")))
        .await;
    let list = r.body.as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", r.text);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["kind"], "oauth");
    assert_eq!(list[0]["platform"], "youtube");
    assert_eq!(list[0]["status"], "ok");
    assert!(!r.text.contains("at-youtube") && !r.text.contains("rt-youtube"));

    // Tokens sealed.
    let (access, refresh): (String, String) = sqlx::query_as(
        "SELECT access_token_sealed, refresh_token_sealed FROM platform_connections WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert!(!access.contains("at-youtube") && !refresh.contains("rt-youtube"));

    // YouTube: broadcast + stream + bind, the stream's ingest address and name.
    let target = resolve_target(app.state(), "ines", &id, "Morning yoga")
        .await
        .unwrap();
    assert_eq!(
        target.url,
        format!("{YOUTUBE_INGEST}/{YOUTUBE_STREAM_NAME}")
    );
    assert_eq!(Providers::count(&providers.state.yt_broadcasts), 1);
    assert_eq!(Providers::count(&providers.state.yt_streams), 1);
    assert_eq!(Providers::count(&providers.state.yt_binds), 1);
    assert_eq!(
        providers.state.yt_bound.lock().unwrap().clone(),
        Some(("bc-0".to_string(), "ls-0".to_string()))
    );
    // No refresh was needed (the token is good for an hour).
    assert_eq!(Providers::count(&providers.state.refreshes), 0);
    app.shutdown().await;
}

async fn wrong_state_is_refused(backend: Backend) {
    let providers = Providers::spawn().await;
    let app = app_with(backend, &providers).await;
    let cb = "/v1/platform-connections/oauth/youtube/callback";
    for query in ["?code=x&state=bogus", "?code=x", "?code=x&state="] {
        let r = app.get(&format!("{cb}{query}"), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert_eq!(r.body["error"]["field"], "state", "{}", r.text);
    }
    // A Twitch state at YouTube's callback.
    let r = app
        .get(
            "/v1/platform-connections/oauth/twitch/start",
            Some(&instructor("ines")),
        )
        .await;
    let twitch_state = r.body["state"].as_str().unwrap().to_string();
    let r = app
        .get(&format!("{cb}?code=x&state={twitch_state}"), None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "state");

    // A used state: the first callback wins, a replay is refused.
    let r = connect(&app, "ines", "youtube", true).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (state_id,): (String,) =
        sqlx::query_as("SELECT state FROM oauth_states WHERE used_at IS NOT NULL")
            .fetch_one(app.pool())
            .await
            .unwrap();
    let r = app
        .get(&format!("{cb}?code=x&state={state_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "state");
    // An expired state.
    let r = app
        .get(
            "/v1/platform-connections/oauth/youtube/start",
            Some(&instructor("ines")),
        )
        .await;
    let old = r.body["state"].as_str().unwrap().to_string();
    sqlx::query("UPDATE oauth_states SET expires_at = 1 WHERE state = $1")
        .bind(&old)
        .execute(app.pool())
        .await
        .unwrap();
    let r = app.get(&format!("{cb}?code=x&state={old}"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(count(&app, "platform_connections").await, 1);
    assert_eq!(Providers::count(&providers.state.code_exchanges), 1);
    app.shutdown().await;
}

async fn unconfigured_platform_says_what_to_set(backend: Backend) {
    let app = spawn_api(backend).await;
    let r = app
        .get(
            "/v1/platform-connections/oauth/twitch/start",
            Some(&instructor("ines")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "platform_not_configured");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("client_id") && message.contains("[platforms.twitch]"),
        "{message}"
    );
    assert_eq!(count(&app, "oauth_states").await, 0);
    app.shutdown().await;
}

async fn refresh_before_expiry_one_call_for_concurrent_callers(backend: Backend) {
    let providers = Providers::spawn().await;
    let app = app_with(backend, &providers).await;
    // Issued tokens expire within the 5-minute margin: every use wants a refresh.
    providers.state.expires_in.store(60, Ordering::SeqCst);
    let r = connect(&app, "ines", "twitch", true).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    // The broadcaster id was saved at connect.
    let (account,): (Option<String>,) =
        sqlx::query_as("SELECT provider_account_id FROM platform_connections WHERE id = $1")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(account.as_deref(), Some(TWITCH_USER_ID));

    // Refreshed tokens last an hour; the refresh takes a while, so both callers overlap.
    providers.state.expires_in.store(3600, Ordering::SeqCst);
    providers
        .state
        .refresh_delay_ms
        .store(300, Ordering::SeqCst);
    let (a, b) = tokio::join!(
        resolve_target(app.state(), "ines", &id, "Class"),
        resolve_target(app.state(), "ines", &id, "Class"),
    );
    let want = format!("rtmp://live.twitch.tv/app/{TWITCH_KEY}");
    assert_eq!(a.unwrap().url, want);
    assert_eq!(b.unwrap().url, want);
    assert_eq!(
        Providers::count(&providers.state.refreshes),
        1,
        "two concurrent refreshes make one provider call"
    );
    assert_eq!(Providers::count(&providers.state.twitch_key_calls), 2);
    let (expires,): (Option<i64>,) =
        sqlx::query_as("SELECT token_expires_at FROM platform_connections WHERE id = $1")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(
        expires.unwrap() > (unix_secs() + 3000) * 1000,
        "{expires:?}"
    );
    // Fresh now: no refresh.
    resolve_target(app.state(), "ines", &id, "Class")
        .await
        .unwrap();
    assert_eq!(Providers::count(&providers.state.refreshes), 1);

    // Several nodes: without this process's lock, PostgreSQL's row lock alone
    // makes the second caller wait and find the first one's token.
    if backend == Backend::Postgres {
        sqlx::query("UPDATE platform_connections SET token_expires_at = $1 WHERE id = $2")
            .bind(unix_secs() * 1000)
            .bind(&id)
            .execute(app.pool())
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            refresh_row_locked(app.state(), &id),
            refresh_row_locked(app.state(), &id),
        );
        assert_eq!(a.unwrap(), b.unwrap(), "both got the one new token");
        assert_eq!(Providers::count(&providers.state.refreshes), 2);
    }
    app.shutdown().await;
}

async fn revoked_refresh_token_needs_reconnect(backend: Backend) {
    let providers = Providers::spawn().await;
    let app = app_with(backend, &providers).await;
    providers.state.expires_in.store(60, Ordering::SeqCst);
    let r = connect(&app, "ines", "youtube", true).await;
    let id = r.body["id"].as_str().unwrap().to_string();
    providers.revoke_refresh_tokens();
    let err = resolve_target(app.state(), "ines", &id, "Class")
        .await
        .unwrap_err();
    assert_eq!(err.status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err.code, "needs_reconnect");
    assert_eq!(Providers::count(&providers.state.refreshes), 1);
    assert_eq!(Providers::count(&providers.state.yt_broadcasts), 0);
    let r = app
        .get("/v1/platform-connections", Some(&instructor("ines")))
        .await;
    assert_eq!(r.body[0]["status"], "needs_reconnect", "{}", r.text);
    // Known now: no more provider calls.
    let err = resolve_target(app.state(), "ines", &id, "Class")
        .await
        .unwrap_err();
    assert_eq!(err.code, "needs_reconnect");
    assert_eq!(Providers::count(&providers.state.refreshes), 1);
    // Reconnecting makes a new, working connection.
    providers.state.expires_in.store(3600, Ordering::SeqCst);
    let r = connect(&app, "ines", "youtube", true).await;
    let fresh = r.body["id"].as_str().unwrap().to_string();
    assert!(
        resolve_target(app.state(), "ines", &fresh, "Class")
            .await
            .is_ok()
    );
    app.shutdown().await;
}

async fn facebook_live_video_url(backend: Backend) {
    let providers = Providers::spawn().await;
    let app = app_with(backend, &providers).await;
    // Facebook hands out no refresh token.
    providers.state.no_refresh.store(true, Ordering::SeqCst);
    let r = connect(&app, "ines", "facebook", true).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let t = resolve_target(app.state(), "ines", &id, "Class")
        .await
        .unwrap();
    assert_eq!(t.url, FB_STREAM_URL);
    assert_eq!(Providers::count(&providers.state.fb_live_videos), 1);
    // Expired with nothing to refresh with: reconnect.
    sqlx::query("UPDATE platform_connections SET token_expires_at = 1 WHERE id = $1")
        .bind(&id)
        .execute(app.pool())
        .await
        .unwrap();
    let err = resolve_target(app.state(), "ines", &id, "Class")
        .await
        .unwrap_err();
    assert_eq!(err.code, "needs_reconnect");
    app.shutdown().await;
}

async fn rotation_reseals_and_everything_still_resolves(backend: Backend) {
    let providers = Providers::spawn().await;
    let app = app_with(backend, &providers).await;
    let r = app
        .post(
            "/v1/platform-connections",
            Some(&instructor("ines")),
            json!({"platform": "restream", "stream_key": KEY}),
        )
        .await;
    let keyed = r.body["id"].as_str().unwrap().to_string();
    let r = connect(&app, "ines", "twitch", true).await;
    let oauth = r.body["id"].as_str().unwrap().to_string();
    let before = resolve_target(app.state(), "ines", &keyed, "c")
        .await
        .unwrap();

    // The operator adds k2 and makes it active; the generated key stays readable.
    let k2 = [42u8; 32];
    let mut config = (*app.state().config).clone();
    config.secrets.keys = vec![format!(
        "k2:{}",
        base64::engine::general_purpose::STANDARD.encode(k2)
    )];
    config.secrets.active_key = "k2".into();
    let ring = Keyring::from_config(&config).unwrap();
    assert_eq!(ring.active_id(), "k2");
    // `tandem secrets rotate`, as the operator runs it, against the same data
    // directory and database.
    let out = tokio::process::Command::new(TANDEM_BIN)
        .args(["secrets", "rotate"])
        .env("TANDEM_DATA_DIR", app.data_dir())
        .env("TANDEM_DATABASE_URL", &app.state().config.database_url)
        .env("TANDEM_SECRETS__KEYS", &config.secrets.keys[0])
        .env("TANDEM_SECRETS__ACTIVE_KEY", "k2")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two connections and the used OAuth state's verifier.
    assert_eq!(stdout.trim(), "re-encrypted 3 rows under key k2");
    assert!(!stdout.contains(KEY));
    let stale: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM platform_connections WHERE stream_key_key_id <> 'k2' \
         OR access_token_key_id <> 'k2' OR refresh_token_key_id <> 'k2'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(stale.0, 0);
    // Nothing left to do.
    let again = tandem::platforms::rotate::rotate(&app.state().db, &ring)
        .await
        .unwrap();
    assert_eq!(again.rows, 0);

    // With only k2 (the old key gone), everything still opens.
    let mut state = app.state().clone();
    state.keyring = Keyring::from_keys(&[("k2", k2)], "k2");
    let after = resolve_target(&state, "ines", &keyed, "c").await.unwrap();
    assert_eq!(after.url, before.url);
    assert_eq!(after.url, format!("rtmp://live.restream.io/live/{KEY}"));
    let t = resolve_target(&state, "ines", &oauth, "c").await.unwrap();
    assert_eq!(t.url, format!("rtmp://live.twitch.tv/app/{TWITCH_KEY}"));
    // And the old key alone no longer does.
    let mut old_only = app.state().clone();
    old_only.keyring = Keyring::from_keys(&[("k9", [9u8; 32])], "k9");
    assert!(
        resolve_target(&old_only, "ines", &keyed, "c")
            .await
            .is_err()
    );
    app.shutdown().await;
}

both_backends!(
    stream_keys_are_sealed_and_only_hinted,
    bad_input_stores_nothing,
    oauth_pkce_flow_and_youtube_broadcast,
    wrong_state_is_refused,
    unconfigured_platform_says_what_to_set,
    refresh_before_expiry_one_call_for_concurrent_callers,
    revoked_refresh_token_needs_reconnect,
    facebook_live_video_url,
    rotation_reseals_and_everything_still_resolves,
);
