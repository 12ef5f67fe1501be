//! Issue 2, "Prove it" item 4: the WHIP/WHEP HTTP contract of API.md, answer by
//! answer. WHIP and WHEP clients written by other people (OBS, browser libraries,
//! GStreamer) depend on exactly these status codes and headers, and every refused
//! request must leave nothing behind: each error case also asserts that the SFU's
//! session count and the recorded media sessions did not change.
//!
//! Most cases need only a valid offer, not media, so they POST an offer exactly as
//! Chromium makes it (tests/common/*.sdp). The trickle and ICE-restart cases that
//! must show media still flowing use real Chromium peers.

use std::time::Duration;

use crate::support::*;
use reqwest::{Method, Response, StatusCode, header};
use serde_json::Value;
use tandem::auth::{Grants, MediaClaims, TokenRequest};
use tandem::config::IceServer;

/// Asserts the status and the JSON error shape `{"error": {"code", "message"}}`.
async fn assert_error(resp: Response, status: StatusCode, codes: &[&str]) -> Value {
    let got = resp.status();
    let ctype = header_str(&resp, header::CONTENT_TYPE);
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "status (body: {body})");
    assert!(
        ctype.starts_with("application/json"),
        "error Content-Type is JSON, got '{ctype}' (body: {body})"
    );
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON body ({e}): {body}"));
    let code = v["error"]["code"].as_str().unwrap_or_default();
    assert!(
        codes.is_empty() || codes.contains(&code),
        "error code {code:?} not one of {codes:?}: {body}"
    );
    assert!(
        !v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "error message present: {body}"
    );
    v
}

fn header_str(resp: &Response, name: impl reqwest::header::AsHeaderName) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn recorded_sessions(app: &TestApp) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM media_sessions")
        .fetch_one(&app.state().db.pool)
        .await
        .expect("counting media_sessions")
}

/// Waits until the recorder has written `n` media sessions (it writes asynchronously).
async fn recorded_settles_at(app: &TestApp, n: i64) -> i64 {
    eventually(
        &format!("{n} recorded media sessions"),
        Duration::from_secs(10),
        || async {
            let c = recorded_sessions(app).await;
            if c == n { Ok(c) } else { Err(c.to_string()) }
        },
    )
    .await
}

/// Asserts that nothing was created: no live session, no recorded session.
async fn assert_nothing_created(app: &TestApp, live_before: usize, recorded_before: i64) {
    assert_eq!(app.session_count(), live_before, "live sessions unchanged");
    // The recorder writes asynchronously; give a stray write a moment to show up.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        recorded_sessions(app).await,
        recorded_before,
        "no media session recorded"
    );
}

/// A token signed with the server's key but with any claims we like (expired ones).
fn forge_token(app: &TestApp, claims: &MediaClaims) -> String {
    let key = std::fs::read_to_string(app.data_dir().join("media-token.key"))
        .expect("the server keeps its media token key in the data dir");
    sign(claims, key.trim().as_bytes())
}

fn sign(claims: &MediaClaims, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .expect("signing")
}

fn claims(stream: &str, grants: Grants, iat: u64, exp: u64) -> MediaClaims {
    MediaClaims {
        sub: "test-user".into(),
        stream: Some(stream.into()),
        room: None,
        grants,
        name: None,
        role: None,
        aud: "tandem-media".into(),
        iat,
        exp,
        jti: format!("{:x}", rand::random::<u64>()),
    }
}

fn publish() -> Grants {
    Grants {
        publish: true,
        ..Default::default()
    }
}

fn subscribe() -> Grants {
    Grants {
        subscribe: true,
        ..Default::default()
    }
}

