//! Several nodes, the part built so far (issue 18): the node registry in the
//! local Redis (127.0.0.1:6379, a fresh key prefix per test) and `GET
//! /v1/cluster/nodes`. One node needs no Redis; two nodes see each other; a
//! clean stop leaves at once, a node that stops heartbeating drops out by its
//! TTL; a Redis that does not answer is said in `/readyz` and the route, and
//! nothing panics.

use std::time::Duration;

use reqwest::StatusCode;
use tandem::cluster::registry::{Cluster, Load, NodeRecord};
use tandem::config::ClusterConfig;

use crate::support::*;

const REDIS: &str = "redis://127.0.0.1:6379/0";

fn prefix() -> String {
    format!("tandem-test-{}:", uuid::Uuid::new_v4().simple())
}

fn cluster_cfg(prefix: &str, node: &str) -> ClusterConfig {
    ClusterConfig {
        redis_url: REDIS.into(),
        node_id: node.into(),
        advertise_url: format!("http://{node}.test:8080"),
        key_prefix: prefix.into(),
        heartbeat_ms: 100,
        node_ttl_ms: 1500,
        ..ClusterConfig::default()
    }
}

async fn node(prefix: &str, id: &str) -> TestApp {
    let cfg = cluster_cfg(prefix, id);
    api_app(Backend::Sqlite)
        .config(move |c| c.cluster = cfg)
        .spawn()
        .await
}

fn ids(r: &Resp) -> Vec<String> {
    r.body["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_single_node_lists_itself_without_redis() {
    let app = spawn_api(Backend::Sqlite).await;
    let r = app.get("/v1/cluster/nodes", Some(SERVICE_KEY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["cluster"], false);
    let nodes = r.body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{}", r.text);
    assert_eq!(nodes[0]["this_node"], true);
    assert_eq!(nodes[0]["role"], "node");
    assert_eq!(nodes[0]["load"]["media_sessions"], 0);
    assert_eq!(nodes[0]["advertise_url"], app.base.as_str());
    // The service key only.
    assert_eq!(
        app.get("/v1/cluster/nodes", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = app
        .get("/v1/cluster/nodes", Some(&instructor("ines")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn two_nodes_see_each_other_and_a_clean_stop_leaves_at_once() {
    let p = prefix();
    let a = node(&p, "node-a").await;
    let b = node(&p, "node-b").await;
    for app in [&a, &b] {
        let r = eventually("both nodes listed", Duration::from_secs(10), || async {
            let r = app.get("/v1/cluster/nodes", Some(SERVICE_KEY)).await;
            if ids(&r) == ["node-a", "node-b"] {
                Ok(r)
            } else {
                Err(r.text)
            }
        })
        .await;
        assert_eq!(r.body["cluster"], true);
        let nodes = r.body["nodes"].as_array().unwrap();
        assert_eq!(nodes[1]["advertise_url"], "http://node-b.test:8080");
        assert_eq!(
            nodes.iter().filter(|n| n["this_node"] == true).count(),
            1,
            "{}",
            r.text
        );
    }
    let r = a.get("/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // A clean stop removes the record before shutdown returns.
    b.shutdown().await;
    let r = a.get("/v1/cluster/nodes", Some(SERVICE_KEY)).await;
    assert_eq!(ids(&r), ["node-a"], "{}", r.text);
    a.shutdown().await;
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_drops_out_by_its_ttl() {
    let p = prefix();
    let mut cfg = cluster_cfg(&p, "ghost");
    cfg.node_ttl_ms = 300;
    let c = Cluster::from_config(&cfg, "unused", "http://unused").unwrap();
    let record = NodeRecord {
        id: "ghost".into(),
        advertise_url: "http://ghost.test:8080".into(),
        version: "test".into(),
        started_at: 1,
        heartbeat_at: tandem::clock::now_ms(),
        load: Load::default(),
        origin_of: vec!["class-1".into()],
    };
    c.heartbeat(&record).await.expect("Redis on 127.0.0.1:6379");
    let listed = c.nodes().await.unwrap();
    assert_eq!(listed, vec![record]);
    // No more heartbeats and no leave (as after kill -9): gone with its key.
    eventually("the ghost expired", Duration::from_secs(10), || async {
        let n = c.nodes().await.map_err(|e| e.to_string())?;
        if n.is_empty() {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    assert_eq!(c.redis_ok(), Some(true));
}

#[tokio::test]
async fn a_redis_that_does_not_answer_is_said_and_nothing_breaks() {
    let mut cfg = cluster_cfg(&prefix(), "lonely");
    // Nothing listens on port 1.
    cfg.redis_url = "redis://:hunter2@127.0.0.1:1/0".into();
    let app = api_app(Backend::Sqlite)
        .config(move |c| c.cluster = cfg)
        .spawn()
        .await;
    let r = eventually("readyz says redis", Duration::from_secs(15), || async {
        let r = app.get("/readyz", None).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            Ok(r)
        } else {
            Err(r.text)
        }
    })
    .await;
    assert_eq!(
        r.body["error"]["checks"]["redis"], "unreachable",
        "{}",
        r.text
    );
    assert_eq!(r.body["error"]["checks"]["database"], "ok", "{}", r.text);
    assert!(r.text.contains("Redis"), "{}", r.text);
    let r = app.get("/v1/cluster/nodes", Some(SERVICE_KEY)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "cluster_unavailable");
    assert!(!r.text.contains("hunter2"), "{}", r.text);
    // The rest of the node serves on.
    let r = app.get("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}
