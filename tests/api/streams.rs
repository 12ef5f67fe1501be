//! Streams: validation, roles and ownership, the lifecycle, list/search/sort/cursor,
//! instructor stats, publish tokens, the calendar feed and the OpenAPI document.

use crate::both_backends;
use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn create_validate_and_roles(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let good =
        json!({"title": "Yoga", "scheduled_start": "2030-01-31T18:00:00Z", "price_tokens": 10});

    let r = app.post("/v1/streams", None, good.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app
        .post(
            "/v1/streams",
            Some(&identity_token("ines", "instructor", -5)),
            good.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "expired identity token");
    let r = app
        .post("/v1/streams", Some(&user("ulla")), good.clone())
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "plain users cannot create streams"
    );
    assert_eq!(r.code(), "forbidden");

    for (body, field) in [
        (
            json!({"title": "", "scheduled_start": "2030-01-31T18:00:00Z", "price_tokens": 1}),
            "title",
        ),
        (
            json!({"title": "x", "scheduled_start": "tomorrow", "price_tokens": 1}),
            "scheduled_start",
        ),
        (
            json!({"title": "x", "scheduled_start": "2030-01-31T18:00:00Z", "price_tokens": -1}),
            "price_tokens",
        ),
        (
            json!({"title": "x", "scheduled_start": "2030-01-31T18:00:00Z", "price_tokens": "1"}),
            "price_tokens",
        ),
        (
            json!({"title": "x", "scheduled_start": "2030-01-31T18:00:00Z"}),
            "price_tokens",
        ),
        (
            json!({"title": "x", "scheduled_start": "2030-01-31T18:00:00Z", "price_tokens": 1, "replay_days": -2}),
            "replay_days",
        ),
        (
            json!({"title": "x", "scheduled_start": "2030-01-31T18:00:00Z", "price_tokens": 1, "duration_minutes": 0}),
            "duration_minutes",
        ),
    ] {
        let r = app.post("/v1/streams", Some(&ines), body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.text);
    }
    let r = app
        .send(
            Method::POST,
            "/v1/streams",
            Some(&ines),
            Some("{not json"),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "body");
    assert!(
        !r.text.to_lowercase().contains("select"),
        "no SQL in errors"
    );

    let r = app.post("/v1/streams", Some(&ines), good).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let s = &r.body;
    assert_eq!(s["status"], "scheduled");
    assert_eq!(s["instructor"], "ines");
    assert_eq!(s["scheduled_start"], "2030-01-31T18:00:00Z");
    assert_eq!(s["replay_days"], 7);
    assert_eq!(s["price_tokens"], 10);
    assert_eq!(s["viewers"], 0);
    let id = s["id"].as_str().unwrap();
    assert!(
        s["whep_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/whep/{id}"))
    );

    let r = app.get(&format!("/v1/streams/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["title"], "Yoga");
    let r = app.get("/v1/streams/st_nope", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Also under the Discord Activity prefix.
    let r = app.get(&format!("/.proxy/v1/streams/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    app.shutdown().await;
}

async fn lifecycle_edit_delete_and_ownership(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let otto = instructor("otto");
    let id = app.create_stream("ines", 10).await;
    let p = |suffix: &str| format!("/v1/streams/{id}{suffix}");

    // Another instructor's stream: 403 on every owner route.
    for path in ["/start", "/end", "/cancel", "/publish-token"] {
        let r = app.post(&p(path), Some(&otto), json!({})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    let r = app
        .send(
            Method::PATCH,
            &p(""),
            Some(&otto),
            Some(r#"{"title":"mine"}"#),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .send(Method::DELETE, &p(""), Some(&otto), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app.post(&p("/start"), Some(&user("ines")), json!({})).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "user role, even with the owner's id"
    );
    let r = app
        .post("/v1/streams/st_nope/start", Some(&ines), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Edit while scheduled.
    let r = app
        .send(
            Method::PATCH,
            &p(""),
            Some(&ines),
            Some(r#"{"title":"Yoga II","price_tokens":12,"description":"bring a mat"}"#),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["title"], "Yoga II");
    assert_eq!(r.body["price_tokens"], 12);
    let r = app
        .send(
            Method::PATCH,
            &p(""),
            Some(&ines),
            Some(r#"{"titel":"typo"}"#),
            &[],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "unknown fields are named"
    );

    // Transitions.
    let r = app.post(&p("/end"), Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "invalid_transition");
    let r = app.post(&p("/start"), Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "live");
    assert!(r.body["started_at"].is_string());
    let r = app.post(&p("/start"), Some(&ines), json!({})).await;
    assert_eq!(r.code(), "invalid_transition");
    let r = app.post(&p("/cancel"), Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "live cannot be cancelled");
    let r = app
        .send(
            Method::PATCH,
            &p(""),
            Some(&ines),
            Some(r#"{"title":"late"}"#),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "not_editable");
    let r = app
        .send(Method::DELETE, &p(""), Some(&ines), None, &[])
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "live streams are not deleted"
    );
    let r = app.post(&p("/end"), Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ended");
    let ended = time_ms(r.body["ended_at"].as_str().unwrap());
    let replay = time_ms(r.body["replay_expires_at"].as_str().unwrap());
    let catalog = time_ms(r.body["catalog_migration_at"].as_str().unwrap());
    assert_eq!(replay - ended, 7 * 86_400_000);
    assert_eq!(catalog - ended, 60 * 86_400_000);
    let r = app.post(&p("/publish-token"), Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "stream_closed");

    // Delete: refused with paid enrollments, fine without.
    let paid = app.create_stream("ines", 5).await;
    app.credit("ulla", 5).await;
    let r = app
        .post(
            &format!("/v1/streams/{paid}/enrollments"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = app
        .send(
            Method::DELETE,
            &format!("/v1/streams/{paid}"),
            Some(&ines),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "has_paid_enrollments");
    let free = app.create_stream("ines", 0).await;
    let r = app
        .post(
            &format!("/v1/streams/{free}/enrollments"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = app
        .send(
            Method::DELETE,
            &format!("/v1/streams/{free}"),
            Some(&ines),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app.get(&format!("/v1/streams/{free}"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

fn time_ms(s: &str) -> i64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

async fn list_search_sort_and_stats(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let mut ids = Vec::new();
    for (i, title) in [
        "Morning Yoga",
        "Rust 101",
        "Evening yoga",
        "Cooking 50% off",
    ]
    .iter()
    .enumerate()
    {
        let r = app
            .post(
                "/v1/streams",
                Some(&ines),
                json!({"title": title, "scheduled_start": format!("2030-02-0{}T10:00:00Z", i + 1),
                       "price_tokens": 3}),
            )
            .await;
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let other = app.create_stream("otto", 1).await;
    app.post(
        &format!("/v1/streams/{}/cancel", ids[1]),
        Some(&ines),
        json!({}),
    )
    .await;

    let titles = |r: &Resp| -> Vec<String> {
        r.body["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["title"].as_str().unwrap().to_string())
            .collect()
    };
    let r = app.get("/v1/streams?q=YOGA", None).await;
    assert_eq!(titles(&r), ["Morning Yoga", "Evening yoga"]);
    let r = app.get("/v1/streams?q=yoga&sort=-start", None).await;
    assert_eq!(titles(&r), ["Evening yoga", "Morning Yoga"]);
    let r = app.get("/v1/streams?q=50%25", None).await;
    assert_eq!(titles(&r), ["Cooking 50% off"], "% is matched literally");
    let r = app.get("/v1/streams", None).await;
    assert!(
        !titles(&r).contains(&"Rust 101".to_string()),
        "cancelled hidden by default"
    );
    let r = app.get("/v1/streams?status=cancelled", None).await;
    assert_eq!(titles(&r), ["Rust 101"]);
    let r = app.get("/v1/streams?status=bogus", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "status");
    let r = app.get("/v1/streams?sort=title", None).await;
    assert_eq!(r.body["error"]["field"], "sort");
    let r = app.get("/v1/streams?limit=abc", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Cursor pages cover everything once.
    let mut seen = Vec::new();
    let mut url = "/v1/streams?limit=2".to_string();
    loop {
        let r = app.get(&url, None).await;
        seen.extend(titles(&r));
        match r.body["next_cursor"].as_str() {
            Some(c) => url = format!("/v1/streams?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "Class by otto",
            "Morning Yoga",
            "Evening yoga",
            "Cooking 50% off"
        ],
        "by start, each once"
    );

    // Instructor list: own streams only, with stats.
    app.credit("ulla", 10).await;
    app.credit("vic", 10).await;
    for u in ["ulla", "vic"] {
        let r = app
            .post(
                &format!("/v1/streams/{}/enrollments", ids[0]),
                Some(&user(u)),
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = app
        .get("/v1/instructor/streams?q=morning", Some(&ines))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let s = &r.body["streams"][0];
    assert_eq!(s["id"], ids[0].as_str());
    assert_eq!(s["stats"]["enrollments"], 2);
    assert_eq!(s["stats"]["revenue_tokens"], 6);
    assert_eq!(s["stats"]["current_viewers"], 0);
    assert_eq!(s["stats"]["peak_viewers"], 0);
    let r = app.get("/v1/instructor/streams", Some(&ines)).await;
    let all: Vec<_> = r.body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(all.len(), 4, "cancelled included for the owner");
    assert!(!all.contains(&json!(other)));
    let r = app.get("/v1/instructor/streams", Some(&user("ulla"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A persisted peak survives while nobody watches.
    sqlx::query("UPDATE streams SET peak_viewers = 9 WHERE id = $1")
        .bind(&ids[0])
        .execute(app.pool())
        .await
        .unwrap();
    let r = app
        .get("/v1/instructor/streams?q=morning", Some(&ines))
        .await;
    assert_eq!(r.body["streams"][0]["stats"]["peak_viewers"], 9);
    app.shutdown().await;
}

async fn publish_token_calendar_and_openapi(backend: Backend) {
    let app = spawn_api(backend).await;
    let id = app.create_stream("ines", 0).await;
    let r = app
        .post(
            &format!("/v1/streams/{id}/publish-token"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let token = r.body["token"].as_str().unwrap();
    assert!(
        r.body["whip_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/whip/{id}"))
    );
    let claims = app.state().tokens.verify(token).unwrap();
    assert!(claims.grants.publish && claims.allows_stream(&id));
    assert_eq!(claims.sub, "ines");
    assert!(claims.exp - claims.iat <= 6 * 3600);

    // The owner's WHIP session starts the stream (api.whip_starts_stream). The SDP
    // is not a real offer, so the SFU refuses it; a bad offer must not start it.
    let r = app
        .http
        .post(format!("{}/v1/whip/{id}", app.base))
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        app.get(&format!("/v1/streams/{id}"), None).await.body["status"],
        "scheduled"
    );

    // Calendar.
    let r = app
        .http
        .get(format!("{}/v1/streams/{id}/calendar.ics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/calendar")
    );
    let ics = r.text().await.unwrap();
    assert!(ics.starts_with("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n"));
    assert!(ics.contains(&format!("UID:{id}@tandem\r\n")));
    assert!(ics.contains("DTSTART:20300131T180000Z\r\n"));
    assert!(ics.contains("DTEND:20300131T190000Z\r\n"));
    assert!(ics.contains(&format!("/watch/{id}")));
    assert!(ics.trim_end().ends_with("END:VCALENDAR"));
    assert!(ics.split("\r\n").all(|l| l.len() <= 75));
    let r = app.get("/v1/streams/st_nope/calendar.ics", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // OpenAPI 3.1, generated from the handlers.
    let r = app.get("/openapi.json", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/me/balance",
        "/v1/me/transactions",
        "/v1/admin/accounts/{user}/credits",
        "/v1/streams",
        "/v1/streams/{id}",
        "/v1/streams/{id}/enrollments",
        "/v1/streams/{id}/viewer-token",
        "/v1/streams/{id}/publish-token",
        "/v1/streams/{id}/calendar.ics",
        "/v1/instructor/streams",
        "/v1/me/enrollments",
        "/v1/whip/{stream}",
        "/v1/whep/{stream}",
    ] {
        assert!(r.body["paths"][path].is_object(), "missing {path}");
    }
    assert!(
        r.body["paths"]["/v1/streams/{id}/enrollments"]["post"]["responses"]["402"].is_object()
    );
    assert!(r.body["components"]["schemas"]["StreamOut"].is_object());
    assert!(r.body["components"]["securitySchemes"]["service_key"].is_object());
    app.shutdown().await;
}

both_backends!(
    create_validate_and_roles,
    lifecycle_edit_delete_and_ownership,
    list_search_sort_and_stats,
    publish_token_calendar_and_openapi,
);
