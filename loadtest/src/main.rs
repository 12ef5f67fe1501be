//! The `tandem-loadtest` binary: `whep`, `sync` and `enroll` load against a tandem
//! server it starts itself (`--spawn`) or one already running (`--server`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tandem_loadtest::client::PublishOptions;
use tandem_loadtest::media::VideoCodec;
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
    /// One WHIP publisher (synthetic VP8 or H.264 + Opus) and N WHEP viewers.
    Whep(WhepArgs),
    /// R rooms × M sync clients (SDK clock sync + correction on simulated players).
    Sync(SyncArgs),
    /// A storm of paid enrollments and balance reads, then an overspend audit.
    Enroll(EnrollArgs),
    /// One call of N participants (N publishers, N·(N−1) views) through the call API:
    /// the server's CPU per call.
    Call(CallArgs),
    /// Internal: the far ends of the bare TCP loop when they do not fit in the
    /// generator's open-file limit (connects, drains until stdin closes).
    #[command(hide = true)]
    BareDrain {
        addr: std::net::SocketAddr,
        conns: usize,
    },
}

#[derive(Args)]
struct SyncArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Members per room (the first is the host).
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Playback commands per second per room.
    #[arg(long, default_value_t = 0.5)]
    command_rate: f64,
    /// Clients connected per second.
    #[arg(long, default_value_t = 500.0)]
    ramp: f64,
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Client clocks are offset by up to ± this many ms …
    #[arg(long, default_value_t = 10_000.0)]
    skew_ms: f64,
    /// … and drift by up to ± this many ppm.
    #[arg(long, default_value_t = 100.0)]
    drift_ppm: f64,
    /// Run server and clients in a fresh network namespace whose loopback has this
    /// netem qdisc, e.g. "delay 50ms 15ms" (applies each way; needs root and --spawn).
    #[arg(long)]
    netem: Option<String>,
    /// The identity-JWT secret of a running server (--spawn sets its own).
    #[arg(long, env = "TANDEM_JWT_SECRET")]
    jwt_secret: Option<String>,
    #[arg(long, default_value_t = 2)]
    bare_seconds: u64,
    /// WebSocket traffic crosses a loopback relay adding this delay each way (ms) …
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// … ± this uniform jitter (ms), byte order kept (as TCP delivers).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Dead band of the simulated players' correction policy (the SDK's is 30 ms).
    #[arg(long, default_value_t = 30.0)]
    deadband_ms: f64,
    /// Reactions per second per room, each from a random non-host member: broadcasts
    /// without the ready reports that commands bring.
    #[arg(long, default_value_t = 0.0)]
    reaction_rate: f64,
    /// Chat messages per second per room, each from a random non-host member
    /// (persisted, so database writes too; mind the chat rate limit per user).
    #[arg(long, default_value_t = 0.0)]
    chat_rate: f64,
    /// Members other than the host send only what the protocol requires (hello,
    /// answers to server pings, ready at barriers): the server's fan-out cost alone.
    #[arg(long)]
    listen_only: bool,
}

#[derive(Args)]
struct EnrollArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Users, each trying every stream once: 3,000 × 20 = 60,000 attempts, a storm
    /// long enough (~20 s on PostgreSQL) that its first seconds do not set the rate.
    #[arg(long, default_value_t = 3000)]
    users: usize,
    #[arg(long, default_value_t = 20)]
    streams: usize,
    /// Each user can afford this many of the streams (the rest must be refused).
    #[arg(long, default_value_t = 15)]
    affordable: usize,
    #[arg(long, default_value_t = 10)]
    price: i64,
    /// Balance reads per enrollment attempt.
    #[arg(long, default_value_t = 1)]
    reads: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Stop sending after this many seconds.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Database URL for --spawn (postgres://… on 127.0.0.1); SQLite when absent.
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, env = "TANDEM_JWT_SECRET")]
    jwt_secret: Option<String>,
    #[arg(long, env = "TANDEM_SERVICE_KEY")]
    service_key: Option<String>,
}

