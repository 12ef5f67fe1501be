//! Background jobs on an injected clock: replay access ends and recordings go,
//! the catalog webhook gets each stream exactly once (through failures and two
//! racing runners), and idempotency keys are pruned no sooner than 24 h.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::both_backends;
use crate::support::*;
use axum::extract::State;
use axum::http::StatusCode as AxStatus;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem::api::jobs::{Clock, Jobs, ManualClock};

const DAY: Duration = Duration::from_secs(86_400);

fn runner(app: &TestApp, clock: &Arc<ManualClock>) -> Jobs {
    Jobs::new(
        app.state().clone(),
        Arc::new(clock.clone()) as Arc<dyn Clock>,
    )
}

async fn ended_stream(app: &TestApp, price: i64) -> String {
    let s = app.create_stream("ines", price).await;
    let ines = instructor("ines");
    let r = app
        .post(&format!("/v1/streams/{s}/start"), Some(&ines), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .post(&format!("/v1/streams/{s}/end"), Some(&ines), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    s
}

async fn replay_access_ends_and_recording_goes(backend: Backend) {
    let app = spawn_api(backend).await;
    let clock = Arc::new(ManualClock::new(tandem::api::now_ms()));
    let s = app.create_stream("ines", 3).await;
    app.credit("ulla", 3).await;
    let r = app
        .post(
            &format!("/v1/streams/{s}/enrollments"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let ines = instructor("ines");
    app.post(&format!("/v1/streams/{s}/start"), Some(&ines), json!({}))
        .await;
    app.post(&format!("/v1/streams/{s}/end"), Some(&ines), json!({}))
        .await;
    // A recording in the data directory.
    let data_dir = app.state().config.data_dir.clone();
    std::fs::create_dir_all(data_dir.join("recordings")).unwrap();
    let file = data_dir.join(format!("recordings/{s}.mkv"));
    std::fs::write(&file, b"media").unwrap();
    sqlx::query("UPDATE streams SET recording_path = $1 WHERE id = $2")
        .bind(format!("recordings/{s}.mkv"))
        .bind(&s)
        .execute(app.pool())
        .await
        .unwrap();
    let r = app.get(&format!("/v1/streams/{s}"), None).await;
    assert_eq!(r.body["recording"]["available"], true);

    let (a, b) = (runner(&app, &clock), runner(&app, &clock));
    let report = a.expire_replays().await.unwrap();
    assert!(report.closed.is_empty(), "replay still open on day 0");
    let vt = format!("/v1/streams/{s}/viewer-token");
    assert_eq!(
        app.post(&vt, Some(&user("ulla")), json!({})).await.status,
        StatusCode::OK
    );

    clock.advance(6 * DAY);
    assert!(
        a.expire_replays().await.unwrap().closed.is_empty(),
        "day 6 of 7"
    );
    assert!(file.exists());

    clock.advance(DAY + Duration::from_secs(1));
    let (ra, rb) = tokio::join!(a.expire_replays(), b.expire_replays());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.closed.len() + rb.closed.len(),
        1,
        "closed once by two runners"
    );
    assert_eq!(
        ra.recordings_deleted.len() + rb.recordings_deleted.len(),
        1,
        "recording deleted once"
    );
    assert!(!file.exists(), "recording deleted");

    let r = app.post(&vt, Some(&user("ulla")), json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "replay_expired");
    let r = app.get("/v1/me/enrollments", Some(&user("ulla"))).await;
    assert_eq!(r.body["enrollments"][0]["can_watch_replay"], false);
    let r = app.get(&format!("/v1/streams/{s}"), None).await;
    assert!(r.body["recording"].is_null());
    let r = app
        .post(
            &format!("/v1/streams/{s}/enrollments"),
            Some(&user("vic")),
            json!({}),
        )
        .await;
    assert_eq!(r.code(), "stream_closed");
    let again = a.expire_replays().await.unwrap();
    assert!(again.closed.is_empty() && again.recordings_deleted.is_empty());
    app.shutdown().await;
}

/// A webhook that fails the first `fail_first` deliveries of each stream.
#[derive(Clone, Default)]
struct Hook {
    fail_first: usize,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    accepted: Arc<Mutex<HashMap<String, usize>>>,
}

async fn hook_handler(State(hook): State<Hook>, body: axum::Json<Value>) -> AxStatus {
    let id = body["stream"]["id"].as_str().unwrap_or("?").to_string();
    let n = {
        let mut hits = hook.hits.lock().unwrap();
        let n = hits.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    // Some latency, so two runners' deliveries overlap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if n <= hook.fail_first {
        AxStatus::INTERNAL_SERVER_ERROR
    } else {
        *hook.accepted.lock().unwrap().entry(id).or_default() += 1;
        AxStatus::NO_CONTENT
    }
}

async fn start_hook(fail_first: usize) -> (Hook, String) {
    let hook = Hook {
        fail_first,
        ..Default::default()
    };
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hook_handler))
        .with_state(hook.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (hook, url)
}

async fn catalog_migration_retries_then_delivers_once(backend: Backend) {
    let (hook, url) = start_hook(2).await;
    let app = api_app(backend)
        .config(|c| c.api.catalog_webhook_url = url.to_string())
        .spawn()
        .await;
    let clock = Arc::new(ManualClock::new(tandem::api::now_ms()));
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(ended_stream(&app, 1).await);
    }
    let (a, b) = (runner(&app, &clock), runner(&app, &clock));
    let r = a.migrate_catalog().await.unwrap();
    assert!(
        r.delivered.is_empty() && r.failed.is_empty(),
        "not due before 60 days"
    );
    assert!(hook.hits.lock().unwrap().is_empty());

    clock.advance(60 * DAY + Duration::from_secs(1));
    // Round 1 and 2 fail, round 3 succeeds; both runners race every round.
    for round in 1..=3 {
        let (ra, rb) = tokio::join!(a.migrate_catalog(), b.migrate_catalog());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let attempted = ra.delivered.len() + ra.failed.len() + rb.delivered.len() + rb.failed.len();
        assert_eq!(attempted, 5, "round {round}: each stream once");
        if round < 3 {
            assert_eq!(ra.delivered.len() + rb.delivered.len(), 0);
            // Within the backoff nothing is retried.
            let again = a.migrate_catalog().await.unwrap();
            assert!(again.failed.is_empty() && again.delivered.is_empty());
        } else {
            assert_eq!(ra.delivered.len() + rb.delivered.len(), 5);
        }
        // Past the longest possible backoff of this attempt (base 30 s, doubling).
        clock.advance(Duration::from_secs(30 << round));
    }
    clock.advance(30 * DAY);
    let (ra, rb) = tokio::join!(a.migrate_catalog(), b.migrate_catalog());
    assert!(ra.unwrap().delivered.is_empty() && rb.unwrap().delivered.is_empty());
    for s in &streams {
        assert_eq!(hook.hits.lock().unwrap()[s], 3, "two failures, one success");
        assert_eq!(
            hook.accepted.lock().unwrap()[s],
            1,
            "delivered exactly once"
        );
        let r = app.get(&format!("/v1/streams/{s}"), None).await;
        assert!(r.body["migrated_at"].is_string());
    }
    let (attempts, errors): (i64, Option<String>) = sqlx::query_as(
        "SELECT migration_attempts, migration_last_error FROM streams WHERE id = $1",
    )
    .bind(&streams[0])
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(attempts, 3);
    assert!(errors.is_none());
    app.shutdown().await;
}

async fn catalog_migration_two_runners_many_streams(backend: Backend) {
    let (hook, url) = start_hook(0).await;
    let app = api_app(backend)
        .config(|c| c.api.catalog_webhook_url = url.to_string())
        .spawn()
        .await;
    let clock = Arc::new(ManualClock::new(tandem::api::now_ms()));
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(ended_stream(&app, 0).await);
    }
    clock.advance(61 * DAY);
    let runners: Vec<Jobs> = (0..4).map(|_| runner(&app, &clock)).collect();
    let reports = futures_join(&runners).await;
    let delivered: usize = reports.iter().map(|r| r.delivered.len()).sum();
    assert_eq!(delivered, 20);
    let hits = hook.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 20);
    assert!(hits.values().all(|n| *n == 1), "{hits:?}");
    // The webhook being down leaves migrated_at unset; nothing is marked on failure.
    app.shutdown().await;
}

