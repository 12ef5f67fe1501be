//! Issue 11 hardening tests: WHIP/WHEP sessions (items 3, 8, 9).
//!
//! Item 3: one token (or one user) cannot take the media capacity, viewers cannot
//! starve a stream's publisher, and a session whose client never starts ICE is
//! gone after `media.ice_start_timeout_ms` with its counts released.
//! Item 8: offers the server cannot use (no ICE credentials, no fingerprint,
//! `a=setup:passive`) are 400 before anything exists.
//! Item 9: a session answers only under its own kind and stream.
//!
//! HTTP-only: the offers are Chromium's (tests/common/*.sdp), no media flows.

use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode, header};
use serde_json::Value;
use tandem::auth::{Grants, TokenRequest};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

/// Asserts the status and the JSON error shape; returns the body.
async fn expect_error(resp: Response, status: StatusCode, code: &str) -> Value {
    let got = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "status (body: {body})");
    let mut v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON body ({e}): {body}"));
    assert_eq!(v["error"]["code"], code, "error code: {body}");
    assert!(
        !v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "error message present: {body}"
    );
    v["retry_after"] = retry_after.map(Value::from).unwrap_or(Value::Null);
    v
}

/// POSTs an offer that must be accepted; returns the session URL (path).
async fn create(app: &TestApp, url: &str, token: &str, offer: &str) -> String {
    let resp = post_offer(app, url, Some(token), offer).await;
    let status = resp.status();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::CREATED, "POST {url}: {body}");
    assert!(!location.is_empty(), "Location of the new session");
    location
}

/// A media token as the API mints them for platform users (with a `role`), so
/// the per-token and per-user limits apply to it.
fn user_token(app: &TestApp, user: &str, stream: &str, grants: Grants) -> String {
    app.token_for(TokenRequest {
        user: user.into(),
        stream: Some(stream.into()),
        grants,
        role: Some("user".into()),
        ttl_secs: 3600,
        ..Default::default()
    })
}

fn subscribe() -> Grants {
    Grants {
        subscribe: true,
        ..Default::default()
    }
}

fn jti_of(app: &TestApp, token: &str) -> String {
    app.state().tokens.verify(token).expect("a valid token").jti
}