/// An offer whose only video codec is one nobody implements.
fn offer_with_unknown_codec() -> String {
    let mut out = String::new();
    let mut in_video = false;
    for line in CHROMIUM_SENDONLY_OFFER.lines() {
        if line.starts_with("a=group:BUNDLE") {
            out.push_str("a=group:BUNDLE 0\r\n");
            continue;
        }
        if line.starts_with("m=audio") {
            break; // video only
        }
        if line.starts_with("m=video") {
            in_video = true;
            out.push_str("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
            continue;
        }
        if in_video
            && (line.starts_with("a=rtpmap:")
                || line.starts_with("a=fmtp:")
                || line.starts_with("a=rtcp-fb:")
                || line.starts_with("a=ssrc-group:"))
        {
            if line.starts_with("a=rtpmap:96 ") {
                out.push_str("a=rtpmap:96 FOOBAR/90000\r\n");
            }
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

fn ice_credentials(sdp: &str) -> (String, String) {
    let find = |key: &str| {
        sdp.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::to_string))
            .unwrap_or_default()
    };
    (find("a=ice-ufrag:"), find("a=ice-pwd:"))
}

fn trickle_fragment(ufrag: &str, pwd: &str, candidate_port: u16) -> String {
    format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2113937151 127.0.0.1 {candidate_port} typ host generation 0\r\n\
         a=end-of-candidates\r\n"
    )
}

/// A STUN server and a TURN server with credentials, as `[[ice_servers]]` in a config file.
fn ice_servers(c: &mut tandem::config::Config) {
    c.ice_servers = vec![
        IceServer {
            urls: vec!["stun:stun.test.invalid:3478".into()],
            username: None,
            credential: None,
        },
        IceServer {
            urls: vec!["turn:turn.test.invalid:3478?transport=udp".into()],
            username: Some("user1".into()),
            credential: Some("secret1".into()),
        },
    ];
}

fn link_headers(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all(header::LINK)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// OPTIONS is the CORS preflight browsers send before a WHIP POST, and WHIP
/// clients read `Accept-Post` and the ICE servers (`Link`) from it.
#[tokio::test]
async fn options_answers_preflight_accept_post_and_ice_servers() {
    let app = TestApp::builder().config(ice_servers).spawn().await;
    for path in ["/v1/whip/cam", "/v1/whep/cam"] {
        let resp = request(&app, Method::OPTIONS, &app.url(path), None, None, "").await;
        assert!(
            matches!(resp.status(), StatusCode::NO_CONTENT | StatusCode::OK),
            "OPTIONS {path}: {}",
            resp.status()
        );
        assert_eq!(
            header_str(&resp, "accept-post"),
            SDP,
            "Accept-Post on {path}"
        );
        // Without a token only the credential-free servers: TURN credentials
        // handed to anyone who asks would make the relay an open one.
        let links = link_headers(&resp);
        assert_eq!(
            links.len(),
            1,
            "only the STUN server without a token: {links:?}"
        );
        assert!(
            links[0].contains("<stun:stun.test.invalid:3478>")
                && links[0].contains("rel=\"ice-server\"")
        );
        // With a token valid for the stream, every server, TURN credentials included.
        let token = app.publish_token("cam");
        let resp = request(
            &app,
            Method::OPTIONS,
            &app.url(path),
            Some(&token),
            None,
            "",
        )
        .await;
        let links = link_headers(&resp);
        assert_eq!(links.len(), 2, "one Link per ICE server URL: {links:?}");
        assert!(
            links[1].contains("<turn:turn.test.invalid:3478?transport=udp>")
                && links[1].contains("username=\"user1\"")
                && links[1].contains("credential=\"secret1\""),
            "TURN link carries credentials: {}",
            links[1]
        );
        // A token for another stream is no better than none.
        let other = app.publish_token("other");
        let resp = request(
            &app,
            Method::OPTIONS,
            &app.url(path),
            Some(&other),
            None,
            "",
        )
        .await;
        assert_eq!(link_headers(&resp).len(), 1, "a token for another stream");

        // A browser's preflight for a cross-origin POST with a bearer token.
        let pre = app
            .http
            .request(Method::OPTIONS, app.url(path))
            .header(header::ORIGIN, "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert!(
            pre.status().is_success(),
            "preflight {path}: {}",
            pre.status()
        );
        assert!(
            !header_str(&pre, "access-control-allow-origin").is_empty(),
            "allow-origin"
        );
        let methods = header_str(&pre, "access-control-allow-methods").to_uppercase();
        for m in ["POST", "PATCH", "DELETE"] {
            assert!(methods.contains(m), "{m} allowed: {methods}");
        }
        let allowed = header_str(&pre, "access-control-allow-headers").to_lowercase();
        for h in ["authorization", "content-type", "if-match"] {
            assert!(allowed.contains(h), "{h} allowed: {allowed}");
        }
    }
    // On a session URL: what PATCH accepts.
    let resp = request(
        &app,
        Method::OPTIONS,
        &app.url("/v1/whip/cam/some-session"),
        None,
        None,
        "",
    )
    .await;
    assert!(
        matches!(resp.status(), StatusCode::NO_CONTENT | StatusCode::OK),
        "OPTIONS on a session URL: {}",
        resp.status()
    );
    assert_eq!(header_str(&resp, "accept-patch"), SDPFRAG);
    assert_eq!(app.session_count(), 0);
    app.shutdown().await;
}

/// Media tokens are checked before anything is created: missing, garbage,
/// foreign-key, expired, wrong-stream and wrong-grant tokens are refused with
/// 401/403 on both endpoints.
#[tokio::test]
async fn bad_expired_and_wrong_grant_tokens_are_refused() {
    let app = spawn_app().await;
    let now = tandem::auth::now_secs();
    let whip = app.whip_url("cam");
    let whep = app.whep_url("cam");
    let expired_pub = forge_token(&app, &claims("cam", publish(), now - 7200, now - 60));
    let expired_sub = forge_token(&app, &claims("cam", subscribe(), now - 7200, now - 1));
    let foreign = sign(
        &claims("cam", publish(), now, now + 3600),
        b"not-the-server-key-0123456789abcdef",
    );
    let room_only = app.token_for(TokenRequest {
        user: "u".into(),
        room: Some("cam".into()),
        grants: Grants {
            publish: true,
            subscribe: true,
            chat: true,
            moderate: false,
        },
        ttl_secs: 600,
        ..Default::default()
    });
    let cases: Vec<(&str, &str, Option<String>, &str, StatusCode)> = vec![
        (
            "no token",
            &whip,
            None,
            CHROMIUM_SENDONLY_OFFER,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "no token",
            &whep,
            None,
            CHROMIUM_RECVONLY_OFFER,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "garbage",
            &whip,
            Some("not.a.jwt".into()),
            CHROMIUM_SENDONLY_OFFER,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "garbage",
            &whep,
            Some("x".into()),
            CHROMIUM_RECVONLY_OFFER,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "foreign key",
            &whip,
            Some(foreign.clone()),
            CHROMIUM_SENDONLY_OFFER,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "expired",
            &whip,
            Some(expired_pub),
            CHROMIUM_SENDONLY_OFFER,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "expired",
            &whep,
            Some(expired_sub),
            CHROMIUM_RECVONLY_OFFER,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "subscribe token on WHIP",
            &whip,
            Some(app.subscribe_token("cam")),
            CHROMIUM_SENDONLY_OFFER,
            StatusCode::FORBIDDEN,
        ),
        (
            "publish token on WHEP",
            &whep,
            Some(app.publish_token("cam")),
            CHROMIUM_RECVONLY_OFFER,
            StatusCode::FORBIDDEN,
        ),
        (
            "other stream",
            &whip,
            Some(app.publish_token("other")),
            CHROMIUM_SENDONLY_OFFER,
            StatusCode::FORBIDDEN,
        ),
        (
            "other stream",
            &whep,
            Some(app.subscribe_token("other")),
            CHROMIUM_RECVONLY_OFFER,
            StatusCode::FORBIDDEN,
        ),
        (
            "room token",
            &whip,
            Some(room_only),
            CHROMIUM_SENDONLY_OFFER,
            StatusCode::FORBIDDEN,
        ),
    ];
    let recorded = recorded_sessions(&app).await;
    for (what, url, token, offer, status) in cases {
        let resp = post_offer(&app, url, token.as_deref(), offer).await;
        assert_eq!(resp.status(), status, "{what} at {url}");
        assert_error(resp, status, &[]).await;
        assert_nothing_created(&app, 0, recorded).await;
    }
    // Basic auth is not a bearer token.
    let resp = app
        .http
        .post(&whip)
        .header(header::CONTENT_TYPE, SDP)
        .header(header::AUTHORIZATION, "Basic dXNlcjpwYXNz")
        .body(CHROMIUM_SENDONLY_OFFER)
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED, &[]).await;
    assert_nothing_created(&app, 0, recorded).await;
    app.shutdown().await;
}

/// A body that is not `application/sdp` is refused with 415 before anything else.
#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = spawn_app().await;
    let recorded = recorded_sessions(&app).await;
    for (url, token, offer) in [
        (
            app.whip_url("cam"),
            app.publish_token("cam"),
            CHROMIUM_SENDONLY_OFFER,
        ),
        (
            app.whep_url("cam"),
            app.subscribe_token("cam"),
            CHROMIUM_RECVONLY_OFFER,
        ),
    ] {
        for ctype in [
            None,
            Some("text/plain"),
            Some("application/json"),
            Some(SDPFRAG),
        ] {
            let resp = request(
                &app,
                Method::POST,
                &url,
                Some(&token),
                ctype,
                offer.to_string(),
            )
            .await;
            assert_error(
                resp,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &["unsupported_media_type"],
            )
            .await;
            assert_nothing_created(&app, 0, recorded).await;
        }
        // Parameters after the media type are fine (they only must not change it).
        let resp = request(
            &app,
            Method::POST,
            &url,
            None,
            Some("application/sdp; charset=utf-8"),
            offer.to_string(),
        )
        .await;
        assert_eq!(
            resp.status(),
            StatusCode::UNAUTHORIZED,
            "content type with parameters is accepted; then the token is checked"
        );
    }
    app.shutdown().await;
}