#[derive(Args)]
struct CallArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Participants, 2 to 8 (each publishes and views every other).
    #[arg(long, default_value_t = 8)]
    participants: usize,
    /// Measurement window in seconds (after every view connected).
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Video bitrate per publisher in kbit/s (a 640×360 camera in a call: ~800).
    #[arg(long, default_value_t = 800)]
    bitrate: u64,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    #[arg(long, env = "TANDEM_JWT_SECRET")]
    jwt_secret: Option<String>,
    #[arg(long, env = "TANDEM_SERVICE_KEY")]
    service_key: Option<String>,
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
    /// Pin the --spawn'ed server to these CPUs (e.g. "0", "0-1", "0,2") and the
    /// generator to all the others, so that the two stop taking each other's cores.
    #[arg(long, value_name = "CPUS", requires = "spawn")]
    server_cpus: Option<String>,
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
    /// Video codec of the synthetic frames (no encoder runs either way).
    #[arg(long, value_enum, default_value_t = VideoCodec::Vp8)]
    codec: VideoCodec,
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
    /// Pace video at this multiple of the bitrate like a browser (0: one burst per frame).
    #[arg(long, default_value_t = 2.5)]
    pacing: f64,
    #[arg(long, default_value = "loadtest")]
    stream: String,
    /// Simulcast encodings the publisher offers (1: none; 2–3: rids q, h, f, each
    /// its own SSRC, key frames and PLIs per encoding).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    simulcast: u8,
    /// Per-encoding video bitrates in kbit/s, lowest first, e.g. 150,500,1500
    /// (default: --bitrate split 1:3:9).
    #[arg(long, value_delimiter = ',')]
    layer_bitrates: Vec<u64>,
    /// Viewers pin these rids round-robin through the WHEP layer extension once
    /// connected, e.g. q,h,f (default: automatic selection).
    #[arg(long, value_delimiter = ',')]
    pin_layers: Vec<String>,
    /// This many viewers (taken first, not pinned by --pin-layers) alternate their
    /// pin between two rids during the window, timing each switch.
    #[arg(long, default_value_t = 0)]
    switches: usize,
    /// Seconds between one switcher's requests (switchers are staggered over it).
    #[arg(long, default_value_t = 3.0)]
    switch_every: f64,
    /// The two rids switched between, e.g. q,f (default: lowest and highest offered).
    #[arg(long, value_delimiter = ',')]
    switch_between: Vec<String>,
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
        let cpus = args.server_cpus.as_deref().map(parse_cpus).transpose()?;
        return Target::spawn(bin, &env, cpus.as_deref()).await;
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
    if a.simulcast == 1 && (!a.pin_layers.is_empty() || a.switches > 0) {
        return Err("--pin-layers and --switches need --simulcast 2 or 3".into());
    }
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
            codec: a.codec,
            video_bitrate_bps: a.bitrate * 1000,
            fps: a.fps,
            keyframe_interval_s: a.keyframe_interval,
            audio: !a.no_audio,
            pacing_factor: a.pacing,
            simulcast: usize::from(a.simulcast),
            layer_bitrates_bps: a.layer_bitrates.iter().map(|k| k * 1000).collect(),
        },
        bare_duration: Duration::from_secs(a.bare_seconds),
        progress: !a.server.quiet,
        layers: whep::LayerPlan {
            pin: a.pin_layers.clone(),
            switches: a.switches,
            switch_between: match a.switch_between.as_slice() {
                [] => None,
                [x, y] => Some((x.clone(), y.clone())),
                _ => return Err("--switch-between wants two rids, e.g. q,f".into()),
            },
            switch_every: Duration::from_secs_f64(a.switch_every.max(0.1)),
        },
    };
    if !a.layer_bitrates.is_empty() && a.layer_bitrates.len() != usize::from(a.simulcast) {
        return Err(format!(
            "--layer-bitrates gives {} rates for --simulcast {}",
            a.layer_bitrates.len(),
            a.simulcast
        ));
    }
    let r = whep::run(&cfg).await;
    t.stop();
    let r = r?;
    finish(
        &format!(
            "tandem-loadtest whep: {} viewers, {} s window{}",
            a.viewers,
            a.duration,
            if a.simulcast > 1 {
                format!(", simulcast {}", a.simulcast)
            } else {
                String::new()
            }
        ),
        &whep::rows(&r),
        &a.server.json,
        &r,
    );
    Ok(())
}

