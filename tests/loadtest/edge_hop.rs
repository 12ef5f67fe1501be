//! A measurement, not a check (ignored by default): the latency an edge hop
//! adds on loopback (issue 18, docs/CLUSTER.md). The load generator's publisher
//! on node A stamps each packet's send time in its payload; one of its viewers
//! watches on A, one on the edge B; each measures send → its socket (kernel
//! receive time). Run:
//! `cargo test -p tandem --test loadtest edge_hop -- --ignored --nocapture`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem::config::ClusterConfig;
use tandem_loadtest::client::{Counters, Driver, Peer, PublishOptions};

use crate::support::*;

async fn node(prefix: &str, id: &str) -> TestApp {
    let cluster = ClusterConfig {
        redis_url: "redis://127.0.0.1:6379/0".into(),
        node_id: id.into(),
        key_prefix: prefix.into(),
        heartbeat_ms: 200,
        node_ttl_ms: 2000,
        ..ClusterConfig::default()
    };
    TestApp::builder()
        .config(move |c| {
            c.cluster = cluster;
            c.media_token_secret = "edge-hop-measurement-secret-0123456789".into();
        })
        .spawn()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn edge_hop_latency() {
    let p = format!("tandem-test-{}:", uuid::Uuid::new_v4().simple());
    let a = node(&p, "node-a").await;
    let b = node(&p, "node-b").await;
    let stream = "hop";
    let http = reqwest::Client::new();
    let pc = Arc::new(Counters::default());
    let pd = Driver::spawn("hop-pub", pc.clone()).unwrap();
    let publish = PublishOptions {
        video_bitrate_bps: 1_000_000,
        audio: false,
        ..Default::default()
    };
    let publisher = Peer::connect(
        &http,
        &a.whip_url(stream),
        &a.publish_token(stream),
        Some(publish),
    )
    .await
    .unwrap();
    pd.add(publisher);
    eventually(
        "B sees A as the origin",
        Duration::from_secs(10),
        || async {
            match b.state().cluster.origin_of(stream).await {
                Ok(Some((n, _))) if n == "node-a" => Ok(()),
                o => Err(format!("{o:?}")),
            }
        },
    )
    .await;
    let mut viewers = Vec::new();
    for (name, app) in [("direct", &a), ("edge", &b)] {
        let c = Arc::new(Counters::default());
        let d = Driver::spawn(&format!("hop-{name}"), c.clone()).unwrap();
        let peer = Peer::connect(
            &http,
            &app.whep_url(stream),
            &app.subscribe_token(stream),
            None,
        )
        .await
        .unwrap();
        d.add(peer);
        viewers.push((name, c, d));
    }
    for (name, c, _) in &viewers {
        eventually(
            &format!("{name} receives"),
            Duration::from_secs(20),
            || async {
                if c.rx_packets.load(Ordering::Relaxed) > 100 {
                    Ok(())
                } else {
                    Err("no media yet".to_string())
                }
            },
        )
        .await;
        c.measuring.store(true, Ordering::Release);
    }
    // The measurement window itself (not a wait for an event).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut p50 = Vec::new();
    for (name, c, d) in viewers {
        c.stop.store(true, Ordering::Release);
        let r = tokio::task::spawn_blocking(move || d.join()).await.unwrap();
        let h = &r.latency.socket;
        assert!(h.len() > 100, "{name}: {} samples", h.len());
        println!(
            "edge hop: {name:6} send→socket µs: p50 {} p90 {} p99 {} max {} ({} packets)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
            h.len()
        );
        p50.push(h.value_at_quantile(0.5));
    }
    println!("edge hop: added p50 {} µs", p50[1] as i64 - p50[0] as i64);
    pc.stop.store(true, Ordering::Release);
    tokio::task::spawn_blocking(move || pd.join())
        .await
        .unwrap();
    b.shutdown().await;
    a.shutdown().await;
}
