//! Media across nodes (issue 18, docs/CLUSTER.md "Media: origin and edges"):
//! three nodes on loopback with the local Redis (a fresh key prefix per test)
//! and one PostgreSQL database. An aiortc publisher on node A; aiortc WHEP
//! viewers on A, B and C all decode; B and C pull the stream once each (the
//! origin's counter, the edges' own); an edge's pull ends after its last viewer
//! left. In redirect mode a node answers 307 to the origin instead of pulling.

use std::time::Duration;

use reqwest::StatusCode;
use tandem::config::ClusterConfig;

use crate::support::*;

const REDIS: &str = "redis://127.0.0.1:6379/0";
/// One key for every node's media tokens (a cluster shares it).
const SECRET: &str = "cluster-edge-test-secret-0123456789abcdef";

fn prefix() -> String {
    format!("tandem-test-{}:", uuid::Uuid::new_v4().simple())
}

async fn node(prefix: &str, id: &str, db: Option<&str>, redirect: bool) -> TestApp {
    let cluster = ClusterConfig {
        redis_url: REDIS.into(),
        node_id: id.into(),
        // Empty: the node's own bound address (the test's ports are free ones).
        advertise_url: String::new(),
        key_prefix: prefix.into(),
        heartbeat_ms: 200,
        node_ttl_ms: 2000,
        media_redirect: redirect,
        edge_linger_ms: 300,
        ..ClusterConfig::default()
    };
    let db = db.map(str::to_string);
    TestApp::builder()
        .config(move |c| {
            c.cluster = cluster;
            c.media_token_secret = SECRET.into();
            c.service_key = SERVICE_KEY.into();
            if let Some(url) = db {
                c.database_url = url;
            }
        })
        .spawn()
        .await
}