/// Offers larger than 64 KiB are refused with 413 without being parsed.
#[tokio::test]
async fn huge_body_is_413() {
    let app = spawn_app().await;
    let recorded = recorded_sessions(&app).await;
    let mut huge = CHROMIUM_SENDONLY_OFFER.to_string();
    while huge.len() <= 64 * 1024 + 1 {
        huge.push_str(
            "a=x-padding:0123456789012345678901234567890123456789012345678901234567890123\r\n",
        );
    }
    let resp = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&app.publish_token("cam")),
        &huge,
    )
    .await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, &["too_large"]).await;
    let resp = post_offer(
        &app,
        &app.whep_url("cam"),
        Some(&app.subscribe_token("cam")),
        &huge,
    )
    .await;
    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, &["too_large"]).await;
    assert_nothing_created(&app, 0, recorded).await;
    app.shutdown().await;
}

/// Stream names that cannot exist and sessions that do not exist are 404.
#[tokio::test]
async fn unknown_stream_and_session_are_404() {
    let app = spawn_app().await;
    let token = app.token(
        "*",
        Grants {
            publish: true,
            subscribe: true,
            ..Default::default()
        },
    );
    let long = "x".repeat(129);
    for name in ["bad%20name", "semi%3Bcolon", long.as_str()] {
        let resp = post_offer(
            &app,
            &app.url(&format!("/v1/whip/{name}")),
            Some(&token),
            CHROMIUM_SENDONLY_OFFER,
        )
        .await;
        assert_error(resp, StatusCode::NOT_FOUND, &[]).await;
        let resp = post_offer(
            &app,
            &app.url(&format!("/v1/whep/{name}")),
            Some(&token),
            CHROMIUM_RECVONLY_OFFER,
        )
        .await;
        assert_error(resp, StatusCode::NOT_FOUND, &[]).await;
    }
    for kind in ["whip", "whep"] {
        let url = app.url(&format!("/v1/{kind}/cam/00000000-no-such-session"));
        let resp = request(
            &app,
            Method::PATCH,
            &url,
            Some(&token),
            Some(SDPFRAG),
            trickle_fragment("a", "b", 9),
        )
        .await;
        assert_error(resp, StatusCode::NOT_FOUND, &[]).await;
        let resp = request(&app, Method::DELETE, &url, Some(&token), None, "").await;
        assert_error(resp, StatusCode::NOT_FOUND, &[]).await;
    }
    assert_eq!(app.session_count(), 0);
    app.shutdown().await;
}

