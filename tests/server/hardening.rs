//! Issue 11 hardening tests: the HTTP edge (items 2, 6, 11).
//!
//! Item 2 talks raw TCP (connection caps and timeouts are below HTTP), binding
//! client sockets to other loopback addresses (all of 127.0.0.0/8 is loopback on
//! Linux) to play several clients. Item 6 makes the database read-only for real,
//! as root: a read-only bind mount, or the immutable attribute (`chattr +i`, which
//! also stops writes through descriptors opened before it was set).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

// ---------------------------------------------------------------------------
// Raw TCP helpers
// ---------------------------------------------------------------------------

fn http_addr(app: &TestApp) -> SocketAddr {
    app.running.as_ref().unwrap().http_addr
}

/// A TCP connection to `server` from source address `src` (any 127.x.y.z).
async fn connect_from(src: [u8; 4], server: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((src, 0))).unwrap();
    sock.connect(server).await.unwrap()
}

/// Ok once the server has closed `stream` (EOF or reset), discarding whatever it
/// sent first; Err if it is still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .map_err(|_| format!("connection still open after {within:?}"))
}

/// Sends `GET path` on `stream` (keep-alive) and returns the status and body.
async fn get_on(stream: &mut TcpStream, path: &str) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: tandem\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("closed after {:?}", String::from_utf8_lossy(&data)));
            }
            data.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&data).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if text.len() >= end + 4 + len {
                    let status = text[9..12].parse().map_err(|_| text.clone())?;
                    return Ok((status, text[end + 4..end + 4 + len].to_string()));
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

/// A metric's value, read over a connection from 127.0.0.200 (so from outside
/// any cap the test fills from other addresses); Err while no slot is free.
async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 200]))
        .build()
        .unwrap();
    let text = client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    Ok(crate::support::metric_value(&text, name, labels))
}

// ---------------------------------------------------------------------------
// Item 2: header timeout, idle timeout, connection caps
// ---------------------------------------------------------------------------

// Item 2 (a): half a request header is not an open-ended hold on a descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_request_header_is_closed_after_the_header_timeout() {
    let app = api_app(Backend::Sqlite)
        .config(|c| {
            c.http.header_timeout_ms = 300;
            c.http.idle_timeout_ms = 60000;
        })
        .spawn()
        .await;
    let mut slow = connect_from([127, 0, 0, 1], http_addr(&app)).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: tand")
        .await
        .unwrap();
    closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("the server closes a connection whose header does not arrive");
    // On HTTP/1 the same timeout bounds the wait for a kept-alive connection's
    // next request (what README says of header_timeout_ms).
    let mut kept = connect_from([127, 0, 0, 1], http_addr(&app)).await;
    assert_eq!(
        get_on(&mut kept, "/healthz").await.unwrap(),
        (200, "ok".into())
    );
    closed_within(&mut kept, Duration::from_secs(5))
        .await
        .expect("a kept-alive connection without a next request is closed");
    app.shutdown().await;
}

// Item 2 (b): silent and idle keep-alive connections are closed after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let app = api_app(Backend::Sqlite)
        .config(|c| {
            c.http.header_timeout_ms = 60000;
            c.http.idle_timeout_ms = 300;
        })
        .spawn()
        .await;
    let addr = http_addr(&app);
    let mut silent = connect_from([127, 0, 0, 1], addr).await;
    let mut kept = connect_from([127, 0, 0, 1], addr).await;
    assert_eq!(
        get_on(&mut kept, "/healthz").await.unwrap(),
        (200, "ok".into())
    );
    closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a connection that never sends a byte is closed");
    closed_within(&mut kept, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    app.shutdown().await;
}

