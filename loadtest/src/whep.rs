//! `tandem-loadtest whep`: one WHIP publisher of synthetic VP8 or H.264 + Opus and N WHEP
//! viewers ramped at a given rate; measures forwarding cost, latency, loss, keyframe wait.
//! With simulcast (issue 15) the publisher sends 2–3 encodings; viewers may pin one
//! through the WHEP `layer` extension, or alternate between two to time switches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::bare::{self, BareResult};
use crate::client::{Counters, Driver, Latencies, Peer, PublishOptions};
use crate::media::VideoCodec;
use crate::procstat;
use crate::report::{self, Row};
use crate::server::{metric, scrape};
use crate::stats::{LayerCtl, LayerRole, NO_LAYER, Percentiles, new_histogram};

/// What to run.
#[derive(Debug, Clone)]
pub struct WhepConfig {
    /// `http://127.0.0.1:PORT` of the server.
    pub base: String,
    pub stream: String,
    pub publish_token: String,
    pub subscribe_token: String,
    /// The server's process id, for CPU and RSS (None: not measured).
    pub server_pid: Option<u32>,
    pub viewers: usize,
    /// Viewers started per second.
    pub ramp_per_s: f64,
    /// Threads running viewers (the publisher has its own).
    pub threads: usize,
    /// Length of the measurement window once every viewer is connected.
    pub duration: Duration,
    /// How long to wait for viewers to connect before measuring anyway.
    pub connect_timeout: Duration,
    pub publish: PublishOptions,
    /// Length of each bare-limit loop (zero: skip them).
    pub bare_duration: Duration,
    pub progress: bool,
    /// What viewers do about simulcast layers.
    pub layers: LayerPlan,
}

/// Which viewers pin a layer and which alternate between two (simulcast only).
#[derive(Debug, Clone, Default)]
pub struct LayerPlan {
    /// Rids the viewers that do not switch pin, round-robin, once connected
    /// (`POST {session}/layer {"rid":…}`); empty: automatic selection.
    pub pin: Vec<String>,
    /// This many viewers (the first ones) alternate their pin …
    pub switches: usize,
    /// … between these two rids (empty: the lowest and the highest offered) …
    pub switch_between: Option<(String, String)>,
    /// … each this often, staggered evenly over the period.
    pub switch_every: Duration,
}

impl Default for WhepConfig {
    fn default() -> Self {
        Self {
            base: String::new(),
            stream: "loadtest".into(),
            publish_token: String::new(),
            subscribe_token: String::new(),
            server_pid: None,
            viewers: 10,
            ramp_per_s: 50.0,
            threads: 1,
            duration: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            publish: PublishOptions::default(),
            bare_duration: Duration::from_secs(2),
            progress: false,
            layers: LayerPlan::default(),
        }
    }
}

/// Server-side figures from /proc and /metrics over the measurement window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerFigures {
    pub cpu_user_s: f64,
    pub cpu_system_s: f64,
    /// Cores busy on average during the window.
    pub cpu_cores: f64,
    pub user_us_per_forwarded: f64,
    pub system_us_per_forwarded: f64,
    pub total_us_per_forwarded: f64,
    pub rss_before_viewers_bytes: u64,
    pub rss_with_viewers_bytes: u64,
    pub rss_per_viewer_bytes: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Loss {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub late: u64,
    pub duplicates: u64,
    pub viewers_with_loss: usize,
}

/// Everything `whep` measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WhepReport {
    pub viewers_requested: usize,
    pub viewers_created: usize,
    pub viewers_connected: usize,
    pub viewers_failed: usize,
    pub setup_errors: Vec<String>,
    pub codec: VideoCodec,
    pub video_bitrate_bps: u64,
    pub fps: u32,
    pub window_s: f64,
    /// Packets the publisher sent per second (server's ingest).
    pub packets_in_per_s: f64,
    /// Packets the server forwarded per second (its `packets_forwarded_total{direction="out"}`).
    pub packets_out_per_s: f64,
    /// Packets the viewers received per second.
    pub packets_received_per_s: f64,
    pub avg_wire_bytes: f64,
    pub server: Option<ServerFigures>,
    /// Publisher send → viewer read, after SRTP both ways: includes the viewer
    /// thread's wait behind the other viewers it reads on the same core.
    pub latency: Percentiles,
    /// Publisher send → the packet in the viewer's socket (the kernel's receive stamp,
    /// `SO_TIMESTAMPNS`): the forwarding latency a viewer on its own machine sees.
    pub latency_at_socket: Percentiles,
    /// The server's own `tandem_forwarding_delay_seconds` mean over the window.
    pub server_forwarding_delay_mean_ms: f64,
    /// The upper bound of the histogram bucket holding its 99th percentile (the
    /// server's share of the latency, without the clients' scheduling).
    pub server_forwarding_delay_p99_le_ms: Option<f64>,
    pub server_dropped_packets: f64,
    pub loss: Loss,
    pub keyframe_wait: Percentiles,
    pub setup_time: Percentiles,
    pub keyframes_sent: u64,
    pub keyframe_requests: u64,
    /// PLIs the server sent the publisher over the whole run (its metric).
    pub server_keyframe_requests_sent: f64,
    pub bare_udp_sendmmsg: Option<BareResult>,
    pub bare_udp_sendto: Option<BareResult>,
    /// `sendmmsg` sweeps over every target at the publisher's packet rate, the
    /// receivers idle in between as the viewers are.
    pub bare_udp_paced: Option<BareResult>,
    pub load_average_before: f64,
    pub load_average_after: f64,
    pub keyframe_interval_s: f64,
    /// Simulcast figures (`None` without simulcast, pins or switches).
    pub simulcast: Option<SimulcastReport>,
}

