//! The media side of the business API (issue 13): the operator view
//! (`GET /v1/media/streams`), one stream's status for the pages
//! (`GET /v1/media/streams/{stream}`), the broadcast page's viewer link, and
//! ending or cancelling a stream closing its media sessions. Sessions here are
//! made from canned offers (they never connect); the real-peer side is in
//! tests/media/operator.rs.

use std::time::Duration;

use crate::both_backends;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem::auth::{Grants, TokenRequest};

fn media_token(
    app: &TestApp,
    user: &str,
    stream: &str,
    grants: Grants,
    role: Option<&str>,
) -> String {
    app.token_for(TokenRequest {
        user: user.into(),
        stream: Some(stream.into()),
        grants,
        role: role.map(Into::into),
        ttl_secs: 3600,
        ..Default::default()
    })
}

fn publish() -> Grants {
    Grants {
        publish: true,
        ..Default::default()
    }
}

fn subscribe() -> Grants {
    Grants {
        subscribe: true,
        ..Default::default()
    }
}

async fn status_of(app: &TestApp, stream: &str, bearer: &str) -> Value {
    let r = app
        .get(&format!("/v1/media/streams/{stream}"), Some(bearer))
        .await;
    assert_eq!(r.status, StatusCode::OK, "status of {stream}: {}", r.text);
    r.body
}

async fn open_sessions(app: &TestApp, stream: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM media_sessions WHERE stream = $1 AND ended_at IS NULL",
    )
    .bind(stream)
    .fetch_one(app.pool())
    .await
    .expect("counting media_sessions")
}

