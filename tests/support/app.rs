//! [`TestApp`]: a tandem server in the test's process on free ports (HTTP on
//! 127.0.0.1:0, media port 0), with its own data directory and, when asked, its own
//! database. Settings are the typed [`Config`] the server loads, changed in place:
//!
//! ```ignore
//! let app = TestApp::builder()
//!     .config(|c| c.rooms.grace_period_ms = 300)
//!     .spawn()
//!     .await;
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem::auth::{Grants, TokenRequest};
use tandem::config::Config;

use super::db::{Backend, TestDb};
use super::wait::{eventually, metric_value};

/// A sendonly video+audio offer exactly as Chromium 156 makes it (loopback
/// candidate), for protocol tests that need a valid offer but no media.
pub const CHROMIUM_SENDONLY_OFFER: &str = include_str!("chromium-offer-sendonly.sdp");
/// A recvonly video+audio offer as Chromium makes it for WHEP.
pub const CHROMIUM_RECVONLY_OFFER: &str = include_str!("chromium-offer-recvonly.sdp");

/// Root of the repository (where Cargo.toml of `tandem` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Logs of the server, shown for failing tests (`RUST_LOG` overrides the filter).
pub fn init_tracing() {
    let filter = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| "warn,tandem=info,tandem_media=info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where a server keeps its files: its own temp dir, or one the test holds across
/// restarts.
enum DataDir {
    Own(TempDir),
    Given(PathBuf),
}

/// Builds a [`TestApp`]: [`TestApp::builder`], then any of [`config`](Self::config),
/// [`data_dir`](Self::data_dir), [`backend`](Self::backend), then [`spawn`](Self::spawn).
pub struct TestAppBuilder {
    config: Config,
    data_dir: Option<PathBuf>,
    backend: Option<Backend>,
}

impl TestAppBuilder {
    /// Changes the configuration the server starts with (applied in call order).
    pub fn config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Uses `dir` as the data directory (kept after the server stops, for a restart);
    /// by default each server gets a fresh one, removed with it.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Starts on a fresh database of `backend` (dropped with the app). Without it the
    /// server uses its default, a SQLite file in the data directory.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Starts the server; panics if it does not start.
    pub async fn spawn(self) -> TestApp {
        init_tracing();
        let TestAppBuilder {
            mut config,
            data_dir,
            backend,
        } = self;
        let dir = match data_dir {
            Some(path) => DataDir::Given(path),
            None => DataDir::Own(TempDir::new("tandem-test")),
        };
        let path = match &dir {
            DataDir::Own(t) => t.path().to_path_buf(),
            DataDir::Given(p) => p.clone(),
        };
        config.data_dir = path.clone();
        let db = match backend {
            Some(b) => Some(TestDb::fresh(b, &path).await),
            None => None,
        };
        if let Some(db) = &db {
            config.database_url = db.url().to_string();
        }
        let running = tandem::start(config).await.expect("tandem starts");
        let base = running.base_url();
        TestApp {
            ws_base: base.replacen("http://", "ws://", 1),
            base,
            media_port: running.media_port,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
            running: Some(running),
            db,
            dir,
        }
    }
}

/// A running server for one test. Dropping it stops nothing cleanly: call
/// [`shutdown`](Self::shutdown) (a failed test still drops its database and data dir).
pub struct TestApp {
    pub running: Option<tandem::Running>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `ws://127.0.0.1:PORT`
    pub ws_base: String,
    pub media_port: u16,
    pub http: reqwest::Client,
    // Dropped after `running`: the database, then the directory it may live in.
    db: Option<TestDb>,
    dir: DataDir,
}

/// Starts a server with the test defaults ([`TestApp::builder`]).
pub async fn spawn_app() -> TestApp {
    TestApp::builder().spawn().await
}

impl TestApp {
    /// The configuration tandem loads from its defaults (`config/default.toml`),
    /// on free loopback ports, without demo links.
    pub fn builder() -> TestAppBuilder {
        let mut config = Config::load_with_env(None, Vec::<(String, String)>::new())
            .expect("the default configuration loads");
        config.http_addr = "127.0.0.1:0".parse().unwrap();
        config.media_port = 0;
        config.demo = false;
        TestAppBuilder {
            config,
            data_dir: None,
            backend: None,
        }
    }

    pub fn state(&self) -> &tandem::AppState {
        &self.running.as_ref().expect("app is running").state
    }

    pub fn data_dir(&self) -> &Path {
        match &self.dir {
            DataDir::Own(t) => t.path(),
            DataDir::Given(p) => p,
        }
    }

    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.state().db.pool
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn whip_url(&self, stream: &str) -> String {
        self.url(&format!("/v1/whip/{stream}"))
    }

    pub fn whep_url(&self, stream: &str) -> String {
        self.url(&format!("/v1/whep/{stream}"))
    }

    /// The WebSocket URL of `room` with `token`.
    pub fn ws_url(&self, room: &str, token: &str) -> String {
        format!("{}/v1/rooms/{room}/ws?token={token}", self.ws_base)
    }

    /// A media token from the server's own key.
    pub fn token(&self, stream: &str, grants: Grants) -> String {
        self.token_for(TokenRequest {
            user: "test-user".into(),
            stream: Some(stream.into()),
            grants,
            ttl_secs: 3600,
            ..Default::default()
        })
    }

    pub fn token_for(&self, req: TokenRequest) -> String {
        self.state().tokens.mint(&req).0
    }

    pub fn publish_token(&self, stream: &str) -> String {
        self.token(
            stream,
            Grants {
                publish: true,
                ..Default::default()
            },
        )
    }

    pub fn subscribe_token(&self, stream: &str) -> String {
        self.token(
            stream,
            Grants {
                subscribe: true,
                ..Default::default()
            },
        )
    }

    /// A room token for `user` (named "`user` name") with chat, and moderation if asked.
    pub fn room_token(&self, room: &str, user: &str, moderate: bool) -> String {
        self.token_for(TokenRequest {
            user: user.into(),
            room: Some(room.into()),
            grants: Grants {
                chat: true,
                moderate,
                ..Default::default()
            },
            name: Some(format!("{user} name")),
            ttl_secs: 3600,
            ..Default::default()
        })
    }

    /// Live WebRTC sessions (publishers + viewers) in the SFU.
    pub fn session_count(&self) -> usize {
        self.state().sfu.session_count()
    }

    /// `/metrics` over HTTP.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The metrics text straight from the registry, without a request.
    pub fn registry_metrics(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.state().registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// Sum of every sample of `name` whose labels include `labels` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Waits until the SFU has `n` sessions.
    pub async fn wait_sessions(&self, n: usize, within: Duration) {
        eventually(&format!("session count == {n}"), within, || async {
            let c = self.session_count();
            if c == n { Ok(()) } else { Err(format!("{c}")) }
        })
        .await;
    }

    /// Stops the server, then closes its pool and drops its database.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            let pool = running.state.db.pool.clone();
            running.shutdown().await;
            pool.close().await;
        }
        if let Some(db) = self.db.take() {
            db.drop_now().await;
        }
    }
}