/// What the viewers received per encoding, and the switches.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimulcastReport {
    pub rids: Vec<String>,
    pub encoding_bitrates_bps: Vec<u64>,
    /// Viewers by what they did, with the video packets they received per
    /// encoding in the measurement window.
    pub groups: Vec<GroupFigures>,
    /// `POST /layer` requests sent, refused (not 2xx, or no answer), and the first refusal.
    pub layer_requests: u64,
    pub layer_request_errors: u64,
    pub layer_request_first_error: Option<String>,
    /// Pinned viewers (switchers included) that did not receive their pin before the window.
    pub pins_not_reached: usize,
    /// Every change of encoding in a viewer's video stream, and the suspect ones.
    pub changes: u64,
    pub changes_not_on_keyframe: u64,
    pub changes_mid_frame: u64,
    pub changes_ts_not_forward: u64,
    pub switch: Option<SwitchFigures>,
    pub server: ServerLayerFigures,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupFigures {
    /// `auto`, `pinned q`, …, `switching q↔f`.
    pub group: String,
    pub viewers: usize,
    /// Video packets in the window per encoding (q, h, f, untagged).
    pub window_packets: [u64; 4],
    /// Pinned viewers that received any other encoding in the window.
    pub viewers_off_pin: usize,
    /// RTP packets missing from these viewers' streams (sequence gaps).
    pub lost: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SwitchFigures {
    pub viewers: usize,
    pub between: (String, String),
    pub every_s: f64,
    pub asked: u64,
    pub completed: u64,
    /// Asked (and timed), but the new encoding had not arrived by the next request
    /// or the end.
    pub unfinished: u64,
    /// `POST /layer` → the new encoding's first packet at the viewer's socket.
    pub time: Percentiles,
}

/// The server's simulcast metrics: counters over the measurement window, the
/// viewers-per-layer gauge at its end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerLayerFigures {
    pub switches_by_reason: BTreeMap<String, f64>,
    pub switch_keyframe_requests: f64,
    /// `tandem_simulcast_switch_seconds`: decided → the new encoding's first packet sent.
    pub switch_seconds_count: f64,
    pub switch_seconds_mean_ms: f64,
    /// Upper bounds of the buckets holding the 50th and 95th percentiles.
    pub switch_seconds_p50_le_ms: Option<f64>,
    pub switch_seconds_p95_le_ms: Option<f64>,
    pub viewers_per_layer: Vec<f64>,
}

/// `tandem_simulcast_switch_seconds` bucket bounds as the server prints them.
const SWITCH_BUCKETS: [&str; 9] = ["0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2", "5"];
const SWITCH_REASONS: [&str; 5] = [
    "start",
    "request",
    "bandwidth_down",
    "bandwidth_up",
    "layer_inactive",
];

/// What each viewer does about layers, by its index.
fn layer_role(plan: &LayerPlan, rids: &[&str], i: usize) -> Result<LayerRole, String> {
    let index = |rid: &str| -> Result<u8, String> {
        rids.iter()
            .position(|r| *r == rid)
            .map(|p| p as u8)
            .ok_or_else(|| format!("rid '{rid}' is not offered (offered: {})", rids.join(",")))
    };
    if i < plan.switches {
        let (a, b) = match &plan.switch_between {
            Some((a, b)) => (index(a)?, index(b)?),
            None => (0, rids.len().saturating_sub(1) as u8),
        };
        if a == b || rids.len() < 2 {
            return Err("switching needs two different offered rids (--simulcast 2 or 3)".into());
        }
        return Ok(LayerRole::Switching(a, b));
    }
    if plan.pin.is_empty() {
        return Ok(LayerRole::Auto);
    }
    let rid = &plan.pin[(i - plan.switches) % plan.pin.len()];
    Ok(LayerRole::Pinned(index(rid)?))
}

