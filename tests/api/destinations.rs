//! A stream's restream destinations over HTTP (`/v1/streams/{id}/destinations`,
//! issue 16): only the owner's own connections, bad input answers a 4xx naming
//! the field and stores nothing, the set is replaced as a whole and kept in the
//! owner's order, a deleted connection leaves its streams, and a stream that is
//! not live shows every destination `idle`. The pushes themselves (ffmpeg to an
//! RTMP server) are tests/media/restream.rs.

use crate::both_backends;
use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A stream-key connection of `owner`; its id.
async fn connection(app: &TestApp, owner: &str, name: &str) -> String {
    let r = app
        .post(
            "/v1/platform-connections",
            Some(&instructor(owner)),
            json!({"platform": "rtmp", "name": name,
                   "ingest_url": "rtmp://127.0.0.1:1/live", "stream_key": format!("key-{name}")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().unwrap().to_string()
}

async fn put(app: &TestApp, stream: &str, bearer: &str, body: Value) -> Resp {
    app.put(
        &format!("/v1/streams/{stream}/destinations"),
        Some(bearer),
        body,
    )
    .await
}

async fn stored(app: &TestApp, stream: &str) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM stream_destinations WHERE stream_id = $1")
            .bind(stream)
            .fetch_one(app.pool())
            .await
            .unwrap();
    n
}

async fn bad_input_changes_nothing(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let stream = app.create_stream("ines", 0).await;
    let mine = connection(&app, "ines", "mine").await;
    let theirs = connection(&app, "omar", "theirs").await;
    let r = put(&app, &stream, &ines, json!([{"connection_id": mine}])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(stored(&app, &stream).await, 1);

    let cases = [
        (
            json!([{"connection_id": theirs}]),
            StatusCode::NOT_FOUND,
            "[0].connection_id",
        ),
        (
            json!([{"connection_id": mine}, {"connection_id": "pc_nope"}]),
            StatusCode::NOT_FOUND,
            "[1].connection_id",
        ),
        (
            json!([{"connection_id": mine}, {"connection_id": mine}]),
            StatusCode::BAD_REQUEST,
            "[1].connection_id",
        ),
        (json!([{}]), StatusCode::BAD_REQUEST, "[0]"),
        (
            json!({"connection_id": mine}),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            Value::Array(
                (0..9)
                    .map(|i| json!({"connection_id": format!("c{i}")}))
                    .collect(),
            ),
            StatusCode::BAD_REQUEST,
            "body",
        ),
    ];
    for (body, status, field) in cases {
        let r = put(&app, &stream, &ines, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.text);
        assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
    }
    // Another instructor, a plain user, nobody: refused before anything is read.
    let r = put(
        &app,
        &stream,
        &instructor("omar"),
        json!([{"connection_id": theirs}]),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{}",
        r.text
    );
    let r = put(&app, &stream, &user("uma"), json!([])).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .send(
            Method::PUT,
            &format!("/v1/streams/{stream}/destinations"),
            None,
            Some("[]"),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = put(&app, "no-such-stream", &ines, json!([])).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    for path in ["destinations", "destinations/events"] {
        let r = app
            .get(
                &format!("/v1/streams/{stream}/{path}"),
                Some(&instructor("omar")),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text);
    }

    // Still exactly the one destination set before the bad requests.
    let r = app
        .get(&format!("/v1/streams/{stream}/destinations"), Some(&ines))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = r.body.as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", r.text);
    assert_eq!(list[0]["connection_id"], mine.as_str());
    assert_eq!(stored(&app, &stream).await, 1);
}

async fn replaced_in_order_and_idle_until_live(backend: Backend) {
    let app = spawn_api(backend).await;
    let ines = instructor("ines");
    let stream = app.create_stream("ines", 0).await;
    let a = connection(&app, "ines", "alpha").await;
    let b = connection(&app, "ines", "beta").await;
    let c = connection(&app, "ines", "gamma").await;

    let r = put(
        &app,
        &stream,
        &ines,
        json!([{"connection_id": c}, {"connection_id": a}, {"connection_id": b}]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let ids: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["connection_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [c.as_str(), a.as_str(), b.as_str()],
        "the owner's order"
    );
    for d in r.body.as_array().unwrap() {
        assert_eq!(d["status"], "idle", "not live: {d}");
        assert_eq!(d["platform"], "rtmp");
        assert_eq!(d["attempts"], 0);
        assert!(d["since"].as_str().unwrap().ends_with('Z'), "{d}");
        assert!(
            !d.to_string().contains("key-"),
            "no stream key in a destination: {d}"
        );
    }
    assert_eq!(r.body[1]["name"], "alpha");

    // Replaced as a whole.
    let r = put(&app, &stream, &ines, json!([{"connection_id": b}])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(stored(&app, &stream).await, 1);

    // A deleted connection leaves the streams it was a destination of.
    let r = app
        .send(
            Method::DELETE,
            &format!("/v1/platform-connections/{b}"),
            Some(&ines),
            None,
            &[],
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .get(&format!("/v1/streams/{stream}/destinations"), Some(&ines))
        .await;
    assert_eq!(r.body, json!([]), "{}", r.text);
    assert_eq!(stored(&app, &stream).await, 0);

    // An empty list is valid: no destinations.
    let r = put(&app, &stream, &ines, json!([])).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::OK, json!([])),
        "{}",
        r.text
    );
}

both_backends!(
    bad_input_changes_nothing,
    replaced_in_order_and_idle_until_live
);
