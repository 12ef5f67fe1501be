//! Issue 13 ("the first hour"), the API side: identity errors that say what is
//! wrong (no `exp`, wrong secret, expired, no `jwt_secret` at all), service-key
//! routes on a server without a service key, the contract's routes that are not
//! built yet answering 501 `not_implemented` (also under `/.proxy`), the room-token
//! route in `/openapi.json`, and HTTP request metrics labelled by route template.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

/// One server without `jwt_secret` and `service_key` (as a newcomer starts it).
async fn bare_app() -> TestApp {
    TestApp::builder()
        .config(|c| {
            c.api.jobs_enabled = false;
            c.media.ice_tcp = false;
        })
        .spawn()
        .await
}

#[tokio::test]
async fn identity_errors_say_what_is_wrong() {
    let app = spawn_api(Backend::Sqlite).await;
    let no_exp = identity_jwt(JWT_SECRET, &json!({"sub": "u1", "role": "user"}));
    let r = app.get("/v1/me/balance", Some(&no_exp)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "unauthorized");
    let no_exp_message = r.body["error"]["message"].as_str().unwrap().to_string();
    assert!(no_exp_message.contains("no exp claim"), "{no_exp_message}");

    let wrong_key = identity_jwt(
        "some-other-secret",
        &json!({"sub": "u1", "exp": now_secs() + 600}),
    );
    let r = app.get("/v1/me/balance", Some(&wrong_key)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("signature does not verify with the configured jwt_secret"),
        "{message}"
    );
    assert_ne!(message, no_exp_message);

    let expired = identity_token("u1", "user", -30);
    let r = app.get("/v1/me/balance", Some(&expired)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text.contains("expired"), "{}", r.text);

    // The secret never appears in an answer.
    assert!(!r.text.contains(JWT_SECRET));
    app.shutdown().await;
}

#[tokio::test]
async fn a_server_without_secrets_says_which_one_is_missing() {
    let app = bare_app().await;
    // The business API, with or without a token: no jwt_secret configured.
    for bearer in [None, Some(user("u1"))] {
        let r = app.get("/v1/me/balance", bearer.as_deref()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        assert_eq!(r.code(), "unauthorized");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("no jwt_secret is configured")
                && message.contains("TANDEM_JWT_SECRET"),
            "{message}"
        );
    }
    // A service-key route: no service key configured, whatever is sent.
    for bearer in [None, Some("anything")] {
        let r = app
            .post(
                "/v1/admin/accounts/u1/credits",
                bearer,
                json!({"amount": 5, "reason": "x"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        assert_eq!(
            r.body["error"]["message"],
            "no service key is configured on this server (set TANDEM_SERVICE_KEY)"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn an_identity_on_a_service_route_without_a_service_key_is_403_saying_so() {
    let app = api_app(Backend::Sqlite)
        .config(|c| c.service_key = String::new())
        .spawn()
        .await;
    let r = app
        .post(
            "/v1/admin/accounts/u1/credits",
            Some(&user("u1")),
            json!({"amount": 5, "reason": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "forbidden");
    assert!(r.text.contains("TANDEM_SERVICE_KEY"), "{}", r.text);
    app.shutdown().await;
}

/// Fills `{param}` segments of a route template with a plausible value.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn contract_routes_not_built_yet_answer_501_with_their_methods() {
    let app = bare_app().await;
    // Empty once every contract route is built; the loop then checks nothing and
    // the 405 / 404 checks below still hold.
    for &(method, path) in tandem::api::not_built::NOT_BUILT {
        for prefix in ["", "/.proxy"] {
            let url = format!("{prefix}{}", concrete(path));
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let body = matches!(method, "POST" | "PUT").then_some("{}");
            let r = app.send(m, &url, Some("whatever"), body, &[]).await;
            assert_eq!(
                r.status,
                StatusCode::NOT_IMPLEMENTED,
                "{method} {url}: {}",
                r.text
            );
            assert_eq!(r.code(), "not_implemented", "{method} {url}");
            let message = r.body["error"]["message"].as_str().unwrap();
            assert_eq!(
                message,
                format!("{method} {path} is not built yet in this version of tandem")
            );
        }
    }
    // Another method on a contract path is 405, not 501 (the contract names the methods).
    let r = app
        .send(Method::PATCH, "/v1/cluster/nodes", None, None, &[])
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text);
    // A path in no contract is still a 404.
    let r = app.get("/v1/no-such-thing", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

#[tokio::test]
async fn openapi_lists_the_room_token_route_and_no_501_route() {
    let app = bare_app().await;
    let r = app.get("/openapi.json", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let paths = r.body["paths"].as_object().unwrap();
    assert!(
        paths["/v1/rooms/{room}/token"]["post"].is_object(),
        "{:?}",
        paths.keys()
    );
    for (_, path) in tandem::api::not_built::NOT_BUILT {
        assert!(!paths.contains_key(*path), "{path} is not built");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn http_requests_are_counted_by_route_template() {
    let app = bare_app().await;
    for id in ["a1", "b2", "c3"] {
        let r = app.get(&format!("/v1/streams/{id}"), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let r = app.get("/no/such/path/at/all", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let text = app.metrics().await;
    let count = metric_value(
        &text,
        "tandem_http_requests_total",
        &[
            ("method", "GET"),
            ("route", "/v1/streams/{id}"),
            ("status", "404"),
        ],
    );
    assert_eq!(count, 3.0, "{text}");
    assert!(
        metric_value(
            &text,
            "tandem_http_request_duration_seconds_count",
            &[("route", "/v1/streams/{id}")]
        ) >= 3.0
    );
    assert!(
        metric_value(
            &text,
            "tandem_http_requests_total",
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        ) >= 1.0,
        "{text}"
    );
    // Raw paths never become labels.
    assert!(!text.contains("/v1/streams/a1"));
    assert!(!text.contains("/no/such/path"));
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
    app.shutdown().await;
}