/// Counts `POST /layer` requests and what they were answered.
#[derive(Default)]
struct LayerRequests {
    sent: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

/// `POST {session}/layer` with `{"rid": rid}`; asks `ctl`'s viewer for encoding
/// `index` (timed when `timed`) just before the request leaves.
#[allow(clippy::too_many_arguments)]
async fn ask_layer(
    http: &reqwest::Client,
    session: &str,
    token: &str,
    rid: &str,
    index: u8,
    ctl: &LayerCtl,
    timed: bool,
    counts: &LayerRequests,
) {
    ctl.want.store(index, Ordering::Release);
    if timed {
        ctl.asked_us
            .store(crate::media::now_us().max(1), Ordering::Release);
    }
    counts.sent.fetch_add(1, Ordering::Relaxed);
    let r = http
        .post(format!("{session}/layer"))
        .header("Authorization", format!("Bearer {token}"))
        .json(&serde_json::json!({ "rid": rid }))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let refused = match r {
        Ok(resp) if resp.status().is_success() => None,
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            Some(format!("POST {session}/layer: {status}: {body}"))
        }
        Err(e) => Some(format!("POST {session}/layer: {e}")),
    };
    if let Some(e) = refused {
        counts.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = counts.first_error.lock() {
            first.get_or_insert(e);
        }
    }
}

