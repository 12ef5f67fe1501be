//! Token ledger and paid enrollment under load: credits, balances, idempotent
//! retries, and 1,000 concurrent enrollments that must never overspend.

use std::sync::Arc;
use std::time::Instant;

use crate::both_backends;
use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn credits_balance_and_transactions(backend: Backend) {
    let app = spawn_api(backend).await;
    let alice = user("alice");

    // Who may credit: the service key only.
    let path = "/v1/admin/accounts/alice/credits";
    let r = app.post(path, None, json!({"amount": 5})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "unauthorized");
    let r = app
        .post(path, Some("wrong-key"), json!({"amount": 5}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app.post(path, Some(&alice), json!({"amount": 5})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!r.text.contains(SERVICE_KEY));

    // Validation names the field.
    let r = app
        .post(path, Some(SERVICE_KEY), json!({"amount": 0}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "amount");
    let r = app
        .post(path, Some(SERVICE_KEY), json!({"amount": "ten"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "amount", "{}", r.text);
    let r = app
        .post(path, Some(SERVICE_KEY), json!({"reason": "x"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "amount", "{}", r.text);
    let r = app
        .send(
            Method::POST,
            path,
            Some(SERVICE_KEY),
            Some("{\"amount\": 5"),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "body");

    let r = app.credit("alice", 100).await;
    assert_eq!(r.body["amount"], 100);
    assert_eq!(r.body["kind"], "credit");
    assert_eq!(r.body["reference"], "purchase");
    assert_eq!(r.body["balance_after"], 100);
    assert!(r.body["created_at"].as_str().unwrap().ends_with('Z'));
    app.credit("alice", 20).await;

    let r = app.get("/v1/me/balance", Some(&alice)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"balance": 120}));
    let r = app.get("/v1/me/balance", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app
        .get(
            "/v1/me/balance",
            Some(&identity_token("alice", "user", -10)),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "expired identity token");

    let r = app.get("/v1/me/transactions?limit=1", Some(&alice)).await;
    assert_eq!(r.status, StatusCode::OK);
    let txs = r.body["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 1);
    assert_eq!(txs[0]["amount"], 20, "newest first");
    let before = r.body["next_before"].as_i64().unwrap();
    let r = app
        .get(
            &format!("/v1/me/transactions?limit=10&before={before}"),
            Some(&alice),
        )
        .await;
    let txs = r.body["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 1);
    assert_eq!(txs[0]["amount"], 100);
    assert!(r.body["next_before"].is_null());
    let r = app.get("/v1/me/transactions?limit=0", Some(&alice)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "limit");

    // Someone else sees nothing of alice's.
    let r = app.get("/v1/me/transactions", Some(&user("bob"))).await;
    assert_eq!(r.body["transactions"].as_array().unwrap().len(), 0);
    assert_eq!(app.ledger_sum("alice").await, app.balance_of("alice").await);
    app.shutdown().await;
}

async fn idempotent_credit_and_enrollment(backend: Backend) {
    let app = spawn_api(backend).await;
    let path = "/v1/admin/accounts/carol/credits";
    let body = r#"{"amount": 30, "reason": "order-1"}"#;
    let key = [("idempotency-key", "order-1")];
    let first = app
        .send(Method::POST, path, Some(SERVICE_KEY), Some(body), &key)
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app
        .send(Method::POST, path, Some(SERVICE_KEY), Some(body), &key)
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.text, first.text, "a retry gets the identical body");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(app.balance_of("carol").await, 30, "credited once");
    let other = app
        .send(
            Method::POST,
            path,
            Some(SERVICE_KEY),
            Some(r#"{"amount": 31}"#),
            &key,
        )
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.code(), "idempotency_key_reused");
    let long = "k".repeat(256);
    let r = app
        .send(
            Method::POST,
            path,
            Some(SERVICE_KEY),
            Some(body),
            &[("idempotency-key", &long)],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Enrollment: a 402 is stored and replayed even after the balance grows.
    let stream = app.create_stream("ines", 50).await;
    let carol = user("carol");
    let enroll = format!("/v1/streams/{stream}/enrollments");
    let k = [("idempotency-key", "enroll-1")];
    let poor = app
        .send(Method::POST, &enroll, Some(&carol), Some("{}"), &k)
        .await;
    assert_eq!(poor.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(poor.code(), "insufficient_tokens");
    assert_eq!(poor.body["error"]["balance"], 30);
    assert_eq!(poor.body["error"]["price"], 50);
    app.credit("carol", 100).await;
    let retry = app
        .send(Method::POST, &enroll, Some(&carol), Some("{}"), &k)
        .await;
    assert_eq!(retry.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(retry.text, poor.text);
    // A new key enrolls; its retry returns the same 201 without charging twice.
    let k2 = [("idempotency-key", "enroll-2")];
    let ok = app
        .send(Method::POST, &enroll, Some(&carol), Some("{}"), &k2)
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    assert_eq!(ok.body["balance"], 80);
    let ok2 = app
        .send(Method::POST, &enroll, Some(&carol), Some("{}"), &k2)
        .await;
    assert_eq!(ok2.status, StatusCode::CREATED);
    assert_eq!(ok2.text, ok.text);
    assert_eq!(app.balance_of("carol").await, 80);
    // Keys are scoped to the caller: dave's "enroll-2" is his own.
    app.credit("dave", 50).await;
    let d = app
        .send(Method::POST, &enroll, Some(&user("dave")), Some("{}"), &k2)
        .await;
    assert_eq!(d.status, StatusCode::CREATED);
    assert_eq!(app.balance_of("dave").await, 0);
    assert_eq!(app.ledger_sum("carol").await, 80);

    // Concurrent retries of one key: one effect.
    app.credit("erin", 100).await;
    let s2 = app.create_stream("ines", 10).await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        let path = format!("/v1/streams/{s2}/enrollments");
        tasks.push(tokio::spawn(async move {
            app.send(
                Method::POST,
                &path,
                Some(&user("erin")),
                Some("{}"),
                &[("idempotency-key", "same")],
            )
            .await
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == StatusCode::CONFLICT {
            // Only while the first is in flight: "idempotency_in_progress".
            assert_eq!(r.code(), "idempotency_in_progress", "{}", r.text);
        } else {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            bodies.push(r.text);
        }
    }
    assert!(!bodies.is_empty());
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    assert_eq!(app.balance_of("erin").await, 90);
    Arc::try_unwrap(app).ok().unwrap().shutdown().await;
}

/// One user with balance for 37 fires 1,000 enrollments at 1,000 streams at once.
async fn thousand_enrollments_one_user(backend: Backend) {
    let app = spawn_api(backend).await;
    const PRICE: i64 = 7;
    let mut streams = Vec::new();
    for _ in 0..1000 {
        streams.push(app.create_stream("ines", PRICE).await);
    }
    app.credit("frank", 37 * PRICE + 3).await;
    let app = Arc::new(app);
    let token = Arc::new(user("frank"));
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in streams {
        let (app, token, barrier) = (app.clone(), token.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            app.post(
                &format!("/v1/streams/{s}/enrollments"),
                Some(&token),
                json!({}),
            )
            .await
        }));
    }
    let (mut ok, mut poor) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => ok += 1,
            StatusCode::PAYMENT_REQUIRED => {
                assert_eq!(r.code(), "insufficient_tokens");
                assert_eq!(r.body["error"]["price"], PRICE);
                poor += 1
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{backend:?}: 1000 enrollments (one user) in {elapsed:?} = {:.0}/s",
        1000.0 / elapsed.as_secs_f64()
    );
    assert_eq!((ok, poor), (37, 963));
    assert_eq!(app.balance_of("frank").await, 3);
    assert_eq!(app.ledger_sum("frank").await, 3);
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM enrollments WHERE user_id = 'frank'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 37);
    Arc::try_unwrap(app).ok().unwrap().shutdown().await;
}

/// Users 0, 27, …, 972 (37 of them) can afford the stream.
fn rich(i: usize) -> bool {
    i.is_multiple_of(27) && i < 990
}

/// 1,000 users race for one stream; 37 of them can afford it.
async fn thousand_users_one_stream(backend: Backend) {
    let app = Arc::new(spawn_api(backend).await);
    const PRICE: i64 = 25;
    let stream = app.create_stream("ines", PRICE).await;
    let mut credits = Vec::new();
    for i in 0..1000usize {
        let app = app.clone();
        credits.push(tokio::spawn(async move {
            let amount = if rich(i) { PRICE } else { PRICE - 1 };
            app.credit(&format!("u{i}"), amount).await;
            amount == PRICE
        }));
    }
    let mut paying = 0;
    for c in credits {
        paying += c.await.unwrap() as i64;
    }
    assert_eq!(paying, 37);
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000usize {
        let (app, barrier, stream) = (app.clone(), barrier.clone(), stream.clone());
        tasks.push(tokio::spawn(async move {
            let token = user(&format!("u{i}"));
            barrier.wait().await;
            let r = app
                .post(
                    &format!("/v1/streams/{stream}/enrollments"),
                    Some(&token),
                    json!({}),
                )
                .await;
            (i, r)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if rich(i) {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            assert_eq!(r.body["balance"], 0);
            ok += 1;
        } else {
            assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{}", r.text);
            assert_eq!(r.body["error"]["balance"], PRICE - 1);
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{backend:?}: 1000 enrollments (1000 users, one stream) in {elapsed:?} = {:.0}/s",
        1000.0 / elapsed.as_secs_f64()
    );
    assert_eq!(ok, 37);
    let (bad,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM accounts a WHERE a.balance <> \
         (SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM token_transactions t WHERE t.user_id = a.user_id)",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(bad, 0, "every balance equals its transaction sum");
    let r = app
        .get("/v1/instructor/streams", Some(&instructor("ines")))
        .await;
    assert_eq!(r.body["streams"][0]["stats"]["enrollments"], 37);
    assert_eq!(r.body["streams"][0]["stats"]["revenue_tokens"], 37 * PRICE);
    Arc::try_unwrap(app).ok().unwrap().shutdown().await;
}

/// The schema itself refuses a negative balance and a second enrollment.
async fn schema_constraints(backend: Backend) {
    let app = spawn_api(backend).await;
    app.credit("gus", 5).await;
    let neg = sqlx::query("UPDATE accounts SET balance = -1 WHERE user_id = 'gus'")
        .execute(app.pool())
        .await;
    assert!(neg.is_err(), "CHECK (balance >= 0)");
    let s = app.create_stream("ines", 0).await;
    let r = app
        .post(
            &format!("/v1/streams/{s}/enrollments"),
            Some(&user("gus")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let dup = sqlx::query(
        "INSERT INTO enrollments (id, user_id, stream_id, price_paid, status, created_at) \
         VALUES ('x', 'gus', $1, 0, 'active', 0)",
    )
    .bind(&s)
    .execute(app.pool())
    .await;
    assert!(dup.is_err(), "UNIQUE (user_id, stream_id)");
    let orphan = sqlx::query(
        "INSERT INTO enrollments (id, user_id, stream_id, price_paid, status, created_at) \
         VALUES ('y', 'gus', 'no-such-stream', 0, 'active', 0)",
    )
    .execute(app.pool())
    .await;
    assert!(orphan.is_err(), "foreign key to streams");
    app.shutdown().await;
}

both_backends!(
    credits_balance_and_transactions,
    idempotent_credit_and_enrollment,
    thousand_enrollments_one_user,
    thousand_users_one_stream,
    schema_constraints,
);
