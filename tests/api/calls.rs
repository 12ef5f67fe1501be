//! Calls over HTTP (issue 17): create validation, call tokens and their grants
//! per role, the WHIP/WHEP hook's refusals (audience, publishing as another,
//! removed, ended), end, removal and the history's shape. No media here: a WHIP
//! or WHEP with a body that is not SDP answers 400 `bad_sdp` only once the
//! token and the call's rules passed, so each refusal is seen without a peer
//! (tests/media/calls.rs has the real calls).

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::support::*;

both_backends!(
    create_validates_and_stores_nothing_on_bad_input,
    tokens_follow_roles_and_the_hook_enforces_them,
    end_and_removal_close_the_door,
    history_and_show,
);

/// WHIP or WHEP with `bearer` and a body that is not SDP: 400 once authorized.
async fn media_status(app: &TestApp, kind: &str, stream: &str, bearer: &str) -> Resp {
    app.send(
        Method::POST,
        &format!("/v1/{kind}/{stream}"),
        Some(bearer),
        None,
        &[("content-type", "application/sdp")],
    )
    .await
}

async fn calls_stored(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM calls")
        .fetch_one(app.pool())
        .await
        .unwrap();
    let (m,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM call_participants")
        .fetch_one(app.pool())
        .await
        .unwrap();
    n + m
}

/// A call of ines (host), sam (participant) and ada (audience); its id.
async fn three_party(app: &TestApp) -> String {
    let r = app
        .post(
            "/v1/calls",
            Some(&instructor("ines")),
            json!({"participants": [
                {"user": "ines", "role": "host"},
                {"user": "sam", "role": "participant"},
                {"user": "ada", "role": "audience"},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().unwrap().to_string()
}

async fn call_token(app: &TestApp, id: &str, who: &str) -> Resp {
    app.post(
        &format!("/v1/calls/{id}/token"),
        Some(&user(who)),
        json!({}),
    )
    .await
}

async fn create_validates_and_stores_nothing_on_bad_input(backend: Backend) {
    let app = spawn_api(backend).await;
    let ok = json!({"participants": [{"user": "ines", "role": "host"}]});
    // Who may create: the service key and instructors, not a plain user.
    let r = app.post("/v1/calls", Some(&user("sam")), ok.clone()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.post("/v1/calls", None, ok.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);

    let nine: Vec<Value> = (0..9)
        .map(|i| json!({"user": format!("u{i}"), "role": "host"}))
        .collect();
    let cases = [
        (json!({}), "participants"),
        (json!({"participants": []}), "participants"),
        (json!({"participants": nine}), "participants"),
        (
            json!({"participants": [{"user": "a", "role": "participant"}]}),
            "participants",
        ),
        (
            json!({"participants": [{"user": "a", "role": "owner"}]}),
            "participants[0].role",
        ),
        (
            json!({"participants": [{"user": "a", "role": "host"}, {"user": "a", "role": "audience"}]}),
            "participants[1].user",
        ),
        (
            json!({"participants": [{"user": "a/b", "role": "host"}]}),
            "participants[0].user",
        ),
        (
            json!({"participants": [{"user": "", "role": "host"}]}),
            "participants[0].user",
        ),
    ];
    for (body, field) in cases {
        let r = app.post("/v1/calls", Some(SERVICE_KEY), body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.text);
    }
    assert_eq!(calls_stored(&app).await, 0, "nothing stored on bad input");

    let r = app.post("/v1/calls", Some(SERVICE_KEY), ok).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["created_by"], "service");
    assert_eq!(r.body["participants"][0]["user"], "ines");
    assert_eq!(r.body["participants"][0]["role"], "host");
    assert!(r.body["started_at"].is_null() && r.body["ended_at"].is_null());
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(r.body["room"], format!("call:{id}"));
    assert_eq!(calls_stored(&app).await, 2);
}

async fn tokens_follow_roles_and_the_hook_enforces_them(backend: Backend) {
    let app = spawn_api(backend).await;
    let id = three_party(&app).await;

    // Not in the call: 403, and no such call: 404.
    let r = call_token(&app, &id, "mallory").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "not_invited");
    let r = call_token(&app, "nope", "sam").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    let host = call_token(&app, &id, "ines").await;
    assert_eq!(host.status, StatusCode::OK, "{}", host.text);
    assert_eq!(host.body["room"], format!("call:{id}"));
    assert_eq!(host.body["role"], "host");
    assert!(
        host.body["whip_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/whip/call:{id}:ines"))
    );
    // The others who publish; never the audience, never oneself.
    let wheps = host.body["whep_urls"].as_object().unwrap();
    assert_eq!(wheps.len(), 1, "{}", host.text);
    assert!(
        wheps["sam"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/whep/call:{id}:sam"))
    );

    let sam = call_token(&app, &id, "sam").await;
    assert_eq!(sam.status, StatusCode::OK, "{}", sam.text);
    let audience = call_token(&app, &id, "ada").await;
    assert_eq!(audience.status, StatusCode::OK, "{}", audience.text);
    assert!(audience.body.get("whip_url").is_none(), "{}", audience.text);
    assert_eq!(audience.body["whep_urls"].as_object().unwrap().len(), 2);

    // The grants in the tokens themselves.
    let claims = |r: &Resp| {
        app.state()
            .tokens
            .verify(r.body["token"].as_str().unwrap())
            .unwrap()
    };
    let (h, s, a) = (claims(&host), claims(&sam), claims(&audience));
    assert!(h.grants.publish && h.grants.subscribe && h.grants.moderate);
    assert!(s.grants.publish && s.grants.subscribe && !s.grants.moderate);
    assert!(!a.grants.publish && a.grants.subscribe && !a.grants.moderate);
    assert!(a.allows_room(&format!("call:{id}")) && !a.allows_room("call:other"));

    let tok = |r: &Resp| r.body["token"].as_str().unwrap().to_string();
    let (host_t, sam_t, ada_t) = (tok(&host), tok(&sam), tok(&audience));
    let own = |u: &str| format!("call:{id}:{u}");
    // Each publishes its own stream; past the hook the SDP is what fails.
    let r = media_status(&app, "whip", &own("sam"), &sam_t).await;
    assert_eq!(r.code(), "bad_sdp", "own stream: {}", r.text);
    let r = media_status(&app, "whip", &own("ines"), &sam_t).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "as another: {}", r.text);
    let r = media_status(&app, "whip", &own("ines"), &host_t).await;
    assert_eq!(r.code(), "bad_sdp", "{}", r.text);
    // The audience does not publish, even "its own" stream.
    let r = media_status(&app, "whip", &own("ada"), &ada_t).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "audience WHIP: {}", r.text);
    // Everyone views.
    for t in [&host_t, &sam_t, &ada_t] {
        let r = media_status(&app, "whep", &own("sam"), t).await;
        assert_eq!(r.code(), "bad_sdp", "{}", r.text);
    }
    // A call token opens only its own call's streams.
    let other = three_party(&app).await;
    let r = media_status(&app, "whep", &format!("call:{other}:sam"), &sam_t).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "another call: {}", r.text);
    let r = media_status(&app, "whep", "some-demo-stream", &sam_t).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
}

async fn end_and_removal_close_the_door(backend: Backend) {
    let app = spawn_api(backend).await;
    let id = three_party(&app).await;
    let sam_t = call_token(&app, &id, "sam").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let sam_stream = format!("call:{id}:sam");

    // Only a host (or the service key) removes.
    let remove = format!("/v1/calls/{id}/participants/sam/remove");
    let r = app.post(&remove, Some(&user("ada")), json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/calls/{id}/participants/nobody/remove"),
            Some(&user("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = app.post(&remove, Some(&user("ines")), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["user"], "sam");
    // Its token no longer opens sessions; a new token is refused.
    let r = media_status(&app, "whip", &sam_stream, &sam_t).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "removed");
    let r = media_status(&app, "whep", &format!("call:{id}:ines"), &sam_t).await;
    assert_eq!(r.code(), "removed", "{}", r.text);
    let r = call_token(&app, &id, "sam").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // Nor the call's room.
    let r = app
        .post(
            &format!("/v1/rooms/call:{id}/token"),
            Some(&user("sam")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/rooms/call:{id}/token"),
            Some(&user("ada")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "a participant's room: {}", r.text);

    // End: host or service key only; then tokens and sessions are refused.
    let ada_t = call_token(&app, &id, "ada").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let end = format!("/v1/calls/{id}/end");
    let r = app.post(&end, Some(&user("ada")), json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.post(&end, Some(&user("ines")), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["end_reason"], "ended_by_host");
    assert!(r.body["ended_at"].is_string());
    let r = app.post(&end, Some(SERVICE_KEY), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "call_ended");
    let r = call_token(&app, &id, "ada").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "call_ended");
    let r = media_status(&app, "whep", &format!("call:{id}:ines"), &ada_t).await;
    assert_eq!(r.code(), "call_ended", "{}", r.text);
}

async fn history_and_show(backend: Backend) {
    let app = spawn_api(backend).await;
    let first = three_party(&app).await;
    let second = three_party(&app).await;

    // Own history: newest first; another's is 403; the service key names a user.
    let r = app.get("/v1/calls", Some(&user("sam"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let ids: Vec<&str> = r.body["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&first.as_str()) && ids.contains(&second.as_str()));
    let r = app.get("/v1/calls?user=ines", Some(&user("sam"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .get("/v1/calls?user=ines&limit=1", Some(SERVICE_KEY))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["calls"].as_array().unwrap().len(), 1);
    let r = app.get("/v1/calls", Some(SERVICE_KEY)).await;
    assert_eq!(r.body["error"]["field"], "user", "{}", r.text);
    let r = app.get("/v1/calls?limit=0", Some(&user("sam"))).await;
    assert_eq!(r.body["error"]["field"], "limit", "{}", r.text);
    let r = app.get("/v1/calls", Some(&user("mallory"))).await;
    assert_eq!(r.body["calls"].as_array().unwrap().len(), 0);

    // One call: participants and service key; nobody connected, never started.
    let r = app
        .get(&format!("/v1/calls/{first}"), Some(&user("ada")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let parts = r.body["participants"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert!(
        parts
            .iter()
            .all(|p| p["connected"] == false && p["joined_at"].is_null())
    );
    assert!(r.body["duration_seconds"].is_null());
    let r = app
        .get(&format!("/v1/calls/{first}"), Some(SERVICE_KEY))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .get(&format!("/v1/calls/{first}"), Some(&user("mallory")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
}
