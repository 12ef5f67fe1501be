//! Issue 13 ("the first hour"), the command line: `tandem identity` mints a JWT
//! the server accepts (and refuses without a `jwt_secret`), `tandem token` says
//! which data directory and key it used and never silently creates a key the
//! server does not know, configuration typos stop every command with the nearest
//! valid name, and the start banner, log colours and exit time as a newcomer sees
//! them. Each test runs the built binary in a temp directory.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

/// Runs `tandem args…` in `cwd` with only the `TANDEM_*` variables in `env`
/// (the test process's own are removed, so the harness's settings do not leak in).
fn tandem(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(TANDEM_BIN);
    cmd.current_dir(cwd).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("TANDEM_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("tandem runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The claims of a JWT, unverified.
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn identity_mints_a_jwt_the_business_api_accepts() {
    let cwd = TempDir::new("tandem-cli");
    // No secret: refused, saying how to configure one.
    let out = tandem(
        cwd.path(),
        &["identity", "--sub", "alice", "--role", "instructor"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("TANDEM_JWT_SECRET"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("jwt_secret"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    // A role that is not one of the platform's.
    let out = tandem(
        cwd.path(),
        &["identity", "--sub", "alice", "--role", "owner"],
        &[("TANDEM_JWT_SECRET", JWT_SECRET)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("instructor"), "{}", stderr(&out));

    let out = tandem(
        cwd.path(),
        &[
            "identity",
            "--sub",
            "alice",
            "--role",
            "instructor",
            "--ttl",
            "600",
            "--name",
            "Alice",
            "--email",
            "alice@example.com",
        ],
        &[("TANDEM_JWT_SECRET", JWT_SECRET)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out);
    let c = claims(&token);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["app_metadata"]["role"], "instructor");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);
    assert_eq!(c["email"], "alice@example.com");

    // The server with the same secret takes it, as an instructor.
    let app = spawn_api(Backend::Sqlite).await;
    let r = app.get("/v1/me/balance", Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.get("/v1/instructor/streams", Some(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.shutdown().await;
}

#[tokio::test]
async fn token_never_silently_creates_a_key_the_server_does_not_know() {
    let cwd = TempDir::new("tandem-cli");
    let args = ["token", "--stream", "s1", "--publish"];
    let out = tandem(cwd.path(), &args, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("data"), "names the data directory: {err}");
    assert!(
        err.contains(&cwd.path().join("data").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("TANDEM_DATA_DIR") && err.contains("--config"),
        "{err}"
    );
    assert!(err.contains("--create-key"), "{err}");
    assert!(stdout(&out).is_empty(), "no token printed");
    assert!(
        !cwd.path().join("data/media-token.key").exists(),
        "no key created"
    );

    // Asked to, it creates one and says so.
    let mut with_create = args.to_vec();
    with_create.push("--create-key");
    let out = tandem(cwd.path(), &with_create, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("CREATED"), "{}", stderr(&out));
    assert!(cwd.path().join("data/media-token.key").exists());

    // Next time it finds that file and says which it used.
    let out = tandem(cwd.path(), &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("key: generated file ./data/media-token.key"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("data directory ./data"),
        "{}",
        stderr(&out)
    );

    // A configured secret needs no file, wherever the command runs.
    let elsewhere = TempDir::new("tandem-cli");
    let out = tandem(
        elsewhere.path(),
        &args,
        &[(
            "TANDEM_MEDIA_TOKEN_SECRET",
            "a-media-secret-0123456789abcdef",
        )],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("key: media_token_secret from config"),
        "{}",
        stderr(&out)
    );
    assert!(!elsewhere.path().join("data").exists());
}

#[tokio::test]
async fn token_refuses_bad_names_and_mixed_grants_and_caps_the_ttl() {
    let cwd = TempDir::new("tandem-cli");
    let secret = [(
        "TANDEM_MEDIA_TOKEN_SECRET",
        "a-media-secret-0123456789abcdef",
    )];
    let out = tandem(
        cwd.path(),
        &["token", "--stream", "bad name/x", "--publish"],
        &secret,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid stream name"),
        "{}",
        stderr(&out)
    );

    let out = tandem(cwd.path(), &["token", "--room", "r1", "--publish"], &secret);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--publish"), "{}", stderr(&out));
    let out = tandem(
        cwd.path(),
        &["token", "--room", "r1", "--subscribe"],
        &secret,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let out = tandem(
        cwd.path(),
        &["token", "--stream", "s1", "--subscribe", "--ttl", "200000"],
        &secret,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ttl capped at 86400 s"),
        "{}",
        stderr(&out)
    );
    let c = claims(&stdout(&out));
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        86_400
    );

    // `*` still means any stream, and a room token still works.
    let out = tandem(
        cwd.path(),
        &["token", "--stream", "*", "--publish"],
        &secret,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tandem(
        cwd.path(),
        &["token", "--room", "r1", "--moderate"],
        &secret,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(claims(&stdout(&out))["room"], "r1");
}

#[tokio::test]
async fn configuration_typos_stop_every_command_with_the_nearest_name() {
    let cwd = TempDir::new("tandem-cli");
    let secret = (
        "TANDEM_MEDIA_TOKEN_SECRET",
        "a-media-secret-0123456789abcdef",
    );
    let token = ["token", "--stream", "s1", "--publish"];

    let out = tandem(
        cwd.path(),
        &token,
        &[secret, ("TANDEM_HTTP_ADR", "0.0.0.0:80")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown variable TANDEM_HTTP_ADR; did you mean TANDEM_HTTP_ADDR?"),
        "{}",
        stderr(&out)
    );
    let out = tandem(
        cwd.path(),
        &token,
        &[secret, ("TANDEM_MEDIA__MAX_SESIONS", "3")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("did you mean TANDEM_MEDIA__MAX_SESSIONS?"),
        "{}",
        stderr(&out)
    );

    std::fs::write(
        cwd.path().join("prod.toml"),
        "http_adr = \"0.0.0.0:8080\"\n",
    )
    .unwrap();
    let out = tandem(
        cwd.path(),
        &[
            "--config",
            "prod.toml",
            "token",
            "--stream",
            "s1",
            "--publish",
        ],
        &[secret],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown key `http_adr` in prod.toml; did you mean `http_addr`?"),
        "{}",
        stderr(&out)
    );
    std::fs::write(cwd.path().join("prod.toml"), "[media]\nworkerz = 2\n").unwrap();
    let out = tandem(
        cwd.path(),
        &[
            "--config",
            "prod.toml",
            "identity",
            "--sub",
            "a",
            "--role",
            "user",
        ],
        &[("TANDEM_JWT_SECRET", "x")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("unknown key `media.workerz` in prod.toml; did you mean `media.workers`?"),
        "{}",
        stderr(&out)
    );

    // The server itself does not start on a typo either.
    let out = tandem(
        cwd.path(),
        &[],
        &[
            ("TANDEM_HTTP_ADDR", "127.0.0.1:0"),
            ("TANDEM_MEDIA_PORT", "0"),
            ("TANDEM_DEMOO", "false"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("did you mean TANDEM_DEMO?"),
        "{}",
        stderr(&out)
    );

    // Variables other tools read (the test harness, the load generator) pass.
    let out = tandem(
        cwd.path(),
        &token,
        &[
            secret,
            ("TANDEM_CHROMIUM", "/usr/bin/chromium"),
            ("TANDEM_LOADTEST_RTC_LOG", "warn"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The banner a newcomer reads, plain logs in a file, and a prompt exit.
#[tokio::test]
async fn banner_links_plain_logs_and_a_prompt_exit() {
    let cwd = TempDir::new("tandem-bin");
    let (mut child, banner) = spawn_tandem(
        cwd.path(),
        &[
            ("TANDEM_HTTP_ADDR", "127.0.0.1:0"),
            ("TANDEM_MEDIA_PORT", "0"),
            ("TANDEM_MEDIA__ICE_TCP", "false"),
        ],
        Stdio::piped(),
    )
    .await;
    let text = banner.text();
    let banner = banner.lines;
    let home = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("tandem is running: "))
        .unwrap_or_else(|| panic!("home URL in the banner:\n{text}"))
        .to_string();
    assert!(home.ends_with('/'), "{home}");
    assert!(
        text.contains("business API: disabled (no jwt_secret"),
        "{text}"
    );
    assert!(text.contains("service-key routes: disabled"), "{text}");
    let together = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("together:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        together.starts_with(&format!("{home}together/demo?token=")),
        "{together}"
    );
    let token = together.split("token=").nth(1).unwrap();
    let c = claims(token);
    assert_eq!(c["sub"], "demo-host");
    assert_eq!(c["room"], "demo");
    assert_eq!(c["name"], "Host");
    assert_eq!(c["grants"]["moderate"], true);
    assert_eq!(c["grants"]["chat"], true);
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        86_400
    );

    let http = reqwest::Client::new();
    let page = http.get(&home).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = http.get(&together).send().await.unwrap();
    assert_eq!(page.status(), 200);
    // The room token opens the demo room's WebSocket.
    let ws = format!(
        "{}v1/rooms/demo/ws?token={token}",
        home.replacen("http://", "ws://", 1)
    );
    let (socket, _) = tokio_tungstenite::connect_async(&ws)
        .await
        .expect("the together link's token opens the room");
    drop(socket);
    // The streams link's operator token lists what is live, with no service key
    // configured; the watch link's token (one stream) may not.
    let streams = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("streams:"))
        .unwrap_or_else(|| panic!("streams link in the banner:\n{text}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        streams.starts_with(&format!("{home}streams?token=")),
        "{streams}"
    );
    let operator = streams.split("token=").nth(1).unwrap();
    assert_eq!(claims(operator)["stream"], "*");
    let list = http
        .get(format!("{home}v1/media/streams"))
        .bearer_auth(operator)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let list: serde_json::Value = list.json().await.unwrap();
    assert!(list["streams"].is_array(), "{list}");
    let watch = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("watch:"))
        .unwrap()
        .trim();
    let viewer = watch.split("token=").nth(1).unwrap();
    let refused = http
        .get(format!("{home}v1/media/streams"))
        .bearer_auth(viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    sigterm(&child);
    // Time from the "stopped" log line to the exit.
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let stopped_at = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = err.next_line().await {
            let stopped = line.contains("stopped");
            log.push(line);
            if stopped {
                return Instant::now();
            }
        }
        panic!("no \"stopped\" line:\n{}", log.join("\n"));
    })
    .await
    .expect("stops within 30 s of SIGTERM");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    let lag = stopped_at.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        lag < Duration::from_millis(700),
        "exit {lag:?} after \"stopped\" (was 1.3-1.9 s)"
    );
    // stderr is a pipe here: no ANSI colour codes.
    let log = log.join("\n");
    assert!(log.contains("tandem listening"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a non-terminal log:\n{log}"
    );
}

/// A stdout nobody reads (`tandem | head -3`, a supervisor that closed the pipe)
/// does not take the server down: it serves on and stops cleanly on SIGTERM.
/// (`println!` panicked on the closed pipe, so the banner's last line killed it.)
#[tokio::test]
async fn a_closed_stdout_does_not_stop_the_server() {
    let cwd = TempDir::new("tandem-bin");
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut cmd = tokio::process::Command::new(TANDEM_BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("TANDEM_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .current_dir(cwd.path())
        .env("TANDEM_HTTP_ADDR", addr.to_string())
        .env("TANDEM_MEDIA_PORT", "0")
        .env("TANDEM_MEDIA__ICE_TCP", "false")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tandem binary runs");
    // Close the read end before the server writes its banner.
    drop(child.stdout.take());
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/healthz");
    eventually(
        "the server answers /healthz",
        Duration::from_secs(60),
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => Ok(()),
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    // Still up after the banner was written into the closed pipe.
    let again = http.get(&url).send().await.expect("still serving");
    assert_eq!(again.status(), StatusCode::OK);
    assert!(child.try_wait().unwrap().is_none(), "the server is running");
    sigterm(&child);
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stops within 30 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
