//! The `tandem` binary: `tandem [serve]` runs the server, `tandem token` mints
//! media/room tokens for operators with the key the server uses.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tandem::auth::{DEFAULT_MEDIA_TOKEN_TTL_SECS, Grants, MediaTokens, TokenRequest};
use tandem::config::Config;
use tracing_subscriber::EnvFilter;

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
}

#[derive(Args)]
struct TokenArgs {
    /// Stream the token is for (`*` for any).
    #[arg(long, conflicts_with = "room")]
    stream: Option<String>,
    /// Room the token is for (`*` for any).
    #[arg(long)]
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("tandem: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token(args) => print_token(&config, args),
        Command::Serve => serve(config),
    }
}

fn print_token(config: &Config, args: TokenArgs) -> std::process::ExitCode {
    if args.stream.is_none() && args.room.is_none() {
        eprintln!("tandem token: give --stream ID (with --publish/--subscribe) or --room ID");
        return std::process::ExitCode::from(2);
    }
    if args.stream.is_some() && !args.publish && !args.subscribe {
        eprintln!("tandem token: a stream token needs --publish and/or --subscribe");
        return std::process::ExitCode::from(2);
    }
    let tokens = match MediaTokens::from_config(&config.media_token_secret, &config.data_dir) {
        Ok(t) => t,
        Err(err) => {
            eprintln!(
                "tandem token: data directory {}: {err}",
                config.data_dir.display()
            );
            return std::process::ExitCode::from(1);
        }
    };
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
    std::process::ExitCode::SUCCESS
}

fn serve(config: Config) -> std::process::ExitCode {
    // Logs to stderr; stdout carries only what a script may want (links, tokens).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let demo = config.demo;
        let running = match tandem::start(config).await {
            Ok(r) => r,
            Err(err) => {
                tracing::error!("{err}");
                return std::process::ExitCode::from(1);
            }
        };
        if demo {
            print_demo_links(&running);
        }
        wait_for_signal().await;
        tracing::info!("shutting down: closing media sessions");
        running.shutdown().await;
        tracing::info!("stopped");
        std::process::ExitCode::SUCCESS
    })
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
    let base = &state.public_url;
    println!();
    println!("  tandem is running. Demo stream (links valid 24 h):");
    println!("  broadcast: {base}/broadcast/demo?token={}", mint(true));
    println!("  watch:     {base}/watch/demo?token={}", mint(false));
    println!();
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
