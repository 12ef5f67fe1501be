//! The `tandem` binary: `tandem [serve]` runs the server, `tandem token` mints
//! media/room tokens for operators with the key the server uses, and
//! `tandem identity` mints platform identity JWTs with the configured
//! `jwt_secret` (for trying the business API without a platform), and
//! `tandem secrets rotate` re-seals stored secrets under the active key.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tandem::auth::{
    DEFAULT_MEDIA_TOKEN_TTL_SECS, Grants, IdentityRequest, KeySource, MAX_MEDIA_TOKEN_TTL_SECS,
    MediaTokens, Role, TokenRequest,
};
use tandem::config::Config;
use tracing_subscriber::EnvFilter;

/// A line of the start banner on stdout. The banner is for people and scripts;
/// a stdout nobody reads any more (`tandem | head -3`, a supervisor that closed
/// the pipe) must not take the server down, and `println!` panics on a write
/// error, so the error is dropped.
macro_rules! banner {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// webrtc-rs logs every handshake detail at info/warn; operators want ours.
const DEFAULT_LOG_FILTER: &str =
    "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,rtc_srtp=warn,rtc_interceptor=warn";

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Realtime media relay (WHIP/WHEP SFU) and watch-together sync server"
)]
struct Cli {
    /// Configuration file (TOML) layered over the embedded defaults.
    #[arg(long, global = true, env = "TANDEM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print a media token (WHIP/WHEP) or room token (sync WebSocket).
    Token(TokenArgs),
    /// Print an identity JWT for the business API, signed with the configured jwt_secret.
    Identity(IdentityArgs),
    /// Secrets at rest (stream keys, OAuth tokens): `tandem secrets rotate`.
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-seal every stored secret not under [secrets] active_key with it, and
    /// print how many rows changed (docs/SECURITY.md "Secrets at rest").
    Rotate,
}

#[derive(Args)]
struct IdentityArgs {
    /// User id (the JWT's `sub`).
    #[arg(long)]
    sub: String,
    /// Platform role: user, instructor or admin.
    #[arg(long, value_parser = ["user", "instructor", "admin"])]
    role: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Display name (`user_metadata.name`).
    #[arg(long)]
    name: Option<String>,
    /// E-mail address (`email`).
    #[arg(long)]
    email: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// Stream the token is for (`*` for any).
    #[arg(long, conflicts_with = "room")]
    stream: Option<String>,
    /// Room the token is for (`*` for any).
    #[arg(long, conflicts_with_all = ["publish", "subscribe"])]
    room: Option<String>,
    /// Grant publishing (WHIP).
    #[arg(long)]
    publish: bool,
    /// Grant viewing (WHEP).
    #[arg(long)]
    subscribe: bool,
    /// Grant moderation in a room.
    #[arg(long)]
    moderate: bool,
    /// User id the token names.
    #[arg(long, default_value = "operator")]
    user: String,
    /// Display name (rooms).
    #[arg(long)]
    name: Option<String>,
    /// Lifetime in seconds (at most 86400).
    #[arg(long, default_value_t = DEFAULT_MEDIA_TOKEN_TTL_SECS)]
    ttl: u64,
    /// Create the signing key in the data directory if there is none (only a
    /// server using that data directory will accept the token).
    #[arg(long)]
    create_key: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("tandem: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token(args) => print_token(&config, args),
        Command::Identity(args) => print_identity(&config, args),
        Command::Secrets(SecretsCommand::Rotate) => rotate_secrets(&config),
        Command::Serve => serve(config),
    }
}

fn print_identity(config: &Config, args: IdentityArgs) -> ExitCode {
    if config.jwt_secret.is_empty() {
        eprintln!(
            "tandem identity: no jwt_secret is configured, so there is nothing to sign with and \
             the server's business API is disabled. Give the server and this command the same \
             secret: TANDEM_JWT_SECRET=... (environment) or jwt_secret = \"...\" in the file \
             given with --config (e.g. `openssl rand -hex 32`)."
        );
        return ExitCode::from(2);
    }
    if !tandem::text::is_clean_id(&args.sub) {
        eprintln!("tandem identity: --sub must be a non-empty user id without control characters");
        return ExitCode::from(2);
    }
    let role = Role::parse(&args.role).expect("clap checked the role");
    let token = tandem::auth::mint_identity(
        &config.jwt_secret,
        &IdentityRequest {
            sub: args.sub,
            role,
            ttl_secs: args.ttl,
            name: args.name,
            email: args.email,
        },
    );
    println!("{token}");
    ExitCode::SUCCESS
}