async fn futures_join(runners: &[Jobs]) -> Vec<tandem::api::jobs::MigrationReport> {
    let tasks: Vec<_> = runners
        .iter()
        .cloned()
        .map(|j| tokio::spawn(async move { j.migrate_catalog().await.unwrap() }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn unreachable_webhook_is_retried_not_marked(backend: Backend) {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hook?token=s3cr3t");
    let app = api_app(backend)
        .config(|c| c.api.catalog_webhook_url = url.to_string())
        .spawn()
        .await;
    let clock = Arc::new(ManualClock::new(tandem::api::now_ms()));
    let s = ended_stream(&app, 0).await;
    clock.advance(61 * DAY);
    let r = runner(&app, &clock).migrate_catalog().await.unwrap();
    assert_eq!(r.failed, vec![s.clone()]);
    let (migrated, error): (Option<i64>, Option<String>) =
        sqlx::query_as("SELECT migrated_at, migration_last_error FROM streams WHERE id = $1")
            .bind(&s)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(migrated.is_none());
    let error = error.unwrap();
    assert!(
        !error.contains("s3cr3t"),
        "no secrets in stored errors: {error}"
    );
    app.shutdown().await;
}

async fn idempotency_keys_pruned_after_24h(backend: Backend) {
    // Even configured at 1 h, keys live at least 24 h.
    let app = api_app(backend)
        .config(|c| c.api.idempotency_keep_hours = 1)
        .spawn()
        .await;
    let clock = Arc::new(ManualClock::new(tandem::api::now_ms()));
    let path = "/v1/admin/accounts/pat/credits";
    let body = r#"{"amount": 4}"#;
    let key = [("idempotency-key", "k1")];
    let first = app
        .send(Method::POST, path, Some(SERVICE_KEY), Some(body), &key)
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let jobs = runner(&app, &clock);
    clock.advance(Duration::from_secs(23 * 3600));
    assert_eq!(jobs.prune().await.unwrap(), 0, "kept for 24 h");
    let again = app
        .send(Method::POST, path, Some(SERVICE_KEY), Some(body), &key)
        .await;
    assert_eq!(again.text, first.text);
    assert_eq!(app.balance_of("pat").await, 4);
    clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(jobs.prune().await.unwrap(), 1, "pruned after 24 h");
    // The key is free again: a new request with it is a new effect.
    let fresh = app
        .send(Method::POST, path, Some(SERVICE_KEY), Some(body), &key)
        .await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_ne!(fresh.body["id"], first.body["id"]);
    assert_eq!(app.balance_of("pat").await, 8);
    app.shutdown().await;
}

/// The interval tasks start with the server and stop with it.
async fn jobs_run_in_the_server(backend: Backend) {
    let (hook, url) = start_hook(0).await;
    let app = api_app(backend)
        .config(|c| {
            c.api.jobs_enabled = true;
            c.api.catalog_webhook_url = url.to_string();
            c.api.catalog_interval_seconds = 1;
            c.api.catalog_migration_days = 0;
        })
        .spawn()
        .await;
    let s = ended_stream(&app, 0).await;
    // Wait (bounded) for the first tick to deliver it.
    let mut delivered = false;
    for _ in 0..100 {
        if hook.accepted.lock().unwrap().get(&s) == Some(&1) {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "the catalog job ran inside the server");
    app.shutdown().await;
}

both_backends!(
    replay_access_ends_and_recording_goes,
    catalog_migration_retries_then_delivers_once,
    catalog_migration_two_runners_many_streams,
    unreachable_webhook_is_retried_not_marked,
    idempotency_keys_pruned_after_24h,
    jobs_run_in_the_server,
);
