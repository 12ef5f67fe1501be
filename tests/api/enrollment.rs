//! Enrollment: every status of API.md's table, access flags, viewer tokens, refunds
//! on cancel, WHEP refusing a token whose enrollment was refunded, re-enrolling.

use crate::both_backends;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;

async fn enrollment_statuses(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let paid = app.create_stream("ines", 40).await;
    let free = app.create_stream("ines", 0).await;
    let enroll = |s: &str| format!("/v1/streams/{s}/enrollments");
    let ulla = user("ulla");

    let r = app.post(&enroll(&paid), None, json!({})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app
        .post(
            &enroll(&paid),
            Some(&identity_token("ulla", "user", -1)),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "expired token");
    let r = app.post(&enroll("st_nope"), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // 402 with balance and price, nothing written.
    app.credit("ulla", 30).await;
    let r = app.post(&enroll(&paid), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(r.body["error"]["code"], "insufficient_tokens");
    assert_eq!(r.body["error"]["balance"], 30);
    assert_eq!(r.body["error"]["price"], 40);
    assert_eq!(app.balance_of("ulla").await, 30);

    // 201 with the new balance and the transaction.
    app.credit("ulla", 15).await;
    let r = app.post(&enroll(&paid), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["balance"], 5);
    let tx_id = r.body["transaction_id"].as_i64().unwrap();
    assert_eq!(r.body["enrollment"]["price_paid"], 40);
    assert_eq!(r.body["enrollment"]["status"], "active");
    let r2 = app.get("/v1/me/transactions", Some(&ulla)).await;
    let newest = &r2.body["transactions"][0];
    assert_eq!(newest["id"], tx_id);
    assert_eq!(newest["amount"], -40);
    assert_eq!(newest["kind"], "enrollment");
    assert_eq!(newest["reference"], format!("stream:{paid}"));
    assert_eq!(newest["balance_after"], 5);

    let r = app.post(&enroll(&paid), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "already_enrolled");
    assert_eq!(app.balance_of("ulla").await, 5);

    // Free streams need no balance and write no transaction.
    let r = app
        .post(&enroll(&free), Some(&user("nobody")), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.body["transaction_id"].is_null());
    assert_eq!(r.body["balance"], 0);

    // Closed: cancelled, or ended without replay.
    let cancelled = app.create_stream("ines", 1).await;
    app.post(
        &format!("/v1/streams/{cancelled}/cancel"),
        Some(&ines),
        json!({}),
    )
    .await;
    let r = app.post(&enroll(&cancelled), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "stream_closed");
    let no_replay = app
        .post(
            "/v1/streams",
            Some(&ines),
            json!({"title": "x", "scheduled_start": "2030-01-01T00:00:00Z", "price_tokens": 1, "replay_days": 0}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.post(
        &format!("/v1/streams/{no_replay}/start"),
        Some(&ines),
        json!({}),
    )
    .await;
    app.post(
        &format!("/v1/streams/{no_replay}/end"),
        Some(&ines),
        json!({}),
    )
    .await;
    let r = app.post(&enroll(&no_replay), Some(&ulla), json!({})).await;
    assert_eq!(r.code(), "stream_closed");
    // Ended with a replay window: still open for enrollment.
    let replay = app.create_stream("ines", 1).await;
    app.post(
        &format!("/v1/streams/{replay}/start"),
        Some(&ines),
        json!({}),
    )
    .await;
    app.post(&format!("/v1/streams/{replay}/end"), Some(&ines), json!({}))
        .await;
    let r = app.post(&enroll(&replay), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(app.ledger_sum("ulla").await, app.balance_of("ulla").await);
    app.shutdown().await;
}

async fn my_enrollments_and_viewer_tokens(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let live = app.create_stream("ines", 2).await;
    let ended = app.create_stream("ines", 2).await;
    app.credit("ulla", 10).await;
    let ulla = user("ulla");
    for s in [&live, &ended] {
        let r = app
            .post(
                &format!("/v1/streams/{s}/enrollments"),
                Some(&ulla),
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    app.post(&format!("/v1/streams/{live}/start"), Some(&ines), json!({}))
        .await;
    app.post(
        &format!("/v1/streams/{ended}/start"),
        Some(&ines),
        json!({}),
    )
    .await;
    app.post(&format!("/v1/streams/{ended}/end"), Some(&ines), json!({}))
        .await;

    let r = app.get("/v1/me/enrollments", Some(&ulla)).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.body["enrollments"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let find = |id: &str| list.iter().find(|e| e["stream_id"] == id).unwrap().clone();
    let l = find(&live);
    assert_eq!(
        (
            l["can_watch_live"].as_bool(),
            l["can_watch_replay"].as_bool()
        ),
        (Some(true), Some(false))
    );
    assert!(l["replay_access_expires_at"].is_null());
    let e = find(&ended);
    assert_eq!(
        (
            e["can_watch_live"].as_bool(),
            e["can_watch_replay"].as_bool()
        ),
        (Some(false), Some(true))
    );
    assert!(e["replay_access_expires_at"].is_string());
    assert_eq!(e["stream"]["status"], "ended");

    // Viewer tokens.
    let vt = |s: &str| format!("/v1/streams/{s}/viewer-token");
    let r = app.post(&vt(&live), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let claims = app
        .state()
        .tokens
        .verify(r.body["token"].as_str().unwrap())
        .unwrap();
    assert!(claims.grants.subscribe && !claims.grants.publish);
    assert!(claims.allows_stream(&live));
    assert!(
        r.body["whep_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/whep/{live}"))
    );
    let r = app
        .post(&vt(&live), Some(&user("stranger")), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "not_enrolled");
    let r = app.post(&vt(&live), None, json!({})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app.post(&vt("st_nope"), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.post(&vt(&ended), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "replay window open");
    // Close the replay window (as the expiry job would once it passed).
    sqlx::query("UPDATE streams SET replay_expires_at = 1 WHERE id = $1")
        .bind(&ended)
        .execute(app.pool())
        .await
        .unwrap();
    let r = app.post(&vt(&ended), Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "replay_expired");
    let r = app.get("/v1/me/enrollments", Some(&ulla)).await;
    let e = r.body["enrollments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stream_id"] == ended.as_str())
        .unwrap()
        .clone();
    assert_eq!(e["can_watch_replay"], false);
    // The owner gets a viewer token without enrolling.
    let r = app.post(&vt(&live), Some(&ines), json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    app.shutdown().await;
}

async fn cancel_refunds_every_paid_enrollment(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let s = app.create_stream("ines", 9).await;
    for u in ["a", "b", "c"] {
        app.credit(u, 10).await;
        let r = app
            .post(
                &format!("/v1/streams/{s}/enrollments"),
                Some(&user(u)),
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(app.balance_of(u).await, 1);
    }
    let key = [("idempotency-key", "cancel-1")];
    let path = format!("/v1/streams/{s}/cancel");
    let r = app
        .send(reqwest::Method::POST, &path, Some(&ines), Some("{}"), &key)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["refunded_enrollments"], 3);
    let again = app
        .send(reqwest::Method::POST, &path, Some(&ines), Some("{}"), &key)
        .await;
    assert_eq!(again.text, r.text, "idempotent retry");
    let r = app.post(&path, Some(&ines), json!({})).await;
    assert_eq!(
        r.code(),
        "invalid_transition",
        "a second cancel without the key"
    );
    for u in ["a", "b", "c"] {
        assert_eq!(app.balance_of(u).await, 10, "refunded");
        assert_eq!(app.ledger_sum(u).await, 10);
        let r = app.get("/v1/me/transactions", Some(&user(u))).await;
        assert_eq!(r.body["transactions"][0]["kind"], "refund");
        assert_eq!(r.body["transactions"][0]["amount"], 9);
        let r = app.get("/v1/me/enrollments", Some(&user(u))).await;
        assert_eq!(r.body["enrollments"][0]["status"], "refunded");
        assert_eq!(r.body["enrollments"][0]["can_watch_live"], false);
    }
    let r = app.get("/v1/instructor/streams", Some(&ines)).await;
    assert_eq!(r.body["streams"][0]["stats"]["revenue_tokens"], 0);
    app.shutdown().await;
}

/// A viewer token minted before a refund no longer opens a WHEP session.
async fn whep_refuses_refunded_enrollment(backend: Backend) {
    let app = spawn_api(backend).await;
    let s = app.create_stream("ines", 5).await;
    app.post(
        &format!("/v1/streams/{s}/start"),
        Some(&instructor("ines")),
        json!({}),
    )
    .await;
    app.credit("ulla", 5).await;
    let r = app
        .post(
            &format!("/v1/streams/{s}/enrollments"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    let enrollment = r.body["enrollment"]["id"].as_str().unwrap().to_string();
    let r = app
        .post(
            &format!("/v1/streams/{s}/viewer-token"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    let token = r.body["token"].as_str().unwrap().to_string();
    let whep = |token: String| {
        let req = app
            .http
            .post(format!("{}/v1/whep/{s}", app.base))
            .bearer_auth(token)
            .header("content-type", "application/sdp")
            .body("v=0\r\n");
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            (status, r.text().await.unwrap())
        }
    };
    // Before the refund the access check passes (the SFU then judges the offer).
    let (status, _) = whep(token.clone()).await;
    assert_ne!(status, StatusCode::FORBIDDEN);

    let r = app
        .post(
            &format!("/v1/admin/enrollments/{enrollment}/refund"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "refunds need the service key"
    );
    let r = app
        .post(
            &format!("/v1/admin/enrollments/{enrollment}/refund"),
            Some(SERVICE_KEY),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "refunded");
    assert_eq!(app.balance_of("ulla").await, 5);
    let r = app
        .post(
            &format!("/v1/admin/enrollments/{enrollment}/refund"),
            Some(SERVICE_KEY),
            json!({}),
        )
        .await;
    assert_eq!(r.code(), "already_refunded");

    let (status, body) = whep(token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("not_enrolled"), "{body}");
    let r = app
        .post(
            &format!("/v1/streams/{s}/viewer-token"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A publish token of another instructor's stream cannot publish this one.
    let other = app.create_stream("otto", 0).await;
    let r = app
        .post(
            &format!("/v1/streams/{other}/publish-token"),
            Some(&instructor("otto")),
            json!({}),
        )
        .await;
    let otto_token = r.body["token"].as_str().unwrap().to_string();
    let r = app
        .http
        .post(format!("{}/v1/whip/{s}", app.base))
        .bearer_auth(otto_token)
        .header("content-type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    app.shutdown().await;
}

/// A refunded enrollment does not block enrolling again (and paying again); the
/// refunded one stays in the history, and there is still only one active enrollment.
async fn reenroll_after_refund(backend: Backend) {
    let app = spawn_api(backend).await;
    let s = app.create_stream("ines", 5).await;
    let enroll = format!("/v1/streams/{s}/enrollments");
    let ulla = user("ulla");
    app.credit("ulla", 12).await;
    let first = app.post(&enroll, Some(&ulla), json!({})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let first_id = first.body["enrollment"]["id"].as_str().unwrap().to_string();
    let refund = |id: String| {
        let app = &app;
        async move {
            app.post(
                &format!("/v1/admin/enrollments/{id}/refund"),
                Some(SERVICE_KEY),
                json!({}),
            )
            .await
        }
    };
    assert_eq!(refund(first_id.clone()).await.status, StatusCode::OK);
    assert_eq!(app.balance_of("ulla").await, 12);

    let again = app.post(&enroll, Some(&ulla), json!({})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body["balance"], 7, "paid again");
    let second_id = again.body["enrollment"]["id"].as_str().unwrap().to_string();
    assert_ne!(
        second_id, first_id,
        "a new enrollment, the refunded one stays"
    );
    let r = app.post(&enroll, Some(&ulla), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "already_enrolled");

    let mine = app.get("/v1/me/enrollments", Some(&ulla)).await;
    let list = mine.body["enrollments"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", mine.text);
    let active: Vec<_> = list.iter().filter(|e| e["status"] == "active").collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["id"], second_id.as_str());
    assert_eq!(active[0]["can_watch_live"], true);
    let r = app
        .post(
            &format!("/v1/streams/{s}/viewer-token"),
            Some(&ulla),
            json!({}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the active enrollment counts: {}",
        r.text
    );

    // Refund and enroll once more, this time with a key: a retry replays, no third charge.
    assert_eq!(refund(second_id).await.status, StatusCode::OK);
    let key = [("idempotency-key", "re-3")];
    let third = app
        .send(
            reqwest::Method::POST,
            &enroll,
            Some(&ulla),
            Some("{}"),
            &key,
        )
        .await;
    assert_eq!(third.status, StatusCode::CREATED, "{}", third.text);
    let replay = app
        .send(
            reqwest::Method::POST,
            &enroll,
            Some(&ulla),
            Some("{}"),
            &key,
        )
        .await;
    assert_eq!(replay.text, third.text);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(app.balance_of("ulla").await, 7);
    assert_eq!(app.ledger_sum("ulla").await, 7);
    let r = app
        .get("/v1/instructor/streams", Some(&instructor("ines")))
        .await;
    assert_eq!(r.body["streams"][0]["stats"]["enrollments"], 1);
    assert_eq!(r.body["streams"][0]["stats"]["revenue_tokens"], 5);
    app.shutdown().await;
}

/// Enrollments racing a cancel: none stays paid on the cancelled stream.
async fn cancel_racing_enrollments(backend: Backend) {
    let app = std::sync::Arc::new(spawn_api(backend).await);
    let s = app.create_stream("ines", 4).await;
    for i in 0..200 {
        app.credit(&format!("r{i}"), 4).await;
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(201));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (app, barrier, s) = (app.clone(), barrier.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let token = user(&format!("r{i}"));
            barrier.wait().await;
            app.post(
                &format!("/v1/streams/{s}/enrollments"),
                Some(&token),
                json!({}),
            )
            .await
            .status
        }));
    }
    let cancel = {
        let (app, barrier, s) = (app.clone(), barrier.clone(), s.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            app.post(
                &format!("/v1/streams/{s}/cancel"),
                Some(&instructor("ines")),
                json!({}),
            )
            .await
        })
    };
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let c = cancel.await.unwrap();
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let (active,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM enrollments WHERE stream_id = $1 AND status = 'active'",
    )
    .bind(&s)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(active, 0, "every paid enrollment was refunded");
    for i in 0..200 {
        let u = format!("r{i}");
        assert_eq!(app.balance_of(&u).await, 4, "{u} has all tokens back");
        assert_eq!(app.ledger_sum(&u).await, 4);
    }
    std::sync::Arc::try_unwrap(app)
        .ok()
        .unwrap()
        .shutdown()
        .await;
}

both_backends!(
    enrollment_statuses,
    my_enrollments_and_viewer_tokens,
    cancel_refunds_every_paid_enrollment,
    whep_refuses_refunded_enrollment,
    cancel_racing_enrollments,
    reenroll_after_refund,
);
