//! Issue 18's operations side: two nodes on one PostgreSQL database (and one
//! Redis, a fresh key prefix) run the background jobs at the same moment and
//! each piece of work is done once (replay windows closed, recordings deleted,
//! catalog webhooks sent, the Discord reconcile pass claimed); each node's
//! `/metrics` says which node it is and how many nodes are alive; and
//! `config/grafana-cluster.json` is valid JSON whose every metric exists in the
//! server's registry.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode as AxStatus;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem::api::jobs::{Clock, Jobs, ManualClock};
use tandem::config::ClusterConfig;

use crate::support::*;

const DAY: Duration = Duration::from_secs(86_400);

fn cluster_cfg(prefix: &str, node: &str) -> ClusterConfig {
    ClusterConfig {
        redis_url: "redis://127.0.0.1:6379/0".into(),
        node_id: node.into(),
        advertise_url: format!("http://{node}.test:8080"),
        key_prefix: prefix.into(),
        heartbeat_ms: 100,
        node_ttl_ms: 1500,
        ..ClusterConfig::default()
    }
}

/// Counts the catalog webhook's deliveries per stream.
#[derive(Clone, Default)]
struct Hook {
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

async fn hook_handler(State(hook): State<Hook>, body: axum::Json<Value>) -> AxStatus {
    let id = body["stream"]["id"].as_str().unwrap_or("?").to_string();
    *hook.hits.lock().unwrap().entry(id).or_default() += 1;
    AxStatus::NO_CONTENT
}

async fn start_hook() -> (Hook, String) {
    let hook = Hook::default();
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hook_handler))
        .with_state(hook.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (hook, url)
}

async fn ended_stream(app: &TestApp) -> String {
    let s = app.create_stream("ines", 0).await;
    let ines = instructor("ines");
    for step in ["start", "end"] {
        let r = app
            .post(&format!("/v1/streams/{s}/{step}"), Some(&ines), json!({}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{step}: {}", r.text);
    }
    s
}

/// Every id once: panics on an id reported by both nodes.
fn once_each(reports: [&[String]; 2], what: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for id in reports.iter().flat_map(|r| r.iter()) {
        assert!(seen.insert(id.clone()), "{what}: {id} done twice");
    }
    seen
}

/// The PostgreSQL variant only: a cluster shares one PostgreSQL (two servers
/// writing one SQLite file is not a deployment).
mod jobs_run_once_on_two_nodes {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        super::jobs_run_once_on_two_nodes().await
    }
}

async fn jobs_run_once_on_two_nodes() {
    let (hook, url) = start_hook().await;
    let prefix = format!("tandem-test-{}:", uuid::Uuid::new_v4().simple());
    // Replays are served and deleted by any node: the recording root is shared
    // storage (docs/CLUSTER.md "Jobs").
    let shared = TempDir::new("tandem-shared-recordings");
    let root = shared.path().to_path_buf();
    let node = |id: &str, database_url: Option<String>| {
        let (cfg, url, root) = (cluster_cfg(&prefix, id), url.clone(), root.clone());
        move |c: &mut tandem::config::Config| {
            c.cluster = cfg;
            c.api.catalog_webhook_url = url;
            c.recording.root = root;
            if let Some(db) = database_url {
                c.database_url = db;
            }
        }
    };
    let a = api_app(Backend::Postgres)
        .config(node("node-a", None))
        .spawn()
        .await;
    let db = a.state().config.database_url.clone();
    assert!(db.starts_with("postgres://"), "{db}");
    // The second node: the test defaults of `api_app`, A's database.
    let b = TestApp::builder()
        .config(|c| {
            c.jwt_secret = JWT_SECRET.into();
            c.service_key = SERVICE_KEY.into();
            c.api.jobs_enabled = false;
            c.media.ice_tcp = false;
        })
        .config(node("node-b", Some(db)))
        .spawn()
        .await;

    // Classes ended through either node, each with a recording on the shared root.
    let mut streams = Vec::new();
    for i in 0..8 {
        let s = ended_stream(if i % 2 == 0 { &a } else { &b }).await;
        let folder = root.join(format!("rec_{s}"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("index.m3u8"), b"#EXTM3U\n").unwrap();
        sqlx::query("UPDATE streams SET recording_path = $1 WHERE id = $2")
            .bind(folder.display().to_string())
            .bind(&s)
            .execute(a.pool())
            .await
            .unwrap();
        streams.push(s);
    }
    let all: BTreeSet<String> = streams.iter().cloned().collect();
    let clock = Arc::new(ManualClock::new(tandem::api::now_ms()));
    let runner = |app: &TestApp| {
        Jobs::new(
            app.state().clone(),
            Arc::new(clock.clone()) as Arc<dyn Clock>,
        )
    };
    let (ja, jb) = (runner(&a), runner(&b));

    // Replay expiry on both nodes at once: every window closed once, every
    // recording deleted once.
    clock.advance(8 * DAY);
    let (ra, rb) = tokio::join!(ja.expire_replays(), jb.expire_replays());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    eprintln!(
        "replay expiry: node A closed {}, node B closed {}",
        ra.closed.len(),
        rb.closed.len()
    );
    assert_eq!(once_each([&ra.closed, &rb.closed], "closed"), all);
    assert_eq!(
        once_each(
            [&ra.recordings_deleted, &rb.recordings_deleted],
            "recording deleted"
        ),
        all
    );
    for s in &streams {
        assert!(!root.join(format!("rec_{s}")).exists(), "{s}'s recording");
    }
    let (ra, rb) = tokio::join!(ja.expire_replays(), jb.expire_replays());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.closed.is_empty() && rb.closed.is_empty());
    assert!(ra.recordings_deleted.is_empty() && rb.recordings_deleted.is_empty());

    // The catalog migration on both nodes at once: one webhook call per stream.
    clock.advance(61 * DAY);
    let (ra, rb) = tokio::join!(ja.migrate_catalog(), jb.migrate_catalog());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.failed.is_empty() && rb.failed.is_empty());
    assert_eq!(once_each([&ra.delivered, &rb.delivered], "delivered"), all);
    let hits = hook.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), all.len(), "{hits:?}");
    assert!(hits.values().all(|n| *n == 1), "{hits:?}");

    // The Discord reconcile pass: one node claims the period, the other skips it.
    let period = Duration::from_secs(60);
    let (ca, cb) = tokio::join!(
        tandem::discord::guild::claim_reconcile(a.state(), period),
        tandem::discord::guild::claim_reconcile(b.state(), period)
    );
    assert!(ca ^ cb, "exactly one node runs the pass: A {ca}, B {cb}");
    assert!(!tandem::discord::guild::claim_reconcile(a.state(), period).await);
    assert!(!tandem::discord::guild::claim_reconcile(b.state(), period).await);

    // Per-node metrics: each says which node it is; both see two nodes alive.
    for (app, id) in [(&a, "node-a"), (&b, "node-b")] {
        assert_eq!(
            app.metric("tandem_node_info", &[("node_id", id)]).await,
            1.0
        );
        eventually(
            "two nodes alive in the registry",
            Duration::from_secs(10),
            || async {
                match app.metric("tandem_cluster_nodes", &[]).await {
                    2.0 => Ok(()),
                    n => Err(format!("{id} sees {n}")),
                }
            },
        )
        .await;
    }
    // B first: A owns the database.
    b.shutdown().await;
    a.shutdown().await;
}

