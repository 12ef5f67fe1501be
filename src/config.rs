//! Server configuration: embedded defaults, an optional file, `TANDEM_*` env vars.
//! Also the derived values (database URL, advertised addresses) every part reads.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The embedded defaults; `tandem` runs with no other configuration at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub public_url: String,
    pub media_port: u16,
    pub media_bind: IpAddr,
    pub public_ip: String,
    pub nat_1to1_ips: Vec<IpAddr>,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// PostgreSQL pool size (SQLite keeps its own).
    pub database_pool_size: u32,
    pub jwt_secret: String,
    pub service_key: String,
    pub media_token_secret: String,
    pub demo: bool,
    pub cors_origins: Vec<String>,
    pub shutdown_grace_seconds: u64,
    /// HTTP connections: caps and timeouts (src/serve.rs).
    #[serde(default)]
    pub http: HttpSection,
    pub media: MediaSection,
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    /// Watch Together rooms: limits, timings, chat policy (tandem-signaling).
    #[serde(default)]
    pub rooms: tandem_signaling::RoomsConfig,
    /// Business APIs and their jobs (src/api).
    pub api: ApiConfig,
    /// Recording and replay (src/recording, docs/RECORDING.md).
    pub recording: RecordingConfig,
    /// Encryption keys of secrets at rest (src/secrets.rs).
    pub secrets: SecretsConfig,
    /// Platform fan-out and meetings: OAuth apps and provider URLs (src/platforms).
    pub platforms: PlatformsConfig,
    /// Restreaming live streams to RTMP(S) destinations (src/restream, docs/RESTREAM.md).
    #[serde(default)]
    pub restream: RestreamConfig,
    /// Discord Activity sign-in (src/api/discord.rs, docs/DISCORD.md).
    #[serde(default)]
    pub discord: DiscordConfig,
    /// Several nodes (src/cluster, docs/CLUSTER.md); unset: one node, no Redis.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MediaSection {
    pub workers: usize,
    pub max_sessions: usize,
    pub max_viewers_per_stream: usize,
    pub max_sessions_per_token: usize,
    pub max_sessions_per_user: usize,
    pub publisher_reserve_percent: usize,
    pub ice_tcp: bool,
    pub worker_queue_packets: usize,
    pub pli_interval_ms: u64,
    pub idle_timeout_seconds: u64,
    pub ice_start_timeout_ms: u64,
    pub connect_timeout_seconds: u64,
    pub max_sdp_bytes: usize,
}

/// `[http]`: what one client, and all of them, may hold of the HTTP listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HttpSection {
    /// Most open HTTP connections (WebSockets included). 0: derived from the
    /// descriptor limit ([`HttpSection::connection_cap`]).
    pub max_connections: usize,
    /// Most open connections from one client address. 0: no per-address cap.
    pub max_connections_per_ip: usize,
    /// A request's header must arrive within this (and, on HTTP/1, the next
    /// request's header after a keep-alive response).
    pub header_timeout_ms: u64,
    /// A connection that moves no byte either way for this long is closed
    /// (WebSockets excepted: their rooms keep their own deadlines).
    pub idle_timeout_ms: u64,
    // --- TLS (issue 13, src/serve.rs): HTTPS only when both are set. ---
    /// PEM certificate chain (leaf first). Empty: plain HTTP.
    pub tls_cert: String,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1). Empty: plain HTTP.
    pub tls_key: String,
}