/// The switch mode: each switcher flips its pin between its two rids every
/// `every`, switcher `j` of `n` offset by `j/n` of the period so the requests
/// meet the key frames at every phase. Returns (switches asked, asked while the
/// previous one had not arrived).
#[allow(clippy::too_many_arguments)]
async fn switch_layers(
    http: reqwest::Client,
    token: String,
    switchers: Vec<(String, Arc<LayerCtl>)>,
    rids: Vec<String>,
    every: Duration,
    start: Instant,
    stop_at: Instant,
    counts: Arc<LayerRequests>,
) -> (u64, u64) {
    let n = switchers.len().max(1) as u32;
    let mut next: Vec<Instant> = (0..switchers.len())
        .map(|j| start + every / n * j as u32 + every / n / 2)
        .collect();
    let (mut asked, mut unfinished) = (0, 0);
    let mut requests = tokio::task::JoinSet::new();
    while let Some((j, at)) = next.iter().copied().enumerate().min_by_key(|(_, t)| *t) {
        if at >= stop_at {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        next[j] = at + every;
        let (session, ctl) = switchers[j].clone();
        let LayerRole::Switching(a, b) = ctl.role else {
            continue;
        };
        let to = if ctl.want.load(Ordering::Acquire) == a {
            b
        } else {
            a
        };
        if ctl.asked_us.swap(0, Ordering::AcqRel) != 0 {
            unfinished += 1;
        }
        // A request for the encoding the viewer still gets (the previous switch
        // never arrived) is sent but not timed: its "first packet" is already there.
        let timed = ctl.current.load(Ordering::Acquire) != to;
        asked += u64::from(timed);
        let rid = rids.get(usize::from(to)).cloned().unwrap_or_default();
        let (http, token, counts) = (http.clone(), token.clone(), counts.clone());
        // Each request on its own task, so a slow answer delays no other switch.
        requests.spawn(async move {
            ask_layer(&http, &session, &token, &rid, to, &ctl, timed, &counts).await;
        });
    }
    while requests.join_next().await.is_some() {}
    (asked, unfinished)
}

/// The server's simulcast metrics between two scrapes.
fn server_layers(m0: &str, m1: &str) -> ServerLayerFigures {
    let d =
        |name: &str, labels: &[(&str, &str)]| metric(m1, name, labels) - metric(m0, name, labels);
    let mut f = ServerLayerFigures {
        switch_keyframe_requests: d("tandem_simulcast_switch_keyframe_requests_total", &[]),
        viewers_per_layer: (0..3)
            .map(|i| metric(m1, "tandem_simulcast_viewers", &[("layer", &i.to_string())]))
            .collect(),
        ..Default::default()
    };
    for reason in SWITCH_REASONS {
        let n = d("tandem_simulcast_switches_total", &[("reason", reason)]);
        f.switches_by_reason.insert(reason.to_string(), n);
    }
    let n = d("tandem_simulcast_switch_seconds_count", &[]);
    f.switch_seconds_count = n;
    if n > 0.0 {
        f.switch_seconds_mean_ms = d("tandem_simulcast_switch_seconds_sum", &[]) / n * 1000.0;
        let le = |q: f64| {
            SWITCH_BUCKETS
                .iter()
                .find(|le| d("tandem_simulcast_switch_seconds_bucket", &[("le", le)]) >= q * n)
                .and_then(|le| le.parse::<f64>().ok())
                .map(|s| s * 1000.0)
        };
        f.switch_seconds_p50_le_ms = le(0.5);
        f.switch_seconds_p95_le_ms = le(0.95);
    }
    f
}

async fn delete(http: &reqwest::Client, url: &str) {
    let _ = http
        .delete(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
}

/// Runs the WHEP load and returns the report (also after partial failures).
/// `tandem_forwarding_delay_seconds` bucket bounds as the server prints them.
const DELAY_BUCKETS: [&str; 11] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.025", "0.05",
    "0.1",
];

pub async fn run(cfg: &WhepConfig) -> Result<WhepReport, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| e.to_string())?;
    let counters = Arc::new(Counters::default());
    let mut report = WhepReport {
        viewers_requested: cfg.viewers,
        codec: cfg.publish.codec,
        video_bitrate_bps: cfg.publish.video_bitrate_bps,
        fps: cfg.publish.fps,
        load_average_before: procstat::loadavg(),
        keyframe_interval_s: cfg.publish.keyframe_interval_s,
        ..Default::default()
    };
    crate::media::base();
    let rids = cfg.publish.rids();
    let roles: Vec<LayerRole> = (0..cfg.viewers)
        .map(|i| layer_role(&cfg.layers, &rids, i))
        .collect::<Result<_, _>>()?;
    let layered = !rids.is_empty() || roles.iter().any(|r| *r != LayerRole::Auto);

    // The publisher, on its own thread.
    let pub_driver = Driver::spawn("lt-publisher", counters.clone()).map_err(|e| e.to_string())?;
    let whip = format!("{}/v1/whip/{}", cfg.base, cfg.stream);
    let publisher =
        Peer::connect(&http, &whip, &cfg.publish_token, Some(cfg.publish.clone())).await?;
    let publisher_url = publisher.session_url.clone();
    pub_driver.add(publisher);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !counters.publisher_connected.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            counters.stop.store(true, Ordering::Release);
            pub_driver.join();
            return Err("the publisher did not connect within 15 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the stream settle (tracks open, first keyframe) before viewers come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m_begin = scrape(&http, &cfg.base).await;
    let rss_before = cfg
        .server_pid
        .and_then(|p| procstat::sample(p).ok())
        .map(|s| s.rss_bytes)
        .unwrap_or(0);

    // Viewers, ramped.
    let threads = cfg.threads.max(1);
    let drivers: Vec<Arc<Driver>> = (0..threads)
        .map(|i| Driver::spawn(&format!("lt-viewers-{i}"), counters.clone()).map(Arc::new))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let pb = report::progress(cfg.progress, cfg.viewers as u64, "viewers connecting");
    let whep = format!("{}/v1/whep/{}", cfg.base, cfg.stream);
    let sem = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::with_capacity(cfg.viewers);
    let ramp = Duration::from_secs_f64(1.0 / cfg.ramp_per_s.max(0.01));
    let ramp_start = Instant::now();
    for i in 0..cfg.viewers {
        let at = ramp_start + ramp.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let http = http.clone();
        let url = whep.clone();
        let token = cfg.subscribe_token.clone();
        let driver = drivers[i % threads].clone();
        let ctl = Arc::new(LayerCtl::new(roles[i]));
        let viewer_ctl = ctl.clone();
        tasks.push((
            ctl,
            tokio::spawn(async move {
                let r = Peer::connect_with(&http, &url, &token, None, Some(viewer_ctl)).await;
                drop(permit);
                r.map(|peer| {
                    let session = peer.session_url.clone();
                    driver.add(peer);
                    session
                })
            }),
        ));
        pb.set_position(counters.viewers_connected.load(Ordering::Relaxed) as u64);
    }
    let mut errors = Vec::new();
    // Each created viewer's session URL and its layer control.
    let mut sessions: Vec<(String, Arc<LayerCtl>)> = Vec::new();
    for (ctl, t) in tasks {
        match t.await {
            Ok(Ok(session)) => {
                report.viewers_created += 1;
                sessions.push((session, ctl));
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    report.setup_errors = errors.iter().take(5).cloned().collect();
    if errors.len() > 5 {
        report
            .setup_errors
            .push(format!("… and {} more", errors.len() - 5));
    }
    let deadline = Instant::now() + cfg.connect_timeout;
    loop {
        let done = counters.viewers_connected.load(Ordering::Relaxed)
            + counters.viewers_failed.load(Ordering::Relaxed);
        pb.set_position(counters.viewers_connected.load(Ordering::Relaxed) as u64);
        if done >= report.viewers_created || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();

    // Pins (switchers start on their first rid), then wait for each pinned viewer's
    // encoding to arrive: the switch waits for that encoding's key frame.
    let layer_requests = Arc::new(LayerRequests::default());
    let pinned: Vec<&(String, Arc<LayerCtl>)> = sessions
        .iter()
        .filter(|(_, c)| c.role != LayerRole::Auto)
        .collect();
    let mut pins_not_reached = 0;
    if !pinned.is_empty() {
        let asks = pinned.iter().map(|(session, ctl)| {
            let index = match ctl.role {
                LayerRole::Pinned(i) | LayerRole::Switching(i, _) => i,
                LayerRole::Auto => NO_LAYER,
            };
            let rid = rids.get(usize::from(index)).copied().unwrap_or("");
            let (http, token, counts) = (&http, &cfg.subscribe_token, &layer_requests);
            async move { ask_layer(http, session, token, rid, index, ctl, false, counts).await }
        });
        futures_util::future::join_all(asks).await;
        let reached = || {
            pinned
                .iter()
                .filter(|(_, c)| {
                    c.current.load(Ordering::Acquire) == c.want.load(Ordering::Acquire)
                })
                .count()
        };
        let deadline =
            Instant::now() + Duration::from_secs_f64(2.0 * cfg.publish.keyframe_interval_s + 3.0);
        while reached() < pinned.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pins_not_reached = pinned.len() - reached();
    }

    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pb = report::progress(cfg.progress, cfg.duration.as_secs().max(1), "measuring");
    let m0 = scrape(&http, &cfg.base).await;
    let p0 = cfg.server_pid.and_then(|p| procstat::sample(p).ok());
    let rx0 = counters.rx_packets.load(Ordering::Relaxed);
    let tx0 = counters.tx_packets.load(Ordering::Relaxed);
    let t0 = Instant::now();
    counters.measuring.store(true, Ordering::Release);
    let switch_task = (cfg.layers.switches > 0).then(|| {
        let switchers: Vec<(String, Arc<LayerCtl>)> = sessions
            .iter()
            .filter(|(_, c)| matches!(c.role, LayerRole::Switching(..)))
            .cloned()
            .collect();
        let rids: Vec<String> = rids.iter().map(|r| r.to_string()).collect();
        // No request the last stretch of the window could not answer (a key frame away).
        let stop_at = t0
            + cfg.duration.saturating_sub(
                Duration::from_secs_f64(cfg.publish.keyframe_interval_s)
                    .min(cfg.layers.switch_every),
            );
        tokio::spawn(switch_layers(
            http.clone(),
            cfg.subscribe_token.clone(),
            switchers,
            rids,
            cfg.layers.switch_every.max(Duration::from_millis(100)),
            t0,
            stop_at,
            layer_requests.clone(),
        ))
    });
    while t0.elapsed() < cfg.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pb.set_position(t0.elapsed().as_secs());
        let rx = counters.rx_packets.load(Ordering::Relaxed) - rx0;
        pb.set_message(format!(
            "{:.0} packets/s received",
            rx as f64 / t0.elapsed().as_secs_f64()
        ));
    }
    counters.measuring.store(false, Ordering::Release);
    let window = t0.elapsed();
    let (switches_asked, mut switches_unfinished) = match switch_task {
        Some(t) => t.await.unwrap_or((0, 0)),
        None => (0, 0),
    };
    let p1 = cfg.server_pid.and_then(|p| procstat::sample(p).ok());
    let m1 = scrape(&http, &cfg.base).await;
    let rx1 = counters.rx_packets.load(Ordering::Relaxed);
    let tx1 = counters.tx_packets.load(Ordering::Relaxed);
    pb.finish_and_clear();
    report.server_keyframe_requests_sent = metric(&m1, "tandem_keyframe_requests_sent_total", &[])
        - metric(&m_begin, "tandem_keyframe_requests_sent_total", &[]);

    let w = window.as_secs_f64();
    report.window_s = w;
    let d =
        |name: &str, labels: &[(&str, &str)]| metric(&m1, name, labels) - metric(&m0, name, labels);
    let out = d("tandem_packets_forwarded_total", &[("direction", "out")]);
    report.packets_out_per_s = out / w;
    report.packets_in_per_s = (tx1 - tx0) as f64 / w;
    report.packets_received_per_s = (rx1 - rx0) as f64 / w;
    report.server_dropped_packets = d("tandem_dropped_packets_total", &[]);
    let delay_n = d("tandem_forwarding_delay_seconds_count", &[]);
    if delay_n > 0.0 {
        report.server_forwarding_delay_mean_ms =
            d("tandem_forwarding_delay_seconds_sum", &[]) / delay_n * 1000.0;
        report.server_forwarding_delay_p99_le_ms = DELAY_BUCKETS
            .iter()
            .find(|le| d("tandem_forwarding_delay_seconds_bucket", &[("le", le)]) >= 0.99 * delay_n)
            .and_then(|le| le.parse::<f64>().ok())
            .map(|s| s * 1000.0);
    }
    let rx_bytes = counters.rx_bytes.load(Ordering::Relaxed) as f64;
    let rx_all = counters.rx_packets.load(Ordering::Relaxed).max(1) as f64;
    // RTP header (12) + SRTP AES-GCM tag (16) around the payload.
    report.avg_wire_bytes = rx_bytes / rx_all + 28.0;
    if let (Some(a), Some(b)) = (p0, p1) {
        let (u, s, wall) = procstat::delta(&a, &b);
        let n = out.max(1.0);
        report.server = Some(ServerFigures {
            cpu_user_s: u.as_secs_f64(),
            cpu_system_s: s.as_secs_f64(),
            cpu_cores: (u + s).as_secs_f64() / wall.as_secs_f64().max(1e-9),
            user_us_per_forwarded: u.as_secs_f64() * 1e6 / n,
            system_us_per_forwarded: s.as_secs_f64() * 1e6 / n,
            total_us_per_forwarded: (u + s).as_secs_f64() * 1e6 / n,
            rss_before_viewers_bytes: rss_before,
            rss_with_viewers_bytes: b.rss_bytes,
            rss_per_viewer_bytes: (b.rss_bytes as f64 - rss_before as f64)
                / counters.viewers_connected.load(Ordering::Relaxed).max(1) as f64,
        });
    }

    // Stop the peers, collect what they counted, end the sessions.
    counters.stop.store(true, Ordering::Release);
    let mut latency = Latencies::new();
    let mut keyframe = new_histogram();
    let mut setup = new_histogram();
    let mut urls = vec![publisher_url];
    let mut loss = Loss::default();
    let mut sim = SimulcastReport {
        rids: rids.iter().map(|r| r.to_string()).collect(),
        encoding_bitrates_bps: cfg.publish.encoding_rates(),
        pins_not_reached,
        ..Default::default()
    };
    let mut groups: BTreeMap<String, GroupFigures> = BTreeMap::new();
    let mut switch_time = new_histogram();
    let rid_name = |i: u8| rids.get(usize::from(i)).copied().unwrap_or("?").to_string();
    for d in drivers {
        d.wake();
        let Ok(d) = Arc::try_unwrap(d) else { continue };
        let r = d.join();
        latency.add(&r.latency);
        urls.extend(r.session_urls);
        for v in r.viewers {
            if let Some(k) = v.keyframe_wait() {
                let _ = keyframe.record((k.as_micros() as u64).max(1));
            }
            if let Some(s) = v.setup_time() {
                let _ = setup.record((s.as_micros() as u64).max(1));
            }
            let lost = v.video.lost() + v.audio.lost();
            loss.expected += v.video.expected() + v.audio.expected();
            loss.received += v.video.received + v.audio.received;
            loss.lost += lost;
            loss.late += v.video.late + v.audio.late;
            loss.duplicates += v.video.duplicates + v.audio.duplicates;
            if lost > 0 {
                loss.viewers_with_loss += 1;
            }
            let l = &v.layers;
            sim.changes += l.changes;
            sim.changes_not_on_keyframe += l.change_not_on_keyframe;
            sim.changes_mid_frame += l.change_mid_frame;
            sim.changes_ts_not_forward += l.change_ts_not_forward;
            for us in &l.switch_us {
                let _ = switch_time.record(*us);
            }
            let role = v.ctl.as_ref().map_or(LayerRole::Auto, |c| c.role);
            if let Some(c) = &v.ctl
                && c.asked_us.load(Ordering::Acquire) != 0
            {
                switches_unfinished += 1;
            }
            let (name, pin) = match role {
                LayerRole::Auto => ("auto".to_string(), None),
                LayerRole::Pinned(i) => (format!("pinned {}", rid_name(i)), Some(usize::from(i))),
                LayerRole::Switching(a, b) => {
                    (format!("switching {}<->{}", rid_name(a), rid_name(b)), None)
                }
            };
            let g = groups.entry(name.clone()).or_insert_with(|| GroupFigures {
                group: name,
                ..Default::default()
            });
            g.viewers += 1;
            g.lost += lost;
            for (k, n) in l.window_packets.iter().enumerate() {
                g.window_packets[k] += n;
            }
            if let Some(pin) = pin
                && l.window_packets
                    .iter()
                    .enumerate()
                    .any(|(k, n)| k != pin && *n > 0)
            {
                g.viewers_off_pin += 1;
            }
        }
    }
    pub_driver.join();
    loss.loss_ratio = loss.lost as f64 / loss.expected.max(1) as f64;
    report.loss = loss;
    report.latency = Percentiles::of(&latency.read);
    report.latency_at_socket = Percentiles::of(&latency.socket);
    report.keyframe_wait = Percentiles::of(&keyframe);
    if layered {
        sim.groups = groups.into_values().collect();
        sim.layer_requests = layer_requests.sent.load(Ordering::Relaxed);
        sim.layer_request_errors = layer_requests.errors.load(Ordering::Relaxed);
        sim.layer_request_first_error = layer_requests
            .first_error
            .lock()
            .ok()
            .and_then(|e| e.clone());
        if cfg.layers.switches > 0 {
            let time = Percentiles::of(&switch_time);
            let between = match roles.first() {
                Some(LayerRole::Switching(a, b)) => (rid_name(*a), rid_name(*b)),
                _ => Default::default(),
            };
            sim.switch = Some(SwitchFigures {
                viewers: cfg.layers.switches.min(cfg.viewers),
                between,
                every_s: cfg.layers.switch_every.as_secs_f64(),
                asked: switches_asked,
                completed: time.count,
                unfinished: switches_unfinished,
                time,
            });
        }
        sim.server = server_layers(&m0, &m1);
        report.simulcast = Some(sim);
    }
    report.setup_time = Percentiles::of(&setup);
    report.viewers_connected = counters.viewers_connected.load(Ordering::Relaxed);
    report.viewers_failed = counters.viewers_failed.load(Ordering::Relaxed);
    report.keyframes_sent = counters.keyframes_sent.load(Ordering::Relaxed);
    report.keyframe_requests = counters.keyframe_requests.load(Ordering::Relaxed);
    let sem = Arc::new(Semaphore::new(32));
    let mut dels = Vec::new();
    for url in urls {
        let http = http.clone();
        let sem = sem.clone();
        dels.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            delete(&http, &url).await;
        }));
    }
    for d in dels {
        let _ = d.await;
    }

    // The bare limits, on the same machine, now that the load is gone.
    if !cfg.bare_duration.is_zero() {
        let n = cfg.viewers.max(1);
        let size = report.avg_wire_bytes.round().max(64.0) as usize;
        let dur = cfg.bare_duration;
        let every = (report.packets_in_per_s > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / report.packets_in_per_s));
        let (mm, st, paced) = tokio::task::spawn_blocking(move || {
            (
                bare::udp(n, size, dur, 64).ok(),
                bare::udp(n, size, dur, 1).ok(),
                every.and_then(|every| bare::udp_paced(n, size, every, dur).ok()),
            )
        })
        .await
        .map_err(|e| e.to_string())?;
        report.bare_udp_sendmmsg = mm;
        report.bare_udp_sendto = st;
        report.bare_udp_paced = paced;
    }
    report.load_average_after = procstat::loadavg();
    Ok(report)
}

