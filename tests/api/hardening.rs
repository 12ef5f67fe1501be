//! Issue 11 hardening tests: the business API and tokens (items 4, 5, 7, 10, 12, 13, 14a).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem::auth::{Grants, IdentityVerifier, MediaTokens, TokenRequest};

use crate::both_backends;
use crate::support::*;

fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn ws_url(app: &TestApp, room: &str, token: &str) -> String {
    format!(
        "{}/v1/rooms/{room}/ws?token={token}",
        app.base.replacen("http://", "ws://", 1)
    )
}

/// A room token minted directly with the server's key (as a client holding an old
/// token, or one minted before a refund, would present it).
fn room_token(app: &TestApp, room: &str, who: &str) -> String {
    app.state()
        .tokens
        .mint(&TokenRequest {
            user: who.into(),
            room: Some(room.into()),
            grants: Grants {
                chat: true,
                ..Default::default()
            },
            role: Some("user".into()),
            ttl_secs: 3600,
            ..Default::default()
        })
        .0
}

async fn enroll(app: &TestApp, stream: &str, who: &str) {
    let r = app
        .post(
            &format!("/v1/streams/{stream}/enrollments"),
            Some(&user(who)),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

// Item 4: a paid stream's room (named after the stream id) admits only its active
// enrollees, its owner and admins — at mint time and again at connect time — and a
// refund disconnects the refunded member. Before: anyone minted a token for the room
// (200), connected and stayed after the refund.
async fn stream_room_admits_only_enrollees(backend: Backend) {
    let app = spawn_api(backend).await;
    let paid = app.create_stream("ines", 5).await;
    let mint = |room: &str| format!("/v1/rooms/{room}/token");

    // A non-enrolled user cannot mint a token for the stream's room…
    let r = app
        .post(&mint(&paid), Some(&user("mallory")), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "not_enrolled");
    // …nor connect with a room token minted otherwise (checked at join).
    let forged = room_token(&app, &paid, "mallory");
    assert!(
        Client::open(&ws_url(&app, &paid, &forged), 0.0)
            .await
            .is_err(),
        "a non-enrolled user's WebSocket must be refused"
    );
    // Another instructor is not a moderator of someone else's stream room.
    let r = app
        .post(&mint(&paid), Some(&instructor("otto")), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    // The owner gets in with the moderate grant.
    let r = app
        .post(&mint(&paid), Some(&instructor("ines")), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let claims = app
        .state()
        .tokens
        .verify(r.body["token"].as_str().unwrap())
        .unwrap();
    assert!(claims.grants.moderate);
    let mut owner = Client::connect(
        &ws_url(&app, &paid, r.body["token"].as_str().unwrap()),
        0.0,
        None,
    )
    .await;

    // An enrolled viewer joins with the viewer token (it names the room too).
    app.credit("ulla", 5).await;
    enroll(&app, &paid, "ulla").await;
    let r = app
        .post(
            &format!("/v1/streams/{paid}/viewer-token"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let viewer_token = r.body["token"].as_str().unwrap().to_string();
    let mut ulla = Client::connect(&ws_url(&app, &paid, &viewer_token), 0.0, None).await;
    owner.wait_type("presence.join").await;

    // A refund disconnects her with a clear error, and her token no longer joins.
    let (eid,): (String,) =
        sqlx::query_as("SELECT id FROM enrollments WHERE user_id = 'ulla' AND stream_id = $1")
            .bind(&paid)
            .fetch_one(app.pool())
            .await
            .unwrap();
    let r = app
        .post(
            &format!("/v1/admin/enrollments/{eid}/refund"),
            Some(SERVICE_KEY),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let err = ulla.wait_type("error").await;
    assert_eq!(err["code"], "not_enrolled", "{err}");
    assert_eq!(ulla.closed().await, Some(4004));
    assert!(
        Client::open(&ws_url(&app, &paid, &viewer_token), 0.0)
            .await
            .is_err(),
        "a refunded viewer's token must not join again"
    );

    // Free streams: enrollment is the gate too (as for viewer-token).
    let free = app.create_stream("ines", 0).await;
    let r = app.post(&mint(&free), Some(&user("vic")), json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    enroll(&app, &free, "vic").await;
    let r = app.post(&mint(&free), Some(&user("vic")), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let _vic = Client::connect(
        &ws_url(&app, &free, r.body["token"].as_str().unwrap()),
        0.0,
        None,
    )
    .await;

    // Rooms that are not streams stay open to any room token.
    let r = app
        .post(&mint("party-1"), Some(&user("mallory")), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    drop((owner, ulla));
    app.shutdown().await;
}

// Item 4 (cancel): cancelling a paid stream refunds every enrollee and disconnects
// them from its room.
async fn cancel_disconnects_refunded_members(backend: Backend) {
    let app = spawn_api(backend).await;
    let paid = app.create_stream("ines", 3).await;
    app.credit("ulla", 3).await;
    enroll(&app, &paid, "ulla").await;
    let mut ulla = Client::connect(
        &ws_url(&app, &paid, &room_token(&app, &paid, "ulla")),
        0.0,
        None,
    )
    .await;
    let r = app
        .post(
            &format!("/v1/streams/{paid}/cancel"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(ulla.wait_type("error").await["code"], "not_enrolled");
    assert_eq!(ulla.closed().await, Some(4004));
    app.shutdown().await;
}

/// method, path, bearer, JSON body, the field the 400 must name.
type Case<'a> = (Method, String, Option<&'a str>, Option<Value>, &'a str);

// Item 5: NUL (and control characters) in any string that reaches SQL answer 400
// naming the field, on both backends. Before: 500 on PostgreSQL (with an ERROR line
// each), 404/201 on SQLite.
async fn control_characters_answer_400_naming_the_field(backend: Backend) {
    let app = spawn_api(backend).await;
    let stream = app.create_stream("ines", 0).await;
    let ines = instructor("ines");
    let ulla = user("ulla");
    let bad_cursor = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1:a\0b")
    };
    let cases: Vec<Case> = vec![
        (Method::GET, "/v1/streams?q=a%00b".into(), None, None, "q"),
        (
            Method::GET,
            "/v1/streams?status=live%00".into(),
            None,
            None,
            "status",
        ),
        (
            Method::GET,
            format!("/v1/streams?cursor={bad_cursor}"),
            None,
            None,
            "cursor",
        ),
        (Method::GET, "/v1/streams/a%00b".into(), None, None, "id"),
        (
            Method::GET,
            "/v1/streams/a%00b/calendar.ics".into(),
            None,
            None,
            "id",
        ),
        (
            Method::PATCH,
            "/v1/streams/a%00b".into(),
            Some(&ines),
            Some(json!({})),
            "id",
        ),
        (
            Method::DELETE,
            "/v1/streams/a%01b".into(),
            Some(&ines),
            None,
            "id",
        ),
        (
            Method::POST,
            "/v1/streams/a%00b/start".into(),
            Some(&ines),
            Some(json!({})),
            "id",
        ),
        (
            Method::POST,
            "/v1/streams/a%00b/cancel".into(),
            Some(&ines),
            Some(json!({})),
            "id",
        ),
        (
            Method::POST,
            "/v1/streams/a%00b/publish-token".into(),
            Some(&ines),
            Some(json!({})),
            "id",
        ),
        (
            Method::POST,
            "/v1/streams/a%00b/enrollments".into(),
            Some(&ulla),
            Some(json!({})),
            "id",
        ),
        (
            Method::POST,
            "/v1/streams/a%00b/viewer-token".into(),
            Some(&ulla),
            Some(json!({})),
            "id",
        ),
        (
            Method::POST,
            "/v1/admin/enrollments/a%00b/refund".into(),
            Some(SERVICE_KEY),
            Some(json!({})),
            "id",
        ),
        (
            Method::POST,
            "/v1/admin/accounts/a%00b/credits".into(),
            Some(SERVICE_KEY),
            Some(json!({"amount": 1})),
            "user",
        ),
        (
            Method::POST,
            "/v1/admin/accounts/bob/credits".into(),
            Some(SERVICE_KEY),
            Some(json!({"amount": 1, "reason": "x\u{0}"})),
            "reason",
        ),
        (
            Method::GET,
            "/v1/instructor/streams?q=%00".into(),
            Some(&ines),
            None,
            "q",
        ),
        (
            Method::GET,
            "/v1/me/transactions?before=1&x%00=1".into(),
            Some(&ulla),
            None,
            "x\\0",
        ),
        (
            Method::POST,
            "/v1/streams".into(),
            Some(&ines),
            Some(
                json!({"title": "a\u{0}b", "scheduled_start": "2030-01-31T18:00:00Z", "price_tokens": 0}),
            ),
            "title",
        ),
        (
            Method::POST,
            "/v1/streams".into(),
            Some(&ines),
            Some(
                json!({"title": "t", "description": "d\u{0}", "scheduled_start": "2030-01-31T18:00:00Z", "price_tokens": 0}),
            ),
            "description",
        ),
        (
            Method::PATCH,
            format!("/v1/streams/{stream}"),
            Some(&ines),
            Some(json!({"title": "tab\tin title"})),
            "title",
        ),
        (
            Method::POST,
            "/v1/rooms/r1/token".into(),
            Some(&ulla),
            Some(json!({"name": "n\u{0}"})),
            "name",
        ),
        (
            Method::GET,
            "/v1/rooms/r1/ws?token=a%00b".into(),
            None,
            None,
            "token",
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, bearer, body, field) in &cases {
        let body = body.as_ref().map(Value::to_string);
        let r = app
            .send(method.clone(), path, *bearer, body.as_deref(), &[])
            .await;
        if r.status != StatusCode::BAD_REQUEST || r.body["error"]["field"] != *field {
            failures.push(format!("{method} {path}: {} {}", r.status, r.text));
        }
    }
    assert!(
        failures.is_empty(),
        "not a 400 naming the field:\n{}",
        failures.join("\n")
    );
    // Nothing was written by the refused creates.
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM streams")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);

    // An identity token whose sub holds a NUL is refused (401), never a 500.
    let nul_sub = sign(
        &json!({"sub": "a\u{0}b", "exp": now_secs() + 60}),
        JWT_SECRET.as_bytes(),
    );
    let r = app.get("/v1/me/balance", Some(&nul_sub)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);

    // Chat over the WebSocket: text and client_msg_id with NUL → error bad_request.
    let token = room_token(&app, "r1", "ulla");
    let mut c = Client::connect(&ws_url(&app, "r1", &token), 0.0, None).await;
    for msg in [
        json!({"type": "chat.send", "text": "a\u{0}b", "client_msg_id": "c1"}),
        json!({"type": "chat.send", "text": "ok", "client_msg_id": "c\u{0}"}),
    ] {
        c.send(msg).await;
        let err = c.wait_type("error").await;
        assert_eq!(err["code"], "bad_request", "{err}");
    }
    // A clean message still goes through afterwards.
    c.send(json!({"type": "chat.send", "text": "two\nlines", "client_msg_id": "c2"}))
        .await;
    let m = c.wait_type("chat.message").await;
    assert_eq!(m["text"], "two\nlines");
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chat_messages")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 1, "only the clean message is stored");
    app.shutdown().await;
}

// Item 7: a media token issued in the future (iat 10 years ahead, exp = iat + 1 h)
// passed the 24 h lifetime cap. Now iat must be ≤ now + 60 s.
#[test]
fn media_token_issued_in_the_future_is_refused() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let tokens = MediaTokens::new(secret);
    let claims = |iat: u64| {
        json!({
            "sub": "u1", "room": "r1", "grants": {"chat": true}, "aud": "tandem-media",
            "iat": iat, "exp": iat + 3600, "jti": "j1"
        })
    };
    let now = now_secs();
    let future = sign(&claims(now + 10 * 365 * 86_400), secret);
    assert!(tokens.verify(&future).is_err(), "iat ten years ahead");
    let skewed = sign(&claims(now + 30), secret);
    assert!(
        tokens.verify(&skewed).is_ok(),
        "30 s of clock skew is within the leeway"
    );
    let fine = sign(&claims(now), secret);
    assert!(tokens.verify(&fine).is_ok());
}

// Item 10: identity tokens with `nbf` in the future, or an empty, blank or
// control-character `sub`, were accepted. Now 401.
#[test]
fn identity_tokens_check_nbf_and_sub() {
    let v = IdentityVerifier::new(JWT_SECRET);
    let exp = now_secs() + 600;
    let tok = |claims: Value| sign(&claims, JWT_SECRET.as_bytes());
    assert!(v.verify(&tok(json!({"sub": "u1", "exp": exp}))).is_ok());
    assert!(
        v.verify(&tok(
            json!({"sub": "u1", "exp": exp, "nbf": now_secs() + 300})
        ))
        .is_err(),
        "nbf in the future"
    );
    assert!(
        v.verify(&tok(
            json!({"sub": "u1", "exp": exp, "nbf": now_secs() - 5})
        ))
        .is_ok()
    );
    for sub in ["", "   ", "a\u{0}b", "a\nb"] {
        let err = v.verify(&tok(json!({"sub": sub, "exp": exp}))).unwrap_err();
        assert_eq!(err.status.as_u16(), 401, "sub {sub:?}");
    }
}

// Item 12: deleting a cancelled stream whose paid enrollments were refunded
// cascaded the enrollment rows away (the ledger rows then pointed at nothing).
// Now 409 has_enrollment_history, and the schema restricts such deletes.
async fn refunded_enrollments_survive_stream_delete(backend: Backend) {
    let app = spawn_api(backend).await;
    let paid = app.create_stream("ines", 4).await;
    app.credit("ulla", 4).await;
    enroll(&app, &paid, "ulla").await;
    let r = app
        .post(
            &format!("/v1/streams/{paid}/cancel"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .send(
            Method::DELETE,
            &format!("/v1/streams/{paid}"),
            Some(&instructor("ines")),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "has_enrollment_history");
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM enrollments WHERE stream_id = $1")
        .bind(&paid)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 1, "the refunded enrollment is kept");
    let (rows,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM token_transactions WHERE reference = $1")
            .bind(format!("stream:{paid}"))
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(rows, 2, "the enrollment and refund ledger rows are kept");
    // The schema backs it up: a direct delete is refused by the foreign key.
    assert!(
        sqlx::query("DELETE FROM streams WHERE id = $1")
            .bind(&paid)
            .execute(app.pool())
            .await
            .is_err(),
        "ON DELETE RESTRICT"
    );
    let r = app.get(&format!("/v1/streams/{paid}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    app.shutdown().await;
}

async fn insert_open_session(app: &TestApp, id: &str) {
    sqlx::query(
        "INSERT INTO media_sessions (id, stream, kind, user_id, started_at) \
         VALUES ($1, 'cam', 'viewer', 'u1', 1)",
    )
    .bind(id)
    .execute(app.pool())
    .await
    .unwrap();
}

async fn ended_at(app: &TestApp, id: &str) -> Option<i64> {
    let (t,): (Option<i64>,) = sqlx::query_as("SELECT ended_at FROM media_sessions WHERE id = $1")
        .bind(id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    t
}

// Item 13: session records left open (process died, or the end was not written
// while the database was away) stayed open forever. Now a start ends them.
async fn open_session_records_are_ended_on_start(backend: Backend) {
    let app = spawn_api(backend).await;
    insert_open_session(&app, "s-left-open").await;
    assert_eq!(ended_at(&app, "s-left-open").await, None);
    // A second start on the same database (as after a crash and restart).
    let mut config = (*app.state().config).clone();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.media_port = 0;
    let again = tandem::start(config).await.unwrap();
    again.shutdown().await;
    assert!(ended_at(&app, "s-left-open").await.is_some());
    app.shutdown().await;
}

// Item 13: an end that fails while the database is away is kept and written when
// it answers again. The outage is simulated by making the table unreachable (the
// write fails as it would on a refused connection), then restoring it.
async fn session_ends_kept_while_the_database_is_away(backend: Backend) {
    let app = spawn_api(backend).await;
    let db = app.state().db.clone();
    insert_open_session(&app, "s1").await;
    sqlx::query("ALTER TABLE media_sessions RENAME TO media_sessions_away")
        .execute(app.pool())
        .await
        .unwrap();
    let mut ends = tandem::storage::SessionEnds::default();
    assert!(ends.end(&db, "s1".into(), 42).await.is_err());
    assert_eq!(ends.pending(), 1);
    assert_eq!(ends.retry(&db).await, 0, "still away");
    sqlx::query("ALTER TABLE media_sessions_away RENAME TO media_sessions")
        .execute(app.pool())
        .await
        .unwrap();
    assert_eq!(ends.retry(&db).await, 1);
    assert_eq!(ends.pending(), 0);
    assert_eq!(ended_at(&app, "s1").await, Some(42));
    app.shutdown().await;
}

// Item 14 (first half): a stream scheduled in year 9999 had an empty DTEND, and
// year 0 was accepted. Now scheduled_start is bounded to 2000..2100 (400 naming
// the field) and DTEND is always a valid date.
async fn scheduled_start_is_bounded_and_dtend_valid(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    for start in [
        "9999-12-31T23:00:00Z",
        "0000-01-01T00:00:00Z",
        "1999-12-31T23:59:59Z",
        "2100-01-01T00:00:00Z",
    ] {
        let r = app
            .post(
                "/v1/streams",
                Some(&ines),
                json!({"title": "t", "scheduled_start": start, "price_tokens": 0}),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{start}: {}", r.text);
        assert_eq!(r.body["error"]["field"], "scheduled_start");
    }
    let id = app.create_stream("ines", 0).await;
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/streams/{id}"),
            Some(&ines),
            Some(&json!({"scheduled_start": "9999-01-01T00:00:00Z"}).to_string()),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "scheduled_start");
    // A row stored before the bound (year 9999, a week long) still gets a DTEND.
    sqlx::query("UPDATE streams SET scheduled_start = $1, duration_minutes = 10080 WHERE id = $2")
        .bind(253_402_214_400_000_i64) // 9999-12-31T00:00:00Z
        .bind(&id)
        .execute(app.pool())
        .await
        .unwrap();
    let r = app
        .get(&format!("/v1/streams/{id}/calendar.ics"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let dtend = r
        .text
        .lines()
        .find_map(|l| l.strip_prefix("DTEND:"))
        .expect("a DTEND line");
    assert_eq!(dtend.len(), 16, "DTEND {dtend:?}");
    app.shutdown().await;
}

both_backends!(
    stream_room_admits_only_enrollees,
    cancel_disconnects_refunded_members,
    control_characters_answer_400_naming_the_field,
    refunded_enrollments_survive_stream_delete,
    open_session_records_are_ended_on_start,
    session_ends_kept_while_the_database_is_away,
    scheduled_start_is_bounded_and_dtend_valid,
);
