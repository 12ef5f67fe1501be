//! The HTTP side of the WHEP extensions (issue 15, API.md "Simulcast and the WHEP
//! extensions"): the `Link` headers of a WHEP answer, `POST {session}/layer`
//! (bad bodies change nothing) and the server-sent events (`POST {session}/sse`,
//! the `GET` of its `Location`, its end with the session). Sessions are made
//! from canned Chromium offers and never connect; layer switching with real
//! media is the media tests' business.

use std::time::Duration;

use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const LAYER_REL: &str = "urn:ietf:params:whep:ext:core:layer";
const SSE_REL: &str = "urn:ietf:params:whep:ext:core:server-sent-events";

/// A server whose never-connecting sessions (canned offers) live for the whole test.
async fn spawn() -> TestApp {
    TestApp::builder()
        .config(|c| {
            c.media.ice_start_timeout_ms = 120_000;
            c.media.connect_timeout_seconds = 120;
        })
        .spawn()
        .await
}

/// The canned publisher offer with three simulcast encodings q, h, f on its video.
fn simulcast_offer() -> String {
    CHROMIUM_SENDONLY_OFFER.replacen(
        "a=sendonly\r\n",
        "a=sendonly\r\na=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n",
        1,
    )
}

/// A WHEP session of `stream`: its session URL path (the Location).
async fn viewer(app: &TestApp, stream: &str) -> (String, reqwest::header::HeaderMap) {
    let resp = post_offer(
        app,
        &app.whep_url(stream),
        Some(&app.subscribe_token(stream)),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let headers = resp.headers().clone();
    let location = headers[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    (location, headers)
}

fn session_id(location: &str) -> &str {
    location.rsplit('/').next().unwrap()
}

fn links(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn whep_answers_link_the_layer_and_sse_extensions() {
    let app = spawn().await;
    let (location, headers) = viewer(&app, "cam").await;
    let links = links(&headers);
    assert!(
        links.contains(&format!("<{location}/layer>; rel=\"{LAYER_REL}\"")),
        "{links:?}"
    );
    assert!(
        links.contains(&format!(
            "<{location}/sse>; rel=\"{SSE_REL}\"; events=\"active,inactive,layers,viewercount\""
        )),
        "{links:?}"
    );
    // A WHIP answer has no viewer extensions.
    let resp = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&app.publish_token("cam")),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(
        self::links(resp.headers())
            .iter()
            .all(|l| !l.contains("urn:ietf:params:whep")),
        "{:?}",
        self::links(resp.headers())
    );
    // Browsers may read Link (CORS).
    let r = app
        .http
        .post(app.whep_url("cam"))
        .header("origin", "https://example.com")
        .bearer_auth(app.subscribe_token("cam"))
        .header("content-type", SDP)
        .body(CHROMIUM_RECVONLY_OFFER)
        .send()
        .await
        .unwrap();
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("link"), "{exposed}");
    app.shutdown().await;
}

#[tokio::test]
async fn layer_requests_bad_bodies_are_400_and_change_nothing() {
    let app = spawn().await;
    let resp = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&app.publish_token("cam")),
        &simulcast_offer(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED, "simulcast offer");
    let publisher = resp.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let (location, _) = viewer(&app, "cam").await;
    let id = session_id(&location).to_string();
    let token = app.subscribe_token("cam");
    let layer_url = format!("{location}/layer");
    let sfu = &app.state().sfu;
    let before = sfu.viewer_layer(&id).expect("a viewer's layer");
    assert!(!before.pinned);

    let cases: &[(&str, &str, &str)] = &[
        ("{nope", "body", "not JSON"),
        ("[]", "body", "an array"),
        ("\"h\"", "body", "a string"),
        (r#"{"rid": 5}"#, "rid", "a number rid"),
        (r#"{"maxWidth": -1}"#, "maxWidth", "a negative width"),
        (r#"{"mediaId": true}"#, "mediaId", "a boolean mediaId"),
        (
            r#"{"rid": "h", "encodingId": "q"}"#,
            "encodingId",
            "two rids",
        ),
        (r#"{"rid": "zz"}"#, "", "an unknown rid"),
        (r#"{"encodingId": "zz"}"#, "", "an unknown encodingId"),
        (r#"{"mediaId": "1", "rid": "h"}"#, "", "the audio section"),
        (r#"{"mediaId": 7}"#, "", "no such section"),
        (r#"{"spatialLayerId": 1}"#, "", "a spatial layer"),
    ];
    for (body, field, what) in cases {
        let r = app
            .send(Method::POST, &layer_url, Some(&token), Some(body), &[])
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text);
        assert_eq!(r.code(), "bad_request", "{what}: {}", r.text);
        assert!(
            !r.body["error"]["message"].as_str().unwrap().is_empty(),
            "{what}"
        );
        if !field.is_empty() {
            assert_eq!(r.body["error"]["field"], *field, "{what}: {}", r.text);
        }
        assert_eq!(
            sfu.viewer_layer(&id).as_ref(),
            Some(&before),
            "{what} changed the layer"
        );
    }
    // Not JSON at all.
    let r = app
        .send(
            Method::POST,
            &layer_url,
            Some(&token),
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text);
    assert_eq!(r.code(), "unsupported_media_type");

    // Pinning a rid the publisher offers, then back to automatic.
    let r = app
        .send(
            Method::POST,
            &layer_url,
            Some(&token),
            Some(r#"{"mediaId": "0", "encodingId": "h", "futureField": 1}"#),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["pinned"], true, "{}", r.text);
    assert_eq!(r.body["media_id"], "0", "{}", r.text);
    assert!(sfu.viewer_layer(&id).unwrap().pinned);
    let r = app.post(&layer_url, Some(&token), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["pinned"], false, "{}", r.text);
    assert_eq!(
        serde_json::to_value(sfu.viewer_layer(&id).unwrap()).unwrap(),
        r.body
    );

    // Who may ask, and about which session.
    let r = app.post(&layer_url, None, json!({})).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the session URL is the capability"
    );
    let other = app.subscribe_token("other");
    let r = app.post(&layer_url, Some(&other), json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.post(&layer_url, Some("garbage"), json!({})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    for url in [
        "/v1/whep/cam/nosuchsession/layer".to_string(),
        format!("/v1/whep/other/{id}/layer"),
        // A publisher's session is no WHEP session.
        format!("/v1/whep/cam/{}/layer", session_id(&publisher)),
    ] {
        let r = app.post(&url, Some(&token), json!({})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{url}: {}", r.text);
        assert_eq!(r.code(), "not_found");
    }
    app.shutdown().await;
}

/// Reads an event stream's `event:`/`data:` blocks.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    /// The next event, `None` when the stream ended; panics after 10 s.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                match name {
                    Some(name) => return Some((name, serde_json::from_str(&data).unwrap())),
                    None => continue, // a keep-alive comment
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("an event or the end within 10 s")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }
}

async fn register(app: &TestApp, location: &str, body: Option<&str>) -> reqwest::Response {
    let mut req = app.http.post(app.url(&format!("{location}/sse")));
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn sse_sends_the_state_then_ends_with_the_session() {
    let app = spawn().await;
    let (location, _) = viewer(&app, "cam").await;
    let id = session_id(&location).to_string();

    let r = register(&app, &location, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let events_url = r.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        events_url.starts_with(&format!("{location}/sse/"))
            && events_url.len() > location.len() + 20,
        "{events_url}"
    );
    let resp = app.http.get(app.url(&events_url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = Events {
        resp,
        buf: String::new(),
    };
    // No publisher: inactive first, then the viewer count.
    assert_eq!(events.next().await, Some(("inactive".into(), json!({}))));
    let (name, data) = events.next().await.unwrap();
    assert_eq!(name, "viewercount");
    let viewers = app.state().sfu.stream("cam").map_or(0, |s| s.viewers);
    assert_eq!(data, json!({ "viewercount": viewers }));
    // The encodings on offer (none: no publisher), keyed by the viewer's video mediaId.
    let sfu = &app.state().sfu;
    let (name, data) = events.next().await.unwrap();
    assert_eq!(name, "layers");
    assert_eq!(data, json!({ "0": { "layers": sfu.layers("cam") } }));
    // Our extension: the viewer's own layer.
    let (name, data) = events.next().await.unwrap();
    assert_eq!(name, "layer");
    assert_eq!(data, serde_json::to_value(sfu.viewer_layer(&id)).unwrap());
    assert_eq!(data["media_id"], "0");
    // While the stream is being read, a second GET of it is refused.
    let r = app.get(&events_url, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);

    // A second viewer: the count moves.
    let (second, _) = viewer(&app, "cam").await;
    let seen = loop {
        let (name, data) = events.next().await.expect("the stream goes on");
        if name == "viewercount" {
            break data;
        }
    };
    assert_eq!(
        seen["viewercount"].as_u64().unwrap(),
        viewers as u64 + 1,
        "{seen}"
    );

    // The session ends: the open stream ends, its URL and a new registration are 404.
    let r = app.send(Method::DELETE, &location, None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    loop {
        match events.next().await {
            None => break,
            Some((name, _)) => assert_ne!(name, "active", "no publisher came"),
        }
    }
    let r = app.get(&events_url, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.code(), "not_found");
    let r = register(&app, &location, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    eventually(
        "the ended session's registrations go",
        Duration::from_secs(5),
        || async {
            let n = app.state().whep_events.count_of(&id);
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} left"))
            }
        },
    )
    .await;
    // Another session's stream is not this one's.
    let r = app
        .get(&events_url.replace(&id, session_id(&second)), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn sse_event_names_are_checked_and_streams_are_capped() {
    let app = spawn().await;
    let (location, _) = viewer(&app, "cam").await;
    let url = format!("{location}/sse");
    for (body, field) in [
        (r#"["active", "fireworks"]"#, "body[1]"),
        (r#"{"events": ["active"]}"#, "body"),
        (r#"[1]"#, "body[0]"),
        ("[nope", "body"),
    ] {
        let r = app.send(Method::POST, &url, None, Some(body), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.code(), "bad_request");
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.text);
    }
    assert_eq!(
        app.state().whep_events.len(),
        0,
        "a bad body registers nothing"
    );

    // Only the events asked for: viewercount without the state events.
    let r = register(&app, &location, Some(r#"["viewercount", "layer"]"#)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let events_url = r.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let resp = app.http.get(app.url(&events_url)).send().await.unwrap();
    let mut events = Events {
        resp,
        buf: String::new(),
    };
    let (name, _) = events.next().await.unwrap();
    assert_eq!(name, "viewercount");
    let (name, data) = events.next().await.unwrap();
    assert_eq!(name, "layer");
    assert_eq!(data["pinned"], false, "{data}");
    drop(events);

    // Four per session.
    for _ in 0..3 {
        assert_eq!(
            register(&app, &location, Some("[]")).await.status(),
            StatusCode::CREATED
        );
    }
    let r = app.send(Method::POST, &url, None, Some("[]"), &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.code(), "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    // Another session has its own four.
    let (other, _) = viewer(&app, "cam").await;
    assert_eq!(
        register(&app, &other, None).await.status(),
        StatusCode::CREATED
    );
    app.shutdown().await;
}
