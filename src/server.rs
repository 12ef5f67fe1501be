//! The router and the server's lifecycle: build the [`AppState`], start on
//! given addresses, serve, and shut down gracefully (sessions closed as by
//! DELETE). The top of the crate: it imports the routes, nothing imports it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::Registry;
use tandem_media::Sfu;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{IdentityVerifier, MediaTokens};
use crate::config::Config;
use crate::metrics::HttpMetrics;
use crate::state::{AppState, READY_CACHE, Readiness};
use crate::storage::Db;

/// Every route, with and without the `/.proxy` prefix (Discord Activity URL mapping).
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(crate::whip::routes())
        .merge(crate::whep_ext::routes())
        .merge(crate::rooms::routes())
        .merge(crate::api::routes())
        .merge(crate::platforms::routes())
        .merge(crate::discord::guild::routes())
        .merge(crate::cluster::nodes::routes())
        .merge(crate::api::not_built::routes())
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
        // Every error below (axum's rejections, 404, 405) leaves as JSON.
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        // Outermost, so it counts the status the client gets. `Router::layer`
        // wraps each route, which is what lets it read the matched route template.
        .layer(axum::middleware::from_fn_with_state(
            crate::metrics::RequestMetrics::register(&state.registry),
            crate::metrics::track_requests,
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

/// `GET /readyz`: 200 `ready` when the database takes writes and the SFU runs;
/// otherwise 503 `not_ready` with the failing checks.
async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let verdict = {
        let mut cached = state.ready.lock().await;
        match *cached {
            Some((at, r)) if at.elapsed() < READY_CACHE => r,
            _ => {
                let r = Readiness {
                    database: state.db.health().await,
                    media: state.sfu.is_running(),
                    redis: state.cluster.redis_ok(),
                };
                *cached = Some((std::time::Instant::now(), r));
                r
            }
        }
    };
    use crate::storage::Health;
    let redis_ok = verdict.redis != Some(false);
    if verdict.database == Health::Ok && verdict.media && redis_ok {
        return "ready".into_response();
    }
    let message = match verdict.database {
        Health::Ok if !verdict.media => "the media engine is not running".to_string(),
        Health::Ok => "Redis (cluster.redis_url) does not answer: this node cannot reach the \
                       cluster; it retries every heartbeat"
            .into(),
        Health::Unreachable => "the database does not answer; the server log has details".into(),
        Health::ReadOnly => "the database answers but does not accept writes (read-only \
                             mount or permissions, full disk, or a read-only replica); \
                             the server log has details"
            .into(),
    };
    let mut err = crate::error::AppError::unavailable(message).with(
        "checks",
        serde_json::json!({
            "database": verdict.database.as_str(),
            "media": if verdict.media { "ok" } else { "stopped" },
            "redis": match verdict.redis {
                None => "not_configured",
                Some(true) => "ok",
                Some(false) => "unreachable",
            },
        }),
    );
    err.code = "not_ready";
    err.into_response()
}

/// A started server. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub http_addr: SocketAddr,
    pub media_port: u16,
    pub state: AppState,
    stop: watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
    jobs: crate::api::jobs::JobsHandle,
    discord: crate::discord::guild::GuildWorker,
    heartbeat: crate::cluster::nodes::Heartbeat,
    /// Several nodes: what other nodes send this node's rooms.
    subscriber: Option<tokio::task::JoinHandle<()>>,
    edges: crate::cluster::edge::Reconciler,
    recorder: crate::whip::SessionRecorder,
}

impl Running {
    /// Stops accepting requests, closes every media session, and waits for both.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.jobs.stop().await;
        self.discord.stop().await;
        // Out of the registry first: the other nodes stop sending here.
        self.heartbeat.stop(&self.state).await;
        // Pulls from other nodes' streams end (their origins' sessions DELETEd).
        self.edges.stop(&self.state).await;
        let grace = Duration::from_secs(self.state.config.shutdown_grace_seconds.max(1));
        self.state.rooms.shutdown(grace).await;
        if let Some(s) = self.subscriber {
            s.abort();
        }
        // Restream children are killed (and waited for) before the media stops.
        if tokio::time::timeout(grace, self.state.restreams.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("restream processes still stopping after the grace period");
        }
        // Recordings end cleanly (last fragment, ENDLIST) before their publishers go.
        if tokio::time::timeout(grace, self.state.recordings.finish_all())
            .await
            .is_err()
        {
            tracing::warn!(
                "recordings still finishing after the grace period; the next start repairs them"
            );
        }
        self.state.sfu.shutdown(grace).await;
        // Sessions closed by the shutdown are recorded as ended before we return.
        self.recorder.flush().await;
        if tokio::time::timeout(grace, self.served).await.is_err() {
            tracing::warn!("HTTP connections still open after the grace period; leaving them");
        }
    }

    /// `http://ADDR`, or `https://ADDR` when the listener serves TLS.
    pub fn base_url(&self) -> String {
        let scheme = if self.state.config.http.tls_enabled() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http_addr)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Db(#[from] crate::storage::DbError),
    #[error(
        "database {location} does not accept writes: {reason}. tandem writes there: \
         mount it read-write and check its owner and permissions (and free space)"
    )]
    ReadOnlyDatabase { location: String, reason: String },
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
    #[error("HTTPS: {0}")]
    Tls(String),
    #[error("cluster: {0}")]
    Cluster(String),
}