/// `tandem secrets rotate`: the server's keyring and database, every sealed
/// field re-sealed under the active key. Safe while servers run (each row is
/// rewritten only if unchanged since it was read).
fn rotate_secrets(config: &Config) -> ExitCode {
    // The rows that do not open are named in the log (stderr).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let keyring = match tandem::secrets::Keyring::from_config(config) {
        Ok(k) => k,
        Err(err) => {
            eprintln!("tandem secrets rotate: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tandem secrets rotate: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let db = match tandem::storage::Db::connect(&config.database_url(), 2).await {
            Ok(db) => db,
            Err(err) => {
                eprintln!("tandem secrets rotate: {err}");
                return ExitCode::from(1);
            }
        };
        let result = tandem::platforms::rotate::rotate(&db, &keyring).await;
        db.pool.close().await;
        match result {
            Ok(done) => {
                println!(
                    "re-encrypted {} rows under key {}",
                    done.rows,
                    keyring.active_id()
                );
                if done.failed > 0 {
                    eprintln!(
                        "tandem secrets rotate: {} rows did not open (their key is not in \
                         [secrets] keys any more); the log names them",
                        done.failed
                    );
                    return ExitCode::from(1);
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("tandem secrets rotate: database: {err}");
                ExitCode::from(1)
            }
        }
    })
}

/// `dir` as given and, when relative, where that is (a relative `./data` from
/// another directory is the usual way to miss the server's key).
fn describe_dir(dir: &Path) -> String {
    match std::path::absolute(dir) {
        Ok(abs) if abs != dir => format!("{} ({})", dir.display(), abs.display()),
        _ => dir.display().to_string(),
    }
}

fn print_token(config: &Config, args: TokenArgs) -> ExitCode {
    if args.stream.is_none() && args.room.is_none() {
        eprintln!("tandem token: give --stream ID (with --publish/--subscribe) or --room ID");
        return ExitCode::from(2);
    }
    if args.stream.is_some() && !args.publish && !args.subscribe {
        eprintln!("tandem token: a stream token needs --publish and/or --subscribe");
        return ExitCode::from(2);
    }
    if let Some(stream) = &args.stream
        && stream != "*"
        && !tandem::text::valid_stream_name(stream)
    {
        eprintln!(
            "tandem token: invalid stream name {stream:?}: 1-128 characters of A-Z a-z 0-9 _ . : - (or * for any)"
        );
        return ExitCode::from(2);
    }
    if let Some(room) = &args.room
        && room != "*"
        && !tandem_signaling::valid_room_id(room)
    {
        eprintln!(
            "tandem token: invalid room name {room:?}: 1-128 characters of A-Z a-z 0-9 _ . : - (or * for any)"
        );
        return ExitCode::from(2);
    }
    if !tandem::text::is_clean_id(&args.user) {
        eprintln!("tandem token: --user must be a non-empty user id without control characters");
        return ExitCode::from(2);
    }
    let dir = &config.data_dir;
    let (tokens, source) = match MediaTokens::open(&config.media_token_secret, dir, args.create_key)
    {
        Ok(t) => t,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "tandem token: no media-token key in data directory {} and no media_token_secret \
                     configured; a new key here would sign tokens the server rejects. Point this \
                     command at the server's data directory (TANDEM_DATA_DIR=DIR, or --config FILE \
                     with its data_dir) or its secret (TANDEM_MEDIA_TOKEN_SECRET), or pass \
                     --create-key to create a key here (only a server using this data directory \
                     will accept the token).",
                describe_dir(dir)
            );
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("tandem token: data directory {}: {err}", describe_dir(dir));
            return ExitCode::from(1);
        }
    };
    eprintln!("tandem token: data directory {}", describe_dir(dir));
    match &source {
        KeySource::Configured => eprintln!("tandem token: key: media_token_secret from config"),
        KeySource::File(path) => {
            eprintln!("tandem token: key: generated file {}", path.display())
        }
        KeySource::Created(path) => eprintln!(
            "tandem token: key: CREATED a new key file {} (--create-key); only a server using \
             this data directory accepts the token",
            path.display()
        ),
    }
    if args.ttl > MAX_MEDIA_TOKEN_TTL_SECS {
        eprintln!("tandem token: ttl capped at {MAX_MEDIA_TOKEN_TTL_SECS} s");
    }
    let in_room = args.room.is_some();
    let (token, _) = tokens.mint(&TokenRequest {
        user: args.user,
        stream: args.stream,
        room: args.room,
        grants: Grants {
            publish: args.publish,
            subscribe: args.subscribe,
            chat: in_room,
            moderate: args.moderate,
        },
        name: args.name,
        role: None,
        ttl_secs: args.ttl,
    });
    println!("{token}");
    ExitCode::SUCCESS
}