/// Offers that are not SDP, empty, or SDP missing what WebRTC needs are 400
/// `bad_sdp` with a message that names the problem.
#[tokio::test]
async fn malformed_and_empty_sdp_are_400() {
    let app = spawn_app().await;
    let recorded = recorded_sessions(&app).await;
    let no_fingerprint: String = CHROMIUM_SENDONLY_OFFER
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let no_ice: String = CHROMIUM_SENDONLY_OFFER
        .lines()
        .filter(|l| !l.starts_with("a=ice-ufrag") && !l.starts_with("a=ice-pwd"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let no_media = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_string();
    let cases = [
        ("empty", String::new()),
        ("not SDP", "hello, I am not an offer".to_string()),
        (
            "binary",
            String::from_utf8_lossy(&[0xff, 0x00, 0x13, 0x37]).into_owned(),
        ),
        ("no media sections", no_media),
        ("no DTLS fingerprint", no_fingerprint),
        ("no ICE credentials", no_ice),
    ];
    for (what, offer) in cases {
        for (url, token) in [
            (app.whip_url("cam"), app.publish_token("cam")),
            (app.whep_url("cam"), app.subscribe_token("cam")),
        ] {
            let resp = post_offer(&app, &url, Some(&token), &offer).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{what} at {url}");
            let v = assert_error(resp, StatusCode::BAD_REQUEST, &["bad_sdp"]).await;
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.len() > "malformed SDP offer: ".len(),
                "{what}: the message names the problem: {msg}"
            );
            assert_nothing_created(&app, 0, recorded).await;
        }
    }
    app.shutdown().await;
}

/// An offer nothing of which can be forwarded is 406 (or 422), not a session
/// that will never carry media.
#[tokio::test]
async fn no_common_codec_is_406() {
    let app = spawn_app().await;
    let recorded = recorded_sessions(&app).await;
    let offer = offer_with_unknown_codec();
    let resp = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&app.publish_token("cam")),
        &offer,
    )
    .await;
    let status = resp.status();
    assert!(
        status == StatusCode::NOT_ACCEPTABLE || status == StatusCode::UNPROCESSABLE_ENTITY,
        "406/422 for an offer with only FOOBAR/90000, got {status}"
    );
    assert_error(resp, status, &[]).await;
    assert_nothing_created(&app, 0, recorded).await;
    app.shutdown().await;
}