impl Default for HttpSection {
    /// The values of config/default.toml.
    fn default() -> Self {
        Self {
            max_connections: 0,
            max_connections_per_ip: 2000,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

impl HttpSection {
    /// Both TLS files are set: the listener speaks HTTPS only.
    pub fn tls_enabled(&self) -> bool {
        !self.tls_cert.is_empty() && !self.tls_key.is_empty()
    }

    /// The global cap for a process allowed `nofile` descriptors: the configured
    /// one, never more than `nofile` less a reserve (an eighth, at least 256) for
    /// the database, media sockets, files and the listener itself.
    pub fn connection_cap(&self, nofile: u64) -> usize {
        let reserve = (nofile / 8).max(256);
        let safe = nofile.saturating_sub(reserve).max(16) as usize;
        match self.max_connections {
            0 => safe,
            n => n.min(safe),
        }
    }

    /// The per-address cap under a global cap of `total`: the configured one, at
    /// most half the global cap, so one address never holds every slot. None: no cap.
    pub fn per_ip_cap(&self, total: usize) -> Option<usize> {
        match self.max_connections_per_ip {
            0 => None,
            n => Some(n.min((total / 2).max(1))),
        }
    }
}

/// The `[api]` section of the configuration (see config/default.toml).
#[derive(Debug, Clone, Deserialize)]
pub struct ApiConfig {
    pub whip_starts_stream: bool,
    pub default_replay_days: i64,
    pub media_token_ttl_seconds: u64,
    pub catalog_migration_days: i64,
    pub catalog_webhook_url: String,
    pub jobs_enabled: bool,
    pub replay_expiry_interval_seconds: u64,
    pub catalog_interval_seconds: u64,
    pub prune_interval_seconds: u64,
    pub viewer_sample_interval_seconds: u64,
    pub idempotency_keep_hours: i64,
    pub catalog_backoff_base_seconds: u64,
    pub catalog_backoff_max_seconds: u64,
    pub catalog_lease_seconds: u64,
    pub catalog_timeout_seconds: u64,
}

/// The `[recording]` section of the configuration (see config/default.toml).
#[derive(Debug, Clone, Deserialize)]
pub struct RecordingConfig {
    /// Record streams at all; the default of a business stream's `record` field.
    pub enabled: bool,
    /// Also record streams that are not business streams (the demo stream,
    /// streams published with operator tokens).
    pub other_streams: bool,
    /// Days those other recordings are kept.
    pub keep_days: i64,
    /// Where recordings live; relative paths are under the data directory.
    pub root: PathBuf,
    /// The ffmpeg that renders thumbnails (empty: thumbnails are off).
    pub ffmpeg: String,
    /// Seconds between thumbnail refreshes while live.
    pub thumbnail_interval_seconds: u64,
    /// Packets queued between the SFU and a recorder; past it the recorder drops
    /// to the next key frame (the SFU never waits).
    pub queue_packets: usize,
}

/// `[secrets]`: the keyring of secrets at rest (src/secrets.rs). Debug prints key ids only.
#[derive(Clone, Deserialize)]
pub struct SecretsConfig {
    /// `"id:base64-of-32-bytes"` entries.
    pub keys: Vec<String>,
    /// The id new values are sealed with (empty: the only key, or the generated one).
    pub active_key: String,
}

impl std::fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.split(':').next().unwrap_or(""))
            .collect();
        f.debug_struct("SecretsConfig")
            .field("key_ids", &ids)
            .field("active_key", &self.active_key)
            .finish()
    }
}

/// `[platforms.*]`: each provider's app credentials and URLs (src/platforms).
#[derive(Debug, Clone, Deserialize)]
pub struct PlatformsConfig {
    pub youtube: OAuthProvider,
    pub twitch: OAuthProvider,
    pub facebook: OAuthProvider,
    pub zoom: ZoomConfig,
    pub teams: TeamsConfig,
    pub jitsi: JitsiConfig,
}

/// An OAuth 2.0 provider of restream destinations (YouTube, Twitch, Facebook).
#[derive(Clone, Deserialize)]
pub struct OAuthProvider {
    pub client_id: String,
    pub client_secret: String,
    pub auth_url: String,
    pub token_url: String,
    pub api_base_url: String,
    /// Where streams are pushed (Twitch); empty where the API hands out the URL.
    #[serde(default)]
    pub ingest_url: String,
}

/// `[platforms.zoom]`: a Server-to-Server OAuth app.
#[derive(Clone, Deserialize)]
pub struct ZoomConfig {
    pub account_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub token_url: String,
    pub api_base_url: String,
}

/// `[platforms.teams]`: a Microsoft Entra app with `OnlineMeetings.ReadWrite.All`.
#[derive(Clone, Deserialize)]
pub struct TeamsConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// `{tenant}` is replaced with `tenant_id`.
    pub token_url: String,
    pub api_base_url: String,
    pub organizer_user_id: String,
}

/// `[platforms.jitsi]`: a self-hosted Jitsi Meet with JWT token auth.
#[derive(Clone, Deserialize)]
pub struct JitsiConfig {
    pub base_url: String,
    pub app_id: String,
    pub app_secret: String,
}

/// Debug of a provider section without its secret.
macro_rules! redacted_debug {
    ($ty:ty, $secret:ident, [$($field:ident),*]) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))*
                    .field(stringify!($secret), &if self.$secret.is_empty() { "" } else { "<secret>" })
                    .finish()
            }
        }
    };
}
redacted_debug!(
    OAuthProvider,
    client_secret,
    [client_id, auth_url, token_url, api_base_url, ingest_url]
);
redacted_debug!(
    ZoomConfig,
    client_secret,
    [account_id, client_id, token_url, api_base_url]
);
redacted_debug!(
    TeamsConfig,
    client_secret,
    [
        tenant_id,
        client_id,
        token_url,
        api_base_url,
        organizer_user_id
    ]
);
redacted_debug!(JitsiConfig, app_secret, [base_url, app_id]);

