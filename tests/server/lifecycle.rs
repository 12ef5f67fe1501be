//! The two things an operator does first: start `tandem` with no configuration
//! and stop it with SIGTERM, and mint tokens with `tandem token`. These tests run
//! the real binary to prove that it starts on its embedded defaults (data under
//! `./data`, demo links printed), that those links work, that SIGTERM closes every
//! media session as DELETE would (recorded as ended) and exits cleanly, and that
//! CLI tokens are accepted by a server using the same data directory.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use sqlx::Row;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

fn query_param<'a>(url: &'a str, name: &str) -> &'a str {
    url.split(&format!("{name}="))
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

#[tokio::test]
async fn starts_on_defaults_prints_working_demo_links_and_stops_on_sigterm() {
    let cwd = TempDir::new("tandem-bin");
    let mut child = Command::new(BIN)
        .current_dir(cwd.path())
        // Free ports instead of 8080/8443; everything else is the embedded default.
        .env("TANDEM_HTTP_ADDR", "127.0.0.1:0")
        .env("TANDEM_MEDIA_PORT", "0")
        .env_remove("TANDEM_DATA_DIR")
        .env_remove("TANDEM_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tandem binary runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut broadcast, mut watch) = (None, None);
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            let line = line.trim().to_string();
            if let Some(url) = line.strip_prefix("broadcast:") {
                broadcast = Some(url.trim().to_string());
            } else if let Some(url) = line.strip_prefix("watch:") {
                watch = Some(url.trim().to_string());
                break;
            }
        }
    })
    .await
    .expect("demo links printed within 60 s");
    let broadcast = broadcast.expect("a broadcast link");
    let watch = watch.expect("a watch link");
    assert!(broadcast.contains("/broadcast/demo?token="), "{broadcast}");
    let base = watch.split("/watch/").next().unwrap().to_string();

    let http = reqwest::Client::new();
    let page = http.get(&broadcast).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text().await.unwrap().contains("<html"),
        "the broadcast page"
    );
    for path in ["/healthz", "/readyz"] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    // The printed viewer token opens a WHEP session on the demo stream.
    let resp = http
        .post(format!("{base}/v1/whep/demo"))
        .bearer_auth(query_param(&watch, "token"))
        .header("content-type", "application/sdp")
        .body(CHROMIUM_RECVONLY_OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let session = resp.headers()["location"].to_str().unwrap().to_string();
    let session_id = session.rsplit('/').next().unwrap().to_string();
    // ... and the broadcast token may not view.
    let resp = http
        .post(format!("{base}/v1/whep/demo"))
        .bearer_auth(query_param(&broadcast, "token"))
        .header("content-type", "application/sdp")
        .body(CHROMIUM_RECVONLY_OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within 30 s of SIGTERM")
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(
        exit.success(),
        "clean exit after SIGTERM: {exit:?}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");

    // The embedded default keeps its data under ./data, and the session the
    // shutdown closed is recorded as ended.
    let db = cwd.path().join("data/tandem.db");
    assert!(db.exists(), "SQLite database created at {}", db.display());
    assert!(cwd.path().join("data/media-token.key").exists());
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let row = sqlx::query("SELECT ended_at FROM media_sessions WHERE id = $1")
        .bind(&session_id)
        .fetch_one(&pool)
        .await
        .expect("the session was recorded");
    let ended: Option<i64> = row.get("ended_at");
    assert!(
        ended.is_some(),
        "the session was closed and recorded as ended"
    );
}

#[tokio::test]
async fn cli_tokens_are_accepted_by_a_server_with_the_same_data_dir() {
    let app = TestApp::builder()
        .config(|c| c.media.ice_tcp = false)
        .spawn()
        .await;
    let data_dir = app.data_dir().display().to_string();
    let cli = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("token")
            .args(args)
            .env("TANDEM_DATA_DIR", &data_dir)
            .output()
            .expect("tandem token runs")
    };
    let publish = cli(&["--stream", "cli1", "--publish"]);
    assert!(publish.status.success());
    let publish = String::from_utf8(publish.stdout)
        .unwrap()
        .trim()
        .to_string();
    let subscribe = cli(&["--stream", "cli1", "--subscribe"]);
    let subscribe = String::from_utf8(subscribe.stdout)
        .unwrap()
        .trim()
        .to_string();

    let post = |token: String| {
        app.http
            .post(app.whip_url("cli1"))
            .bearer_auth(token)
            .header("content-type", "application/sdp")
            .body(CHROMIUM_SENDONLY_OFFER)
            .send()
    };
    assert_eq!(
        post(subscribe).await.unwrap().status(),
        403,
        "subscribe cannot publish"
    );
    assert_eq!(
        post(publish).await.unwrap().status(),
        201,
        "the CLI's publish token"
    );

    // A token request that grants nothing is refused with a message, not minted.
    let empty = cli(&["--stream", "cli1"]);
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("--publish"));
    app.shutdown().await;
}
