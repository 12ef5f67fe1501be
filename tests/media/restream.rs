//! Issue 16, restream, with real peers and real RTMP servers: private
//! nginx-rtmp instances (support::rtmp) whose `on_publish` refuses the key
//! a key, driven through `state.restreams` directly (the HTTP routes are
//! tests/api). Statuses are awaited on the restream's event channel, never
//! slept for.
//!
//! - An aiortc publisher (H.264 + Opus) goes to two destinations: `ffprobe` on
//!   each RTMP URL reads H.264 of the published size (copied) and AAC. One
//!   nginx killed: that destination goes `retrying`, the other stays `live` and
//!   a WHEP viewer sees no gap; nginx back on the same port: `live` again. A
//!   refused key: `failed` after at most two attempts. A destination added
//!   while live (over RTMPS: TLS in front of nginx) goes live; one removed:
//!   its ffmpeg is gone. `stop`: all gone.
//! - A Chromium broadcaster (VP8 + Opus) is transcoded: H.264 of the
//!   published size with a key frame every 2 s, AAC on the same timeline as
//!   the video; the server's shutdown kills the ffmpeg.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;
use tandem::restream::{DestinationSpec, DestinationStatus, Status, Target};
use tokio::sync::broadcast;

fn dest(id: &str, url: String) -> DestinationSpec {
    DestinationSpec {
        connection_id: id.into(),
        platform: "rtmp".into(),
        target: Target::Url(url),
    }
}

/// Waits on `events` for destination `id` to reach `status`; returns it.
async fn wait_status(
    events: &mut broadcast::Receiver<DestinationStatus>,
    id: &str,
    status: Status,
    within: Duration,
) -> DestinationStatus {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(s)) => {
                if s.connection_id == id && s.status == status {
                    return s;
                }
                seen.push(format!(
                    "{} {:?} a{} {:?}",
                    s.connection_id, s.status, s.attempts, s.last_error
                ));
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("events closed: {e}"),
            Err(_) => panic!("{id} not {status:?} within {within:?}; saw: {seen:#?}"),
        }
    }
}

fn status_of(app: &TestApp, stream: &str, id: &str) -> DestinationStatus {
    app.state()
        .restreams
        .status(stream)
        .into_iter()
        .find(|s| s.connection_id == id)
        .unwrap_or_else(|| panic!("no destination {id}"))
}

/// The first `seconds` of a live URL: the video key frames' times, and the
/// largest distance between an audio packet's time and the video packet's
/// before it (the two timelines line up when the feed's sender reports tie
/// them to one clock).
async fn timeline(url: String, seconds: u32) -> (Vec<f64>, f64) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-rw_timeout",
                "15000000",
                "-read_intervals",
                &format!("%+{seconds}"),
                "-show_entries",
                "packet=codec_type,pts_time,flags",
                "-of",
                "json",
                &url,
            ])
            .output()
            .expect("ffprobe runs");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut keys = Vec::new();
        let (mut video_at, mut skew) = (None::<f64>, 0.0f64);
        for p in v["packets"].as_array().into_iter().flatten() {
            let Some(t) = p["pts_time"].as_str().and_then(|t| t.parse::<f64>().ok()) else {
                continue;
            };
            match p["codec_type"].as_str() {
                Some("video") => {
                    if p["flags"].as_str().is_some_and(|f| f.starts_with('K')) {
                        keys.push(t);
                    }
                    video_at = Some(t);
                }
                Some("audio") => {
                    if let Some(v) = video_at {
                        skew = skew.max((t - v).abs());
                    }
                }
                _ => {}
            }
        }
        (keys, skew)
    })
    .await
    .unwrap()
}

/// The size the SFU reads from the publisher's key frames.
fn published_size(app: &TestApp, stream: &str) -> (u64, u64) {
    app.state()
        .sfu
        .layers(stream)
        .first()
        .map(|l| (l.width as u64, l.height as u64))
        .unwrap_or_default()
}

/// Every simulcast layer's size the SFU read from the publisher's key frames. A
/// restream starts on the first layer that sends and moves up at key frames
/// (Chromium opens its top layer seconds late, when its estimate allows); a
/// transcode keeps the size it started with (ffmpeg scales what comes later).
fn published_sizes(app: &TestApp, stream: &str) -> Vec<(u64, u64)> {
    app.state()
        .sfu
        .layers(stream)
        .iter()
        .map(|l| (l.width as u64, l.height as u64))
        .collect()
}

