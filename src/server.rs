//! The server's shared state, its router and its lifecycle: start on given
//! addresses, serve, and shut down gracefully (sessions closed as by DELETE).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use axum::serve::ListenerExt;
use prometheus::Registry;
use tandem_media::{MediaConfig, Sfu};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{IdentityVerifier, MediaTokens};
use crate::config::Config;
use crate::metrics::HttpMetrics;
use crate::storage::Db;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub sfu: Sfu,
    pub tokens: MediaTokens,
    pub identity: IdentityVerifier,
    pub db: Db,
    pub registry: Registry,
    /// Watch Together rooms (tandem-signaling).
    pub rooms: tandem_signaling::Rooms,
    /// Base URL clients reach this server at (links, `whep_url`).
    pub public_url: Arc<str>,
}

/// Every route, with and without the `/.proxy` prefix (Discord Activity URL mapping).
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(crate::whip::routes())
        .merge(crate::rooms::routes())
        .merge(crate::api::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::metrics_handler));
    let api = api.merge(crate::pages::routes());
    Router::new()
        .nest("/.proxy", api.clone())
        .merge(api)
        .layer(cors_layer(&state.config))
        // Outside CORS, which answers every OPTIONS itself: WHIP/WHEP clients read
        // Accept-Post, Accept-Patch and the ICE servers from those answers.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::whip::options_headers,
        ))
        .with_state(state)
}

fn cors_layer(config: &Config) -> CorsLayer {
    let origins = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::ETAG,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            HeaderName::from_static("accept-post"),
            HeaderName::from_static("accept-patch"),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, &'static str) {
    if state.db.ping().await && state.sfu.is_running() {
        (axum::http::StatusCode::OK, "ready")
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// A started server. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub http_addr: SocketAddr,
    pub media_port: u16,
    pub state: AppState,
    stop: watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
    jobs: crate::api::jobs::JobsHandle,
    recorder: crate::whip::SessionRecorder,
}

impl Running {
    /// Stops accepting requests, closes every media session, and waits for both.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.jobs.stop().await;
        let grace = Duration::from_secs(self.state.config.shutdown_grace_seconds.max(1));
        self.state.rooms.shutdown(grace).await;
        self.state.sfu.shutdown(grace).await;
        // Sessions closed by the shutdown are recorded as ended before we return.
        self.recorder.flush().await;
        if tokio::time::timeout(grace, self.served).await.is_err() {
            tracing::warn!("HTTP connections still open after the grace period; leaving them");
        }
    }

    /// Waits until the HTTP server ends (after [`Running::shutdown`] from another task).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Db(#[from] crate::storage::DbError),
    #[error(
        "cannot bind HTTP address {addr}: {source} (is another server running? set TANDEM_HTTP_ADDR)"
    )]
    HttpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("media: {0}")]
    Media(#[from] tandem_media::MediaError),
    #[error("data directory {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Opens the database, binds HTTP and media, and serves until [`Running::shutdown`].
pub async fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    let tokens = MediaTokens::from_config(&config.media_token_secret, &config.data_dir).map_err(
        |source| StartError::DataDir {
            dir: config.data_dir.display().to_string(),
            source,
        },
    )?;
    let db = Db::connect(&config.database_url(), config.database_pool_size).await?;
    tracing::info!(
        database = %crate::storage::redact_url(&config.database_url()),
        "database ready"
    );

    // Sessions the previous process left open (it died, or their ends were never
    // written) are ended before this node runs any.
    match crate::storage::end_open_sessions(&db, crate::whip::now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(ended = n, "ended media session records left open"),
        Err(err) => tracing::warn!(error = %err, "ending media session records left open"),
    }
    let registry = Registry::new();
    HttpMetrics::register(&registry)?;
    let recorder = crate::whip::SessionRecorder::spawn(db.clone());
    let sfu = Sfu::start(media_config(&config), &registry, Arc::new(recorder.clone())).await?;
    let rooms = crate::rooms::build(&config, &db, &registry)?;

    let listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| StartError::HttpBind {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = listener
        .local_addr()
        .map_err(|source| StartError::HttpBind {
            addr: config.http_addr,
            source,
        })?;
    let public_url: Arc<str> = config.public_url(http_addr).into();
    let state = AppState {
        identity: IdentityVerifier::new(&config.jwt_secret),
        config: config.clone(),
        sfu: sfu.clone(),
        tokens,
        db,
        registry,
        rooms,
        public_url,
    };
    let (stop, mut stopped) = watch::channel(false);
    let router = app(state.clone());
    let jobs = crate::api::jobs::spawn(&state);
    let served = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        // `into_make_service` builds the route table once; serving the `Router` itself
        // rebuilds it for every accepted connection (about 2.5 KiB held per connection,
        // which idle WebSockets keep for hours).
        // No Nagle: a room writes each member one small frame at a time, and a frame
        // sent while the client's delayed ACK of the previous one is outstanding would
        // wait for it (up to 40 ms on Linux): sync messages must leave at once.
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "TCP_NODELAY on an accepted connection");
            }
        });
        if let Err(err) = axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %err, "HTTP server failed");
        }
    });
    tracing::info!(http = %http_addr, media_port = sfu.local_port(), "tandem listening");
    Ok(Running {
        http_addr,
        media_port: sfu.local_port(),
        state,
        stop,
        served,
        jobs,
        recorder,
    })
}

fn media_config(config: &Config) -> MediaConfig {
    MediaConfig {
        bind: config.media_bind,
        port: config.media_port,
        advertised_ips: config.advertised_ips(),
        workers: config.media.workers,
        max_sessions: config.media.max_sessions,
        max_viewers_per_stream: config.media.max_viewers_per_stream,
        max_sessions_per_token: config.media.max_sessions_per_token,
        max_sessions_per_user: config.media.max_sessions_per_user,
        publisher_reserve_percent: config.media.publisher_reserve_percent,
        ice_tcp: config.media.ice_tcp,
        worker_queue_packets: config.media.worker_queue_packets,
        pli_interval: Duration::from_millis(config.media.pli_interval_ms),
        idle_timeout: Duration::from_secs(config.media.idle_timeout_seconds),
        ice_start_timeout: Duration::from_millis(config.media.ice_start_timeout_ms),
        connect_timeout: Duration::from_secs(config.media.connect_timeout_seconds),
    }
}