// Item 2 (c): one client's flood past the per-IP cap is refused at once and does
// not stop /healthz answering another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_per_ip_cap_is_refused_and_healthz_still_answers() {
    let app = api_app(Backend::Sqlite)
        .config(|c| {
            c.http.max_connections = 100;
            c.http.max_connections_per_ip = 4;
            c.http.header_timeout_ms = 60000;
            c.http.idle_timeout_ms = 60000;
        })
        .spawn()
        .await;
    let addr = http_addr(&app);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from([127, 0, 0, 1], addr).await);
    }
    for i in 0..6 {
        let mut extra = connect_from([127, 0, 0, 1], addr).await;
        closed_within(&mut extra, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("flood connection {i} past the per-IP cap: {e}"));
    }
    // Another client is served while 127.0.0.1 sits at its cap...
    let mut other = connect_from([127, 0, 0, 2], addr).await;
    assert_eq!(
        get_on(&mut other, "/healthz").await.unwrap(),
        (200, "ok".into())
    );
    // ...and the flood's accepted connections are served too (the cap counts, it
    // does not cut).
    assert_eq!(
        get_on(&mut held[0], "/healthz").await.unwrap(),
        (200, "ok".into())
    );
    let refused = metric(
        &app,
        "tandem_http_connections_refused_total",
        &[("reason", "per_ip")],
    )
    .await
    .unwrap();
    assert!(refused >= 6.0, "refused per_ip = {refused}");
    // Closing the flood frees its slots.
    drop(held);
    eventually("127.0.0.1 served again", Duration::from_secs(5), || async {
        let mut s = connect_from([127, 0, 0, 1], addr).await;
        get_on(&mut s, "/healthz").await.map(|_| ())
    })
    .await;
    app.shutdown().await;
}

// Item 2 (d): the global cap holds whatever the source addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_connection_cap_holds() {
    let app = api_app(Backend::Sqlite)
        .config(|c| {
            c.http.max_connections = 3;
            c.http.max_connections_per_ip = 0;
            c.http.header_timeout_ms = 60000;
            c.http.idle_timeout_ms = 60000;
        })
        .spawn()
        .await;
    let addr = http_addr(&app);
    let mut held = Vec::new();
    for src in 3..6u8 {
        held.push(connect_from([127, 0, 0, src], addr).await);
    }
    for src in 6..9u8 {
        let mut extra = connect_from([127, 0, 0, src], addr).await;
        closed_within(&mut extra, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("connection from 127.0.0.{src} past the global cap: {e}"));
    }
    assert_eq!(
        get_on(&mut held[2], "/healthz").await.unwrap(),
        (200, "ok".into())
    );
    drop(held.pop());
    let mut next = eventually("a freed slot", Duration::from_secs(5), || async {
        let mut s = connect_from([127, 0, 0, 9], addr).await;
        get_on(&mut s, "/healthz").await.map(|_| s)
    })
    .await;
    assert_eq!(
        get_on(&mut next, "/metrics").await.unwrap().0,
        200,
        "the new connection keeps working"
    );
    drop(next);
    drop(held);
    let refused = eventually("the refusals counted", Duration::from_secs(5), || async {
        let v = metric(
            &app,
            "tandem_http_connections_refused_total",
            &[("reason", "global")],
        )
        .await?;
        if v >= 3.0 { Ok(v) } else { Err(format!("{v}")) }
    })
    .await;
    assert!(refused >= 3.0);
    app.shutdown().await;
}

// ---------------------------------------------------------------------------
// Item 6: a database that cannot write
// ---------------------------------------------------------------------------

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Undoes what [`make_read_only`] did, on drop (even when the test fails).
struct ReadOnly {
    mount: Option<PathBuf>,
    immutable: Vec<PathBuf>,
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            run("umount", &[m.to_str().unwrap()]);
        }
        for p in &self.immutable {
            run("chattr", &["-i", p.to_str().unwrap()]);
        }
    }
}

/// Sets the immutable attribute on each existing path; None if chattr is refused.
fn immutable(paths: &[PathBuf]) -> Option<ReadOnly> {
    let mut ro = ReadOnly {
        mount: None,
        immutable: Vec::new(),
    };
    for p in paths.iter().filter(|p| p.exists()) {
        if !run("chattr", &["+i", p.to_str().unwrap()]) {
            return None;
        }
        ro.immutable.push(p.clone());
    }
    Some(ro)
}