fn assert_h264_aac(probe: &Value, sizes: &[(u64, u64)]) {
    let video = stream_of(probe, "video");
    assert_eq!(video["codec_name"], "h264", "{probe}");
    let size = (
        video["width"].as_u64().unwrap_or(0),
        video["height"].as_u64().unwrap_or(0),
    );
    assert!(
        sizes.contains(&size),
        "restreamed {size:?}, published {sizes:?}: {probe}"
    );
    let audio = stream_of(probe, "audio");
    assert_eq!(audio["codec_name"], "aac", "{probe}");
    assert_eq!(audio["sample_rate"], "48000", "{probe}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aiortc_class_goes_to_two_rtmp_servers_and_each_fails_alone() {
    let _guard = media_lock().await;
    init_tracing();
    let app = TestApp::builder()
        .config(|c| {
            // Quick retries: the test waits for a restart, not for a long backoff.
            c.restream.backoff_min_ms = 300;
            c.restream.backoff_max_ms = 2000;
        })
        .spawn()
        .await;
    let auth = PublishAuth::start().await;
    let mut a = Nginx::start(&auth).await;
    let b = Nginx::start(&auth).await;
    let stream = "restream-h264";
    let mut publisher = PyPeer::publisher(&app, stream, &["--codec", "H264"]);
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let restreams = app.state().restreams.clone();
    let mut events = restreams.subscribe(stream);

    let set_at = Instant::now();
    restreams.set(
        stream,
        vec![dest("a", a.url("class-a")), dest("b", b.url("class-b"))],
    );
    assert!(restreams.is_restreaming(stream));
    wait_status(&mut events, "a", Status::Live, Duration::from_secs(30)).await;
    eprintln!("a live {:?} after set()", set_at.elapsed());
    if status_of(&app, stream, "b").status != Status::Live {
        wait_status(&mut events, "b", Status::Live, Duration::from_secs(30)).await;
    }
    eprintln!("both live {:?} after set()", set_at.elapsed());

    // What arrived: H.264 of the published size (passed through) and AAC.
    let size = published_size(&app, stream);
    assert_eq!(size, (320, 240), "aiortc's MovingPattern");

    for url in [a.url("class-a"), b.url("class-b")] {
        assert_h264_aac(&probe_rtmp(url).await, &[size]);
    }
    let pid_a = restreams.process_id(stream, "a").expect("a runs ffmpeg");
    assert!(process_alive(pid_a));

    // A viewer watches through the whole failure below.
    let mut viewer = PyPeer::viewer(&app, "viewer", stream, &["--frames", "30", "--hold"]);
    viewer.wait_event("reached", Duration::from_secs(30)).await;

    // nginx a dies: a retries, b stays live, the viewer sees no gap.
    a.kill();
    let retrying = wait_status(&mut events, "a", Status::Retrying, Duration::from_secs(20)).await;
    let error = retrying.last_error.clone().unwrap_or_default();
    assert!(!error.contains("class-a"), "no key in errors: {error}");
    assert_eq!(status_of(&app, stream, "b").status, Status::Live);
    let bytes_b = status_of(&app, stream, "b").bytes_sent;
    eventually("b still sending", Duration::from_secs(10), || async {
        let now = status_of(&app, stream, "b").bytes_sent;
        if now > bytes_b {
            Ok(())
        } else {
            Err(format!("{now} bytes"))
        }
    })
    .await;
    assert!(!process_alive(pid_a), "a's ffmpeg ended with its server");

    // nginx a back on its port: live again within the backoff.
    a.restart().await;
    let back = wait_status(&mut events, "a", Status::Live, Duration::from_secs(20)).await;
    assert!(back.attempts >= 2, "a restarted: {back:?}");
    assert_eq!(status_of(&app, stream, "b").status, Status::Live);
    assert_h264_aac(&probe_rtmp(a.url("class-a")).await, &[size]);
    let seen = viewer.stop(Duration::from_secs(20)).await;
    assert_eq!(seen["ok"], true, "{seen}");
    let gap = seen["max_gap_s"].as_f64().unwrap_or(99.0);
    assert!(gap < 1.0, "the viewer saw no gap while a failed: {seen}");
    assert!(num(&seen["video_frames"]) > 60.0, "{seen}");

    // A refused key: failed quickly, not retried forever.
    let with_refused = vec![
        dest("a", a.url("class-a")),
        dest("b", b.url("class-b")),
        dest("r", b.url(REFUSED_KEY)),
    ];
    restreams.set(stream, with_refused);
    let failed = wait_status(&mut events, "r", Status::Failed, Duration::from_secs(20)).await;
    assert!(failed.attempts <= 2, "{failed:?}");
    let error = failed.last_error.clone().unwrap_or_default();
    assert!(error.contains("refused"), "{error}");
    assert!(!error.contains(REFUSED_KEY), "no key in errors: {error}");
    assert!(auth.asked(REFUSED_KEY) <= 2);

    // Added while live, over RTMPS (TLS in front of b): live, and b's
    // server has it; a and b keep their processes.
    let pid_a = restreams.process_id(stream, "a").expect("a runs");
    let pid_b = restreams.process_id(stream, "b").expect("b runs");
    let tls = TlsFront::start(b.port).await;
    restreams.set(
        stream,
        vec![
            dest("a", a.url("class-a")),
            dest("b", b.url("class-b")),
            dest("c", tls.url("class-c")),
        ],
    );
    wait_status(&mut events, "c", Status::Live, Duration::from_secs(30)).await;
    assert_h264_aac(&probe_rtmp(b.url("class-c")).await, &[size]);
    assert_eq!(restreams.process_id(stream, "a"), Some(pid_a));
    assert_eq!(restreams.process_id(stream, "b"), Some(pid_b));

    // Removed: its process is gone; the others keep theirs.
    restreams.set(
        stream,
        vec![dest("b", b.url("class-b")), dest("c", tls.url("class-c"))],
    );
    wait_status(&mut events, "a", Status::Idle, Duration::from_secs(10)).await;
    assert!(!process_alive(pid_a), "a's ffmpeg {pid_a} is gone");
    assert_eq!(restreams.process_id(stream, "b"), Some(pid_b));
    assert!(
        restreams
            .status(stream)
            .iter()
            .all(|s| s.connection_id != "a")
    );

    let metrics = app.registry_metrics();
    assert_eq!(
        metric_value(
            &metrics,
            "tandem_restream_destinations",
            &[("status", "live")]
        ),
        2.0,
        "{metrics}"
    );
    assert!(metric_value(&metrics, "tandem_restream_restarts_total", &[]) >= 1.0);
    assert!(metric_value(&metrics, "tandem_restream_bytes_total", &[]) > 0.0);

    // The stream ends: everything stops.
    restreams.stop(stream);
    wait_status(&mut events, "b", Status::Idle, Duration::from_secs(10)).await;
    eventually(
        "no restream process left",
        Duration::from_secs(10),
        || async {
            match restreams.processes() {
                0 if !process_alive(pid_b) => Ok(()),
                n => Err(format!("{n} processes")),
            }
        },
    )
    .await;
    assert!(!restreams.is_restreaming(stream));
    assert!(!app.state().sfu.has_tap(stream, "restream"));
    publisher.stop(Duration::from_secs(20)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chromium_vp8_class_is_transcoded_to_h264_with_two_second_key_frames() {
    let _guard = media_lock().await;
    init_tracing();
    let app = spawn_app().await;
    let auth = PublishAuth::start().await;
    let nginx = Nginx::start(&auth).await;
    let stream = "restream-vp8";
    let mut browser = Browser::launch().await;
    browser
        .open(
            "pub",
            &page_url(
                &app,
                "broadcast",
                stream,
                &app.publish_token(stream),
                "&codec=VP8",
            ),
        )
        .await;
    let stats = browser
        .wait_stats(
            &["pub"],
            "the broadcast live and sending VP8",
            Duration::from_secs(30),
            |s| {
                let p = &s[0];
                if p["state"] == "live" && num(&p["video"]["framesSent"]) > 0.0 {
                    Ok(p.clone())
                } else {
                    Err(p.to_string())
                }
            },
        )
        .await;
    assert_eq!(stats["video"]["codec"], "video/VP8", "{stats}");
    let sent = |s: &Value| {
        (
            num(&s["video"]["frameWidth"]) as u64,
            num(&s["video"]["frameHeight"]) as u64,
        )
    };
    let mut sizes = vec![sent(&stats)];
    sizes.extend(published_sizes(&app, stream));

    let restreams = app.state().restreams.clone();
    let mut events = restreams.subscribe(stream);
    restreams.set(stream, vec![dest("yt", nginx.url("vp8-class"))]);
    wait_status(&mut events, "yt", Status::Live, Duration::from_secs(30)).await;
    sizes.extend(published_sizes(&app, stream));
    let probed = probe_rtmp(nginx.url("vp8-class")).await;
    sizes.push(sent(&browser.stats("pub").await));
    assert_h264_aac(&probed, &sizes);

    // YouTube's rule: a key frame every 2 s. Audio and video on one timeline.
    let (keys, skew) = timeline(nginx.url("vp8-class"), 7).await;
    assert!(keys.len() >= 2, "key frames at {keys:?}");
    for pair in keys.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((1.5..=2.5).contains(&gap), "key frames at {keys:?}");
    }
    // Unsynchronised RTP clocks put the tracks seconds (or hours) apart; a
    // slow encoder's sparse frames leave gaps of a few hundred ms.
    assert!(
        skew < 1.0,
        "audio {skew:.3} s away from the video before it"
    );

    // The server's shutdown kills the child.
    let pid = restreams.process_id(stream, "yt").expect("ffmpeg runs");
    browser.quit().await;
    app.shutdown().await;
    assert!(!process_alive(pid), "ffmpeg {pid} gone with the server");
}

/// utime + stime of `/proc/{pid}/stat` (or `self`), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// docs/PERFORMANCE.md "Restream (issue 16)": CPU of one destination (the
/// server's extra CPU plus its ffmpeg) for H.264 passthrough and VP8
/// transcoding of a 720p30 Chromium broadcast, and the time from `set()` to
/// the first bytes at the RTMP server. Not a check: run by hand with
/// `cargo test --test media restream::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_restream_cpu_and_start_time() {
    let _guard = media_lock().await;
    let window = Duration::from_secs(
        std::env::var("RESTREAM_MEASURE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let app = spawn_app().await;
    let auth = PublishAuth::start().await;
    let nginx = Nginx::start(&auth).await;
    let mut browser = Browser::launch().await;
    for codec in ["H264", "VP8"] {
        let stream = format!("measure-{}", codec.to_lowercase());
        browser
            .open(
                codec,
                &page_url(
                    &app,
                    "broadcast",
                    &stream,
                    &app.publish_token(&stream),
                    &format!("&codec={codec}"),
                ),
            )
            .await;
        // 720p as the broadcast page asks (Chromium ramps up to it).
        let stats = browser
            .wait_stats(
                &[codec],
                "the broadcast sending 720p",
                Duration::from_secs(60),
                |s| {
                    let p = &s[0];
                    if p["state"] == "live" && num(&p["video"]["frameHeight"]) >= 720.0 {
                        Ok(p.clone())
                    } else {
                        Err(p.to_string())
                    }
                },
            )
            .await;
        eprintln!("{codec}: publisher {}", stats["video"]);
        let server0 = cpu_seconds("self");
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let base = (cpu_seconds("self") - server0) / t0.elapsed().as_secs_f64();

        let restreams = app.state().restreams.clone();
        let mut events = restreams.subscribe(&stream);
        let set_at = Instant::now();
        restreams.set(&stream, vec![dest("d", nginx.url(&stream))]);
        wait_status(&mut events, "d", Status::Live, Duration::from_secs(30)).await;
        let to_live = set_at.elapsed();
        let pid = restreams.process_id(&stream, "d").unwrap().to_string();
        let (server1, child1, t1) = (cpu_seconds("self"), cpu_seconds(&pid), Instant::now());
        tokio::time::sleep(window).await;
        let secs = t1.elapsed().as_secs_f64();
        let server = (cpu_seconds("self") - server1) / secs;
        let child = (cpu_seconds(&pid) - child1) / secs;
        let status = status_of(&app, &stream, "d");
        let probe = probe_rtmp(nginx.url(&stream)).await;
        let video = stream_of(&probe, "video");
        eprintln!(
            "RESULT {codec}: set→first bytes {:.2} s; server {:.1} % → {:.1} % (+{:.1} %), ffmpeg {:.1} % of a core; \
             per destination {:.1} %; {} kbit/s out; out {}x{} {}",
            to_live.as_secs_f64(),
            base * 100.0,
            server * 100.0,
            (server - base) * 100.0,
            child * 100.0,
            (server - base + child) * 100.0,
            status.bytes_sent * 8 / 1000 / (secs as u64 + to_live.as_secs()).max(1),
            video["width"],
            video["height"],
            video["codec_name"],
        );
        restreams.stop(&stream);
        wait_status(&mut events, "d", Status::Idle, Duration::from_secs(10)).await;
        browser.close(codec).await;
    }
    browser.quit().await;
    app.shutdown().await;
}

#[tokio::test]
async fn destinations_wait_for_the_publisher_and_limits_fail_at_once() {
    let app = TestApp::builder()
        .config(|c| c.restream.max_destinations_per_stream = 3)
        .spawn()
        .await;
    let restreams = app.state().restreams.clone();
    let stream = "not-live-yet";
    let mut events = restreams.subscribe(stream);
    restreams.set(
        stream,
        vec![
            dest("one", "rtmp://127.0.0.1:9/live/k1".into()),
            DestinationSpec {
                connection_id: "yt".into(),
                platform: "youtube".into(),
                target: Target::Unavailable("YouTube asks to reconnect the account".into()),
            },
            dest("two", "rtmps://127.0.0.1:9/live/k2".into()),
            dest("three", "rtmp://127.0.0.1:9/live/k3".into()),
        ],
    );
    let all = restreams.status(stream);
    assert_eq!(all.len(), 4, "{all:?}");
    let by = |id: &str| all.iter().find(|s| s.connection_id == id).unwrap().clone();
    // No publisher yet: waiting, no attempt spent, no process.
    for id in ["one", "two"] {
        let s = by(id);
        assert_eq!((s.status, s.attempts), (Status::Connecting, 0), "{s:?}");
        assert_eq!(restreams.process_id(stream, id), None);
    }
    let yt = by("yt");
    assert_eq!(yt.status, Status::Failed);
    assert_eq!(
        yt.last_error.as_deref(),
        Some("YouTube asks to reconnect the account")
    );
    let three = by("three");
    assert_eq!(three.status, Status::Failed);
    assert!(three.last_error.unwrap().contains("at most 3"));
    assert_eq!(restreams.processes(), 0);
    assert!(app.state().sfu.has_tap(stream, "restream"));
    let json = serde_json::to_value(by("one")).unwrap();
    assert_eq!(json["status"], "connecting");
    assert!(json["since"].as_str().unwrap().ends_with('Z'), "{json}");

    // The events told the same, and `stop` ends them all.
    let first = events.recv().await.unwrap();
    assert_eq!(first.connection_id, "one");
    restreams.stop(stream);
    let mut idle = std::collections::HashSet::new();
    while idle.len() < 4 {
        let s = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event")
            .unwrap();
        if s.status == Status::Idle {
            idle.insert(s.connection_id);
        }
    }
    assert!(!restreams.is_restreaming(stream));
    assert!(!app.state().sfu.has_tap(stream, "restream"));
    let metrics = app.registry_metrics();
    for status in ["connecting", "failed", "live", "retrying", "idle"] {
        assert_eq!(
            metric_value(
                &metrics,
                "tandem_restream_destinations",
                &[("status", status)]
            ),
            0.0,
            "{status}: {metrics}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn restreaming_turned_off_fails_every_destination_with_a_reason() {
    let app = TestApp::builder()
        .config(|c| c.restream.enabled = false)
        .spawn()
        .await;
    let restreams = app.state().restreams.clone();
    restreams.set("s", vec![dest("one", "rtmp://127.0.0.1:9/live/k".into())]);
    let s = &restreams.status("s")[0];
    assert_eq!(s.status, Status::Failed);
    assert!(
        s.last_error.as_deref().unwrap().contains("disabled"),
        "{s:?}"
    );
    assert!(!app.state().sfu.has_tap("s", "restream"));
    app.shutdown().await;
}