/// A successful WHIP POST: 201 with Location, a quoted ETag, an ICE-lite passive
/// answer pointing at the media port, the ICE servers as Link headers, and CORS
/// headers that let a browser read Location and ETag. WHEP the same (plus the
/// WHEP extensions' Link headers), also before the stream has a publisher.
#[tokio::test]
async fn created_sessions_carry_location_etag_links_and_ice_lite_answer() {
    let app = TestApp::builder().config(ice_servers).spawn().await;
    for (kind, token, offer) in [
        ("whep", app.subscribe_token("cam"), CHROMIUM_RECVONLY_OFFER), // viewer before publisher
        ("whip", app.publish_token("cam"), CHROMIUM_SENDONLY_OFFER),
        ("whep", app.subscribe_token("cam"), CHROMIUM_RECVONLY_OFFER),
    ] {
        let before = app.session_count();
        let resp = app
            .http
            .post(app.url(&format!("/v1/{kind}/cam")))
            .bearer_auth(&token)
            .header(header::CONTENT_TYPE, SDP)
            .header(header::ORIGIN, "https://app.example")
            .body(offer)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        if status != StatusCode::CREATED {
            panic!(
                "POST {kind}: {status} {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let location = header_str(&resp, header::LOCATION);
        let prefix = format!("/v1/{kind}/cam/");
        assert!(
            location.starts_with(&prefix) && location.len() > prefix.len() + 8,
            "Location {location}"
        );
        let etag = header_str(&resp, header::ETAG);
        assert!(
            etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
            "quoted ETag: {etag}"
        );
        assert!(header_str(&resp, header::CONTENT_TYPE).starts_with(SDP));
        let links = link_headers(&resp);
        assert_eq!(
            links
                .iter()
                .filter(|l| l.contains("rel=\"ice-server\""))
                .count(),
            2,
            "Link per ICE server: {links:?}"
        );
        // WHEP answers also link the layer and server-sent-events extensions
        // (API.md; tests/api/whep_ext.rs checks them in full); WHIP answers do not.
        let extensions = links
            .iter()
            .filter(|l| l.contains("rel=\"urn:ietf:params:whep:ext:core:"))
            .count();
        assert_eq!(
            extensions,
            if kind == "whep" { 2 } else { 0 },
            "{kind}: {links:?}"
        );
        assert_eq!(links.len(), 2 + extensions, "{links:?}");
        let expose = header_str(&resp, "access-control-expose-headers").to_lowercase();
        for h in ["location", "etag", "link"] {
            assert!(expose.contains(h), "CORS exposes {h}: {expose}");
        }
        let answer = resp.text().await.unwrap();
        assert!(answer.starts_with("v=0"), "SDP answer: {answer}");
        assert!(answer.contains("a=ice-lite"), "ICE-lite answer");
        assert!(answer.contains("a=setup:passive"), "setup:passive");
        assert!(
            answer.contains("a=fingerprint:sha-256 "),
            "DTLS fingerprint"
        );
        let (ufrag, pwd) = ice_credentials(&answer);
        assert!(
            !ufrag.is_empty() && pwd.len() >= 22,
            "ICE credentials (pwd ≥ 22 chars)"
        );
        let candidate = format!("127.0.0.1 {} typ host", app.media_port);
        assert!(
            answer.contains(&candidate),
            "host candidate '{candidate}' in\n{answer}"
        );
        assert_eq!(app.session_count(), before + 1);
        let summary = app
            .state()
            .sfu
            .session(location.rsplit('/').next().unwrap())
            .expect("session known");
        assert_eq!(
            format!("\"{}\"", summary.etag),
            etag,
            "ETag is the session's entity-tag"
        );
    }
    app.shutdown().await;
}

/// One publisher per stream: a second WHIP POST of another user while one is
/// live is 409 (the same user's replaces it: tests/media/takeover.rs).
#[tokio::test]
async fn second_publisher_is_409() {
    let app = spawn_app().await;
    let token = app.publish_token("cam");
    let first = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&token),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let location = header_str(&first, header::LOCATION);
    let recorded = recorded_settles_at(&app, 1).await;
    let someone_else = app.token_for(TokenRequest {
        user: "someone-else".into(),
        stream: Some("cam".into()),
        grants: Grants {
            publish: true,
            ..Default::default()
        },
        ttl_secs: 3600,
        ..Default::default()
    });
    let second = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&someone_else),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_error(second, StatusCode::CONFLICT, &["stream_busy"]).await;
    assert_nothing_created(&app, 1, recorded).await;
    // Another stream is not affected, and after DELETE the stream is free again.
    let other = post_offer(
        &app,
        &app.whip_url("cam2"),
        Some(&app.publish_token("cam2")),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(other.status(), StatusCode::CREATED);
    let del = request(
        &app,
        Method::DELETE,
        &app.url(&location),
        Some(&token),
        None,
        "",
    )
    .await;
    assert_eq!(del.status(), StatusCode::OK);
    let again = post_offer(
        &app,
        &app.whip_url("cam"),
        Some(&token),
        CHROMIUM_SENDONLY_OFFER,
    )
    .await;
    assert_eq!(
        again.status(),
        StatusCode::CREATED,
        "the stream takes a publisher after DELETE"
    );
    app.shutdown().await;
}

/// At the configured capacity new sessions get 503 with Retry-After.
#[tokio::test]
async fn at_capacity_is_503_with_retry_after() {
    let app = TestApp::builder()
        .config(|c| c.media.max_sessions = 1)
        .spawn()
        .await;
    let first = post_offer(
        &app,
        &app.whep_url("cam"),
        Some(&app.subscribe_token("cam")),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let recorded = recorded_settles_at(&app, 1).await;
    for (url, token, offer) in [
        (
            app.whep_url("cam"),
            app.subscribe_token("cam"),
            CHROMIUM_RECVONLY_OFFER,
        ),
        (
            app.whip_url("cam"),
            app.publish_token("cam"),
            CHROMIUM_SENDONLY_OFFER,
        ),
    ] {
        let resp = post_offer(&app, &url, Some(&token), offer).await;
        let retry_after = header_str(&resp, header::RETRY_AFTER);
        assert_error(resp, StatusCode::SERVICE_UNAVAILABLE, &[]).await;
        assert!(
            retry_after.parse::<u64>().map(|s| s > 0).unwrap_or(false),
            "Retry-After seconds: '{retry_after}'"
        );
        assert_nothing_created(&app, 1, recorded).await;
    }
    app.shutdown().await;
}

/// Trickle PATCH (204), If-Match and the `ETag` request header some clients send
/// (412 on mismatch), 415 for a wrong fragment type, DELETE (200) and DELETE
/// again (404), and nothing answering for the session afterwards.
#[tokio::test]
async fn trickle_patch_if_match_and_delete_twice() {
    let app = spawn_app().await;
    for (kind, token, offer) in [
        ("whip", app.publish_token("cam"), CHROMIUM_SENDONLY_OFFER),
        ("whep", app.subscribe_token("cam"), CHROMIUM_RECVONLY_OFFER),
    ] {
        let resp = post_offer(
            &app,
            &app.url(&format!("/v1/{kind}/cam")),
            Some(&token),
            offer,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "POST {kind}");
        let session_url = app.url(&header_str(&resp, header::LOCATION));
        let etag = header_str(&resp, header::ETAG);
        let (ufrag, pwd) = ice_credentials(offer);
        let frag = trickle_fragment(&ufrag, &pwd, 40000);
        let count = app.session_count();

        let patch =
            |if_match: Option<(&'static str, String)>, ctype: &'static str, body: String| {
                let mut req = app
                    .http
                    .patch(&session_url)
                    .bearer_auth(&token)
                    .header(header::CONTENT_TYPE, ctype)
                    .body(body);
                if let Some((name, value)) = if_match {
                    req = req.header(name, value);
                }
                req.send()
            };
        // Without If-Match (allowed), with the right one, and with `*`.
        let r = patch(None, SDPFRAG, frag.clone()).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "{kind}: trickle without If-Match"
        );
        let r = patch(Some(("if-match", etag.clone())), SDPFRAG, frag.clone())
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "{kind}: trickle with If-Match"
        );
        let r = patch(Some(("if-match", "*".into())), SDPFRAG, frag.clone())
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NO_CONTENT,
            "{kind}: trickle with If-Match *"
        );
        // Mismatches.
        let r = patch(
            Some(("if-match", "\"not-the-etag\"".into())),
            SDPFRAG,
            frag.clone(),
        )
        .await
        .unwrap();
        assert_error(r, StatusCode::PRECONDITION_FAILED, &[]).await;
        let r = patch(
            Some(("etag", "\"not-the-etag\"".into())),
            SDPFRAG,
            frag.clone(),
        )
        .await
        .unwrap();
        assert_error(r, StatusCode::PRECONDITION_FAILED, &[]).await;
        // Wrong fragment type.
        let r = patch(Some(("if-match", etag.clone())), SDP, frag.clone())
            .await
            .unwrap();
        assert_error(r, StatusCode::UNSUPPORTED_MEDIA_TYPE, &[]).await;
        // The session URL under another stream is not this session.
        let foreign = session_url.replace("/cam/", "/other/");
        let r = app
            .http
            .patch(&foreign)
            .header(header::CONTENT_TYPE, SDPFRAG)
            .body(frag.clone())
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::NOT_FOUND, &[]).await;
        // A token for another stream may not touch it.
        let other_token = if kind == "whip" {
            app.publish_token("other")
        } else {
            app.subscribe_token("other")
        };
        let r = app
            .http
            .delete(&session_url)
            .bearer_auth(&other_token)
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::FORBIDDEN, &[]).await;
        assert_eq!(
            app.session_count(),
            count,
            "{kind}: refused PATCH/DELETE changed nothing"
        );

        let r = app
            .http
            .delete(&session_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{kind}: DELETE");
        assert_eq!(
            app.session_count(),
            count - 1,
            "{kind}: DELETE ended the session"
        );
        let r = app
            .http
            .delete(&session_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::NOT_FOUND, &[]).await;
        let r = patch(None, SDPFRAG, frag.clone()).await.unwrap();
        assert_error(r, StatusCode::NOT_FOUND, &[]).await;
    }
    assert_eq!(app.session_count(), 0);
    app.shutdown().await;
}

