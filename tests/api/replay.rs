//! Issue 14, the replay API on both backends: who gets the signed HLS URL (the
//! owner, the enrolled; not others), what the URL opens (that recording's files,
//! with `Range`, MIME types and CORS; no other recording, no path tricks), and
//! how it stops (the replay window closes: 403 `replay_expired`, files deleted by
//! the expiry job). The recording here is a folder the test writes: what the
//! recorder writes, and that it plays, is `tests/media/recording.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::both_backends;
use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;
use tandem::api::jobs::{Clock, Jobs, ManualClock};

const DAY: Duration = Duration::from_secs(86_400);

/// A recording folder as the recorder leaves it (the bytes are placeholders).
fn fake_recording(data_dir: &Path, rec: &str) -> PathBuf {
    let dir = data_dir.join("recordings").join(rec);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("master.m3u8"),
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000000,CODECS=\"vp08.00.41.08,opus\"\nindex.m3u8\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("index.m3u8"),
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:4\n#EXT-X-MAP:URI=\"init.mp4\"\n\
         #EXTINF:4.0,\nseg00001.m4s\n#EXT-X-ENDLIST\n",
    )
    .unwrap();
    std::fs::write(dir.join("init.mp4"), b"init-bytes").unwrap();
    std::fs::write(dir.join("seg00001.m4s"), b"0123456789abcdef").unwrap();
    std::fs::write(dir.join("recording.json"), b"{}").unwrap();
    dir
}

async fn set_recording(app: &TestApp, stream: &str, rec: &str) {
    sqlx::query(
        "UPDATE streams SET recording_path = $1, recording_duration_ms = 12345, \
         recording_codecs = 'vp08.00.41.08,opus' WHERE id = $2",
    )
    .bind(format!("recordings/{rec}"))
    .bind(stream)
    .execute(app.pool())
    .await
    .unwrap();
}