/// `[cluster]`: several nodes over Redis (src/cluster). An empty `redis_url`
/// is one node exactly as without it.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// `redis://host:port/db` (or `rediss://`); may hold a password, never printed.
    pub redis_url: String,
    /// This node's id; empty: the host name and the HTTP port.
    pub node_id: String,
    /// How the other nodes reach this node's HTTP; empty: `public_url`.
    pub advertise_url: String,
    /// Prefix of every Redis key (one per cluster sharing a Redis; tests use a fresh one).
    pub key_prefix: String,
    /// How often this node writes its record.
    pub heartbeat_ms: u64,
    /// A node whose record is this old without a heartbeat is gone.
    pub node_ttl_ms: u64,
    /// A room's lease (its owner renews it every third of this): how long a room
    /// whose node died waits before another node takes it over.
    pub room_lease_ms: u64,
    /// WHEP for a stream published to another node: answer 307 to the origin's
    /// WHEP endpoint instead of pulling the stream here (docs/CLUSTER.md).
    pub media_redirect: bool,
    /// How long an edge keeps pulling a stream after its last local viewer left.
    pub edge_linger_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            node_id: String::new(),
            advertise_url: String::new(),
            key_prefix: "tandem:".into(),
            heartbeat_ms: 1000,
            node_ttl_ms: 5000,
            room_lease_ms: 3000,
            media_redirect: false,
            edge_linger_ms: 5000,
        }
    }
}

impl ClusterConfig {
    /// `redis_url` with its user and password hidden, for logs and errors.
    pub fn redis_url_redacted(&self) -> String {
        crate::text::redact_url(&self.redis_url)
    }
}

/// The Redis URL may carry a password: shown redacted.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &self.redis_url_redacted())
            .field("node_id", &self.node_id)
            .field("advertise_url", &self.advertise_url)
            .field("key_prefix", &self.key_prefix)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("node_ttl_ms", &self.node_ttl_ms)
            .field("media_redirect", &self.media_redirect)
            .field("edge_linger_ms", &self.edge_linger_ms)
            .finish()
    }
}

/// `[discord]`: the Discord application behind the Activity (src/api/discord.rs).
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct DiscordConfig {
    /// Discord's API (a stand-in in tests).
    pub api_base_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// With a bot token, `POST /v1/discord/token` checks instance membership.
    pub bot_token: String,
    /// Sent with the code exchange when set (Activities need none).
    pub redirect_uri: String,
    /// Discord's OAuth2 authorize page for account linking (`GET
    /// /v1/discord/link`): on discord.com, not under the API's base.
    pub authorize_url: String,
    /// Course servers (src/discord/guild.rs): how often the reconcile job repairs
    /// drift between enrollments and guild roles. 0: never.
    pub reconcile_interval_seconds: u64,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        DiscordConfig {
            api_base_url: "https://discord.com/api".into(),
            client_id: String::new(),
            client_secret: String::new(),
            bot_token: String::new(),
            redirect_uri: String::new(),
            authorize_url: "https://discord.com/oauth2/authorize".into(),
            reconcile_interval_seconds: 86_400,
        }
    }
}

/// Two secrets, so not [`redacted_debug!`]: neither is ever printed.
impl std::fmt::Debug for DiscordConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |s: &str| if s.is_empty() { "" } else { "<secret>" };
        f.debug_struct("DiscordConfig")
            .field("api_base_url", &self.api_base_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &hide(&self.client_secret))
            .field("bot_token", &hide(&self.bot_token))
            .field("redirect_uri", &self.redirect_uri)
            .field("authorize_url", &self.authorize_url)
            .field(
                "reconcile_interval_seconds",
                &self.reconcile_interval_seconds,
            )
            .finish()
    }
}