/// ICE restart through PATCH: new client credentials in the fragment get 200
/// with the server's new ufrag/pwd and a new ETag; the old ETag then no longer
/// matches (412).
#[tokio::test]
async fn ice_restart_patch_returns_new_credentials_and_etag() {
    let app = spawn_app().await;
    let token = app.subscribe_token("cam");
    let resp = post_offer(
        &app,
        &app.whep_url("cam"),
        Some(&token),
        CHROMIUM_RECVONLY_OFFER,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let session_url = app.url(&header_str(&resp, header::LOCATION));
    let etag = header_str(&resp, header::ETAG);
    let answer = resp.text().await.unwrap();
    let (server_ufrag, server_pwd) = ice_credentials(&answer);

    let frag = trickle_fragment("rst1", "restartpassword0123456789", 40001);
    let r = app
        .http
        .patch(&session_url)
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, SDPFRAG)
        .header(header::IF_MATCH, &etag)
        .body(frag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "ICE restart answers 200");
    assert!(header_str(&r, header::CONTENT_TYPE).starts_with(SDPFRAG));
    let new_etag = header_str(&r, header::ETAG);
    assert!(
        !new_etag.is_empty() && new_etag != etag,
        "new ETag after restart ({etag} → {new_etag})"
    );
    let body = r.text().await.unwrap();
    let (ufrag, pwd) = ice_credentials(&body);
    assert!(
        !ufrag.is_empty() && !pwd.is_empty(),
        "fragment carries ice-ufrag/ice-pwd: {body}"
    );
    assert_ne!(ufrag, server_ufrag, "new server ufrag");
    assert_ne!(pwd, server_pwd, "new server pwd");

    let r = app
        .http
        .patch(&session_url)
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, SDPFRAG)
        .header(header::IF_MATCH, &etag)
        .body(trickle_fragment("rst1", "restartpassword0123456789", 40002))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::PRECONDITION_FAILED, &[]).await;
    let r = app
        .http
        .patch(&session_url)
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, SDPFRAG)
        .header(header::IF_MATCH, &new_etag)
        .body(trickle_fragment("rst1", "restartpassword0123456789", 40002))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "trickle with the new ETag"
    );
    assert_eq!(app.session_count(), 1);
    app.shutdown().await;
}