/// Waits until `app` sees `stream`'s origin on the node `id`.
async fn wait_origin(app: &TestApp, stream: &str, id: &str) {
    eventually(
        &format!("{stream}'s origin is {id}"),
        Duration::from_secs(10),
        || async {
            match app.state().cluster.origin_of(stream).await {
                Ok(Some((node, _))) if node == id => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

async fn wait_metric(app: &TestApp, name: &str, want: f64, within: Duration) {
    eventually(&format!("{name} == {want}"), within, || async {
        let v = app.metric(name, &[]).await;
        if v == want {
            Ok(())
        } else {
            Err(format!("{name} = {v}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn viewers_on_three_nodes_decode_and_each_edge_pulls_once() {
    let _media = media_lock().await;
    let p = prefix();
    let db = TestDb::postgres()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (trust auth) is needed for this test");
    let a = node(&p, "node-a", Some(db.url()), false).await;
    let b = node(&p, "node-b", Some(db.url()), false).await;
    let c = node(&p, "node-c", Some(db.url()), false).await;
    let stream = "edge-cam";

    let mut publisher = PyPeer::publisher(&a, stream, &[]);
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;
    wait_origin(&b, stream, "node-a").await;
    wait_origin(&c, stream, "node-a").await;

    // Two viewers on B share one pull; one each on A (the origin) and C.
    let goals = ["--frames", "30", "--audio-frames", "10", "--duration", "60"];
    let viewers = vec![
        PyPeer::viewer(&a, "viewer-a", stream, &goals),
        PyPeer::viewer(&b, "viewer-b1", stream, &goals),
        PyPeer::viewer(&b, "viewer-b2", stream, &goals),
        PyPeer::viewer(&c, "viewer-c", stream, &goals),
    ];
    for mut v in viewers {
        let done = v.done(Duration::from_secs(90)).await;
        assert_eq!(
            done["ok"],
            true,
            "a viewer decoded: {done}\n{}",
            v.stderr_tail(30)
        );
        assert!(
            done["video_frames"].as_u64().unwrap_or(0) >= 30,
            "video decoded: {done}"
        );
        assert!(
            done["audio_frames"].as_u64().unwrap_or(0) >= 10,
            "audio decoded: {done}"
        );
        assert_eq!(done["delete_status"], 200, "{done}");
    }

    // Each edge pulled once (B's two viewers shared one); the origin served two.
    assert_eq!(
        b.metric("tandem_cluster_edge_pulls_started_total", &[])
            .await,
        1.0
    );
    assert_eq!(
        c.metric("tandem_cluster_edge_pulls_started_total", &[])
            .await,
        1.0
    );
    assert_eq!(
        a.metric("tandem_cluster_origin_pulls_total", &[]).await,
        2.0
    );
    assert_eq!(
        a.metric("tandem_cluster_edge_pulls_started_total", &[])
            .await,
        0.0
    );
    for app in [&a, &b, &c] {
        assert_eq!(
            app.metric("tandem_cluster_edge_pull_failures_total", &[])
                .await,
            0.0
        );
    }
    // The edges are not origins: the registry lists A alone as one.
    let r = a.get("/v1/cluster/nodes", Some(SERVICE_KEY)).await;
    let nodes = r.body["nodes"].as_array().cloned().unwrap_or_default();
    let origins: Vec<_> = nodes
        .iter()
        .filter(|n| n["role"] == "origin")
        .map(|n| n["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(origins, ["node-a"], "{}", r.text);

    // The last viewers left: each edge's pull ends after its linger, and the
    // origin is left with its publisher alone (the edges' sessions DELETEd).
    wait_metric(
        &b,
        "tandem_cluster_edge_pulls",
        0.0,
        Duration::from_secs(10),
    )
    .await;
    wait_metric(
        &c,
        "tandem_cluster_edge_pulls",
        0.0,
        Duration::from_secs(10),
    )
    .await;
    a.wait_sessions(1, Duration::from_secs(10)).await;
    b.wait_sessions(0, Duration::from_secs(10)).await;
    c.wait_sessions(0, Duration::from_secs(10)).await;

    // Bad cases as on one node: a name that cannot exist is 404; a stream
    // published nowhere is not pulled from anywhere.
    let token = c.subscribe_token("*");
    let resp = post_offer(
        &c,
        &c.whep_url("bad%20name"),
        Some(&token),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let token = c.subscribe_token("nowhere");
    let resp = post_offer(
        &c,
        &c.whep_url("nowhere"),
        Some(&token),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "as on one node, the viewer waits"
    );
    assert_eq!(
        c.metric("tandem_cluster_edge_pulls_started_total", &[])
            .await,
        1.0
    );
    assert_eq!(c.metric("tandem_cluster_edge_pulls", &[]).await, 0.0);

    publisher.stop(Duration::from_secs(20)).await;
    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirect_mode_answers_307_to_the_origin() {
    let _media = media_lock().await;
    let p = prefix();
    let a = node(&p, "node-a", None, false).await;
    let b = node(&p, "node-b", None, true).await;
    let stream = "redirect-cam";
    let mut publisher = PyPeer::publisher(&a, stream, &[]);
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;
    wait_origin(&b, stream, "node-a").await;

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http
        .post(b.whep_url(stream))
        .bearer_auth(b.subscribe_token(stream))
        .header("Content-Type", SDP)
        .body(CHROMIUM_RECVONLY_OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, a.whep_url(stream), "the origin's WHEP endpoint");
    // The token is still checked first: none, no redirect.
    let resp = http
        .post(b.whep_url(stream))
        .header("Content-Type", SDP)
        .body(CHROMIUM_RECVONLY_OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Followed with the token (HTTP clients drop Authorization on a redirect
    // to another origin, so the viewer sends it again), the viewer decodes
    // from the origin; B pulled nothing.
    let token = b.subscribe_token(stream);
    let mut viewer = PyPeer::spawn(
        "viewer-redirected",
        "viewer.py",
        &["--url", &location, "--token", &token, "--frames", "20"],
    );
    let done = viewer.done(Duration::from_secs(60)).await;
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(
        b.metric("tandem_cluster_edge_pulls_started_total", &[])
            .await,
        0.0
    );
    assert_eq!(b.session_count(), 0);

    publisher.stop(Duration::from_secs(20)).await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_repulls_within_3_s_when_the_publisher_moves_and_its_viewer_decodes_on() {
    let _media = media_lock().await;
    let p = prefix();
    let a = node(&p, "node-a", None, false).await;
    let b = node(&p, "node-b", None, false).await;
    let c = node(&p, "node-c", None, false).await;
    let stream = "moving-cam";
    let first = PyPeer::publisher(&a, stream, &[]);
    let mut first = first;
    first.wait_event("connected", Duration::from_secs(30)).await;
    wait_origin(&c, stream, "node-a").await;

    // The viewer runs 8 s from its first frame: the move happens in them.
    let mut viewer = PyPeer::viewer(
        &c,
        "viewer-c",
        stream,
        &[
            "--frames",
            "60",
            "--audio-frames",
            "10",
            "--min-seconds",
            "8",
            "--duration",
            "60",
        ],
    );
    viewer
        .wait_event("first_frame", Duration::from_secs(30))
        .await;
    assert_eq!(
        c.metric("tandem_cluster_edge_pulls_started_total", &[])
            .await,
        1.0
    );

    // The broadcaster reconnects on B: the origin moves there.
    let done = first.stop(Duration::from_secs(20)).await;
    assert_eq!(done["delete_status"], 200, "{done}");
    let mut second = PyPeer::publisher(&b, stream, &[]);
    second
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let moved = std::time::Instant::now();
    wait_metric(
        &c,
        "tandem_cluster_edge_pulls_started_total",
        2.0,
        Duration::from_secs(10),
    )
    .await;
    let took = moved.elapsed();
    println!("cluster edge: re-pulled from the new origin {took:?} after its publisher connected");
    assert!(took <= Duration::from_secs(3), "re-pull took {took:?}");
    assert_eq!(
        b.metric("tandem_cluster_origin_pulls_total", &[]).await,
        1.0
    );
    // The old origin did not pull the stream for the edge's session it held.
    assert_eq!(
        a.metric("tandem_cluster_edge_pulls_started_total", &[])
            .await,
        0.0
    );

    let done = viewer.done(Duration::from_secs(60)).await;
    assert_eq!(
        done["ok"],
        true,
        "the viewer decoded on: {done}\n{}",
        viewer.stderr_tail(30)
    );
    assert!(done["video_frames"].as_u64().unwrap_or(0) >= 60, "{done}");
    // Frames kept coming after the move (the last whole second had some) and
    // the longest gap between two decoded frames was the move's, under 3 s.
    let per_second = done["frames_per_second"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let last_full = per_second.len().saturating_sub(2);
    assert!(
        per_second
            .get(last_full)
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            > 0,
        "frames after the move: {done}"
    );
    assert!(done["max_gap_s"].as_f64().unwrap_or(99.0) < 3.0, "{done}");
    // One pull at a time on C, and the old origin's session ended.
    assert_eq!(c.metric("tandem_cluster_edge_pulls", &[]).await, 1.0);
    a.wait_sessions(0, Duration::from_secs(10)).await;

    second.stop(Duration::from_secs(20)).await;
    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}