async fn run_call(a: CallArgs) -> Result<(), String> {
    let mut t = target(&a.server, &[]).await?;
    let cfg = tandem_loadtest::call::CallConfig {
        base: t.base.clone(),
        service_key: t
            .service_key
            .clone()
            .or(a.service_key.clone())
            .ok_or("give --service-key (the server's service_key) or use --spawn")?,
        jwt_secret: t
            .jwt_secret
            .clone()
            .or(a.jwt_secret.clone())
            .ok_or("give --jwt-secret (the server's jwt_secret) or use --spawn")?,
        server_pid: t.pid,
        participants: a.participants,
        duration: Duration::from_secs(a.duration),
        publish: PublishOptions {
            video_bitrate_bps: a.bitrate * 1000,
            fps: a.fps,
            ..PublishOptions::default()
        },
    };
    let r = tandem_loadtest::call::run(&cfg).await;
    t.stop();
    let r = r?;
    finish(
        &format!(
            "tandem-loadtest call: {} participants, {} s window",
            a.participants, a.duration
        ),
        &tandem_loadtest::call::rows(&r),
        &a.server.json,
        &r,
    );
    Ok(())
}

async fn run_sync(a: SyncArgs) -> Result<(), String> {
    let extra = vec![(
        "TANDEM_ROOMS__MAX_MEMBERS_PER_ROOM".to_string(),
        (a.members + 10).to_string(),
    )];
    let mut t = target(&a.server, &extra).await?;
    let jwt_secret = t
        .jwt_secret
        .clone()
        .or(a.jwt_secret.clone())
        .ok_or("give --jwt-secret (the server's jwt_secret) or use --spawn")?;
    let cfg = tandem_loadtest::sync::SyncConfig {
        base: t.base.clone(),
        jwt_secret,
        server_pid: t.pid,
        rooms: a.rooms,
        members: a.members,
        command_rate: a.command_rate,
        ramp_per_s: a.ramp,
        duration: Duration::from_secs(a.duration),
        skew_ms: a.skew_ms,
        drift_ppm: a.drift_ppm,
        bare_duration: Duration::from_secs(a.bare_seconds),
        progress: !a.server.quiet,
        network: match tandem_loadtest::netns::current() {
            Some(n) => format!("netem {n}"),
            None if a.delay_ms > 0.0 || a.jitter_ms > 0.0 => {
                format!("relay {:.0}±{:.0} ms each way", a.delay_ms, a.jitter_ms)
            }
            None => "loopback".into(),
        },
        delay: Duration::from_secs_f64(a.delay_ms / 1000.0),
        jitter: Duration::from_secs_f64(a.jitter_ms / 1000.0),
        deadband_ms: a.deadband_ms,
        reaction_rate: a.reaction_rate,
        chat_rate: a.chat_rate,
        listen_only: a.listen_only,
    };
    let r = tandem_loadtest::sync::run(&cfg).await;
    t.stop();
    let r = r?;
    finish(
        &format!(
            "tandem-loadtest sync: {} rooms × {} members, {} s window",
            a.rooms, a.members, a.duration
        ),
        &tandem_loadtest::sync::rows(&r),
        &a.server.json,
        &r,
    );
    Ok(())
}

async fn run_enroll(a: EnrollArgs) -> Result<(), String> {
    let mut extra = Vec::new();
    if let Some(url) = &a.database_url {
        loopback_only(
            &url.replace("postgres://", "http://")
                .replace("postgresql://", "http://"),
        )
        .or_else(|_| {
            // postgres://user:pass@host:port/db: check the host part.
            let host = url.rsplit('@').next().unwrap_or("");
            loopback_only(&format!("http://{host}"))
        })?;
        extra.push(("TANDEM_DATABASE_URL".to_string(), url.clone()));
    }
    let mut t = target(&a.server, &extra).await?;
    let cfg = tandem_loadtest::enroll::EnrollConfig {
        base: t.base.clone(),
        jwt_secret: t
            .jwt_secret
            .clone()
            .or(a.jwt_secret.clone())
            .ok_or("give --jwt-secret or use --spawn")?,
        service_key: t
            .service_key
            .clone()
            .or(a.service_key.clone())
            .ok_or("give --service-key or use --spawn")?,
        server_pid: t.pid,
        users: a.users,
        streams: a.streams,
        price: a.price,
        affordable: a.affordable,
        reads_per_enrollment: a.reads,
        concurrency: a.concurrency,
        max_duration: Duration::from_secs(a.max_seconds),
        progress: !a.server.quiet,
        database: match &a.database_url {
            Some(u) if u.starts_with("postgres") => "postgres".into(),
            _ => "sqlite".into(),
        },
    };
    let r = tandem_loadtest::enroll::run(&cfg).await;
    t.stop();
    let r = r?;
    finish(
        &format!(
            "tandem-loadtest enroll: {} users × {} streams on {}",
            a.users, a.streams, cfg.database
        ),
        &tandem_loadtest::enroll::rows(&r),
        &a.server.json,
        &r,
    );
    Ok(())
}

