//! Calls end to end (issue 17): an instructor and a student open `/call/{id}` in
//! Chromium, each decodes the other's video; mute and camera toggle the local
//! tracks; the host removes the student (its sessions close, a new token is
//! 403); the history says who was there and for how long, from the session
//! records; the page says plainly "not invited" and "ended". Presence and
//! controls go over the call's sync room: each page sees the other in the room,
//! speaking (Chromium's fake microphone beeps), muted and camera off; the host's
//! "Mute" reaches the student, whose page disables its track. A 4-party call of aiortc peers forwards every pair; a participant
//! killed with SIGKILL is recorded as left when its session times out, and the
//! last one's timeout ends the call.

use std::time::{Duration, Instant};

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn frames(stats: &Value, from: &str) -> f64 {
    num(&stats["remotes"][from]["framesDecoded"])
}

/// What `page` knows from the room of the remote `from`: `{in, muted, camera_off, speaking}`.
fn presence<'a>(stats: &'a Value, from: &str) -> &'a Value {
    &stats["remotes"][from]["presence"]
}

fn ms_of(v: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        v.as_str().unwrap_or_else(|| panic!("not a time: {v}")),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A call created by `creator` (an instructor's token or the service key) with `body` (`{"participants": [...]}`); its id.
async fn new_call(app: &TestApp, creator: &str, body: Value) -> String {
    let r = app.post("/v1/calls", Some(creator), body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instructor_and_student_see_each_other_on_the_call_page() {
    let _guard = media_lock().await;
    init_tracing();
    let app = api_app(Backend::Sqlite)
        .config(|c| c.media.ice_tcp = false)
        .spawn()
        .await;
    let (ines, sam) = (instructor("ines"), user("sam"));
    let id = new_call(&app, &ines, json!({"participants": [{"user": "ines", "role": "host"}, {"user": "sam", "role": "participant"}]})).await;
    let page = format!("{}/call/{id}", app.base);

    let mut browser = Browser::launch().await;
    let init = |t: &str| format!("sessionStorage.setItem('tandem.call.identity', {t:?});");
    let opened = Instant::now();
    let opened_ms = tandem::api::now_ms();
    browser.open_with_init("ines", &page, &init(&ines)).await;
    browser.open_with_init("sam", &page, &init(&sam)).await;
    browser
        .wait_stats(
            &["ines", "sam"],
            "each page decoding the other's video",
            Duration::from_secs(30),
            |s| {
                let (a, b) = (frames(&s[0], "sam"), frames(&s[1], "ines"));
                if s[0]["state"] == "in-call" && s[1]["state"] == "in-call" && a > 10.0 && b > 10.0
                {
                    Ok(())
                } else {
                    Err(format!("{} / {}", s[0], s[1]))
                }
            },
        )
        .await;
    let joined_in = opened.elapsed();
    let first = browser.stats("sam").await;
    eprintln!(
        "both decoding {joined_in:?} after opening; sam's first frame {} ms after its join",
        first["remotes"]["ines"]["firstFrameMs"]
    );
    // Connected now, as the server sees it.
    let r = app.get(&format!("/v1/calls/{id}"), Some(&sam)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let parts = r.body["participants"].as_array().unwrap();
    assert!(parts.iter().all(|p| p["connected"] == true), "{}", r.text);
    assert!(r.body["started_at"].is_string(), "{}", r.text);

    // Presence over the call's room: each page sees the other in, and ines hears
    // sam speak (the fake microphone's beeps pass the page's voice detector).
    browser
        .wait_stats(
            &["ines", "sam"],
            "each in the other's room presence, sam speaking at ines",
            Duration::from_secs(10),
            |s| {
                let (at_ines, at_sam) = (presence(&s[0], "sam"), presence(&s[1], "ines"));
                let spoke = num(&s[0]["remotes"]["sam"]["speakingTimes"]) >= 1.0;
                if at_ines["in"] == true && at_sam["in"] == true && spoke {
                    Ok(())
                } else {
                    Err(format!(
                        "at ines {at_ines}, at sam {at_sam}, sam mic {} dB",
                        s[1]["micDb"]
                    ))
                }
            },
        )
        .await;

    // Mute and camera off act on the local tracks, and the other side sees (and
    // hears) it: black frames, silence.
    let mut last_energy = None;
    browser
        .wait_stats(
            &["ines"],
            "sam's picture and sound at ines",
            Duration::from_secs(10),
            |s| {
                let sam = &s[0]["remotes"]["sam"];
                let energy = num(&sam["audioEnergy"]);
                let louder = last_energy.is_some_and(|e| energy > e);
                last_energy = Some(energy);
                if num(&sam["brightness"]) > 20.0 && louder {
                    eprintln!("sam at ines before: {sam}");
                    Ok(())
                } else {
                    Err(sam.to_string())
                }
            },
        )
        .await;
    browser
        .eval(
            "sam",
            "(document.getElementById('mute').click(), document.getElementById('camera').click(), 1)",
        )
        .await
        .unwrap();
    let s = browser.stats("sam").await;
    assert_eq!(
        (s["muted"].as_bool(), s["cameraOff"].as_bool()),
        (Some(true), Some(true)),
        "{s}"
    );
    let mut quiet: Option<(f64, Instant)> = None;
    browser
        .wait_stats(
            &["ines"],
            "sam black and silent at ines",
            Duration::from_secs(10),
            |s| {
                let sam = &s[0]["remotes"]["sam"];
                let energy = num(&sam["audioEnergy"]);
                // Silent: no energy added for a whole second.
                let silent = match quiet {
                    Some((e, since)) if (energy - e).abs() < 1e-6 => {
                        since.elapsed() >= Duration::from_secs(1)
                    }
                    _ => {
                        quiet = Some((energy, Instant::now()));
                        false
                    }
                };
                if num(&sam["brightness"]) < 8.0 && silent {
                    eprintln!("sam at ines muted, camera off: {sam}");
                    Ok(())
                } else {
                    Err(sam.to_string())
                }
            },
        )
        .await;
    // …and the room says so: muted, camera off, not speaking.
    browser
        .wait_stats(
            &["ines"],
            "sam muted and camera off in ines's presence",
            Duration::from_secs(5),
            |s| {
                let p = presence(&s[0], "sam");
                if p["muted"] == true && p["camera_off"] == true && p["speaking"] == false {
                    Ok(())
                } else {
                    Err(p.to_string())
                }
            },
        )
        .await;

    // Sam unmutes; the host mutes sam remotely with its tile's "Mute": sam's page
    // disables its microphone track and says why, and ines's presence follows.
    let unmuted = Instant::now();
    browser
        .eval("sam", "(document.getElementById('mute').click(), 1)")
        .await
        .unwrap();
    browser
        .wait_stats(
            &["ines"],
            "sam unmuted at ines",
            Duration::from_secs(5),
            |s| {
                let p = presence(&s[0], "sam");
                (p["muted"] == false).then_some(()).ok_or(p.to_string())
            },
        )
        .await;
    eprintln!(
        "sam's Unmute click → ines's presence unmuted: within {:?}",
        unmuted.elapsed()
    );
    let s = browser.stats("sam").await;
    assert_eq!(s["local"]["audioEnabled"], true, "{s}");
    let clicked = Instant::now();
    browser
        .eval(
            "ines",
            "(document.querySelector('button[data-action=mute][data-user=sam]').click(), 1)",
        )
        .await
        .unwrap();
    browser
        .wait_stats(
            &["sam", "ines"],
            "sam muted by the host",
            Duration::from_secs(5),
            |s| {
                let (me, at_ines) = (&s[0], presence(&s[1], "sam"));
                let told = me["notice"]
                    .as_str()
                    .is_some_and(|n| n.contains("host muted you"));
                if me["muted"] == true
                    && me["local"]["audioEnabled"] == false
                    && me["hostMuted"]["by"] == "ines"
                    && told
                    && at_ines["muted"] == true
                {
                    Ok(())
                } else {
                    Err(format!("sam {me}, at ines {at_ines}"))
                }
            },
        )
        .await;
    eprintln!(
        "host's Mute click → sam's track off and ines's presence muted: within {:?}",
        clicked.elapsed()
    );

    // The host removes the student: its sessions close within 1 s, its page says
    // so, a new token is 403.
    let removed_at = Instant::now();
    let removed_ms = tandem::api::now_ms();
    let r = app
        .post(
            &format!("/v1/calls/{id}/participants/sam/remove"),
            Some(&ines),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        num(&r.body["closed_sessions"]) >= 2.0,
        "publisher + view: {}",
        r.text
    );
    let sam_stream = format!("call:{id}:sam");
    eventually("sam's sessions closed", Duration::from_secs(1), || {
        let open = app
            .state()
            .sfu
            .sessions()
            .iter()
            .filter(|s| &*s.user == "sam" || *s.stream == *sam_stream)
            .count();
        async move { (open == 0).then_some(()).ok_or(format!("{open} open")) }
    })
    .await;
    eprintln!(
        "removal closed sam's sessions in {:?}",
        removed_at.elapsed()
    );
    let r = app
        .post(&format!("/v1/calls/{id}/token"), Some(&sam), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    browser
        .wait_stats(
            &["sam"],
            "sam's page saying removed",
            Duration::from_secs(10),
            |s| {
                (s[0]["state"] == "removed")
                    .then_some(())
                    .ok_or(s[0].to_string())
            },
        )
        .await;

    // The host leaves: the last one out ends the call.
    let left_at = tandem::api::now_ms();
    browser
        .eval("ines", "(window.tandem.leave(), 1)")
        .await
        .unwrap();
    let call = eventually(
        "the call ended by the last leave",
        Duration::from_secs(10),
        || {
            let app = &app;
            let (id, ines) = (&id, &ines);
            async move {
                let r = app.get("/v1/calls?limit=5", Some(ines)).await;
                let call = r.body["calls"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["id"] == id.as_str()).cloned())
                    .unwrap_or(Value::Null);
                if call["end_reason"] == "last_left" {
                    Ok(call)
                } else {
                    Err(r.text)
                }
            }
        },
    )
    .await;
    // The page's plain errors: someone not invited, and the call ended.
    let says = |state: &'static str| {
        move |s: &[Value]| -> Result<String, String> {
            if s[0]["state"] == state {
                Ok(s[0]["error"].as_str().unwrap_or("").to_string())
            } else {
                Err(s[0].to_string())
            }
        }
    };
    browser
        .open_with_init("mallory", &page, &init(&user("mallory")))
        .await;
    let message = browser
        .wait_stats(
            &["mallory"],
            "not invited",
            Duration::from_secs(10),
            says("not-invited"),
        )
        .await;
    assert!(message.contains("not invited"), "{message}");
    browser.close("ines").await;
    browser.open_with_init("ines", &page, &init(&ines)).await;
    let message = browser
        .wait_stats(
            &["ines"],
            "call ended",
            Duration::from_secs(10),
            says("ended"),
        )
        .await;
    assert!(message.contains("ended"), "{message}");
    browser.quit().await;

    // History: both with their times, from the session records.
    let started = ms_of(&call["started_at"]);
    let ended = ms_of(&call["ended_at"]);
    assert!(
        (ended - left_at).abs() < 1000,
        "ended {ended} vs left {left_at}"
    );
    let duration = call["duration_seconds"].as_f64().unwrap();
    assert!(
        (duration - (ended - started) as f64 / 1000.0).abs() < 0.01,
        "{call}"
    );
    let truth = joined_in.as_secs_f64() + removed_at.elapsed().as_secs_f64();
    assert!(
        duration > 1.0 && duration < truth + 2.0,
        "duration {duration}, about {truth}"
    );
    let by = |u: &str| {
        call["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["user"] == u)
            .cloned()
            .unwrap()
    };
    let (pi, ps) = (by("ines"), by("sam"));
    // The call started with the first participant's first session.
    assert_eq!(
        started,
        ms_of(&pi["joined_at"]).min(ms_of(&ps["joined_at"])),
        "{call}"
    );
    assert!(ms_of(&ps["left_at"]) < ms_of(&pi["left_at"]), "{call}");
    assert!(ps["removed_at"].is_string(), "{call}");
    // Each interval within 1 s of what the test saw.
    let both_in = opened_ms + joined_in.as_millis() as i64;
    for p in [&pi, &ps] {
        let joined = ms_of(&p["joined_at"]);
        assert!(
            joined >= opened_ms && joined <= both_in,
            "{p} vs {opened_ms}..{both_in}"
        );
    }
    assert!(
        (ms_of(&ps["left_at"]) - removed_ms).abs() < 1000,
        "{ps} vs {removed_ms}"
    );
    assert!(
        (ms_of(&pi["left_at"]) - left_at).abs() < 1000,
        "{pi} vs {left_at}"
    );
    assert_eq!(ms_of(&pi["left_at"]), ended, "the last one out ended it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_four_party_call_forwards_every_pair() {
    let _guard = media_lock().await;
    init_tracing();
    let app = api_app(Backend::Sqlite)
        .config(|c| c.media.ice_tcp = false)
        .spawn()
        .await;
    let users = ["p0", "p1", "p2", "p3"];
    let participants: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"user": u, "role": if i == 0 { "host" } else { "participant" }}))
        .collect();
    let id = new_call(&app, SERVICE_KEY, json!({"participants": participants})).await;

    let mut publishers = Vec::new();
    let mut viewers = Vec::new();
    for u in users {
        let r = app
            .post(&format!("/v1/calls/{id}/token"), Some(&user(u)), json!({}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let token = r.body["token"].as_str().unwrap().to_string();
        let whip = r.body["whip_url"].as_str().unwrap().to_string();
        let mut p = PyPeer::spawn(
            &format!("publisher({u})"),
            "publisher.py",
            &["--url", &whip, "--token", &token],
        );
        p.wait_event("connected", Duration::from_secs(30)).await;
        publishers.push(p);
        for (other, url) in r.body["whep_urls"].as_object().unwrap() {
            let v = PyPeer::spawn(
                &format!("{u} views {other}"),
                "viewer.py",
                &[
                    "--url",
                    url.as_str().unwrap(),
                    "--token",
                    &token,
                    "--frames",
                    "20",
                ],
            );
            viewers.push(v);
        }
    }
    assert_eq!(viewers.len(), 12, "every ordered pair");
    for v in &mut viewers {
        v.wait_event("reached", Duration::from_secs(60)).await;
    }
    for mut v in viewers {
        let done = v.done(Duration::from_secs(30)).await;
        assert_eq!(done["ok"], true, "{done}");
    }
    let r = app.get(&format!("/v1/calls/{id}"), Some(SERVICE_KEY)).await;
    let connected = r.body["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connected"] == true)
        .count();
    assert_eq!(connected, 4, "{}", r.text);
    for p in publishers {
        p.stop(Duration::from_secs(15)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_participant_is_recorded_as_left_and_the_last_ends_the_call() {
    let _guard = media_lock().await;
    init_tracing();
    const IDLE_MS: i64 = 2000;
    let app = api_app(Backend::Sqlite)
        .config(|c| {
            c.media.ice_tcp = false;
            c.media.idle_timeout_seconds = (IDLE_MS / 1000) as u64;
        })
        .spawn()
        .await;
    let id = new_call(&app, SERVICE_KEY, json!({"participants": [{"user": "ines", "role": "host"}, {"user": "sam", "role": "participant"}]})).await;
    let mut peers = Vec::new();
    for u in ["ines", "sam"] {
        let r = app
            .post(&format!("/v1/calls/{id}/token"), Some(&user(u)), json!({}))
            .await;
        let token = r.body["token"].as_str().unwrap().to_string();
        let whip = r.body["whip_url"].as_str().unwrap().to_string();
        let mut p = PyPeer::spawn(u, "publisher.py", &["--url", &whip, "--token", &token]);
        p.wait_event("connected", Duration::from_secs(30)).await;
        peers.push(p);
    }
    let kill = |p: &PyPeer| {
        let status = std::process::Command::new("kill")
            .args(["-9", &p.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tandem::api::now_ms()
    };
    let participant = |call: &Value, u: &str| {
        call["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["user"] == u)
            .cloned()
            .unwrap()
    };
    // sam's process dies without a word: its session times out, its leave is
    // recorded, the call goes on.
    let sam_killed = kill(&peers[1]);
    let call = eventually("sam recorded as left", Duration::from_secs(15), || async {
        let call = app
            .get(&format!("/v1/calls/{id}"), Some(SERVICE_KEY))
            .await
            .body;
        let sam = participant(&call, "sam");
        if sam["left_at"].is_string() {
            Ok(call)
        } else {
            Err(call.to_string())
        }
    })
    .await;
    let left = ms_of(&participant(&call, "sam")["left_at"]);
    assert!(
        left >= sam_killed && left <= sam_killed + IDLE_MS + 1500,
        "left {left}, killed {sam_killed}"
    );
    assert!(call["ended_at"].is_null(), "ines is still in: {call}");
    assert_eq!(participant(&call, "ines")["connected"], true, "{call}");

    // The last one dies too: the call ends, `last_left`, at its timeout.
    let ines_killed = kill(&peers[0]);
    let call = eventually("the call ended", Duration::from_secs(15), || async {
        let call = app
            .get(&format!("/v1/calls/{id}"), Some(SERVICE_KEY))
            .await
            .body;
        if call["end_reason"] == "last_left" {
            Ok(call)
        } else {
            Err(call.to_string())
        }
    })
    .await;
    let ended = ms_of(&call["ended_at"]);
    assert!(
        ended >= ines_killed && ended <= ines_killed + IDLE_MS + 1500,
        "ended {ended}, killed {ines_killed}"
    );
    assert_eq!(ms_of(&participant(&call, "ines")["left_at"]), ended);
    assert!(call["duration_seconds"].as_f64().unwrap() > 0.0, "{call}");
}

/// utime + stime of this process (the server under test), in seconds.
fn server_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command name: utime and stime are fields 14 and 15 (1-based).
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// docs/PERFORMANCE.md "Calls (issue 17)": join → first remote frame over 20
/// joins of a Chromium student into a call whose instructor stays, and the
/// server's CPU during a call of 2 (Chromium) and of 4 (aiortc). Not a check:
/// `cargo test --test media calls::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure() {
    let _guard = media_lock().await;
    let app = api_app(Backend::Sqlite)
        .config(|c| c.media.ice_tcp = false)
        .spawn()
        .await;
    let (ines, sam) = (instructor("ines"), user("sam"));
    let id = new_call(&app, &ines, json!({"participants": [{"user": "ines", "role": "host"}, {"user": "sam", "role": "participant"}]})).await;
    let page = format!("{}/call/{id}", app.base);
    let init = |t: &str| format!("sessionStorage.setItem('tandem.call.identity', {t:?});");
    let mut browser = Browser::launch().await;
    browser.open_with_init("ines", &page, &init(&ines)).await;
    let mut joins = Vec::new();
    for _ in 0..20 {
        browser.open_with_init("sam", &page, &init(&sam)).await;
        let ms = browser
            .wait_stats(
                &["sam"],
                "sam's first frame",
                Duration::from_secs(30),
                |s| {
                    s[0]["remotes"]["ines"]["firstFrameMs"]
                        .as_f64()
                        .ok_or(s[0].to_string())
                },
            )
            .await;
        joins.push(ms);
        browser
            .eval("sam", "(window.tandem.leave(), 1)")
            .await
            .unwrap();
        browser.close("sam").await;
    }
    joins.sort_by(f64::total_cmp);
    eprintln!(
        "join → first remote frame over {} joins: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        joins.len(),
        percentile(&joins, 0.5),
        percentile(&joins, 0.95),
        joins[joins.len() - 1]
    );

    // A call of 2 (Chromium, 640×360): the server's CPU over 15 s.
    browser.open_with_init("sam", &page, &init(&sam)).await;
    browser
        .wait_stats(&["sam"], "sam decoding", Duration::from_secs(30), |s| {
            (frames(&s[0], "ines") > 30.0)
                .then_some(())
                .ok_or(s[0].to_string())
        })
        .await;
    let (cpu0, t0) = (server_cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let two = (server_cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    eprintln!("server CPU, call of 2 (Chromium): {two:.1} % of a core");
    browser.quit().await;

    // A call of N (aiortc: N publishers, N·(N−1) viewers; CALL_MEASURE_N, default
    // 4): the server's CPU over 10 s.
    let n: usize = std::env::var("CALL_MEASURE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let users: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let participants: Vec<Value> = users
        .iter()
        .map(|u| json!({"user": u, "role": "host"}))
        .collect();
    let id = new_call(&app, SERVICE_KEY, json!({"participants": participants})).await;
    // Every publisher first, then the views: on 2 shared cores, 56 aiortc
    // viewers started beside the publishers starve them.
    let mut peers = Vec::new();
    let mut views = Vec::new();
    for u in &users {
        let r = app
            .post(&format!("/v1/calls/{id}/token"), Some(&user(u)), json!({}))
            .await;
        let token = r.body["token"].as_str().unwrap().to_string();
        let whip = r.body["whip_url"].as_str().unwrap().to_string();
        let mut p = PyPeer::spawn(u, "publisher.py", &["--url", &whip, "--token", &token]);
        p.wait_event("connected", Duration::from_secs(30)).await;
        peers.push(p);
        for (other, url) in r.body["whep_urls"].as_object().unwrap() {
            views.push((
                format!("{u}→{other}"),
                url.as_str().unwrap().to_string(),
                token.clone(),
            ));
        }
    }
    for (name, url, token) in &views {
        let args = ["--url", url, "--token", token, "--frames", "1"];
        let extra = ["--min-seconds", "60", "--duration", "120"];
        let all: Vec<&str> = args.iter().chain(extra.iter()).copied().collect();
        peers.push(PyPeer::spawn(name, "viewer.py", &all));
    }
    for p in peers.iter_mut().filter(|p| p.events.is_empty()) {
        p.wait_event("first_frame", Duration::from_secs(110)).await;
    }
    let (cpu0, t0) = (server_cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = (server_cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    eprintln!(
        "server CPU, call of {n} (aiortc, {} views): {cpu:.1} % of a core",
        n * (n - 1)
    );
}