async fn operator_view_and_status_auth_and_shapes(backend: Backend) {
    let app = spawn_api(backend).await;
    // The operator view: the service key only.
    let r = app.get("/v1/media/streams", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = app.get("/v1/media/streams", Some(&user("ulla"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.get("/v1/media/streams", Some(SERVICE_KEY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"streams": []}));

    // A publisher session that has not connected: held, not live.
    let offer = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&app.publish_token("cam")),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(offer.status(), StatusCode::CREATED);
    let r = app.get("/v1/media/streams", Some(SERVICE_KEY)).await;
    assert_eq!(
        r.body,
        json!({"streams": [{
            "stream": "cam", "publisher": null, "viewers": 0, "started_at": null,
            "recorded": false, "restreamed": false, "business": null, "layers": [],
        }]})
    );

    // Status: the service key or a token for that stream.
    let r = app.get("/v1/media/streams/cam", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = app.get("/v1/media/streams/cam", Some("garbage")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let other = media_token(&app, "u", "other", subscribe(), None);
    let r = app.get("/v1/media/streams/cam", Some(&other)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "forbidden");
    let room_only = app.room_token("cam", "u", false);
    let r = app.get("/v1/media/streams/cam", Some(&room_only)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    let star = media_token(&app, "op", "*", subscribe(), None);
    assert_eq!(
        status_of(&app, "cam", &app.subscribe_token("cam")).await,
        json!({"stream": "cam", "state": "waiting", "viewers": 0, "publisher": null,
               "business": null})
    );
    assert_eq!(status_of(&app, "demo", &star).await["state"], "waiting");
    assert_eq!(
        status_of(&app, "nosuch", &star).await["state"],
        "unknown",
        "a * token's name never seen"
    );
    assert_eq!(
        status_of(&app, "nosuch", SERVICE_KEY).await["state"],
        "unknown"
    );
    let named = media_token(&app, "u", "planned", subscribe(), None);
    assert_eq!(
        status_of(&app, "planned", &named).await["state"],
        "waiting",
        "a name the token names itself"
    );

    // A business stream: waiting while scheduled, ended once cancelled.
    let id = app.create_stream("ines", 0).await;
    let s = status_of(&app, &id, SERVICE_KEY).await;
    assert_eq!(s["state"], "waiting", "{s}");
    assert_eq!(
        s["business"],
        json!({"id": id, "title": "Class by ines", "status": "scheduled",
               "scheduled_start": "2030-01-31T18:00:00Z"})
    );
    let r = app
        .post(
            &format!("/v1/streams/{id}/cancel"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let s = status_of(&app, &id, &star).await;
    assert_eq!(s["state"], "ended", "{s}");
    assert_eq!(s["business"]["status"], "cancelled");
    app.shutdown().await;
}

async fn viewer_link_for_free_streams_only(backend: Backend) {
    let app = spawn_api(backend).await;
    let path = "/v1/media/streams/party/viewer-link";
    let r = app.post(path, None, json!({})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = app
        .post(path, Some(&app.subscribe_token("party")), json!({}))
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a viewer cannot mint links: {}",
        r.text
    );
    let r = app
        .post(path, Some(&app.publish_token("other")), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    let publish_token = app.publish_token("party");
    let publish_claims = app.state().tokens.verify(&publish_token).unwrap();
    let r = app.post(path, Some(&publish_token), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let keys: Vec<&str> = r
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["expires_at", "token", "watch_url"]);
    let token = r.body["token"].as_str().unwrap();
    assert_eq!(
        r.body["watch_url"],
        format!("{}/watch/party?token={token}", app.base)
    );
    let claims = app.state().tokens.verify(token).unwrap();
    assert_eq!(claims.stream.as_deref(), Some("party"));
    assert!(claims.grants.subscribe);
    assert!(!claims.grants.publish && !claims.grants.chat && !claims.grants.moderate);
    assert!(
        claims.exp <= publish_claims.exp,
        "the link expires no later than the publish token: {} > {}",
        claims.exp,
        publish_claims.exp
    );
    // The link's token watches the stream.
    let watch = post_offer(
        &app,
        &app.whep_url("party"),
        Some(token),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    assert_eq!(watch.status(), StatusCode::CREATED);

    // Business streams: viewers enroll; free links would bypass that.
    let id = app.create_stream("ines", 25).await;
    let own = app
        .post(
            &format!("/v1/streams/{id}/publish-token"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    let link = format!("/v1/media/streams/{id}/viewer-link");
    let r = app
        .post(&link, Some(own.body["token"].as_str().unwrap()), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "business_stream");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("/watch/{id}")),
        "{}",
        r.text
    );
    let stranger = media_token(&app, "ivan", &id, publish(), Some("instructor"));
    let r = app.post(&link, Some(&stranger), json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let operator = media_token(&app, "op", "*", publish(), None);
    let r = app.post(&link, Some(&operator), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    app.shutdown().await;
}

async fn cancelling_closes_the_streams_media_sessions(backend: Backend) {
    let app = api_app(backend)
        .config(|c| c.api.whip_starts_stream = false)
        .spawn()
        .await;
    let id = app.create_stream("ines", 0).await;
    let r = app
        .post(
            &format!("/v1/streams/{id}/publish-token"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let token = r.body["token"].as_str().unwrap().to_string();
    let whip = post_offer(
        &app,
        &app.whip_url(&id),
        Some(&token),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(whip.status(), StatusCode::CREATED);
    let whep = post_offer(
        &app,
        &app.whep_url(&id),
        Some(&token),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    assert_eq!(whep.status(), StatusCode::CREATED);
    assert_eq!(app.session_count(), 2);

    let r = app
        .post(
            &format!("/v1/streams/{id}/cancel"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        app.session_count(),
        0,
        "cancel closed the stream's sessions"
    );
    eventually(
        "both session records ended",
        Duration::from_secs(10),
        || async {
            match open_sessions(&app, &id).await {
                0 => Ok(()),
                n => Err(n.to_string()),
            }
        },
    )
    .await;
    let again = post_offer(
        &app,
        &app.whip_url(&id),
        Some(&token),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "stream_closed", "{body}");
    app.shutdown().await;
}

async fn an_ended_stream_without_replay_refuses_new_viewers(backend: Backend) {
    let app = spawn_api(backend).await;
    let r = app
        .post(
            "/v1/streams",
            Some(&instructor("ines")),
            json!({"title": "No replay", "scheduled_start": "2030-01-31T18:00:00Z",
                   "price_tokens": 0, "replay_days": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = app
        .post(
            &format!("/v1/streams/{id}/enrollments"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/streams/{id}/viewer-token"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let viewer = r.body["token"].as_str().unwrap().to_string();
    for step in ["start", "end"] {
        let r = app
            .post(
                &format!("/v1/streams/{id}/{step}"),
                Some(&instructor("ines")),
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{step}: {}", r.text);
    }
    let whep = post_offer(
        &app,
        &app.whep_url(&id),
        Some(&viewer),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    assert_eq!(whep.status(), StatusCode::FORBIDDEN);
    let body: Value = whep.json().await.unwrap();
    assert_eq!(body["error"]["code"], "replay_expired", "{body}");
    assert_eq!(app.session_count(), 0);
    app.shutdown().await;
}

both_backends!(
    operator_view_and_status_auth_and_shapes,
    viewer_link_for_free_streams_only,
    cancelling_closes_the_streams_media_sessions,
    an_ended_stream_without_replay_refuses_new_viewers,
);