fn test_config(data_dir: &Path) -> tandem::config::Config {
    let url = format!("sqlite://{}?mode=rwc", data_dir.join("t.db").display());
    let env = [
        ("TANDEM_HTTP_ADDR", "127.0.0.1:0"),
        ("TANDEM_MEDIA_PORT", "0"),
        ("TANDEM_DATA_DIR", data_dir.to_str().unwrap()),
        ("TANDEM_DATABASE_URL", url.as_str()),
        ("TANDEM_DEMO", "false"),
        ("TANDEM_API__JOBS_ENABLED", "false"),
        ("TANDEM_MEDIA__ICE_TCP", "false"),
    ];
    tandem::config::Config::load_with_env(
        None,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap()
}

// Item 6: an existing database on a read-only mount stops the start, naming the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_refuses_to_start_naming_the_path() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let src = std::env::temp_dir().join(format!("tandem-ro-src-{id}"));
    let mnt = std::env::temp_dir().join(format!("tandem-ro-mnt-{id}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    // A database made by a first run, closed cleanly.
    let first = tandem::start(test_config(&src)).await.unwrap();
    first.state.db.pool.close().await;
    first.shutdown().await;

    let (guard, data_dir) = if run(
        "mount",
        &["--bind", src.to_str().unwrap(), mnt.to_str().unwrap()],
    ) {
        let guard = ReadOnly {
            mount: Some(mnt.clone()),
            immutable: Vec::new(),
        };
        assert!(
            run("mount", &["-o", "remount,bind,ro", mnt.to_str().unwrap()]),
            "remount read-only"
        );
        (guard, mnt.clone())
    } else {
        // No mounts here: the immutable attribute stops root's writes as well.
        let paths: Vec<PathBuf> = ["t.db", "t.db-wal", "t.db-shm", ""]
            .iter()
            .map(|f| {
                if f.is_empty() {
                    src.clone()
                } else {
                    src.join(f)
                }
            })
            .collect();
        let Some(guard) = immutable(&paths) else {
            eprintln!("SKIPPED: neither a read-only bind mount nor chattr +i is available");
            return;
        };
        (guard, src.clone())
    };
    // Honest setup: root really cannot write there now.
    assert!(
        std::fs::write(data_dir.join("probe"), b"x").is_err()
            || std::fs::OpenOptions::new()
                .append(true)
                .open(data_dir.join("t.db"))
                .is_err(),
        "the setup did not make the data read-only"
    );
    let err = match tandem::start(test_config(&data_dir)).await {
        Ok(running) => {
            running.shutdown().await;
            panic!("the server started on a read-only database");
        }
        Err(err) => err.to_string(),
    };
    eprintln!("start refused: {err}");
    assert!(
        err.contains(data_dir.to_str().unwrap()),
        "the error names the path: {err}"
    );
    assert!(
        err.contains("read-only") || err.contains("not writable"),
        "the error says what is wrong: {err}"
    );
    drop(guard);
    let _ = std::fs::remove_dir(&mnt);
    let _ = std::fs::remove_dir_all(&src);
}

// Item 6: a database file that cannot be written (its directory can) stops the
// start too, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_database_file_refuses_to_start_naming_it() {
    let dir =
        std::env::temp_dir().join(format!("tandem-ro-file-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = tandem::start(test_config(&dir)).await.unwrap();
    first.state.db.pool.close().await;
    first.shutdown().await;
    let db = dir.join("t.db");
    let paths = [db.clone(), dir.join("t.db-wal"), dir.join("t.db-shm")];
    let Some(guard) = immutable(&paths) else {
        eprintln!("SKIPPED: chattr +i is not available");
        return;
    };
    let err = match tandem::start(test_config(&dir)).await {
        Ok(running) => {
            running.shutdown().await;
            panic!("the server started on a database file it cannot write");
        }
        Err(err) => err.to_string(),
    };
    eprintln!("start refused: {err}");
    assert!(err.contains(db.to_str().unwrap()), "names the file: {err}");
    assert!(err.contains("does not accept writes"), "{err}");
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}

// Item 6: a running server whose database stops taking writes is not ready, and
// says why; it is ready again once writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_json_while_the_database_cannot_write() {
    let app = spawn_api(Backend::Sqlite).await;
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let dir = app.state().config.data_dir.clone();
    let paths: Vec<PathBuf> = ["t.db", "t.db-wal", "t.db-shm"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let Some(guard) = immutable(&paths) else {
        eprintln!("SKIPPED: chattr +i is not available");
        app.shutdown().await;
        return;
    };
    let r = eventually("/readyz 503", Duration::from_secs(10), || async {
        let r = app.get("/readyz", None).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.text))
        }
    })
    .await;
    assert_eq!(r.code(), "not_ready", "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("database"), "{msg}");
    assert_eq!(
        r.body["error"]["checks"]["database"], "read_only",
        "{}",
        r.text
    );
    drop(guard);
    eventually("/readyz 200 again", Duration::from_secs(10), || async {
        let r = app.get("/readyz", None).await;
        if r.status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text))
        }
    })
    .await;
    app.shutdown().await;
}

