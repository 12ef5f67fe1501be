//! `tandem-loadtest call`: the server's cost of one call of N participants, each
//! publishing synthetic VP8 + Opus over WHIP and viewing every other over WHEP
//! (N publishers, N·(N−1) views), through the real call API: the call is created
//! with the service key, each participant asks `POST /v1/calls/{id}/token` with its
//! own identity JWT and uses the `whip_url` and `whep_urls` it is given.
//!
//! Why this and not aiortc: 8 aiortc participants are 64 Python processes that
//! encode and decode; on 2 cores they starve each other and send a fraction of
//! their frames, so the server's CPU they show is not a call of 8 (measured:
//! docs/PERFORMANCE.md "Calls"). These peers send pre-built frames at the real
//! rate and never decode, so the server sees the packet rate a call of 8 has.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::client::{Counters, Driver, Peer, PublishOptions};
use crate::procstat;
use crate::report::Row;
use crate::sync::identity_jwt;

/// What to run.
pub struct CallConfig {
    pub base: String,
    pub service_key: String,
    pub jwt_secret: String,
    pub server_pid: Option<u32>,
    pub participants: usize,
    pub duration: Duration,
    pub publish: PublishOptions,
}

/// What was measured.
#[derive(Debug, Default, Serialize)]
pub struct CallReport {
    pub participants: usize,
    pub views_requested: usize,
    pub views_connected: usize,
    pub views_failed: usize,
    pub setup_errors: Vec<String>,
    pub window_s: f64,
    pub video_bitrate_bps: u64,
    pub fps: u32,
    /// Packets the publishers sent per second (all of them).
    pub sent_packets_per_s: f64,
    /// Packets every view received per second (all of them): what the SFU forwarded.
    pub received_packets_per_s: f64,
    pub received_mbit_per_s: f64,
    /// The server's user + system CPU over the window, % of one core.
    pub server_cpu_percent: Option<f64>,
    /// … per forwarded (received) packet, µs.
    pub server_cpu_us_per_packet: Option<f64>,
    pub server_rss_mib: Option<f64>,
    pub load_average_before: f64,
    pub load_average_after: f64,
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Waits (polling, 20 ms) until `done` or `timeout`.
async fn until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Runs one call and measures it.
pub async fn run(cfg: &CallConfig) -> Result<CallReport, String> {
    if !(2..=8).contains(&cfg.participants) {
        return Err("--participants: a call has 2 to 8 participants".into());
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(err("http client"))?;
    let users: Vec<String> = (0..cfg.participants).map(|i| format!("p{i}")).collect();
    let participants: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"user": u, "role": if i == 0 { "host" } else { "participant" }}))
        .collect();
    let r = http
        .post(format!("{}/v1/calls", cfg.base))
        .bearer_auth(&cfg.service_key)
        .json(&json!({"participants": participants}))
        .send()
        .await
        .map_err(err("POST /v1/calls"))?;
    let status = r.status();
    let call: Value = r.json().await.map_err(err("POST /v1/calls body"))?;
    if !status.is_success() {
        return Err(format!("POST /v1/calls: {status}: {call}"));
    }
    let id = call["id"].as_str().ok_or("the call has no id")?.to_string();

    // Each participant's own call token: its WHIP URL and the others' WHEP URLs.
    let mut tokens = Vec::new();
    for u in &users {
        let jwt = identity_jwt(&cfg.jwt_secret, u, "user")?;
        let r = http
            .post(format!("{}/v1/calls/{id}/token", cfg.base))
            .bearer_auth(&jwt)
            .json(&json!({}))
            .send()
            .await
            .map_err(err("call token"))?;
        let status = r.status();
        let body: Value = r.json().await.map_err(err("call token body"))?;
        if !status.is_success() {
            return Err(format!("call token for {u}: {status}: {body}"));
        }
        tokens.push(body);
    }

    let mut report = CallReport {
        participants: cfg.participants,
        views_requested: cfg.participants * (cfg.participants - 1),
        video_bitrate_bps: cfg.publish.video_bitrate_bps,
        fps: cfg.publish.fps,
        load_average_before: procstat::loadavg(),
        ..Default::default()
    };
    crate::media::base();
    let counters = Arc::new(Counters::default());
    let publishers =
        Driver::spawn("lt-call-publishers", counters.clone()).map_err(err("thread"))?;
    let viewers = Driver::spawn("lt-call-viewers", counters.clone()).map_err(err("thread"))?;
    let stop = |report: CallReport| {
        counters.stop.store(true, Ordering::Release);
        report
    };

    // Publishers one by one: `publisher_connected` is one flag, cleared before each.
    for (u, t) in users.iter().zip(&tokens) {
        let whip = t["whip_url"].as_str().ok_or("no whip_url")?;
        let token = t["token"].as_str().ok_or("no token")?;
        counters.publisher_connected.store(false, Ordering::Release);
        let peer = match Peer::connect(&http, whip, token, Some(cfg.publish.clone())).await {
            Ok(p) => p,
            Err(e) => {
                stop(CallReport::default());
                publishers.join();
                viewers.join();
                return Err(format!("{u}'s WHIP: {e}"));
            }
        };
        publishers.add(peer);
        let c = counters.clone();
        if !until(Duration::from_secs(15), || {
            c.publisher_connected.load(Ordering::Acquire)
        })
        .await
        {
            stop(CallReport::default());
            publishers.join();
            viewers.join();
            return Err(format!("{u}'s publisher did not connect within 15 s"));
        }
    }
    // Then every view (u → other).
    let mut created = 0;
    for t in &tokens {
        let token = t["token"].as_str().ok_or("no token")?;
        for url in t["whep_urls"]
            .as_object()
            .ok_or("no whep_urls")?
            .values()
            .filter_map(Value::as_str)
        {
            match Peer::connect(&http, url, token, None).await {
                Ok(p) => {
                    created += 1;
                    viewers.add(p);
                }
                Err(e) => {
                    if report.setup_errors.len() < 5 {
                        report.setup_errors.push(e);
                    }
                }
            }
        }
    }
    let c = counters.clone();
    until(Duration::from_secs(30), || {
        c.viewers_connected.load(Ordering::Relaxed) + c.viewers_failed.load(Ordering::Relaxed)
            >= created
    })
    .await;
    report.views_connected = counters.viewers_connected.load(Ordering::Relaxed);
    report.views_failed = report.views_requested - report.views_connected;
    // Key frames reach every view (PLIs at join), then the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rx0, tx0, rxb0) = (
        counters.rx_packets.load(Ordering::Relaxed),
        counters.tx_packets.load(Ordering::Relaxed),
        counters.rx_bytes.load(Ordering::Relaxed),
    );
    let s0 = cfg.server_pid.and_then(|p| procstat::sample(p).ok());
    let t0 = Instant::now();
    tokio::time::sleep(cfg.duration).await;
    let window = t0.elapsed().as_secs_f64();
    let s1 = cfg.server_pid.and_then(|p| procstat::sample(p).ok());
    let rx = counters.rx_packets.load(Ordering::Relaxed) - rx0;
    let tx = counters.tx_packets.load(Ordering::Relaxed) - tx0;
    let rxb = counters.rx_bytes.load(Ordering::Relaxed) - rxb0;
    report.window_s = window;
    report.sent_packets_per_s = tx as f64 / window;
    report.received_packets_per_s = rx as f64 / window;
    report.received_mbit_per_s = rxb as f64 * 8.0 / window / 1e6;
    if let (Some(a), Some(b)) = (s0, s1) {
        let (user, system, wall) = procstat::delta(&a, &b);
        let cpu = (user + system).as_secs_f64();
        report.server_cpu_percent = Some(cpu / wall.as_secs_f64() * 100.0);
        report.server_cpu_us_per_packet = (rx > 0).then(|| cpu * 1e6 / rx as f64);
        report.server_rss_mib = Some(b.rss_bytes as f64 / 1048576.0);
    }
    report.load_average_after = procstat::loadavg();
    let report = stop(report);
    publishers.join();
    viewers.join();
    Ok(report)
}