fn serve(config: Config) -> ExitCode {
    // Logs to stderr; stdout carries only what a script may want (links, tokens).
    // Colours only for a terminal: in a file or a journal they are noise.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    // Every connection, WebSocket and database connection is a descriptor; the
    // usual soft limit (1024) is far below what the server is meant to hold.
    tandem::serve::raise_nofile_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tandem: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        let signals = Signals::install();
        let running = match tandem::start(config).await {
            Ok(r) => r,
            Err(err) => {
                tracing::error!("{err}");
                return ExitCode::from(1);
            }
        };
        print_banner(&running);
        signals.wait().await;
        tracing::info!("shutting down: closing media sessions");
        let pool = running.state.db.pool.clone();
        running.shutdown().await;
        // Close the database now (SQLite checkpoints its WAL), bounded, rather
        // than leave its connections' threads to the runtime's drop.
        let _ = tokio::time::timeout(Duration::from_secs(2), pool.close()).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    });
    // Everything is closed and recorded by now; what remains are idle blocking
    // threads (file and DNS lookups, the SQLite workers' keep-alive) that a plain
    // drop would wait out, for over a second.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// What a newcomer needs on stdout at start: where the server is, what is off,
/// and (with `demo`) links with tokens for a broadcast, a viewer and a room.
fn print_banner(running: &tandem::Running) {
    let state = &running.state;
    let config = &state.config;
    let base = &state.public_url;
    banner!();
    banner!("  tandem is running: {base}/");
    if config.jwt_secret.is_empty() {
        banner!("  business API: disabled (no jwt_secret; set TANDEM_JWT_SECRET)");
    }
    if config.service_key.is_empty() {
        banner!("  service-key routes: disabled (no service_key; set TANDEM_SERVICE_KEY)");
    }
    if config.demo {
        print_demo_links(running);
    }
    banner!();
}

fn print_demo_links(running: &tandem::Running) {
    let state = &running.state;
    let mint = |publish: bool| {
        state
            .tokens
            .mint(&TokenRequest {
                user: if publish {
                    "demo-broadcaster"
                } else {
                    "demo-viewer"
                }
                .into(),
                stream: Some("demo".into()),
                grants: Grants {
                    publish,
                    subscribe: !publish,
                    ..Default::default()
                },
                ttl_secs: 24 * 3600,
                ..Default::default()
            })
            .0
    };
    // The room's host: moderates (play, pause, seek for everyone) and chats; the
    // page's invite link hands others a token of their own.
    let (host, _) = state.tokens.mint(&TokenRequest {
        user: "demo-host".into(),
        room: Some("demo".into()),
        grants: Grants {
            chat: true,
            moderate: true,
            ..Default::default()
        },
        name: Some("Host".into()),
        ttl_secs: 24 * 3600,
        ..Default::default()
    });
    // The operator's view of what is live (`/streams`): a token for every stream
    // with the subscribe grant, which `GET /v1/media/streams` takes as it takes the
    // service key, so the dashboard works with no configuration at all.
    let (operator, _) = state.tokens.mint(&TokenRequest {
        user: "demo-operator".into(),
        stream: Some("*".into()),
        grants: Grants {
            subscribe: true,
            ..Default::default()
        },
        ttl_secs: 24 * 3600,
        ..Default::default()
    });
    let base = &state.public_url;
    banner!("  Demo stream and room (links valid 24 h):");
    banner!("  broadcast: {base}/broadcast/demo?token={}", mint(true));
    banner!("  watch:     {base}/watch/demo?token={}", mint(false));
    banner!("  together:  {base}/together/demo?token={host}");
    banner!("  streams:   {base}/streams?token={operator}   (what is live; operator only)");
}

/// Ctrl-C and SIGTERM, listened for from before the server starts: one that
/// arrives while it is still starting (a supervisor's quick stop, a test that
/// stops it as soon as it answers) is a graceful stop once it is up, not the
/// default action's kill.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Registers the handlers now (inside the runtime).
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for the first of them.
    async fn wait(self) {
        #[cfg(unix)]
        {
            async fn next(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(self.interrupt) => {},
                _ = next(self.terminate) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