/// The table of a `whep` report, with the targets of issue 5.
pub fn rows(r: &WhepReport) -> Vec<Row> {
    let mut rows = vec![
        Row::new(
            "viewers connected / requested",
            format!("{} / {}", r.viewers_connected, r.viewers_requested),
        ),
        Row::new(
            "stream",
            format!(
                "{:.2} Mbps {} @ {} fps + Opus",
                r.video_bitrate_bps as f64 / 1e6,
                r.codec.name(),
                r.fps
            ),
        ),
        Row::new(
            "packets/s in (publisher)",
            format!("{:.0}", r.packets_in_per_s),
        ),
        Row::new(
            "packets/s out (server)",
            format!("{:.0}", r.packets_out_per_s),
        ),
        Row::new(
            "packets/s received (viewers)",
            format!("{:.0}", r.packets_received_per_s),
        ),
    ];
    let bare = r.bare_udp_sendmmsg.as_ref();
    if let Some(s) = &r.server {
        rows.push(
            Row::new(
                "server user CPU / forwarded packet",
                report::us(s.user_us_per_forwarded),
            )
            .target("≤ 2.5 µs", Some(s.user_us_per_forwarded <= 2.5)),
        );
        rows.push(Row::new(
            "server system CPU / forwarded packet",
            report::us(s.system_us_per_forwarded),
        ));
        let mut row = Row::new(
            "server total CPU / forwarded packet",
            report::us(s.total_us_per_forwarded),
        );
        if let Some(b) = bare {
            let ratio = s.total_us_per_forwarded / b.total_us_per_op;
            row = row
                .bare(
                    format!("{} (sendmmsg)", report::us(b.total_us_per_op)),
                    ratio,
                )
                .target("≤ 1.5× bare", Some(ratio <= 1.5));
        }
        rows.push(row);
        let other_bares = [
            ("  same, against sendto per packet", &r.bare_udp_sendto),
            (
                "  same, against sendmmsg paced like the forwarding (idle receivers)",
                &r.bare_udp_paced,
            ),
        ];
        for (label, bare) in other_bares {
            if let Some(b) = bare {
                rows.push(Row::new(label, report::us(s.total_us_per_forwarded)).bare(
                    report::us(b.total_us_per_op),
                    s.total_us_per_forwarded / b.total_us_per_op,
                ));
            }
        }
        rows.push(Row::new(
            "server CPU cores busy",
            format!("{:.2}", s.cpu_cores),
        ));
        rows.push(Row::new(
            "server RSS per viewer",
            format!("{:.0} KiB", s.rss_per_viewer_bytes / 1024.0),
        ));
    }
    let socket = &r.latency_at_socket;
    rows.push(
        Row::new(
            "latency to the viewer's socket p50 / p99 / p999",
            report::ms_each(&[socket.p50_ms, socket.p99_ms, socket.p999_ms]),
        )
        .target(
            "p99 < 2 ms",
            (socket.count > 0).then_some(socket.p99_ms < 2.0),
        ),
    );
    rows.push(Row::new(
        "latency to the viewer's read p50 / p99 / p999",
        report::ms_each(&[r.latency.p50_ms, r.latency.p99_ms, r.latency.p999_ms]),
    ));
    rows.push(Row::new(
        "server forwarding delay mean / p99",
        format!(
            "{} / {}",
            report::ms(r.server_forwarding_delay_mean_ms),
            r.server_forwarding_delay_p99_le_ms
                .map(|ms| format!("≤ {}", report::ms(ms)))
                .unwrap_or_else(|| "> 100 ms".into())
        ),
    ));
    rows.push(
        Row::new(
            "loss (lost / expected)",
            format!(
                "{} / {} ({:.4} %)",
                r.loss.lost,
                r.loss.expected,
                r.loss.loss_ratio * 100.0
            ),
        )
        .target("0 below saturation", Some(r.loss.lost == 0)),
    );
    rows.push(Row::new(
        "late (reordered) packets",
        r.loss.late.to_string(),
    ));
    rows.push(Row::new(
        "server dropped packets",
        format!("{:.0}", r.server_dropped_packets),
    ));
    rows.push(
        Row::new(
            "keyframe wait p50 / p95 / p99",
            report::ms_each(&[
                r.keyframe_wait.p50_ms,
                r.keyframe_wait.p95_ms,
                r.keyframe_wait.p99_ms,
            ]),
        )
        .target(
            "p99 < 600 ms",
            (r.keyframe_wait.count > 0).then_some(r.keyframe_wait.p99_ms < 600.0),
        ),
    );
    rows.push(Row::new(
        "session setup p50 / p99",
        report::ms_each(&[r.setup_time.p50_ms, r.setup_time.p99_ms]),
    ));
    if let Some(sim) = &r.simulcast {
        simulcast_rows(r, sim, &mut rows);
    }
    rows.push(Row::new(
        "load average before / after",
        format!("{:.2} / {:.2}", r.load_average_before, r.load_average_after),
    ));
    rows
}