/// The report as table rows.
pub fn rows(r: &CallReport) -> Vec<Row> {
    let opt = |v: Option<f64>, unit: &str, digits: usize| match v {
        Some(v) => format!("{v:.digits$}{unit}"),
        None => "n/a (no server pid)".into(),
    };
    let mut rows = vec![
        Row::new(
            "participants (publishers, views)",
            format!(
                "{} ({}, {})",
                r.participants, r.participants, r.views_requested
            ),
        ),
        Row::new(
            "views connected / failed",
            format!("{} / {}", r.views_connected, r.views_failed),
        ),
        Row::new(
            "video per publisher",
            format!("{} kbit/s, {} fps", r.video_bitrate_bps / 1000, r.fps),
        ),
        Row::new("window", format!("{:.1} s", r.window_s)),
        Row::new(
            "packets sent (all publishers)",
            format!("{:.0}/s", r.sent_packets_per_s),
        ),
        Row::new(
            "packets received (all views)",
            format!(
                "{:.0}/s, {:.1} Mbit/s",
                r.received_packets_per_s, r.received_mbit_per_s
            ),
        ),
        Row::new("server CPU", opt(r.server_cpu_percent, " % of a core", 1)),
        Row::new(
            "server CPU per received packet",
            opt(r.server_cpu_us_per_packet, " µs", 2),
        ),
        Row::new("server RSS", opt(r.server_rss_mib, " MiB", 1)),
        Row::new(
            "load average before / after",
            format!("{:.2} / {:.2}", r.load_average_before, r.load_average_after),
        ),
    ];
    for e in &r.setup_errors {
        rows.push(Row::new("setup error", e.clone()));
    }
    rows
}