/// A paid stream by ines with ulla enrolled, live then ended, with a recording.
async fn recorded_class(app: &TestApp, rec: &str) -> String {
    let s = app.create_stream("ines", 3).await;
    app.credit("ulla", 3).await;
    let r = app
        .post(
            &format!("/v1/streams/{s}/enrollments"),
            Some(&user("ulla")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let ines = instructor("ines");
    let r = app
        .post(&format!("/v1/streams/{s}/start"), Some(&ines), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    fake_recording(&app.state().config.data_dir, rec);
    set_recording(app, &s, rec).await;
    let r = app
        .post(&format!("/v1/streams/{s}/end"), Some(&ines), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    s
}

/// The signed HLS URL ulla (enrolled) gets for stream `s`.
async fn ullas_hls_url(app: &TestApp, s: &str) -> String {
    let r = app
        .get(&format!("/v1/streams/{s}/replay"), Some(&user("ulla")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["hls_url"].as_str().unwrap().to_string()
}

/// The path of `url` on the test server (the client sends it as it is).
fn path_of(app: &TestApp, url: &str) -> String {
    url.strip_prefix(&app.url(""))
        .expect("a URL of this server")
        .to_string()
}

async fn replay_url_for_the_enrolled_and_the_owner_only(backend: Backend) {
    let app = spawn_api(backend).await;
    let s = recorded_class(&app, "rec_a").await;
    let path = format!("/v1/streams/{s}/replay");

    let r = app.get(&path, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = app.get(&path, Some(&user("vic"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "not_enrolled");
    let r = app
        .get("/v1/streams/st_nope/replay", Some(&user("ulla")))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = app.get(&path, Some(&user("ulla"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let hls = r.body["hls_url"].as_str().unwrap().to_string();
    assert!(hls.ends_with("/master.m3u8"), "{hls}");
    assert_eq!(r.body["duration_seconds"], 12.345);
    assert_eq!(r.body["codecs"], "vp08.00.41.08,opus");
    assert_eq!(r.body["live"], false);
    assert!(
        r.body["thumbnail_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/streams/{s}/thumbnail.jpg"))
    );
    // The URL expires with the replay window (7 days), not later.
    let expires = time::OffsetDateTime::parse(
        r.body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    assert!(expires <= unix_secs() + 7 * 86_400 + 5, "{}", r.text);
    let owner = app.get(&path, Some(&instructor("ines"))).await;
    assert_eq!(owner.status, StatusCode::OK, "{}", owner.text);

    // The stream object says what there is.
    let r = app.get(&format!("/v1/streams/{s}"), None).await;
    assert_eq!(r.body["record"], true);
    assert_eq!(r.body["recording"]["available"], true);
    assert_eq!(r.body["recording"]["duration_seconds"], 12.345);

    // A stream that was not recorded: 404 no_recording (after the access check).
    let t = app.create_stream("ines", 0).await;
    let r = app
        .post(
            &format!("/v1/streams/{t}/start"),
            Some(&instructor("ines")),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .get(
            &format!("/v1/streams/{t}/replay"),
            Some(&instructor("ines")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.code(), "no_recording");
    app.shutdown().await;
}

async fn the_signed_url_opens_that_recordings_files_only(backend: Backend) {
    let app = spawn_api(backend).await;
    let s = recorded_class(&app, "rec_a").await;
    let hls = ullas_hls_url(&app, &s).await;
    let base = hls.trim_end_matches("master.m3u8").to_string();

    let r = app.http.get(&hls).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(r.text().await.unwrap().contains("index.m3u8"));
    let r = app
        .http
        .get(format!("{base}init.mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "video/mp4");
    // Segments answer byte ranges (LL-HLS parts are ranges of a segment).
    let r = app
        .http
        .get(format!("{base}seg00001.m4s"))
        .header("range", "bytes=4-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-type"], "video/iso.segment");
    assert_eq!(r.headers()["content-range"], "bytes 4-7/16");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"4567");

    // Names that are not a recording's files, and path tricks: 400 or 404,
    // never a file from elsewhere (the token key sits in the data directory).
    let token_part = path_of(&app, &base);
    for bad in [
        "recording.json",
        ".hidden.m3u8",
        "..%2f..%2fmedia-token.key",
        "..%2Findex.m3u8",
        "%2e%2e",
        "index.m3u8%00.jpg",
        "nope.m4s",
    ] {
        let r = app.get(&format!("{token_part}{bad}"), None).await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::NOT_FOUND,
            "{bad}: {} {}",
            r.status,
            r.text
        );
        assert!(!r.text.contains("init-bytes"));
    }

    // A forged or altered token opens nothing.
    let forged = hls.replacen("/v1/replay/", "/v1/replay/x", 1);
    assert_eq!(
        app.http.get(&forged).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // A media token is not a replay token.
    let media = app.subscribe_token(&s);
    let r = app
        .get(&format!("/v1/replay/{media}/master.m3u8"), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);

    // A token for recording A does not open recording B, even of the same stream.
    fake_recording(&app.state().config.data_dir, "rec_b");
    set_recording(&app, &s, "rec_b").await;
    let r = app.http.get(&hls).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_recording");
    app.shutdown().await;
}

async fn the_url_stops_when_the_replay_window_closes(backend: Backend) {
    let app = spawn_api(backend).await;
    let s = recorded_class(&app, "rec_a").await;
    let folder = app.state().config.data_dir.join("recordings/rec_a");
    let hls = ullas_hls_url(&app, &s).await;
    assert_eq!(
        app.http.get(&hls).send().await.unwrap().status(),
        StatusCode::OK
    );

    let clock = Arc::new(ManualClock::new(tandem::api::now_ms()));
    let jobs = Jobs::new(
        app.state().clone(),
        Arc::new(clock.clone()) as Arc<dyn Clock>,
    );
    clock.advance(8 * DAY);
    let report = jobs.expire_replays().await.unwrap();
    assert_eq!(report.recordings_deleted, vec![s.clone()]);
    assert!(!folder.exists(), "the recording's files are gone");

    let r = app.http.get(&hls).send().await.unwrap();
    assert!(
        r.status() == StatusCode::FORBIDDEN || r.status() == StatusCode::NOT_FOUND,
        "{}",
        r.status()
    );
    let r = app
        .get(&format!("/v1/streams/{s}/replay"), Some(&user("ulla")))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.code(), "replay_expired");
    app.shutdown().await;
}

async fn an_expired_window_refuses_before_the_job_runs(backend: Backend) {
    let app = spawn_api(backend).await;
    let s = recorded_class(&app, "rec_a").await;
    let hls = ullas_hls_url(&app, &s).await;
    // The window closed a second ago; no job has run yet.
    sqlx::query("UPDATE streams SET replay_expires_at = $1 WHERE id = $2")
        .bind(tandem::api::now_ms() - 1000)
        .bind(&s)
        .execute(app.pool())
        .await
        .unwrap();
    let r = app.http.get(&hls).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "replay_expired");
    for who in [user("ulla"), instructor("ines")] {
        let r = app
            .get(&format!("/v1/streams/{s}/replay"), Some(&who))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert_eq!(r.code(), "replay_expired");
    }
    app.shutdown().await;
}

async fn thumbnail_and_the_record_field(backend: Backend) {
    let app = spawn_api(backend).await;
    let s = recorded_class(&app, "rec_a").await;
    let path = format!("/v1/streams/{s}/thumbnail.jpg");
    let r = app.get(&path, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let jpeg = [
        0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 0xFF, 0xD9,
    ];
    std::fs::write(
        app.state()
            .config
            .data_dir
            .join("recordings/rec_a/thumb.jpg"),
        jpeg,
    )
    .unwrap();
    let r = app.http.get(app.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &jpeg);

    // `record: false` at creation, and back on by PATCH.
    let r = app
        .post(
            "/v1/streams",
            Some(&instructor("ines")),
            json!({"title": "Unrecorded", "scheduled_start": "2030-01-31T18:00:00Z",
                   "price_tokens": 0, "record": false}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["record"], false);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = app
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/streams/{id}"),
            Some(&instructor("ines")),
            Some(&json!({"record": true}).to_string()),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["record"], true);
    let r = app
        .post(
            "/v1/streams",
            Some(&instructor("ines")),
            json!({"title": "x", "scheduled_start": "2030-01-31T18:00:00Z",
                   "price_tokens": 0, "record": "yes"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    app.shutdown().await;
}

both_backends!(
    replay_url_for_the_enrolled_and_the_owner_only,
    the_signed_url_opens_that_recordings_files_only,
    the_url_stops_when_the_replay_window_closes,
    an_expired_window_refuses_before_the_job_runs,
    thumbnail_and_the_record_field,
);

/// Which streams are recorded (`[recording]` and the stream's `record`), asked
/// as the WHIP handler asks before a publisher's session is built; a recording
/// that never received a packet leaves no recording behind when it finishes.
async fn which_streams_are_recorded(backend: Backend) {
    let app = api_app(backend).spawn().await;
    let rec = &app.state().recordings;
    let default = app.create_stream("ines", 0).await;
    let r = app
        .post(
            "/v1/streams",
            Some(&instructor("ines")),
            json!({"title": "Off", "scheduled_start": "2030-01-31T18:00:00Z",
                   "price_tokens": 0, "record": false}),
        )
        .await;
    let off = r.body["id"].as_str().unwrap().to_string();

    rec.publisher_starting(&default).await;
    assert!(
        rec.is_recording(&default),
        "business streams are recorded by default"
    );
    let folder = rec.folder_of(&default).unwrap();
    assert!(folder.starts_with(app.state().config.data_dir.join("recordings")));
    let r = app.get(&format!("/v1/streams/{default}"), None).await;
    assert_eq!(r.body["recording"]["available"], false, "{}", r.text);
    rec.publisher_starting(&off).await;
    assert!(!rec.is_recording(&off), "record: false");
    rec.publisher_starting("demo").await;
    assert!(
        !rec.is_recording("demo"),
        "other streams need other_streams"
    );

    // Nothing was ever published: finishing leaves no recording and no folder.
    assert!(rec.finish(&default).await.is_none());
    assert!(!folder.exists());
    let r = app.get(&format!("/v1/streams/{default}"), None).await;
    assert!(r.body["recording"].is_null(), "{}", r.text);
    app.shutdown().await;

    let app = api_app(backend)
        .config(|c| c.recording.other_streams = true)
        .spawn()
        .await;
    let rec = &app.state().recordings;
    rec.publisher_starting("demo").await;
    assert!(rec.is_recording("demo"), "other_streams = true");
    assert!(
        rec.folder_of("demo")
            .unwrap()
            .starts_with(app.state().config.data_dir.join("recordings/other"))
    );
    app.shutdown().await;

    // TANDEM_RECORDING__ENABLED=false: nothing, whatever the stream says.
    let app = api_app(backend)
        .config(|c| {
            c.recording.enabled = false;
            c.recording.other_streams = true;
        })
        .spawn()
        .await;
    let s = app.create_stream("ines", 0).await;
    let rec = &app.state().recordings;
    rec.publisher_starting(&s).await;
    rec.publisher_starting("demo").await;
    assert!(!rec.is_recording(&s) && !rec.is_recording("demo"));
    let r = app.get(&format!("/v1/streams/{s}"), None).await;
    assert_eq!(r.body["record"], false);
    app.shutdown().await;
}

both_backends!(which_streams_are_recorded);