/// Item 3: one subscribe token cannot open more WHEP sessions than
/// `media.max_sessions_per_token`; the refused request is 429 `rate_limited` with
/// `Retry-After`, names the limit, and creates nothing; a DELETE gives the slot
/// back. Anonymous and wrong-stream requests still learn only 401/403.
/// Before the fix the third session was 201 (no per-token limit at all), and an
/// anonymous POST without a Content-Type was 415 before 401.
#[tokio::test]
async fn one_token_cannot_take_more_than_its_sessions() {
    let app = TestApp::builder()
        .config(|c| c.media.max_sessions_per_token = 2)
        .spawn()
        .await;
    let url = app.whep_url("cam");
    let token = user_token(&app, "alice", "cam", subscribe());
    let first = create(&app, &url, &token, CHROMIUM_RECVONLY_OFFER).await;
    create(&app, &url, &token, CHROMIUM_RECVONLY_OFFER).await;
    assert_eq!(app.session_count(), 2);

    let v = expect_error(
        post_offer(&app, &url, Some(&token), CHROMIUM_RECVONLY_OFFER).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("media.max_sessions_per_token"),
        "the message names the limit: {msg}"
    );
    assert_eq!(v["error"]["limit"], "media.max_sessions_per_token", "{v}");
    assert!(v["retry_after"].is_string(), "Retry-After is sent: {v}");
    assert_eq!(app.session_count(), 2, "the refused offer created nothing");
    assert_eq!(app.state().sfu.sessions_of_token(&jti_of(&app, &token)), 2);

    // The token checks come first: nobody learns about the limits without one.
    let resp = request(
        &app,
        Method::POST,
        &url,
        None,
        None,
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let other = user_token(&app, "alice", "other", subscribe());
    let resp = post_offer(&app, &url, Some(&other), CHROMIUM_RECVONLY_OFFER).await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;

    // DELETE gives the slot back, exactly once.
    let resp = request(&app, Method::DELETE, &app.url(&first), None, None, "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = request(&app, Method::DELETE, &app.url(&first), None, None, "").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.state().sfu.sessions_of_token(&jti_of(&app, &token)), 1);
    create(&app, &url, &token, CHROMIUM_RECVONLY_OFFER).await;
    assert_eq!(app.session_count(), 2);
    app.shutdown().await;
}

/// Item 3: one user cannot get around the per-token limit by minting more tokens:
/// `media.max_sessions_per_user` counts every token of the user; another user is
/// unaffected. Before the fix the fourth session of "alice" was 201.
#[tokio::test]
async fn one_user_cannot_take_more_than_its_sessions() {
    let app = TestApp::builder()
        .config(|c| c.media.max_sessions_per_user = 3)
        .spawn()
        .await;
    let url = app.whep_url("cam");
    for _ in 0..3 {
        let token = user_token(&app, "alice", "cam", subscribe());
        create(&app, &url, &token, CHROMIUM_RECVONLY_OFFER).await;
    }
    let fourth = user_token(&app, "alice", "cam", subscribe());
    let v = expect_error(
        post_offer(&app, &url, Some(&fourth), CHROMIUM_RECVONLY_OFFER).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    assert_eq!(v["error"]["limit"], "media.max_sessions_per_user", "{v}");
    assert_eq!(app.session_count(), 3, "the refused offer created nothing");
    assert_eq!(app.state().sfu.sessions_of_user("alice"), 3);
    assert_eq!(app.state().sfu.sessions_of_token(&jti_of(&app, &fourth)), 0);

    let bob = user_token(&app, "bob", "cam", subscribe());
    create(&app, &url, &bob, CHROMIUM_RECVONLY_OFFER).await;
    assert_eq!(app.session_count(), 4);

    // Shutdown ends every session and releases its counts.
    let sfu = app.state().sfu.clone();
    app.shutdown().await;
    assert_eq!(sfu.sessions_of_user("alice"), 0);
    assert_eq!(sfu.sessions_of_user("bob"), 0);
}

/// Item 3: viewers fill only their share of `media.max_sessions`; the slots kept
/// for publishers let the stream's own publisher in. Before the fix the fourth
/// viewer took the last slot and the publisher got 503.
#[tokio::test]
async fn viewers_cannot_starve_the_publisher() {
    let app = TestApp::builder()
        .config(|c| c.media.max_sessions = 4)
        .spawn()
        .await;
    let url = app.whep_url("cam");
    // Operator tokens (no role) are not held to the per-token limits, so the
    // server-wide share is what refuses the viewer here.
    let mut viewers = 0;
    for _ in 0..4 {
        let resp = post_offer(
            &app,
            &url,
            Some(&app.subscribe_token("cam")),
            CHROMIUM_RECVONLY_OFFER,
        )
        .await;
        if resp.status() != StatusCode::CREATED {
            let v = expect_error(resp, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
            assert!(v["retry_after"].is_string(), "Retry-After is sent: {v}");
            break;
        }
        viewers += 1;
    }
    assert_eq!(viewers, 3, "one of 4 slots is kept for publishers");
    assert_eq!(app.session_count(), 3);
    create(
        &app,
        &app.whip_url("cam"),
        &app.publish_token("cam"),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(app.session_count(), 4);
    // Full now, for everyone.
    let resp = post_offer(
        &app,
        &app.whip_url("cam2"),
        Some(&app.publish_token("cam2")),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    expect_error(resp, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    app.shutdown().await;
}

/// Item 3: a session whose client never sends a STUN check is closed after
/// `media.ice_start_timeout_ms`, not after the 30 s idle timeout, and its token
/// and user counts go back to zero. Before the fix it lived 30 s (this test's
/// deadline is 10 s).
#[tokio::test]
async fn a_session_that_never_starts_ice_is_gone_quickly() {
    let app = TestApp::builder()
        .config(|c| c.media.ice_start_timeout_ms = 300)
        .spawn()
        .await;
    let token = user_token(&app, "carol", "cam", subscribe());
    let jti = jti_of(&app, &token);
    create(&app, &app.whep_url("cam"), &token, CHROMIUM_RECVONLY_OFFER).await;
    assert_eq!(app.session_count(), 1);
    app.wait_sessions(0, WAIT).await;
    eventually("the token's count released", WAIT, || async {
        let sfu = &app.state().sfu;
        match (sfu.sessions_of_token(&jti), sfu.sessions_of_user("carol")) {
            (0, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    app.shutdown().await;
}

/// A STUN binding request naming `ufrag` (USERNAME `<ufrag>:<client>`), as the
/// first check of a client; no integrity, which the demultiplexer does not read.
fn binding_request(username: &str) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username.as_bytes());
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    msg.extend_from_slice(&rand::random::<[u8; 12]>());
    msg.extend_from_slice(&attr);
    msg
}

/// Item 3: the two never-connected lifetimes are separate. A client whose ICE
/// started (its first check arrived) is not cut at the ICE-start timeout; it
/// still has to connect within `media.connect_timeout_seconds`, or it is closed
/// then (before the fix: after the 30 s idle timeout while checks kept coming).
#[tokio::test]
async fn ice_started_but_never_connected_ends_at_the_connect_timeout() {
    let app = TestApp::builder()
        .config(|c| {
            c.media.ice_start_timeout_ms = 200;
            c.media.connect_timeout_seconds = 2;
        })
        .spawn()
        .await;
    let token = user_token(&app, "dave", "cam", subscribe());
    let resp = post_offer(
        &app,
        &app.whep_url("cam"),
        Some(&token),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created = Instant::now();
    let answer = resp.text().await.unwrap_or_default();
    let ufrag = answer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .expect("the answer has an ICE ufrag")
        .to_string();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Checks keep coming (as a client's would, every 500 ms here) but DTLS never starts.
    let gone = async {
        loop {
            socket
                .send_to(
                    &binding_request(&format!("{ufrag}:abcd")),
                    ("127.0.0.1", app.media_port),
                )
                .await
                .unwrap();
            if app.session_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("the never-connected session ends at the connect timeout");
    let lived = created.elapsed();
    assert!(
        lived >= Duration::from_secs(2),
        "a session whose ICE started outlives the 200 ms ICE-start timeout (lived {lived:?})"
    );
    assert_eq!(app.state().sfu.sessions_of_user("dave"), 0);
    app.shutdown().await;
}

/// The Chromium offer with `edit` applied to each line (None drops it).
fn edited(offer: &str, mut edit: impl FnMut(&str) -> Option<String>) -> String {
    offer
        .lines()
        .filter_map(|l| edit(l.trim_end_matches('\r')))
        .map(|l| format!("{l}\r\n"))
        .collect()
}

/// `offer` with every line starting with `prefix` replaced by `line`.
fn replaced(offer: &str, prefix: &str, line: &str) -> String {
    edited(offer, |l| {
        Some(if l.starts_with(prefix) {
            line.into()
        } else {
            l.into()
        })
    })
}

/// Item 8: offers the server cannot use are 400 `bad_sdp` naming what is missing,
/// with no session created and nothing held: the real publisher gets 201 after
/// each. Before the fix, `a=setup:passive` (both sides passive: no DTLS) and empty
/// ICE credentials or fingerprints were 201, and the dead session held the stream
/// (409 for the real publisher).
#[tokio::test]
async fn unusable_offers_are_400_and_hold_nothing() {
    let app = spawn_app().await;
    let offer = CHROMIUM_SENDONLY_OFFER;
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "no ICE ufrag",
            "ice-ufrag",
            edited(offer, |l| (!l.starts_with("a=ice-ufrag")).then(|| l.into())),
        ),
        (
            "no ICE pwd",
            "ice-pwd",
            edited(offer, |l| (!l.starts_with("a=ice-pwd")).then(|| l.into())),
        ),
        (
            "no fingerprint",
            "fingerprint",
            edited(offer, |l| {
                (!l.starts_with("a=fingerprint")).then(|| l.into())
            }),
        ),
        (
            "empty ICE ufrag",
            "ice-ufrag",
            replaced(offer, "a=ice-ufrag:", "a=ice-ufrag:"),
        ),
        (
            "empty ICE pwd",
            "ice-pwd",
            replaced(offer, "a=ice-pwd:", "a=ice-pwd:"),
        ),
        (
            "fingerprint without a hash value",
            "fingerprint",
            replaced(offer, "a=fingerprint:", "a=fingerprint:sha-256"),
        ),
        ("credentials only in the first section", "ice-ufrag", {
            // The video section keeps its credentials; the audio one loses them.
            let mut seen_audio = false;
            edited(offer, move |l| {
                if l.starts_with("m=audio") {
                    seen_audio = true;
                }
                let cred = l.starts_with("a=ice-ufrag") || l.starts_with("a=ice-pwd");
                (!(seen_audio && cred)).then(|| l.into())
            })
        }),
        (
            "ICE ufrag shorter than 4 characters",
            "ice-ufrag",
            replaced(offer, "a=ice-ufrag:", "a=ice-ufrag:ab"),
        ),
        (
            "ICE pwd shorter than 22 characters",
            "ice-pwd",
            replaced(offer, "a=ice-pwd:", "a=ice-pwd:short"),
        ),
        (
            "fingerprint that is not hex",
            "fingerprint",
            replaced(
                offer,
                "a=fingerprint:",
                "a=fingerprint:sha-256 not-a-fingerprint",
            ),
        ),
        (
            "credentials and fingerprint only in a data channel section",
            "ice-ufrag",
            {
                let mut in_media = false;
                let mut out = edited(offer, move |l| {
                    if l.starts_with("m=") {
                        in_media = true;
                    }
                    let transport = l.starts_with("a=ice-ufrag")
                        || l.starts_with("a=ice-pwd")
                        || l.starts_with("a=fingerprint");
                    (!(in_media && transport)).then(|| l.into())
                });
                out.push_str(
                    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n\
a=fingerprint:sha-256 36:2D:A1:C0:36:B5:33:F0:7C:16:21:CF:CC:17:9B:06:41:D5:9B:32:34:6C:6C:93:8D:13:26:5B:58:F5:1C:7E\r\n\
a=setup:actpass\r\na=mid:2\r\na=sctp-port:5000\r\n",
                );
                out
            },
        ),
        (
            "setup:passive",
            "setup",
            replaced(offer, "a=setup:", "a=setup:passive"),
        ),
    ];
    let token = app.publish_token("cam");
    // Every case is tried, and what went wrong is reported for all of them.
    let mut wrong = Vec::new();
    for (what, names, bad) in &cases {
        let resp = post_offer(&app, &app.whip_url("cam"), Some(&token), bad).await;
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        if status != StatusCode::BAD_REQUEST || v["error"]["code"] != "bad_sdp" {
            wrong.push(format!("{what}: {status} (400 bad_sdp expected)"));
        } else if !msg.contains(names) {
            wrong.push(format!(
                "{what}: the message does not name '{names}': {msg}"
            ));
        }
        if app.session_count() != 0 || app.state().sfu.stream("cam").is_some() {
            wrong.push(format!(
                "{what}: a session was created and holds the stream"
            ));
        }
        // The real publisher gets in at once, then leaves for the next case.
        let resp = post_offer(&app, &app.whip_url("cam"), Some(&token), offer).await;
        if resp.status() != StatusCode::CREATED {
            wrong.push(format!(
                "{what}: then the real publisher got {}",
                resp.status()
            ));
        }
        let real = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        for session in [location, real].into_iter().flatten() {
            request(&app, Method::DELETE, &app.url(&session), None, None, "").await;
        }
        app.wait_sessions(0, WAIT).await;
    }
    assert!(wrong.is_empty(), "unusable offers:\n{}", wrong.join("\n"));
    app.shutdown().await;
}

/// Item 9: a session URL answers only under its own kind and stream. A WHIP
/// session is 404 under /v1/whep and a WHEP session under /v1/whip, for PATCH and
/// DELETE, and so is a session under another stream's name; the sessions survive
/// and answer at their own URLs. Before the fix the WHIP session was PATCHed and
/// DELETEd through its /v1/whep twin.
#[tokio::test]
async fn sessions_answer_only_under_their_own_kind_and_stream() {
    let app = spawn_app().await;
    let whip = create(
        &app,
        &app.whip_url("cam"),
        &app.publish_token("cam"),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    let whep = create(
        &app,
        &app.whep_url("cam"),
        &app.subscribe_token("cam"),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    let whip_id = whip.rsplit('/').next().unwrap().to_string();
    let whep_id = whep.rsplit('/').next().unwrap().to_string();
    let frag = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n";
    let wrong = [
        format!("/v1/whep/cam/{whip_id}"),
        format!("/v1/whip/cam/{whep_id}"),
        format!("/v1/whip/other/{whip_id}"),
        format!("/v1/whep/other/{whep_id}"),
    ];
    for path in &wrong {
        let resp = request(
            &app,
            Method::PATCH,
            &app.url(path),
            None,
            Some(SDPFRAG),
            frag,
        )
        .await;
        expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
        let resp = request(&app, Method::DELETE, &app.url(path), None, None, "").await;
        expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
        assert_eq!(app.session_count(), 2, "{path} touched nothing");
    }
    for path in [&whip, &whep] {
        let resp = request(
            &app,
            Method::PATCH,
            &app.url(path),
            None,
            Some(SDPFRAG),
            frag,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "PATCH {path}");
        let resp = request(&app, Method::DELETE, &app.url(path), None, None, "").await;
        assert_eq!(resp.status(), StatusCode::OK, "DELETE {path}");
    }
    assert_eq!(app.session_count(), 0);
    app.shutdown().await;
}
