//! Issue 13, "Prove it" for the pages: the watch, broadcast and operator pages say
//! truthfully what is happening, checked with headless Chromium as a person sees
//! them. The watch page says "waiting for the broadcaster" before anyone
//! publishes, "no such stream" for a misspelt name, "playing" only while frames are
//! decoded, and leaves "playing" within seconds of the broadcaster stopping; the
//! broadcast page counts its viewers, makes a share link that plays, reconnects
//! when its session is lost, resets its numbers on Stop and says "the camera needs
//! HTTPS" on an insecure origin; a business stream's watch page explains
//! enrollment, plays the viewer token's `watch_url` and says "stream ended"; the
//! `/streams` dashboard lists the live stream with its viewer.
//!
//! Set `TANDEM_SCREENSHOTS=/some/dir` to keep a PNG of each page at each step.

use std::time::Duration;

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn frames(s: &Value) -> f64 {
    num(&s["video"]["framesDecoded"])
}

/// The text of element `id` on page `name`.
async fn text(browser: &mut Browser, name: &str, id: &str) -> String {
    browser
        .eval(
            name,
            &format!("(document.getElementById('{id}') || {{}}).textContent || ''"),
        )
        .await
        .unwrap_or_else(|e| panic!("reading #{id} of {name}: {e}"))
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Waits for page `name`'s `window.tandem.state` to be `state`.
async fn wait_state(browser: &mut Browser, name: &str, state: &str, within: Duration) -> Value {
    browser
        .wait_stats(&[name], &format!("{name}: state {state}"), within, |s| {
            if s[0]["state"] == state {
                Ok(s[0].clone())
            } else {
                Err(s[0].to_string())
            }
        })
        .await
}

/// A PNG of page `name` under `$TANDEM_SCREENSHOTS`, when set.
async fn shot(browser: &mut Browser, name: &str, step: &str) {
    if let Ok(dir) = std::env::var("TANDEM_SCREENSHOTS") {
        let path = std::path::Path::new(&dir).join(format!("pages-{step}.png"));
        let _ = browser.screenshot(name, &path).await;
    }
}

/// Waits until the watch page `name` is "playing" with frames still going up.
async fn wait_playing(browser: &mut Browser, name: &str) -> Value {
    let first = browser
        .wait_stats(
            &[name],
            &format!("{name} playing with 15 frames decoded"),
            Duration::from_secs(45),
            |s| {
                if s[0]["state"] == "playing" && frames(&s[0]) >= 15.0 {
                    Ok(frames(&s[0]))
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await;
    browser
        .wait_stats(
            &[name],
            &format!("{name} still decoding new frames"),
            Duration::from_secs(10),
            |s| {
                if s[0]["state"] == "playing" && frames(&s[0]) > first {
                    Ok(s[0].clone())
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_broadcast_and_dashboard_pages_say_what_is_happening() {
    let _guard = media_lock().await;
    let app = TestApp::builder()
        .config(|c| c.service_key = SERVICE_KEY.into())
        .spawn()
        .await;
    let mut browser = Browser::launch().await;

    // Before anyone publishes: waiting, not "playing".
    let watch = page_url(&app, "watch", "lobby", &app.subscribe_token("lobby"), "");
    browser.open("early", &watch).await;
    wait_state(&mut browser, "early", "waiting", Duration::from_secs(15)).await;
    assert_eq!(
        text(&mut browser, "early", "state").await,
        "waiting for the broadcaster"
    );
    assert_eq!(text(&mut browser, "early", "bitrate").await, "–");
    shot(&mut browser, "early", "1-waiting").await;
    // The token left the address bar, and stays in the tab for reloads.
    let search = browser.eval("early", "location.search").await.unwrap();
    assert_eq!(search, "", "the token is not in the address bar");
    let kept = browser
        .eval(
            "early",
            "sessionStorage.getItem('tandem.watch.token.lobby')",
        )
        .await
        .unwrap();
    assert!(
        kept.as_str().is_some_and(|t| t.len() > 20),
        "the token is kept in sessionStorage for reloads: {kept}"
    );

    // A misspelt stream with an operator's `*` token: no such stream.
    let typo = page_url(&app, "watch", "lobyy", &app.subscribe_token("*"), "");
    browser.open("typo", &typo).await;
    wait_state(&mut browser, "typo", "unknown", Duration::from_secs(15)).await;
    assert_eq!(text(&mut browser, "typo", "state").await, "no such stream");
    shot(&mut browser, "typo", "2-no-such-stream").await;

    // The broadcaster starts (Chromium's fake camera): the early viewer plays.
    let publish = page_url(&app, "broadcast", "lobby", &app.publish_token("lobby"), "");
    browser.open("pub", &publish).await;
    wait_state(&mut browser, "pub", "live", Duration::from_secs(30)).await;
    wait_playing(&mut browser, "early").await;
    // A real incoming bitrate is shown while playing (it was "–" while waiting).
    browser
        .wait_stats(
            &["early"],
            "a bitrate shown while playing",
            Duration::from_secs(10),
            |s| {
                let shown = s[0]["shown"]["bitrate"].as_str().unwrap_or_default();
                if s[0]["state"] == "playing"
                    && shown.ends_with("bit/s")
                    && !shown.starts_with("0 ")
                {
                    Ok(())
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await;
    shot(&mut browser, "early", "3-playing").await;

    // The broadcast page counts its one viewer.
    browser
        .wait_stats(
            &["pub"],
            "the broadcast page showing 1 viewer",
            Duration::from_secs(15),
            |s| {
                if s[0]["viewers"] == 1 && s[0]["shown"]["viewers"] == "1" {
                    Ok(())
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await;
    shot(&mut browser, "pub", "4-broadcast-live").await;

    // The operator dashboard lists the stream with its publisher and 1 viewer.
    browser.open("ops", &app.url("/streams")).await;
    browser
        .eval("ops", &format!("window.tandem.setKey('{SERVICE_KEY}')"))
        .await
        .unwrap();
    let listed = browser
        .wait_stats(
            &["ops"],
            "the dashboard listing lobby with 1 viewer",
            Duration::from_secs(15),
            |s| {
                let row = s[0]["streams"]
                    .as_array()
                    .and_then(|l| l.iter().find(|r| r["stream"] == "lobby").cloned());
                match row {
                    Some(r)
                        if r["viewers"] == 1
                            && r["publisher"].is_object()
                            && num(&s[0]["rows"]) >= 1.0 =>
                    {
                        Ok(r)
                    }
                    _ => Err(s[0].to_string()),
                }
            },
        )
        .await;
    assert!(
        !listed["publisher"]["codecs"]
            .as_array()
            .map(|c| c.is_empty())
            .unwrap_or(true),
        "the publisher's codecs: {listed}"
    );
    let row_text = browser
        .eval(
            "ops",
            "document.querySelector('tr[data-stream=\"lobby\"] .viewers').textContent",
        )
        .await
        .unwrap();
    assert_eq!(row_text, "1", "the table shows the viewer count");
    shot(&mut browser, "ops", "5-dashboard").await;
    // A wrong key is said to be wrong.
    browser.open("ops-bad", &app.url("/streams")).await;
    browser
        .eval("ops-bad", "window.tandem.setKey('not-the-key')")
        .await
        .unwrap();
    wait_state(
        &mut browser,
        "ops-bad",
        "wrong-key",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        text(&mut browser, "ops-bad", "message")
            .await
            .starts_with("wrong service key"),
    );
    browser.close("ops-bad").await;

    // "Share watch link" makes a link that plays for someone else.
    let shared = browser.eval("pub", "window.tandem.share()").await.unwrap();
    let link = shared["watch_url"]
        .as_str()
        .unwrap_or_else(|| panic!("a watch link: {shared}"))
        .to_string();
    assert!(link.contains("/watch/lobby?token="), "{link}");
    shot(&mut browser, "pub", "6-share").await;
    browser.open("friend", &link).await;
    wait_playing(&mut browser, "friend").await;
    browser
        .wait_stats(
            &["pub"],
            "the broadcast page showing 2 viewers",
            Duration::from_secs(15),
            |s| {
                if s[0]["viewers"] == 2 {
                    Ok(())
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await;
    browser.close("friend").await;

    // The broadcaster stops: within a few seconds the viewer is no longer
    // "playing" but waiting (or ended), with no bitrate; the broadcast page's
    // numbers are back to "–".
    browser.eval("pub", "window.tandem.stop()").await.unwrap();
    let after = browser
        .wait_stats(
            &["early"],
            "the viewer leaving 'playing'",
            Duration::from_secs(6),
            |s| {
                let st = s[0]["state"].as_str().unwrap_or_default();
                if st == "waiting" || st == "ended" {
                    Ok(s[0].clone())
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await;
    let shown = text(&mut browser, "early", "state").await;
    assert!(
        shown == "waiting for the broadcaster" || shown == "stream ended",
        "{shown}: {after}"
    );
    assert_eq!(text(&mut browser, "early", "bitrate").await, "–");
    shot(&mut browser, "early", "7-after-stop").await;
    let pub_after = browser.stats("pub").await;
    assert_eq!(pub_after["state"], "stopped");
    assert_eq!(pub_after["shown"]["bitrate"], "–", "{pub_after}");
    assert_eq!(pub_after["shown"]["video"], "–", "{pub_after}");
    shot(&mut browser, "pub", "8-broadcast-stopped").await;

    browser.quit().await;
    app.shutdown().await;
}

/// The broadcast page, like the watch page, recovers by itself when its session
/// is lost (a server restart, a node draining): "reconnecting…", then "live" on a
/// new WHIP session with the camera still on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_page_reconnects_after_losing_its_session() {
    let _guard = media_lock().await;
    let app = spawn_app().await;
    let mut browser = Browser::launch().await;
    let publish = page_url(&app, "broadcast", "again", &app.publish_token("again"), "");
    browser.open("pub", &publish).await;
    wait_state(&mut browser, "pub", "live", Duration::from_secs(30)).await;
    let url = browser
        .eval("pub", "window.tandem.session.sessionUrl")
        .await
        .unwrap();
    let session = url
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    app.state()
        .sfu
        .end(&session)
        .await
        .expect("ending the publisher's session");
    let mut saw_reconnecting = false;
    browser
        .wait_stats(
            &["pub"],
            "the page reconnecting and live again",
            Duration::from_secs(60),
            |s| {
                let p = &s[0];
                if p["state"] == "reconnecting" {
                    saw_reconnecting = true;
                }
                if num(&p["reconnects"]) >= 1.0 && p["state"] == "live" {
                    Ok(())
                } else {
                    Err(p.to_string())
                }
            },
        )
        .await;
    assert!(saw_reconnecting, "the page said it was reconnecting");
    let url2 = browser
        .eval("pub", "window.tandem.session.sessionUrl")
        .await
        .unwrap();
    assert_ne!(url, url2, "a new WHIP session");
    app.wait_sessions(1, Duration::from_secs(10)).await;
    browser.eval("pub", "window.tandem.stop()").await.unwrap();
    app.wait_sessions(0, Duration::from_secs(10)).await;
    browser.quit().await;
    app.shutdown().await;
}

/// Opened over plain HTTP from a name that is not localhost, the broadcast page
/// says the camera needs HTTPS (browsers hide `navigator.mediaDevices` there)
/// instead of failing with a TypeError.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_page_on_an_insecure_origin_says_the_camera_needs_https() {
    let _guard = media_lock().await;
    let app = spawn_app().await;
    let mut browser = Browser::launch().await;
    let port = app.base.rsplit(':').next().unwrap().to_string();
    let url = format!(
        "http://insecure.tandem.test:{port}/broadcast/cam?token={}",
        app.publish_token("cam")
    );
    browser.open("pub", &url).await;
    let secure = browser.eval("pub", "window.isSecureContext").await.unwrap();
    assert_eq!(secure, false, "the test origin is insecure");
    let s = wait_state(&mut browser, "pub", "failed", Duration::from_secs(10)).await;
    let error = browser.eval("pub", "window.tandem.error").await.unwrap();
    let error = error.as_str().unwrap_or_default();
    assert!(
        error.starts_with("the camera needs HTTPS (or http://localhost)")
            && error.contains("docs/DEPLOY.md"),
        "{error}: {s}"
    );
    assert!(
        !error.contains("TypeError") && !error.contains("undefined"),
        "{error}"
    );
    assert_eq!(
        text(&mut browser, "pub", "state").await,
        "the camera needs HTTPS"
    );
    let notice = text(&mut browser, "pub", "camera-problem").await;
    assert!(notice.contains("HTTPS"), "{notice}");
    shot(&mut browser, "pub", "9-insecure").await;
    assert_eq!(app.session_count(), 0, "no session was attempted");
    browser.quit().await;
    app.shutdown().await;
}

/// A business stream: the watch page without a token shows the class and says to
/// enroll; the viewer token's `watch_url` plays; ending the stream shows "stream
/// ended" to the student and to a newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_stream_watch_page_explains_enrollment_plays_the_viewer_link_and_ends() {
    let _guard = media_lock().await;
    let app = api_app(Backend::Sqlite).spawn().await;
    let id = app.create_stream("teacher-1", 5).await;
    let mut browser = Browser::launch().await;

    // Without a token: the class, and how to get in.
    browser
        .open("anon", &app.url(&format!("/watch/{id}")))
        .await;
    wait_state(&mut browser, "anon", "enroll", Duration::from_secs(15)).await;
    assert_eq!(
        text(&mut browser, "anon", "about-title").await,
        "Class by teacher-1"
    );
    assert_eq!(
        text(&mut browser, "anon", "about-instructor").await,
        "teacher-1"
    );
    assert_eq!(text(&mut browser, "anon", "about-price").await, "5 tokens");
    assert_eq!(
        text(&mut browser, "anon", "about-status").await,
        "scheduled"
    );
    let detail = text(&mut browser, "anon", "overlay-detail").await;
    assert_eq!(
        detail,
        "Enroll on your platform, then open the watch link it gives you."
    );
    assert!(
        !detail.contains("tandem token"),
        "no server command for a student"
    );
    shot(&mut browser, "anon", "10-enroll").await;

    // The instructor goes live with the stream's publish token (aiortc).
    let teacher = instructor("teacher-1");
    let r = app
        .post(
            &format!("/v1/streams/{id}/start"),
            Some(&teacher),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/streams/{id}/publish-token"),
            Some(&teacher),
            json!({}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let publish = r.body["token"].as_str().unwrap().to_string();
    let whip = app.whip_url(&id);
    let mut publisher = PyPeer::spawn(
        "publisher",
        "publisher.py",
        &["--url", &whip, "--token", &publish, "--codec", "VP8"],
    );
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;

    // An enrolled student's viewer token comes with a watch_url that plays.
    app.credit("student-1", 10).await;
    let student = user("student-1");
    let r = app
        .post(
            &format!("/v1/streams/{id}/enrollments"),
            Some(&student),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/streams/{id}/viewer-token"),
            Some(&student),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let token = r.body["token"].as_str().unwrap();
    let watch_url = r.body["watch_url"].as_str().unwrap_or_default();
    assert_eq!(
        watch_url,
        format!("{}/watch/{id}?token={token}", app.base),
        "{}",
        r.text
    );
    browser.open("student", watch_url).await;
    wait_playing(&mut browser, "student").await;
    let search = browser.eval("student", "location.search").await.unwrap();
    assert_eq!(search, "", "the viewer token left the address bar");
    shot(&mut browser, "student", "11-student-playing").await;

    // The instructor ends the class: the student sees "stream ended", and so does
    // anyone who opens the page afterwards.
    let r = app
        .post(&format!("/v1/streams/{id}/end"), Some(&teacher), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    wait_state(&mut browser, "student", "ended", Duration::from_secs(8)).await;
    assert_eq!(text(&mut browser, "student", "state").await, "stream ended");
    shot(&mut browser, "student", "12-student-ended").await;
    browser
        .open("later", &app.url(&format!("/watch/{id}")))
        .await;
    wait_state(&mut browser, "later", "ended", Duration::from_secs(15)).await;
    assert_eq!(text(&mut browser, "later", "state").await, "stream ended");

    let _ = publisher.stop(Duration::from_secs(30)).await;
    browser.quit().await;
    app.shutdown().await;
}

/// A real server restart (same address and data directory, so the same token
/// key): the broadcast page says "reconnecting…" and is live again, and the watch
/// page plays again, both without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_and_watch_pages_come_back_after_a_server_restart() {
    let _guard = media_lock().await;
    let dir = TempDir::new("tandem-pages-restart");
    let app = TestApp::builder().data_dir(dir.path()).spawn().await;
    let addr = app.running.as_ref().unwrap().http_addr;
    let mut browser = Browser::launch().await;
    let publish = page_url(
        &app,
        "broadcast",
        "phoenix",
        &app.publish_token("phoenix"),
        "",
    );
    let watch = page_url(
        &app,
        "watch",
        "phoenix",
        &app.subscribe_token("phoenix"),
        "",
    );
    browser.open("pub", &publish).await;
    wait_state(&mut browser, "pub", "live", Duration::from_secs(30)).await;
    browser.open("view", &watch).await;
    wait_playing(&mut browser, "view").await;

    app.shutdown().await;
    let mut saw_reconnecting = false;
    browser
        .wait_stats(
            &["pub"],
            "the broadcast page noticing",
            Duration::from_secs(30),
            |s| {
                if s[0]["state"] == "reconnecting" {
                    saw_reconnecting = true;
                    Ok(())
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await;
    assert!(saw_reconnecting);
    let app = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| c.http_addr = addr)
        .spawn()
        .await;
    browser
        .wait_stats(
            &["pub"],
            "the broadcast page live again on the new server",
            Duration::from_secs(60),
            |s| {
                if s[0]["state"] == "live" && num(&s[0]["reconnects"]) >= 1.0 {
                    Ok(())
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await;
    wait_playing(&mut browser, "view").await;
    shot(&mut browser, "view", "13-after-restart").await;
    browser.quit().await;
    app.shutdown().await;
}
