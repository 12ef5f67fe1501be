//! Meetings (issue 16): links on Zoom (Server-to-Server OAuth) and Teams (Graph)
//! made against the stand-ins, Jitsi links whose JWT verifies with the app secret
//! (signature, room, exp), a failing platform that fails only its own link, who
//! may read a meeting, and bad input storing nothing.

use std::sync::atomic::Ordering;

use crate::both_backends;
use crate::support::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};

const JITSI_SECRET: &str = "jitsi-app-secret-0123456789";

async fn app_with(backend: Backend, providers: &Providers, jitsi: bool) -> TestApp {
    api_app(backend)
        .config(|c| {
            providers.configure(c);
            if jitsi {
                c.platforms.jitsi.base_url = "https://meet.example.com/".into();
                c.platforms.jitsi.app_id = "tandem".into();
                c.platforms.jitsi.app_secret = JITSI_SECRET.into();
            }
        })
        .spawn()
        .await
}

async fn meetings(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM meetings")
        .fetch_one(app.pool())
        .await
        .unwrap();
    n
}

/// The claims of a Jitsi link's JWT, verified with the app secret.
fn jitsi_claims(url: &str) -> (String, Value) {
    let (room_url, jwt) = url.split_once("?jwt=").expect("a jwt in the link");
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["jitsi"]);
    v.set_issuer(&["tandem"]);
    v.validate_nbf = true;
    let claims =
        jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_secret(JITSI_SECRET.as_bytes()), &v)
            .expect("the JWT verifies with app_secret")
            .claims;
    // Another secret does not verify it.
    assert!(jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_secret(b"other"), &v).is_err());
    (room_url.to_string(), claims)
}