/// Open files the generator asks for: 10,000 WebSocket clients plus the bare loop's
/// 10,000 connection pairs need ~30,000, above this VM's default hard limit of 20,000.
const WANTED_FILES: libc::rlim_t = 65_536;

fn raise_fd_limit() {
    // SAFETY: get/setrlimit on our own process with a struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return;
        }
        // Raising the hard limit needs CAP_SYS_RESOURCE (root); otherwise take the
        // hard limit as it is.
        if l.rlim_max < WANTED_FILES {
            let want = libc::rlimit {
                rlim_cur: WANTED_FILES,
                rlim_max: WANTED_FILES,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return;
            }
        }
        if l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// "0", "0-1", "0,2-3" → CPU numbers.
fn parse_cpus(list: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("--server-cpus {list}: want CPU numbers like 0, 0-1 or 0,2");
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (a, b) = part
            .trim()
            .split_once('-')
            .unwrap_or((part.trim(), part.trim()));
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a > b || b >= libc::CPU_SETSIZE as usize {
            return Err(bad());
        }
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

/// Keeps the generator (this thread, and every thread started after it) off the
/// server's CPUs.
fn keep_off_cpus(server: &[usize]) -> Result<(), String> {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mine: Vec<usize> = (0..online).filter(|c| !server.contains(c)).collect();
    if mine.is_empty() {
        return Err(format!(
            "--server-cpus leaves no CPU for the generator ({online} online)"
        ));
    }
    tandem_loadtest::bare::send_from_cpus(server.to_vec());
    tandem_loadtest::server::set_affinity(&mine)
        .map_err(|e| format!("pinning the generator to CPUs {mine:?}: {e}"))?;
    eprintln!("tandem-loadtest: server on CPUs {server:?}, generator on {mine:?}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    raise_fd_limit();
    let server_args = match &cli.mode {
        Mode::Whep(a) => &a.server,
        Mode::Sync(a) => &a.server,
        Mode::Enroll(a) => &a.server,
        Mode::Call(a) => &a.server,
        Mode::BareDrain { addr, conns } => {
            return match tandem_loadtest::bare::drain_child(*addr, *conns) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tandem-loadtest bare-drain: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    if let Some(list) = &server_args.server_cpus
        && let Err(e) = parse_cpus(list).and_then(|c| keep_off_cpus(&c))
    {
        eprintln!("tandem-loadtest: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if let Mode::Sync(a) = &cli.mode
        && let Some(netem) = &a.netem
        && tandem_loadtest::netns::current().is_none()
    {
        if a.server.spawn.is_none() {
            eprintln!(
                "tandem-loadtest: --netem needs --spawn (the server runs in the namespace too)"
            );
            return std::process::ExitCode::FAILURE;
        }
        return match tandem_loadtest::netns::rerun_inside(netem) {
            Ok(s) if s.success() => std::process::ExitCode::SUCCESS,
            Ok(s) => {
                eprintln!("tandem-loadtest: run in namespace: {s}");
                std::process::ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("tandem-loadtest: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
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
            Mode::Sync(a) => run_sync(a).await,
            Mode::Enroll(a) => run_enroll(a).await,
            Mode::Call(a) => run_call(a).await,
            Mode::BareDrain { .. } => unreachable!("answered before the runtime starts"),
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