// ---------------------------------------------------------------------------
// Item 11 (HTTP part): every error in the contract's JSON shape
// ---------------------------------------------------------------------------

fn assert_json_error(r: &crate::support::Resp, status: StatusCode, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    assert_eq!(r.code(), code, "{what}: {}", r.text);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: a message: {}",
        r.text
    );
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("application/json"), "{what}: {ct}");
}

// Item 11: unknown routes answer 404 JSON in every route family (API, prefix, pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_answer_404_json() {
    let app = spawn_api(Backend::Sqlite).await;
    for path in [
        "/nope",
        "/.proxy/nope",
        "/v1/nope",
        "/v1/streams/x/nope",
        "/web/nope.js",
        "/v1/whip/s/session/extra",
    ] {
        let r = app.get(path, None).await;
        assert_json_error(&r, StatusCode::NOT_FOUND, "not_found", path);
    }
    app.shutdown().await;
}

// Item 11: wrong methods answer 405 JSON with an Allow header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_answer_405_json_with_allow() {
    let app = spawn_api(Backend::Sqlite).await;
    for (method, path, allowed) in [
        (Method::DELETE, "/healthz", "GET"),
        (Method::POST, "/metrics", "GET"),
        (Method::PUT, "/v1/streams", "POST"),
        (Method::GET, "/v1/rooms/r1/token", "POST"),
        (Method::GET, "/v1/whip/s1", "POST"),
        (Method::POST, "/.proxy/readyz", "GET"),
        (Method::POST, "/watch/demo", "GET"),
    ] {
        let what = format!("{method} {path}");
        let r = app.send(method, path, None, None, &[]).await;
        assert_json_error(
            &r,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &what,
        );
        let allow = r
            .headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(allow.contains(allowed), "{what}: Allow: {allow}");
    }
    app.shutdown().await;
}

/// POSTs `body` over raw TCP, reading the answer while the body is still being
/// written: a server that answers 413 early and closes makes reqwest report the
/// failed write instead of the answer. Returns the status, headers and body.
async fn post_oversized(
    addr: SocketAddr,
    path: &str,
    bearer: &str,
    body: String,
) -> (u16, String, Value) {
    let stream = connect_from([127, 0, 0, 1], addr).await;
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: tandem\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        // The server may close before it has read everything: that is its right.
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(body.as_bytes()).await;
    });
    let mut data = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&data);
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if data.len() >= end + 4 + len {
                    break;
                }
            }
        }
    })
    .await;
    writer.abort();
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&data).to_string();
    let end = text
        .find("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    let status = text[9..12].parse().unwrap();
    let head = text[..end].to_ascii_lowercase();
    let body = serde_json::from_str(&text[end + 4..]).unwrap_or(Value::Null);
    (status, head, body)
}

// Item 11: a JSON body past the limit answers 413 JSON (WHIP/WHEP keep their own
// `too_large`, tested in whip_protocol).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_json_bodies_answer_413_json() {
    let app = spawn_api(Backend::Sqlite).await;
    let big = format!("{{\"title\":\"{}\"}}", "x".repeat(3 * 1024 * 1024));
    for (path, bearer) in [
        ("/v1/streams", instructor("i1")),
        ("/v1/rooms/r1/token", user("u1")),
    ] {
        let (status, head, body) =
            post_oversized(http_addr(&app), path, &bearer, big.clone()).await;
        assert_eq!(status, 413, "{path}: {head} {body}");
        assert!(
            head.contains("content-type: application/json"),
            "{path}: {head}"
        );
        assert_eq!(body["error"]["code"], "payload_too_large", "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    app.shutdown().await;
}

// Item 11: invalid UTF-8 in a path parameter answers 400 JSON naming the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_path_answers_400_json() {
    let app = spawn_api(Backend::Sqlite).await;
    for (method, path) in [
        (Method::GET, "/v1/streams/%FF%FE"),
        (Method::POST, "/v1/rooms/%FF/token"),
        (Method::GET, "/web/%C3%28"),
        (Method::POST, "/v1/whip/%FF"),
    ] {
        let what = format!("{method} {path}");
        let r = app
            .send(method, path, Some(&user("u1")), Some("{}"), &[])
            .await;
        assert_json_error(&r, StatusCode::BAD_REQUEST, "bad_request", &what);
        assert_eq!(r.body["error"]["field"], "path", "{what}: {}", r.text);
    }
    app.shutdown().await;
}