/// Metric names a PromQL expression uses (a histogram's `_bucket`, `_sum`,
/// `_count` series stand for their family).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("tandem_") {
        let start = i + at;
        let before = start.checked_sub(1).map(|p| bytes[p]);
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // Not part of a longer word (a label value like "tandem-cluster").
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            let name = &expr[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.push(family.to_string());
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_dashboard_uses_only_metrics_the_server_has() {
    let path = repo_root().join("config/grafana-cluster.json");
    let text = std::fs::read_to_string(&path).expect("config/grafana-cluster.json");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert_eq!(dash["uid"], "tandem-cluster");
    let mut exprs = Vec::new();
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().expect("every target has an expr");
            assert!(e.contains("instance"), "{}: per node: {e}", p["title"]);
            exprs.push(e.to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push(q.to_string());
        }
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Nodes alive (registry)",
        "Media sessions per node",
        "Forwarded packets per node",
        "Forwarded bits per node",
        "Rooms per node",
        "Room members (WebSocket connections) per node",
        "WebSocket broadcast latency per node (p50, p99)",
        "Chat messages per node",
        "Restream destinations per node",
        "Recordings open per node",
    ] {
        assert!(titles.contains(&want), "panel {want:?} in {titles:?}");
    }

    // What a fresh node exports (one request made, so the HTTP families have
    // a series): a family every node exports from its start, so a panel never
    // stays empty for want of a first event.
    let app = spawn_api(Backend::Sqlite).await;
    app.get("/healthz", None).await;
    let registered: BTreeSet<String> = app
        .state()
        .registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let mut used = BTreeSet::new();
    for e in &exprs {
        for name in metric_names(e) {
            assert!(
                registered.contains(&name),
                "the dashboard uses {name}, which the server does not register: {e}"
            );
            used.insert(name);
        }
    }
    eprintln!("the dashboard uses {} metrics: {used:?}", used.len());
    assert!(used.len() >= 15, "{used:?}");
    app.shutdown().await;
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (instance, le) (rate(tandem_room_fanout_delay_seconds_bucket{instance=~\"$instance\"}[5m]))) + tandem_rooms"
        ),
        vec!["tandem_room_fanout_delay_seconds", "tandem_rooms"]
    );
    assert!(metric_names("label_values(x, instance) tandem-cluster").is_empty());
}
