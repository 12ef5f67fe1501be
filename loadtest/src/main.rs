//! The `tandem-loadtest` binary: `whep`, `sync` and `enroll` load against a tandem
//! server it starts itself (`--spawn`) or one already running (`--server`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tandem_loadtest::client::PublishOptions;
use tandem_loadtest::report;
use tandem_loadtest::server::Target;
use tandem_loadtest::whep;

#[derive(Parser)]
#[command(
    name = "tandem-loadtest",
    about = "Measures a tandem server against its targets (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One WHIP publisher (synthetic VP8 + Opus) and N WHEP viewers.
    Whep(WhepArgs),
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// Start this tandem binary on free loopback ports with a fresh data dir.
    #[arg(long, value_name = "TANDEM_BIN", conflicts_with = "server")]
    spawn: Option<PathBuf>,
    /// A running server's base URL (loopback only), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    server: Option<String>,
    /// The running server's process id (for CPU and RSS).
    #[arg(long)]
    pid: Option<u32>,
    /// The tandem binary and data dir to mint media tokens with (`tandem token`).
    #[arg(long)]
    tandem_bin: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Extra server environment for --spawn, e.g. TANDEM_MEDIA__WORKERS=2 (repeatable).
    #[arg(long = "server-env", value_name = "K=V")]
    server_env: Vec<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct WhepArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long, default_value_t = 100)]
    viewers: usize,
    /// Viewers started per second.
    #[arg(long, default_value_t = 50.0)]
    ramp: f64,
    /// Measurement window in seconds (after every viewer connected).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Threads running viewers.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Video bitrate in kbit/s.
    #[arg(long, default_value_t = 2500)]
    bitrate: u64,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds between periodic key frames (PLIs force one sooner).
    #[arg(long, default_value_t = 2.0)]
    keyframe_interval: f64,
    #[arg(long)]
    no_audio: bool,
    #[arg(long, default_value = "loadtest")]
    stream: String,
    /// Seconds each bare-limit loop runs (0 skips them).
    #[arg(long, default_value_t = 2)]
    bare_seconds: u64,
    /// Tokens, when not minted with --tandem-bin/--data-dir or --spawn.
    #[arg(long, env = "TANDEM_PUBLISH_TOKEN")]
    publish_token: Option<String>,
    #[arg(long, env = "TANDEM_SUBSCRIBE_TOKEN")]
    subscribe_token: Option<String>,
}

fn loopback_only(url: &str) -> Result<(), String> {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', ':']).next())
        .unwrap_or("");
    let ok = host == "localhost"
        || host
            .parse::<std::net::Ipv4Addr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{url}: tandem-loadtest only targets loopback addresses (127.0.0.0/8)"
        ))
    }
}

async fn target(args: &ServerArgs, extra: &[(String, String)]) -> Result<Target, String> {
    if let Some(bin) = &args.spawn {
        let mut env: Vec<(String, String)> = extra.to_vec();
        for kv in &args.server_env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--server-env {kv}: want K=V"))?;
            env.push((k.to_string(), v.to_string()));
        }
        return Target::spawn(bin, &env).await;
    }
    let base = args
        .server
        .clone()
        .ok_or("give --spawn TANDEM_BIN or --server URL")?;
    loopback_only(&base)?;
    Ok(Target::external(
        &base,
        args.pid,
        args.tandem_bin.clone(),
        args.data_dir.clone(),
    ))
}

fn finish<T: serde::Serialize>(
    title: &str,
    rows: &[report::Row],
    json: &Option<PathBuf>,
    value: &T,
) {
    println!("{}", report::table(title, rows));
    if let Some(path) = json {
        match report::write_json(path, value) {
            Ok(()) => println!("report written to {}", path.display()),
            Err(e) => eprintln!("writing {}: {e}", path.display()),
        }
    }
}

async fn run_whep(a: WhepArgs) -> Result<(), String> {
    let mut t = target(&a.server, &[]).await?;
    let publish_token = match &a.publish_token {
        Some(t) => t.clone(),
        None => t.media_token(&a.stream, true)?,
    };
    let subscribe_token = match &a.subscribe_token {
        Some(t) => t.clone(),
        None => t.media_token(&a.stream, false)?,
    };
    let cfg = whep::WhepConfig {
        base: t.base.clone(),
        stream: a.stream.clone(),
        publish_token,
        subscribe_token,
        server_pid: t.pid,
        viewers: a.viewers,
        ramp_per_s: a.ramp,
        threads: a.threads,
        duration: Duration::from_secs(a.duration),
        connect_timeout: Duration::from_secs(60),
        publish: PublishOptions {
            video_bitrate_bps: a.bitrate * 1000,
            fps: a.fps,
            keyframe_interval_s: a.keyframe_interval,
            audio: !a.no_audio,
        },
        bare_duration: Duration::from_secs(a.bare_seconds),
        progress: !a.server.quiet,
    };
    let r = whep::run(&cfg).await;
    t.stop();
    let r = r?;
    finish(
        &format!(
            "tandem-loadtest whep: {} viewers, {} s window",
            a.viewers, a.duration
        ),
        &whep::rows(&r),
        &a.server.json,
        &r,
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tandem_loadtest::init_rtc_log();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.mode {
            Mode::Whep(a) => run_whep(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-loadtest: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