// Item 11: the room-token route checks the identity before the body, and a bad
// body is a 400 JSON naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_token_checks_identity_before_parsing_the_body() {
    let app = spawn_api(Backend::Sqlite).await;
    let path = "/v1/rooms/r1/token";
    for bearer in [None, Some("not-a-jwt")] {
        let r = app
            .send(Method::POST, path, bearer, Some("{broken"), &[])
            .await;
        assert_json_error(
            &r,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "broken body, no identity",
        );
    }
    let me = user("u1");
    let r = app
        .send(Method::POST, path, Some(&me), Some("{broken"), &[])
        .await;
    assert_json_error(&r, StatusCode::BAD_REQUEST, "bad_request", "broken body");
    assert_eq!(r.body["error"]["field"], "body", "{}", r.text);
    let r = app.post(path, Some(&me), json!({"name": 5})).await;
    assert_json_error(&r, StatusCode::BAD_REQUEST, "bad_request", "wrong type");
    assert_eq!(r.body["error"]["field"], "name", "{}", r.text);
    // What worked before still works: no body, and a name.
    let r = app.send(Method::POST, path, Some(&me), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.post(path, Some(&me), json!({"name": "Ann"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.body["token"].is_string(), "{}", r.text);
    app.shutdown().await;
}

// Item 2: a WebSocket is not cut by the HTTP idle timeout (its room keeps its own
// deadlines), but it holds its connection slot for as long as it is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_outlive_the_idle_timeout_and_count_toward_the_caps() {
    let dir = TempDir::new("tandem-http-ws");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| {
            c.http.idle_timeout_ms = 300;
            c.http.header_timeout_ms = 60000;
            c.http.max_connections = 100;
            c.http.max_connections_per_ip = 2;
            // No server pings in the test's window: the WebSocket is truly silent.
            c.rooms.ping_interval_ms = 600000;
        })
        .spawn()
        .await;
    let addr = s.running.as_ref().unwrap().http_addr;
    let idle = || {
        crate::support::metric_value(
            &s.registry_metrics(),
            "tandem_http_connections_timed_out_total",
            &[("reason", "idle")],
        )
    };
    let mut ws =
        Client::connect(&s.ws_url("r1", &s.room_token("r1", "u1", false)), 0.0, None).await;
    // Opened after the WebSocket's last frame: once the server has idled this one
    // out, the WebSocket has been silent longer than the idle timeout too.
    let mut raw = connect_from([127, 0, 0, 1], addr).await;
    closed_within(&mut raw, Duration::from_secs(5))
        .await
        .expect("a silent plain connection is idled out");
    assert_eq!(idle(), 1.0, "only the plain connection was idled out");
    let (_, snapshot) = ws.until_snapshot().await;
    assert_eq!(snapshot["type"], "welcome", "the WebSocket still answers");
    // The WebSocket holds one of 127.0.0.1's two slots: one more connection is
    // served, the next refused.
    let mut second = connect_from([127, 0, 0, 1], addr).await;
    let mut third = connect_from([127, 0, 0, 1], addr).await;
    closed_within(&mut third, Duration::from_secs(5))
        .await
        .unwrap();
    let refused = crate::support::metric_value(
        &s.registry_metrics(),
        "tandem_http_connections_refused_total",
        &[("reason", "per_ip")],
    );
    assert_eq!(
        refused, 1.0,
        "the third connection from 127.0.0.1 was refused"
    );
    assert_eq!(
        get_on(&mut second, "/healthz").await.unwrap(),
        (200, "ok".into())
    );
    drop(ws);
    s.shutdown().await;
}