/// The `[restream]` section of the configuration (see config/default.toml).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RestreamConfig {
    /// Restream at all; false: every destination is `failed` with a message.
    pub enabled: bool,
    /// The ffmpeg each destination runs.
    pub ffmpeg: String,
    /// No progress from a destination's ffmpeg for this long: killed and restarted.
    pub stall_seconds: u64,
    /// Backoff between restarts: full jitter under a cap that doubles from
    /// `backoff_min_ms` to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Video bitrate when transcoding (VP8/VP9/AV1 → H.264), kbit/s.
    pub transcode_bitrate_kbps: u32,
    /// AAC bitrate (Opus is always transcoded), kbit/s.
    pub audio_bitrate_kbps: u32,
    /// Key-frame interval of transcoded video (YouTube wants 2 s).
    pub keyframe_interval_seconds: u32,
    /// Destinations one stream may have (more are `failed`).
    pub max_destinations_per_stream: usize,
    /// ffmpeg processes this node runs at most (more are `failed`).
    pub max_processes: usize,
    /// Packets queued between the SFU and a stream's feed thread; past it the
    /// feed drops (the SFU never waits).
    pub queue_packets: usize,
}

impl Default for RestreamConfig {
    /// The values of config/default.toml.
    fn default() -> Self {
        Self {
            enabled: true,
            ffmpeg: "ffmpeg".into(),
            stall_seconds: 10,
            backoff_min_ms: 1000,
            backoff_max_ms: 60_000,
            transcode_bitrate_kbps: 3000,
            audio_bitrate_kbps: 128,
            keyframe_interval_seconds: 2,
            max_destinations_per_stream: 8,
            max_processes: 32,
            queue_packets: 2048,
        }
    }
}

