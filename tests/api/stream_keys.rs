//! Stream keys (`/v1/streams/{id}/stream-key`, issue 13): minted once and shown
//! once, stored as a hash with a hint, rotated by a new call, revoked by DELETE;
//! only the owner (or an admin) manages them; WHIP takes a key as the bearer token
//! of its own stream only. A WHIP offer that is not SDP answers 400 `bad_sdp` only
//! once the credential passed, so these tests need no media session.

use crate::both_backends;
use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// WHIP with `bearer` and a body that is not SDP: 400 once authorized.
async fn whip_status(app: &TestApp, stream: &str, bearer: &str) -> Resp {
    app.send(
        Method::POST,
        &format!("/v1/whip/{stream}"),
        Some(bearer),
        None,
        &[("content-type", "application/sdp")],
    )
    .await
}

async fn mint_rotate_revoke(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let id = app.create_stream("ines", 0).await;
    let path = format!("/v1/streams/{id}/stream-key");

    let r = app.get(&path, Some(&ines)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["exists"], false);

    let r = app.post(&path, Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.headers.get("cache-control").unwrap(),
        "no-store",
        "a secret in the body"
    );
    let key = r.body["stream_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("tsk_") && key.len() >= 4 + 32, "{key}");
    let hint = r.body["hint"].as_str().unwrap().to_string();
    assert!(hint.ends_with(&key[key.len() - 4..]), "{hint}");
    assert!(
        !hint.contains(&key[4..key.len() - 4]),
        "the hint is not the key"
    );
    assert_eq!(
        r.body["whip_url"].as_str().unwrap(),
        format!("{}/v1/whip/{id}", app.base)
    );

    // Stored as a hash only.
    let (stored, stored_hint): (String, String) =
        sqlx::query_as("SELECT key_hash, hint FROM stream_keys WHERE stream_id = $1")
            .bind(&id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(stored.len(), 64);
    assert!(!stored.contains(&key[4..]), "the key is not stored");
    assert_eq!(stored_hint, hint);

    // GET shows the hint, never the key; last_used_at appears once WHIP used it.
    let r = app.get(&path, Some(&ines)).await;
    assert_eq!(r.body["exists"], true);
    assert_eq!(r.body["hint"], hint.as_str());
    assert!(r.body["created_at"].is_string());
    assert!(r.body["last_used_at"].is_null());
    assert!(!r.text.contains(&key), "GET never shows the key");

    let r = whip_status(&app, &id, &key).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "authorized: {}", r.text);
    assert_eq!(r.code(), "bad_sdp");
    let r = app.get(&path, Some(&ines)).await;
    assert!(r.body["last_used_at"].is_string(), "{}", r.text);

    // Rotation: the old key stops at once, the new one works.
    let r = app.post(&path, Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let key2 = r.body["stream_key"].as_str().unwrap().to_string();
    assert_ne!(key, key2);
    let r = whip_status(&app, &id, &key).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rotated")
    );
    assert!(!r.text.contains(&key), "the key is not echoed");
    let r = whip_status(&app, &id, &key2).await;
    assert_eq!(r.code(), "bad_sdp", "{}", r.text);

    // A key publishes its own stream only, and never watches.
    let other = app.create_stream("ines", 0).await;
    let r = whip_status(&app, &other, &key2).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .send(
            Method::POST,
            &format!("/v1/whep/{id}"),
            Some(&key2),
            None,
            &[("content-type", "application/sdp")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    // Revoke: 204, then the key is refused and GET says there is none.
    let r = app
        .send(Method::DELETE, &path, Some(&ines), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = whip_status(&app, &id, &key2).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app.get(&path, Some(&ines)).await;
    assert_eq!(r.body["exists"], false);

    // A cancelled stream refuses a new key and publishing with an old one.
    let r = app.post(&path, Some(&ines), json!({})).await;
    let key3 = r.body["stream_key"].as_str().unwrap().to_string();
    let r = app
        .post(&format!("/v1/streams/{id}/cancel"), Some(&ines), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = whip_status(&app, &id, &key3).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "stream_closed");
    let r = app.post(&path, Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "stream_closed");
    app.shutdown().await;
}

async fn only_the_owner_or_an_admin(backend: Backend) {
    let app = spawn_api(backend).await;
    let id = app.create_stream("ines", 0).await;
    let path = format!("/v1/streams/{id}/stream-key");

    let r = app.post(&path, None, json!({})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for who in [instructor("otto"), user("ines")] {
        let r = app.post(&path, Some(&who), json!({})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        let r = app.get(&path, Some(&who)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = app.send(Method::DELETE, &path, Some(&who), None, &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    let r = app
        .post(
            "/v1/streams/st_nope/stream-key",
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    // An admin may mint one for the owner; WHIP then publishes as the owner.
    let admin = identity_token("adam", "admin", 3600);
    let r = app.post(&path, Some(&admin), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["stream_key"].as_str().unwrap().to_string();
    let r = whip_status(&app, &id, &key).await;
    assert_eq!(r.code(), "bad_sdp", "{}", r.text);

    // A made-up key with the prefix: 401, not a server error.
    let r = whip_status(&app, &id, "tsk_notakeyatall").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "unauthorized");

    // Deleting the stream takes its key with it.
    let r = app
        .send(
            Method::DELETE,
            &format!("/v1/streams/{id}"),
            Some(&instructor("ines")),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM stream_keys")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
    app.shutdown().await;
}

both_backends!(mint_rotate_revoke, only_the_owner_or_an_admin);