/// With real browsers: a publisher and a viewer that both trickle their
/// candidates by PATCH (the offer goes out before gathering), media flows, then
/// each does an ICE restart through PATCH and the viewer keeps decoding on the
/// new ICE credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_trickle_and_ice_restart_keep_media_flowing() {
    let _guard = media_lock().await;
    let app = spawn_app().await;
    let mut browser = Browser::launch().await;
    // The broadcast page sends simulcast here (the fake camera is 1280 wide):
    // an ICE restart must keep the encodings bound (vendor/rtc/TANDEM_PATCH.md).
    let pub_url = page_url(
        &app,
        "broadcast",
        "cam",
        &app.publish_token("cam"),
        "&trickle=1&simulcast=1",
    );
    let view_url = page_url(
        &app,
        "watch",
        "cam",
        &app.subscribe_token("cam"),
        "&trickle=1",
    );
    browser.open("pub", &pub_url).await;
    browser.open("view", &view_url).await;

    let frames = |v: &Value| num(&v["video"]["framesDecoded"]);
    browser
        .wait_stats(
            &["view"],
            "the viewer decoding 30 frames",
            Duration::from_secs(45),
            |s| {
                if frames(&s[0]) >= 30.0 {
                    Ok(())
                } else {
                    Err(s[0].to_string())
                }
            },
        )
        .await;
    for page in ["pub", "view"] {
        let trickled = browser
            .eval(page, "window.tandem.session.patches")
            .await
            .unwrap();
        assert!(
            num(&trickled["trickled"]) >= 1.0,
            "{page} trickled candidates by PATCH: {trickled}"
        );
        assert_eq!(
            num(&trickled["failed"]),
            0.0,
            "{page}: no trickle PATCH refused: {trickled}"
        );
    }

    // ICE restart of the viewer, then of the publisher.
    for page in ["view", "pub"] {
        let before = frames(&browser.stats("view").await);
        let r = browser
            .eval(page, "window.tandem.restartIce()")
            .await
            .unwrap_or_else(|e| panic!("{page}: ICE restart PATCH failed: {e}"));
        assert_eq!(
            num(&r["status"]),
            200.0,
            "{page}: restart answered 200: {r}"
        );
        assert_ne!(r["oldUfrag"], r["newUfrag"], "{page}: new local ufrag: {r}");
        let new_ufrag = r["newUfrag"].clone();
        browser
            .wait_stats(
                &[page, "view"],
                &format!(
                    "{page}: transport on the new ufrag and the viewer decoding 60 more frames"
                ),
                Duration::from_secs(30),
                |s| {
                    let (own, view) = (&s[0], &s[1]);
                    let on_new = own["transport"]["iceLocalUsernameFragment"] == new_ufrag;
                    let connected = own["connectionState"] == "connected";
                    if on_new && connected && frames(view) >= before + 60.0 {
                        Ok(())
                    } else {
                        Err(format!(
                            "{page} transport {} ({}), viewer frames {} (from {before})",
                            own["transport"],
                            own["connectionState"],
                            frames(view)
                        ))
                    }
                },
            )
            .await;
    }
    assert_eq!(app.session_count(), 2);

    browser.close("view").await;
    browser.close("pub").await;
    app.wait_sessions(0, Duration::from_secs(15)).await;
    browser.quit().await;
    app.shutdown().await;
}