impl Config {
    /// The folder recordings are written under.
    pub fn recording_root(&self) -> PathBuf {
        if self.recording.root.is_absolute() {
            self.recording.root.clone()
        } else {
            self.data_dir.join(&self.recording.root)
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
    /// A key (in a file) or a `TANDEM_*` variable that names no setting: a typo
    /// that would otherwise leave the server silently on its default.
    #[error("configuration: {0}")]
    Unknown(String),
}

/// `TANDEM_*` variables that are not configuration keys and are read by someone
/// else: the `--config` flag's variable, the test harness (Chromium path,
/// screenshots), scripts/soak.sh and the load generator. They pass the unknown-variable
/// check; any other `TANDEM_*` name must be a configuration key.
pub const NON_CONFIG_VARS: &[&str] = &[
    "TANDEM_CONFIG",
    "TANDEM_CHROMIUM",
    "TANDEM_SCREENSHOTS",
    "TANDEM_SOAK_LOG",
    "TANDEM_BIN",
    "TANDEM_PUBLISH_TOKEN",
    "TANDEM_SUBSCRIBE_TOKEN",
];
/// Prefixes of non-configuration variables (the load generator's `TANDEM_LOADTEST_*`).
pub const NON_CONFIG_PREFIXES: &[&str] = &["TANDEM_LOADTEST_"];

/// Whether `name` is a `TANDEM_*` variable meant for the configuration.
fn is_config_var(name: &str) -> bool {
    name.starts_with("TANDEM_")
        && !NON_CONFIG_VARS.contains(&name)
        && !NON_CONFIG_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The environment variable of a dotted key: `media.max_sessions` → `TANDEM_MEDIA__MAX_SESSIONS`.
pub fn env_name(key: &str) -> String {
    format!("TANDEM_{}", key.replace('.', "__").to_uppercase())
}

impl Config {
    /// What the SFU is started with: the `[media]` section and the media address.
    pub fn media_config(&self) -> tandem_media::MediaConfig {
        tandem_media::MediaConfig {
            bind: self.media_bind,
            port: self.media_port,
            advertised_ips: self.advertised_ips(),
            workers: self.media.workers,
            max_sessions: self.media.max_sessions,
            max_viewers_per_stream: self.media.max_viewers_per_stream,
            max_sessions_per_token: self.media.max_sessions_per_token,
            max_sessions_per_user: self.media.max_sessions_per_user,
            publisher_reserve_percent: self.media.publisher_reserve_percent,
            ice_tcp: self.media.ice_tcp,
            worker_queue_packets: self.media.worker_queue_packets,
            pli_interval: Duration::from_millis(self.media.pli_interval_ms),
            idle_timeout: Duration::from_secs(self.media.idle_timeout_seconds),
            ice_start_timeout: Duration::from_millis(self.media.ice_start_timeout_ms),
            connect_timeout: Duration::from_secs(self.media.connect_timeout_seconds),
        }
    }

    /// Loads defaults, then `file` (if any), then `TANDEM_*` variables from the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment, so tests need not touch the process's.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults = || {
            config::Config::builder().add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
        };
        let env_map: config::Map<String, String> =
            env.into_iter().filter(|(k, _)| is_config_var(k)).collect();
        let env_source = config::Environment::with_prefix("TANDEM")
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("nat_1to1_ips")
            .with_list_parse_key("cors_origins")
            .with_list_parse_key("rooms.blocked_words")
            .with_list_parse_key("secrets.keys")
            .try_parsing(true)
            .source(Some(env_map));
        // Each source is checked for unknown keys on its own (over the defaults,
        // which fill every required key), so the message can say where a typo is.
        let known = known_keys();
        if let Some(path) = file {
            let with_file = defaults().add_source(config::File::from(path).required(true));
            if let Some(key) = unknown_keys(with_file)?.into_iter().next() {
                let hint = match nearest(&key, known.iter().map(String::as_str)) {
                    Some(k) => format!("; did you mean `{k}`?"),
                    None => "; config/default.toml lists every key".into(),
                };
                return Err(ConfigError::Unknown(format!(
                    "unknown key `{key}` in {}{hint}",
                    path.display()
                )));
            }
        }
        let with_env = defaults().add_source(env_source.clone());
        if let Some(key) = unknown_keys(with_env)?.into_iter().next() {
            let var = env_name(&key);
            // Compared without the common `TANDEM_` (it would make every name look close).
            let names: Vec<String> = known
                .iter()
                .map(|k| env_name(k)["TANDEM_".len()..].to_string())
                .collect();
            let hint = match nearest(&var["TANDEM_".len()..], names.iter().map(String::as_str)) {
                Some(k) => format!("; did you mean TANDEM_{k}?"),
                None => {
                    "; config/default.toml lists every key (TANDEM_<KEY>, TANDEM_<SECTION>__<KEY>)"
                        .into()
                }
            };
            return Err(ConfigError::Unknown(format!(
                "unknown variable {var}{hint}"
            )));
        }
        let mut builder = defaults();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let config: Config = builder.add_source(env_source).build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.media.max_sdp_bytes == 0 || self.media.worker_queue_packets == 0 {
            return Err(ConfigError::Invalid(
                "media.max_sdp_bytes and media.worker_queue_packets must be > 0".into(),
            ));
        }
        if self.media.publisher_reserve_percent > 50 {
            return Err(ConfigError::Invalid(format!(
                "media.publisher_reserve_percent is {}: at most 50 (percent of media.max_sessions kept for publishers)",
                self.media.publisher_reserve_percent
            )));
        }
        if self.media.ice_start_timeout_ms == 0 || self.media.connect_timeout_seconds == 0 {
            return Err(ConfigError::Invalid(
                "media.ice_start_timeout_ms and media.connect_timeout_seconds must be > 0".into(),
            ));
        }
        if !self.jwt_secret.is_empty() && self.jwt_secret == self.media_token_secret {
            return Err(ConfigError::Invalid(
                "jwt_secret and media_token_secret are the same: give tandem's media tokens a secret of their own \
                 (or leave media_token_secret empty to have one generated in data_dir)"
                    .into(),
            ));
        }
        if self.http.header_timeout_ms == 0 || self.http.idle_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "http.header_timeout_ms and http.idle_timeout_ms must be > 0".into(),
            ));
        }
        if self.http.tls_cert.is_empty() != self.http.tls_key.is_empty() {
            let (set, unset) = if self.http.tls_cert.is_empty() {
                ("http.tls_key", "http.tls_cert")
            } else {
                ("http.tls_cert", "http.tls_key")
            };
            return Err(ConfigError::Invalid(format!(
                "{set} is set but {unset} is not: HTTPS needs both (PEM files; \
                 TANDEM_HTTP__TLS_CERT and TANDEM_HTTP__TLS_KEY), or neither for plain HTTP"
            )));
        }
        if !self.public_ip.is_empty() {
            for ip in self.public_ip.split(',') {
                ip.trim().parse::<IpAddr>().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "public_ip: '{ip}' is not an IP address (use e.g. 203.0.113.7)"
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// The database URL, defaulting to a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("tandem.db").display()
            )
        } else {
            self.database_url.clone()
        }
    }

    /// The base URL printed in links and returned in `whip_url`/`whep_url` fields.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        if !self.public_url.is_empty() {
            return self.public_url.trim_end_matches('/').to_string();
        }
        let scheme = if self.http.tls_enabled() {
            "https"
        } else {
            "http"
        };
        let host = if bound.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            bound.ip().to_string()
        };
        match bound {
            SocketAddr::V6(_) if !bound.ip().is_unspecified() => {
                format!("{scheme}://[{host}]:{}", bound.port())
            }
            _ => format!("{scheme}://{host}:{}", bound.port()),
        }
    }

    /// Addresses to advertise as host candidates.
    pub fn advertised_ips(&self) -> Vec<IpAddr> {
        if !self.nat_1to1_ips.is_empty() {
            return self.nat_1to1_ips.clone();
        }
        if !self.public_ip.is_empty() {
            return self
                .public_ip
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect();
        }
        if !self.media_bind.is_unspecified() {
            return vec![self.media_bind];
        }
        if self.http_addr.ip().is_loopback() {
            return vec![IpAddr::from([127, 0, 0, 1])];
        }
        let found = local_interface_ips();
        if found.is_empty() {
            vec![IpAddr::from([127, 0, 0, 1])]
        } else {
            found
        }
    }
}