/// A node id when `cluster.node_id` is empty: the host name and the HTTP port
/// (unique on one machine, readable in `GET /v1/cluster/nodes`).
fn default_node_id(http_addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", http_addr.port())
}

/// Opens the database, binds HTTP and media, and serves until [`Running::shutdown`].
pub async fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    // First: a bad certificate or key is a start-up error naming the file, before
    // anything else (database, media port) was opened.
    let tls = crate::serve::load_tls(&config.http).map_err(StartError::Tls)?;
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
    let keyring =
        crate::secrets::Keyring::from_config(&config).map_err(|source| StartError::DataDir {
            dir: config.data_dir.display().to_string(),
            source,
        })?;
    let db = Db::connect(&config.database_url(), config.database_pool_size).await?;
    // A database that opens but cannot write (read-only mount, immutable file,
    // replica) would serve reads and fail every write: refuse to start instead.
    if let Err(err) = db.write_probe().await {
        return Err(StartError::ReadOnlyDatabase {
            location: crate::storage::location(&config.database_url()),
            reason: err.to_string(),
        });
    }
    tracing::info!(
        database = %crate::storage::redact_url(&config.database_url()),
        "database ready"
    );

    // Sessions the previous process left open (it died, or their ends were never
    // written) are ended before this node runs any.
    match crate::storage::end_open_sessions(&db, crate::clock::now_ms()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(ended = n, "ended media session records left open"),
        Err(err) => tracing::warn!(error = %err, "ending media session records left open"),
    }
    let registry = Registry::new();
    HttpMetrics::register(&registry)?;
    let conn_metrics = crate::serve::ConnMetrics::register(&registry)?;
    let limits = crate::serve::Limits::resolve(&config.http);
    let recorder = crate::whip::SessionRecorder::spawn(db.clone());
    let sfu = Sfu::start(config.media_config(), &registry, Arc::new(recorder.clone())).await?;
    let recordings = crate::recording::live::Recordings::new(
        config.clone(),
        sfu.clone(),
        db.clone(),
        &registry,
    )?;
    let restreams = crate::restream::Restreams::new(sfu.clone(), &config, &registry);
    // Recordings a killed process left open are finished before anything is served.
    recordings.repair_all().await;

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
    let (discord, discord_jobs) = crate::discord::queue::Guilds::new(&config);
    let cluster = crate::cluster::registry::Cluster::from_config(
        &config.cluster,
        &default_node_id(http_addr),
        &public_url,
    )
    .map_err(StartError::Cluster)?;
    // Several nodes: rooms spread over the nodes through the broker on the
    // cluster's Redis; one node: every room is local.
    let broker: Option<Arc<crate::cluster::broker::RedisBroker>> = match cluster.redis() {
        Some((conn, _, prefix)) => Some(crate::cluster::broker::RedisBroker::start(
            conn,
            prefix,
            cluster.node_id().to_string(),
            config.cluster.room_lease_ms,
            &registry,
        )?),
        None => None,
    };
    let rooms = crate::rooms::build(
        &config,
        &db,
        &registry,
        match &broker {
            Some(b) => b.clone(),
            None => Arc::new(tandem_signaling::InProcessBroker),
        },
    )?;
    let subscriber = match (&broker, cluster.redis()) {
        (Some(b), Some((_, client, _))) => Some(b.subscribe(client, rooms.clone())),
        _ => None,
    };
    let pulls = crate::cluster::pulls::Pulls::new(&registry)?;
    let state = AppState {
        identity: IdentityVerifier::new(&config.jwt_secret),
        config: config.clone(),
        sfu: sfu.clone(),
        tokens,
        db,
        registry,
        rooms,
        public_url,
        recordings,
        restreams,
        ready: Arc::default(),
        whep_events: crate::whep_events::SseHub::default(),
        keyring,
        discord,
        cluster,
        pulls,
    };
    let (stop, stopped) = watch::channel(false);
    let router = app(state.clone());
    let jobs = crate::api::jobs::spawn(&state);
    let discord = crate::discord::guild::spawn(&state, discord_jobs);
    let heartbeat = crate::cluster::nodes::spawn(&state);
    let edges = crate::cluster::edge::spawn(&state);
    // Classes still live when the process stopped push to their destinations
    // again (beside serving: resolving a destination may call its platform).
    let resumed = state.clone();
    tokio::spawn(async move { crate::api::destinations::resume_all(&resumed).await });
    let served = tokio::spawn(crate::serve::serve(
        listener,
        router,
        limits,
        tls,
        conn_metrics,
        stopped,
    ));
    tracing::info!(http = %http_addr, media_port = sfu.local_port(), "tandem listening");
    Ok(Running {
        http_addr,
        media_port: sfu.local_port(),
        state,
        stop,
        served,
        jobs,
        discord,
        heartbeat,
        subscriber,
        edges,
        recorder,
    })
}