/// The simulcast part of the table.
fn simulcast_rows(r: &WhepReport, sim: &SimulcastReport, rows: &mut Vec<Row>) {
    let names: Vec<&str> = sim.rids.iter().map(|r| r.as_str()).collect();
    rows.push(Row::new(
        "simulcast encodings (kbit/s), key-frame interval",
        format!(
            "{}, {} s",
            if names.is_empty() {
                "none".to_string()
            } else {
                names
                    .iter()
                    .zip(&sim.encoding_bitrates_bps)
                    .map(|(n, b)| format!("{n} {}", b / 1000))
                    .collect::<Vec<_>>()
                    .join(" / ")
            },
            r.keyframe_interval_s
        ),
    ));
    for g in &sim.groups {
        let packets = ["q", "h", "f", "untagged"]
            .iter()
            .zip(g.window_packets)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut row = Row::new(
            &format!(
                "video packets in window, {} ({} viewers)",
                g.group, g.viewers
            ),
            if packets.is_empty() {
                "none".to_string()
            } else {
                packets
            },
        );
        if g.group.starts_with("pinned") {
            row = row.target(
                "only the pinned encoding",
                Some(g.viewers_off_pin == 0 && g.window_packets.iter().sum::<u64>() > 0),
            );
        }
        rows.push(row);
    }
    if sim.layer_requests > 0 {
        rows.push(Row::new(
            "/layer requests (refused)",
            format!("{} ({})", sim.layer_requests, sim.layer_request_errors),
        ));
        if let Some(e) = &sim.layer_request_first_error {
            rows.push(Row::new(
                "  first refusal",
                e.chars().take(120).collect::<String>(),
            ));
        }
        rows.push(Row::new(
            "pinned viewers without their encoding before the window",
            sim.pins_not_reached.to_string(),
        ));
    }
    rows.push(Row::new(
        "encoding changes seen: total / not on a key frame / mid-frame / ts not forward",
        format!(
            "{} / {} / {} / {}",
            sim.changes,
            sim.changes_not_on_keyframe,
            sim.changes_mid_frame,
            sim.changes_ts_not_forward
        ),
    ));
    if let Some(s) = &sim.switch {
        rows.push(Row::new(
            &format!(
                "switches {}<->{} every {} s by {} viewers: asked / arrived / unfinished",
                s.between.0, s.between.1, s.every_s, s.viewers
            ),
            format!("{} / {} / {}", s.asked, s.completed, s.unfinished),
        ));
        let kf_ms = r.keyframe_interval_s * 1000.0;
        rows.push(
            Row::new(
                "switch time POST /layer → first packet p50 / p95 / max",
                report::ms_each(&[s.time.p50_ms, s.time.p95_ms, s.time.max_ms]),
            )
            .target(
                &format!("p95 ≤ key-frame interval ({kf_ms:.0} ms) + RTT"),
                (s.time.count > 0).then_some(s.time.p95_ms <= kf_ms + 10.0),
            ),
        );
    }
    let sv = &sim.server;
    let le = |x: Option<f64>| x.map_or("-".to_string(), |ms| format!("≤ {}", report::ms(ms)));
    rows.push(Row::new(
        "server switch time (tandem_simulcast_switch_seconds): n, mean, p50, p95",
        format!(
            "{:.0}, {}, {}, {}",
            sv.switch_seconds_count,
            report::ms(sv.switch_seconds_mean_ms),
            le(sv.switch_seconds_p50_le_ms),
            le(sv.switch_seconds_p95_le_ms)
        ),
    ));
    rows.push(Row::new(
        "server switches in window by reason",
        sv.switches_by_reason
            .iter()
            .filter(|(_, n)| **n > 0.0)
            .map(|(k, n)| format!("{k} {n:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    rows.push(Row::new(
        "server switch key-frame requests in window; viewers per layer q / h / f",
        format!(
            "{:.0}; {}",
            sv.switch_keyframe_requests,
            sv.viewers_per_layer
                .iter()
                .map(|n| format!("{n:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
    ));
}