/// Dotted keys (`media.max_sessions`) that [`Config`] does not read in what
/// `builder` gives, as `serde_ignored` sees them while deserializing.
fn unknown_keys(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<Vec<String>, ConfigError> {
    let mut unknown = Vec::new();
    let built = builder.build()?;
    // Errors other than unknown keys (a bad value) are reported by the full load.
    let _ = serde_ignored::deserialize::<_, _, Config>(built, |path| {
        unknown.push(path.to_string());
    });
    Ok(unknown)
}

/// Every key and section of config/default.toml, dotted, plus the keys of
/// `[[ice_servers]]` entries (which the defaults leave out): what a typo is
/// compared with.
fn known_keys() -> Vec<String> {
    fn walk(prefix: &str, table: config::Map<String, config::Value>, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            if let config::ValueKind::Table(t) = value.kind {
                walk(&path, t, out);
            }
            out.push(path);
        }
    }
    let mut out = vec![
        "ice_servers".to_string(),
        "ice_servers.urls".into(),
        "ice_servers.username".into(),
        "ice_servers.credential".into(),
    ];
    if let Ok(table) = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(|c| c.try_deserialize::<config::Map<String, config::Value>>())
    {
        walk("", table, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// The candidate closest to `name` (edit distance, case-insensitive), if it is
/// close enough to be the likely intent.
fn nearest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_lowercase();
    let (best, distance) = candidates
        .map(|c| (c, strsim::levenshtein(&name, &c.to_lowercase())))
        .min_by_key(|(_, d)| *d)?;
    (distance <= (name.len() / 3).max(2)).then_some(best)
}

/// Non-loopback IPv4 addresses of this host, found by asking the kernel which
/// source address it would use for an outside destination (no packet is sent).
fn local_interface_ips() -> Vec<IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(addr) if !addr.ip().is_unspecified() && !addr.ip().is_loopback() => vec![addr.ip()],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_defaults_load() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(c.media_port, 8443);
        assert!(c.database_url().starts_with("sqlite://"));
        assert_eq!(c.database_pool_size, 16);
        assert_eq!(c.advertised_ips(), vec![IpAddr::from([127, 0, 0, 1])]);
    }

    /// config/default.toml is the one source of defaults: every section that
    /// also has a `Default` impl (here, in tandem-media, in tandem-signaling)
    /// must say the same, or a library user and a server user get different
    /// servers.
    #[test]
    fn every_default_impl_agrees_with_default_toml() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.http, HttpSection::default(), "[http]");
        assert_eq!(c.rooms, tandem_signaling::RoomsConfig::default(), "[rooms]");
        assert_eq!(c.restream, RestreamConfig::default(), "[restream]");
        // [media]: all of MediaConfig but where it binds and what it advertises,
        // which the library defaults to loopback and a free port for tests.
        let d = tandem_media::MediaConfig::default();
        let from_toml = tandem_media::MediaConfig {
            bind: d.bind,
            port: d.port,
            advertised_ips: d.advertised_ips.clone(),
            ..c.media_config()
        };
        assert_eq!(format!("{from_toml:?}"), format!("{d:?}"), "[media]");
        assert!(c.ice_servers.is_empty(), "[[ice_servers]]");
    }

    /// The field names of a `Debug`-printed struct of plain values.
    fn debug_fields(debug: &str) -> Vec<String> {
        let inner = &debug[debug.find('{').unwrap() + 1..debug.rfind('}').unwrap()];
        let (mut depth, mut fields, mut start) = (0, Vec::new(), 0);
        for (i, ch) in inner.char_indices() {
            match ch {
                '[' | '{' | '(' => depth += 1,
                ']' | '}' | ')' => depth -= 1,
                ',' if depth == 0 => {
                    fields.push(inner[start..i].to_string());
                    start = i + 1;
                }
                _ => {}
            }
        }
        fields.push(inner[start..].to_string());
        fields
            .iter()
            .filter_map(|f| f.split(':').next())
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect()
    }

    /// Sections whose struct fills missing keys from `Default` would load even
    /// with a key missing from default.toml: every key is there, documented.
    #[test]
    fn default_toml_lists_every_key_of_the_defaulted_sections() {
        let toml = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .build()
            .unwrap();
        for (section, fields) in [
            (
                "http",
                debug_fields(&format!("{:?}", HttpSection::default())),
            ),
            (
                "rooms",
                debug_fields(&format!("{:?}", tandem_signaling::RoomsConfig::default())),
            ),
        ] {
            let table = toml.get_table(section).unwrap();
            assert!(fields.len() > 3, "[{section}]: {fields:?}");
            for field in fields {
                assert!(
                    table.contains_key(&field),
                    "[{section}] {field} is missing from config/default.toml"
                );
            }
        }
    }

    /// Provider secrets and encryption keys stay out of `{config:?}`.
    #[test]
    fn debug_hides_platform_secrets_and_keys() {
        let mut c = Config::load_with_env(None, env(&[])).unwrap();
        c.platforms.youtube.client_secret = "yt-client-secret".into();
        c.platforms.zoom.client_secret = "zoom-client-secret".into();
        c.platforms.teams.client_secret = "teams-client-secret".into();
        c.platforms.jitsi.app_secret = "jitsi-app-secret".into();
        c.discord.client_secret = "discord-client-secret".into();
        c.discord.bot_token = "discord-bot-token".into();
        c.secrets.keys = vec!["k2:S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2U=".into()];
        let text = format!("{c:?}");
        for secret in ["client-secret", "app-secret", "bot-token", "S2V5S2V5"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("k2") && text.contains("<secret>"), "{text}");
    }

    #[test]
    fn one_secret_for_identities_and_media_tokens_is_refused() {
        let err = Config::load_with_env(
            None,
            env(&[
                ("TANDEM_JWT_SECRET", "same-secret"),
                ("TANDEM_MEDIA_TOKEN_SECRET", "same-secret"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("media_token_secret"), "{err}");
    }

    #[test]
    fn connection_caps_stay_below_the_descriptor_limit() {
        let h = HttpSection::default();
        assert_eq!(h.connection_cap(1024), 768);
        assert_eq!(h.connection_cap(65_536), 57_344);
        assert_eq!(h.per_ip_cap(768), Some(384));
        assert_eq!(h.per_ip_cap(57_344), Some(2000));
        let h = HttpSection {
            max_connections: 100_000,
            max_connections_per_ip: 0,
            ..h
        };
        assert_eq!(h.connection_cap(1024), 768, "clamped to the safe value");
        assert_eq!(h.connection_cap(1 << 20), 100_000);
        assert_eq!(h.per_ip_cap(100), None);
    }

    #[test]
    fn env_overrides_top_level_and_nested_keys() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("TANDEM_HTTP_ADDR", "0.0.0.0:9000"),
                ("TANDEM_MEDIA_PORT", "9443"),
                ("TANDEM_PUBLIC_IP", "203.0.113.7"),
                ("TANDEM_DATABASE_URL", "postgres://localhost/x"),
                ("TANDEM_DATABASE_POOL_SIZE", "48"),
                ("TANDEM_MEDIA__MAX_SESSIONS", "3"),
                ("TANDEM_NAT_1TO1_IPS", "198.51.100.1,198.51.100.2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.media_port, 9443);
        assert_eq!(c.media.max_sessions, 3);
        assert_eq!(c.database_url(), "postgres://localhost/x");
        assert_eq!(c.database_pool_size, 48);
        assert_eq!(c.advertised_ips().len(), 2);
    }

    #[test]
    fn publisher_reserve_above_half_is_refused() {
        let err = Config::load_with_env(
            None,
            env(&[("TANDEM_MEDIA__PUBLISHER_RESERVE_PERCENT", "80")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("publisher_reserve_percent"), "{err}");
    }

    fn load_err(file: Option<&Path>, pairs: &[(&str, &str)]) -> String {
        Config::load_with_env(file, env(pairs))
            .unwrap_err()
            .to_string()
    }

    /// Issue 13, item 10: a typo in a variable stops the load, naming the nearest key.
    #[test]
    fn unknown_variables_are_refused_with_the_nearest_name() {
        let err = load_err(None, &[("TANDEM_HTTP_ADR", "0.0.0.0:80")]);
        assert!(
            err.contains("unknown variable TANDEM_HTTP_ADR; did you mean TANDEM_HTTP_ADDR?"),
            "{err}"
        );
        let err = load_err(None, &[("TANDEM_ROOMS__GRACE_PERIOD", "5")]);
        assert!(
            err.contains("did you mean TANDEM_ROOMS__GRACE_PERIOD_MS?"),
            "{err}"
        );
        // A single underscore where a section needs two.
        let err = load_err(None, &[("TANDEM_MEDIA_WORKERS", "2")]);
        assert!(err.contains("did you mean TANDEM_MEDIA__WORKERS?"), "{err}");
        // Nothing close: no guess, but where the keys are listed.
        let err = load_err(None, &[("TANDEM_COMPLETELY_DIFFERENT_THING", "1")]);
        assert!(
            err.contains("unknown variable TANDEM_COMPLETELY_DIFFERENT_THING"),
            "{err}"
        );
        assert!(err.contains("default.toml"), "{err}");
    }

    /// Variables that other tools read pass; every key of default.toml loads as a variable.
    #[test]
    fn non_config_variables_and_every_real_key_pass() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("TANDEM_CHROMIUM", "/usr/bin/chromium"),
                ("TANDEM_CONFIG", "x.toml"),
                ("TANDEM_SCREENSHOTS", "/tmp/s"),
                ("TANDEM_LOADTEST_NETNS", "1"),
                ("TANDEM_SOAK_LOG", "info"),
                ("TANDEM_ROOMS__BLOCKED_WORDS", "a,b"),
                ("TANDEM_HTTP__IDLE_TIMEOUT_MS", "1000"),
                ("TANDEM_API__JOBS_ENABLED", "false"),
            ]),
        )
        .unwrap();
        assert!(!c.api.jobs_enabled);
        for key in known_keys() {
            assert!(
                !unknown_keys_of_env(&env_name(&key)),
                "{key} ({}) is refused",
                env_name(&key)
            );
        }
    }

    /// Whether `var` alone (with a harmless value) is reported unknown.
    fn unknown_keys_of_env(var: &str) -> bool {
        matches!(
            Config::load_with_env(None, env(&[(var, "1")])),
            Err(ConfigError::Unknown(_))
        )
    }

    fn write_toml(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tandem-config-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A typo in a file, in any section, stops the load naming the file and the key.
    #[test]
    fn unknown_file_keys_are_refused_with_the_nearest_name() {
        let path = write_toml("prod.toml", "http_adr = \"0.0.0.0:8080\"\n");
        let err = load_err(Some(&path), &[]);
        assert!(
            err.contains(&format!(
                "unknown key `http_adr` in {}; did you mean `http_addr`?",
                path.display()
            )),
            "{err}"
        );
        let path = write_toml("p.toml", "[rooms]\nmax_member_per_room = 5\n");
        let err = load_err(Some(&path), &[]);
        assert!(
            err.contains("unknown key `rooms.max_member_per_room`")
                && err.contains("did you mean `rooms.max_members_per_room`?"),
            "{err}"
        );
        let path = write_toml("p.toml", "[meda]\nworkers = 2\n");
        let err = load_err(Some(&path), &[]);
        assert!(
            err.contains("unknown key `meda`") && err.contains("`media`"),
            "{err}"
        );
        let path = write_toml(
            "p.toml",
            "[[ice_servers]]\nurls = [\"stun:x:3478\"]\nusername = \"u\"\ncredentail = \"c\"\n",
        );
        let err = load_err(Some(&path), &[]);
        assert!(err.contains("credentail"), "{err}");
        // A correct file loads.
        let path = write_toml(
            "ok.toml",
            "http_addr = \"127.0.0.1:9000\"\n[media]\nworkers = 2\n[[ice_servers]]\nurls = [\"stun:x:3478\"]\n",
        );
        let c = Config::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(c.media.workers, 2);
        assert_eq!(c.ice_servers.len(), 1);
    }

    /// The example an operator copies must not trip the unknown-key check.
    #[test]
    fn the_production_example_has_only_known_keys() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
        if let Err(ConfigError::Unknown(message)) = Config::load_with_env(Some(&path), env(&[])) {
            panic!("{message}");
        }
    }

    #[test]
    fn bad_public_ip_is_a_clear_error() {
        let err = Config::load_with_env(None, env(&[("TANDEM_PUBLIC_IP", "not-an-ip")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("public_ip"), "{err}");
    }
}