async fn links_on_every_platform_and_who_may_read(backend: Backend) {
    let providers = Providers::spawn().await;
    let app = app_with(backend, &providers, true).await;
    let r = app
        .post(
            "/v1/meetings",
            Some(&instructor("ines")),
            json!({
                "title": "Yoga 1:1 with Bo",
                "start": "2030-01-31T18:00:00Z",
                "duration_minutes": 45,
                "platforms": ["zoom", "jitsi", "teams"],
                "primary": "jitsi",
                "invitees": ["bo"],
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["duration_minutes"], 45);
    assert_eq!(r.body["start"], "2030-01-31T18:00:00Z");
    let links = r.body["links"].as_array().unwrap();
    let names: Vec<&str> = links
        .iter()
        .map(|l| l["platform"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jitsi", "zoom", "teams"], "primary first");
    assert_eq!(links[0]["primary"], true);
    assert_eq!(links[1]["primary"], false);
    assert_eq!(links[1]["url"], ZOOM_JOIN);
    assert_eq!(links[2]["url"], TEAMS_JOIN);
    assert!(links.iter().all(|l| l.get("error").is_none()), "{}", r.text);

    // What the stand-ins were asked.
    let zoom = providers.state.zoom_body.lock().unwrap().clone().unwrap();
    assert_eq!(zoom["topic"], "Yoga 1:1 with Bo");
    assert_eq!(zoom["start_time"], "2030-01-31T18:00:00Z");
    assert_eq!(zoom["duration"], 45);
    assert_eq!(zoom["type"], 2);
    let teams = providers.state.teams_body.lock().unwrap().clone().unwrap();
    assert_eq!(teams["startDateTime"], "2030-01-31T18:00:00Z");
    assert_eq!(teams["endDateTime"], "2030-01-31T18:45:00Z");
    assert_eq!(Providers::count(&providers.state.zoom_tokens), 1);

    // Jitsi: the room from the title, a JWT for the owner until an hour after the end.
    let (room_url, claims) = jitsi_claims(links[0]["url"].as_str().unwrap());
    let room = room_url
        .strip_prefix("https://meet.example.com/")
        .unwrap()
        .to_string();
    assert!(room.starts_with("yoga-1-1-with-bo-"), "{room}");
    assert_eq!(claims["room"], room.as_str());
    assert_eq!(claims["sub"], "meet.example.com");
    assert_eq!(claims["context"]["user"]["id"], "ines");
    // 2030-01-31T18:45:00Z + 1 h
    assert_eq!(claims["exp"], 1_896_115_500 + 3600);

    // The owner and the invitee read it (each with their own Jitsi token); others may not.
    let r = app
        .get(&format!("/v1/meetings/{id}"), Some(&instructor("ines")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["links"][0]["platform"], "jitsi");
    assert_eq!(r.body["links"][1]["url"], ZOOM_JOIN);
    let r = app
        .get(&format!("/v1/meetings/{id}"), Some(&user("bo")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (bo_room, bo) = jitsi_claims(r.body["links"][0]["url"].as_str().unwrap());
    assert_eq!(bo_room, room_url);
    assert_eq!(bo["context"]["user"]["id"], "bo");
    assert_eq!(bo["room"], room.as_str());
    let r = app
        .get(&format!("/v1/meetings/{id}"), Some(&user("eve")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .get(&format!("/v1/meetings/{id}"), Some(&instructor("omar")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.get("/v1/meetings/mt_nope", Some(&user("bo"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.get(&format!("/v1/meetings/{id}"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

async fn a_failing_platform_fails_only_its_link(backend: Backend) {
    let providers = Providers::spawn().await;
    // Jitsi not configured; Zoom answers 500.
    let app = app_with(backend, &providers, false).await;
    providers.state.zoom_fails.store(true, Ordering::SeqCst);
    let r = app
        .post(
            "/v1/meetings",
            Some(&instructor("ines")),
            json!({
                "title": "Group class",
                "start": "2030-02-01T09:00:00+01:00",
                "platforms": ["zoom", "teams", "jitsi"],
                "primary": "zoom",
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["duration_minutes"], 60);
    let links = r.body["links"].as_array().unwrap();
    assert_eq!(links[0]["platform"], "zoom");
    assert_eq!(links[0]["primary"], true);
    assert!(links[0]["url"].is_null());
    let zoom_error = links[0]["error"].as_str().unwrap();
    assert!(
        zoom_error.contains("zoom") && zoom_error.contains("500"),
        "{zoom_error}"
    );
    assert!(!zoom_error.contains(CLIENT_SECRET) && !zoom_error.contains("zoom-token"));
    assert_eq!(links[1]["url"], TEAMS_JOIN);
    assert!(links[2]["url"].is_null());
    assert!(
        links[2]["error"]
            .as_str()
            .unwrap()
            .contains("[platforms.jitsi]"),
        "{}",
        r.text
    );
    // Stored as answered.
    let id = r.body["id"].as_str().unwrap();
    let r = app
        .get(&format!("/v1/meetings/{id}"), Some(&instructor("ines")))
        .await;
    assert!(r.body["links"][0]["url"].is_null());
    assert_eq!(r.body["links"][1]["url"], TEAMS_JOIN);
    assert_eq!(r.body["start"], "2030-02-01T08:00:00Z");
    app.shutdown().await;
}

async fn bad_meeting_input_stores_nothing(backend: Backend) {
    let providers = Providers::spawn().await;
    let app = app_with(backend, &providers, true).await;
    let ok = json!({"title": "T", "start": "2030-01-31T18:00:00Z", "platforms": ["jitsi"], "primary": "jitsi"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("platforms", json!([])), "platforms"),
        (with("platforms", json!(["skype"])), "platforms"),
        (with("platforms", json!(["jitsi", "jitsi"])), "platforms"),
        (with("primary", json!("zoom")), "primary"),
        (with("start", json!("tomorrow")), "start"),
        (with("title", json!("  ")), "title"),
        (with("duration_minutes", json!(0)), "duration_minutes"),
        (with("invitees", json!([""])), "invitees"),
        (
            json!({"title": "T", "start": "2030-01-31T18:00:00Z", "primary": "jitsi"}),
            "platforms",
        ),
    ];
    for (body, field) in cases {
        let r = app
            .post("/v1/meetings", Some(&instructor("ines")), body.clone())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.text);
    }
    let r = app
        .post("/v1/meetings", Some(&user("bo")), ok.clone())
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(meetings(&app).await, 0);
    assert_eq!(Providers::count(&providers.state.zoom_meetings), 0);
    let r = app
        .post("/v1/meetings", Some(&instructor("ines")), ok)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(meetings(&app).await, 1);
    app.shutdown().await;
}

both_backends!(
    links_on_every_platform_and_who_may_read,
    a_failing_platform_fails_only_its_link,
    bad_meeting_input_stores_nothing,
);
