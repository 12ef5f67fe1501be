//! Issue 16 end to end over the HTTP API, the way an instructor drives it: a
//! stream-key connection to a private nginx-rtmp, the class's destinations
//! PUT while scheduled, `POST …/start`, an aiortc publisher with the class's
//! publish token; the destinations' event stream says `live`, `ffprobe` reads
//! H.264 and AAC at the RTMP server, the operator view says `restreamed`, and
//! the instructor's `/restream` page (Chromium) shows each status as it
//! changes and starts and ends the class with its buttons; the
//! same set PUT again while live keeps the running process (no second
//! resolution), an empty set stops it, `end` stops everything.

use std::time::Duration;

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A `text/event-stream` read event by event.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(app: &TestApp, path: &str, bearer: &str) -> Events {
        let resp = app
            .http
            .get(format!("{}{path}", app.base))
            .bearer_auth(bearer)
            .send()
            .await
            .expect("events request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            resp,
            buf: String::new(),
        }
    }

    /// The next `status` event's data.
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if block.contains("event: status") && !data.is_empty() {
                    return serde_json::from_str(&data).expect("status JSON");
                }
                continue;
            }
            let chunk = self.resp.chunk().await.expect("event stream read");
            let chunk = chunk.expect("the event stream stays open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until `connection`'s status is `status`; returns that event.
    async fn until(&mut self, connection: &str, status: &str, within: Duration) -> Value {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(within, async {
            loop {
                let e = self.next().await;
                if e["connection_id"] == connection && e["status"] == status {
                    return e;
                }
                seen.push(e);
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("{connection} not {status} within {within:?}"))
    }
}

async fn put(app: &TestApp, stream: &str, bearer: &str, body: Value) -> Resp {
    app.put(
        &format!("/v1/streams/{stream}/destinations"),
        Some(bearer),
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instructor_restreams_a_class_through_the_api() {
    let _guard = media_lock().await;
    init_tracing();
    let app = spawn_api(Backend::Sqlite).await;
    let auth = PublishAuth::start().await;
    let nginx = Nginx::start(&auth).await;
    let ines = instructor("ines");

    // A stream-key connection (the server URL and key as a platform shows them).
    let url = nginx.url("class-api");
    let (ingest, key) = url.rsplit_once('/').unwrap();
    let r = app
        .post(
            "/v1/platform-connections",
            Some(&ines),
            json!({"platform": "rtmp", "name": "studio nginx", "ingest_url": ingest, "stream_key": key}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let connection = r.body["id"].as_str().unwrap().to_string();
    assert!(
        !r.text.contains(key),
        "the key never comes back: {}",
        r.text
    );

    let stream = app.create_stream("ines", 0).await;
    let r = put(&app, &stream, &ines, json!([{"connection_id": connection}])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body[0]["status"], "idle");

    let mut events = Events::open(
        &app,
        &format!("/v1/streams/{stream}/destinations/events"),
        &ines,
    )
    .await;
    let first = events.next().await;
    assert_eq!(
        (first["connection_id"].as_str(), first["status"].as_str()),
        (Some(connection.as_str()), Some("idle")),
        "the stream opens with every destination's state: {first}"
    );

    // The instructor's page: the connection, the class and its destination.
    let mut browser = Browser::launch().await;
    let init = format!("sessionStorage.setItem('tandem.restream.identity', {ines:?});");
    browser
        .open_with_init("restream", &format!("{}/restream", app.base), &init)
        .await;
    let page_status = |want: &'static str| {
        let connection = connection.clone();
        move |s: &[Value]| -> Result<(), String> {
            let st = &s[0];
            let listed = st["connections"].as_array().map_or(0, Vec::len);
            if st["state"] == "ok"
                && listed == 1
                && st["destinations"][&connection]["status"] == want
            {
                Ok(())
            } else {
                Err(st.to_string())
            }
        }
    };
    browser
        .wait_stats(
            &["restream"],
            "the page shows the destination idle",
            Duration::from_secs(20),
            page_status("idle"),
        )
        .await;

    // Live from the page's button: the push waits for media, then goes live
    // once the publisher sends.
    browser
        .eval("restream", "document.getElementById('go-live').click()")
        .await
        .unwrap();
    events
        .until(&connection, "connecting", Duration::from_secs(10))
        .await;
    let r = app
        .post(
            &format!("/v1/streams/{stream}/publish-token"),
            Some(&ines),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let whip_url = r.body["whip_url"].as_str().unwrap().to_string();
    let token = r.body["token"].as_str().unwrap().to_string();
    let mut publisher = PyPeer::spawn(
        "publisher(api)",
        "publisher.py",
        &["--url", &whip_url, "--token", &token, "--codec", "H264"],
    );
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let live = events
        .until(&connection, "live", Duration::from_secs(30))
        .await;
    assert!(live["since"].as_str().unwrap().ends_with('Z'), "{live}");
    browser
        .wait_stats(
            &["restream"],
            "the page shows the push live",
            Duration::from_secs(20),
            page_status("live"),
        )
        .await;

    let probe = probe_rtmp(url.clone()).await;
    let codecs: Vec<&str> = probe["streams"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["codec_name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        codecs.contains(&"h264") && codecs.contains(&"aac"),
        "at the RTMP server: {probe}"
    );

    let r = app
        .get(&format!("/v1/streams/{stream}/destinations"), Some(&ines))
        .await;
    assert_eq!(r.body[0]["status"], "live", "{}", r.text);
    assert!(r.body[0]["bytes_sent"].as_u64().unwrap() > 0, "{}", r.text);
    assert_eq!(r.body[0]["name"], "studio nginx");
    let r = app.get("/v1/media/streams", Some(SERVICE_KEY)).await;
    let listed = r.body["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == stream.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["restreamed"], true, "{}", r.text);

    // The same set again while live: the running push is kept, not re-resolved.
    let restreams = app.state().restreams.clone();
    let pid = restreams
        .process_id(&stream, &connection)
        .expect("ffmpeg runs");
    let r = put(&app, &stream, &ines, json!([{"connection_id": connection}])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body[0]["status"], "live", "{}", r.text);
    assert_eq!(restreams.process_id(&stream, &connection), Some(pid));

    // Removed while live: its process goes.
    let r = put(&app, &stream, &ines, json!([])).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::OK, json!([])),
        "{}",
        r.text
    );
    events
        .until(&connection, "idle", Duration::from_secs(10))
        .await;
    eventually(
        "the removed push's ffmpeg exits",
        Duration::from_secs(10),
        || async {
            if process_alive(pid) {
                Err(format!("{pid} alive"))
            } else {
                Ok(())
            }
        },
    )
    .await;

    // Back, then `end`: everything stops.
    let r = put(&app, &stream, &ines, json!([{"connection_id": connection}])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    events
        .until(&connection, "live", Duration::from_secs(30))
        .await;
    let sent = publisher.stop(Duration::from_secs(20)).await;
    assert_eq!(sent["ok"], true, "{sent}");
    browser
        .eval("restream", "document.getElementById('end').click()")
        .await
        .unwrap();
    events
        .until(&connection, "idle", Duration::from_secs(10))
        .await;
    eventually(
        "no restream process left",
        Duration::from_secs(10),
        || async {
            match restreams.processes() {
                0 => Ok(()),
                n => Err(format!("{n} processes")),
            }
        },
    )
    .await;
    assert!(!restreams.is_restreaming(&stream));
    let r = app.get(&format!("/v1/streams/{stream}"), None).await;
    assert_eq!(
        r.body["status"], "ended",
        "the page's End button: {}",
        r.text
    );
    browser.quit().await;
    app.shutdown().await;
}
