//! The Prometheus registry shared by every part of the server, and `/metrics`.
//! Names are `tandem_*`, in base units, with bounded labels only; the standard
//! `process_*` family (as client libraries export it) is read from `/proc/self`.
//! HTTP requests are counted per matched route template ([`RequestMetrics`]).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Counter, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::state::AppState;

/// Instruments owned by the HTTP layer (the media and signaling crates register their own).
#[derive(Clone)]
pub struct HttpMetrics {
    pub build_info: IntGauge,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let build_info = IntGauge::with_opts(
            prometheus::Opts::new("tandem_build_info", "Always 1; labels carry the version")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info.set(1);
        registry.register(Box::new(ProcessGauges::new()?))?;
        registry.register(Box::new(StandardProcess::new()?))?;
        Ok(Self { build_info })
    }
}

/// `tandem_http_requests_total{method,route,status}` and
/// `tandem_http_request_duration_seconds{route}`. `route` is the matched route
/// template (`/v1/streams/{id}`), `unmatched` for a path no route has, so the
/// label set is bounded by the router, whatever paths clients send. `method` is
/// one of the standard methods or `other`.
///
/// Cost (issue 13, measured on the shared 2-core machine under load, debug
/// build of tandem with optimised dependencies): 1.5 µs per request for the two
/// label lookups and updates (400,000 `observe` calls over 4 routes and 3
/// statuses), against 420 µs or more for the cheapest request (`/healthz`, one
/// keep-alive client over loopback), whose time did not move measurably with
/// the layer (420-990 µs before and after, the noise of the shared machine).
#[derive(Clone)]
pub struct RequestMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl RequestMetrics {
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "tandem_http_requests_total",
                    "HTTP requests answered, by method, matched route template and status",
                ),
                &["method", "route", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "tandem_http_request_duration_seconds",
                    "Time to the response head of HTTP requests (WebSocket: to the upgrade), by route",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ]),
                &["route"],
            )?,
        })
    }

    /// Registers in `registry`; a second registration (a second router on one
    /// registry) keeps working unregistered instead of failing the start.
    pub fn register(registry: &Registry) -> Self {
        let metrics = Self::new().expect("static metric definitions are valid");
        let ok = registry
            .register(Box::new(metrics.requests.clone()))
            .and_then(|_| registry.register(Box::new(metrics.duration.clone())));
        if let Err(err) = ok {
            tracing::warn!(error = %err, "HTTP request metrics not registered");
        }
        metrics
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let code = itoa_status(status);
        let status = std::str::from_utf8(&code).unwrap_or("0");
        self.requests
            .with_label_values(&[method, route, status])
            .inc();
        self.duration.with_label_values(&[route]).observe(seconds);
    }
}

/// A status code as three ASCII digits, without allocating.
fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// Middleware (per route, through `Router::layer`) that feeds [`RequestMetrics`].
pub async fn track_requests(
    State(metrics): State<RequestMetrics>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "HEAD" => "HEAD",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let resp = next.run(req).await;
    metrics.observe(
        method,
        route.as_deref().unwrap_or("unmatched"),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// The `process_*` metrics every Prometheus client library exports (CPU, memory,
/// descriptors, start time, threads), read from `/proc/self` at scrape time
/// without an extra dependency; absent on systems without `/proc`.
struct StandardProcess {
    cpu: Counter,
    rss: Gauge,
    vsize: Gauge,
    fds: Gauge,
    max_fds: Gauge,
    start: Gauge,
    threads: Gauge,
}

impl StandardProcess {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            cpu: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )?,
            rss: Gauge::new(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )?,
            vsize: Gauge::new(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )?,
            fds: Gauge::new("process_open_fds", "Number of open file descriptors.")?,
            max_fds: Gauge::new(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            )?,
            start: Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )?,
            threads: Gauge::new("process_threads", "Number of OS threads in the process.")?,
        })
    }

    fn all(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu,
            &self.rss,
            &self.vsize,
            &self.fds,
            &self.max_fds,
            &self.start,
            &self.threads,
        ]
    }
}

/// What `/proc/self/stat` says, in base units.
struct Stat {
    cpu_seconds: f64,
    threads: f64,
    start_time: f64,
    vsize: f64,
    rss: f64,
}

fn read_stat() -> Option<Stat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // proc(5) numbers fields from 1; fields[0] is field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };
    if ticks <= 0.0 || page <= 0.0 {
        return None;
    }
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        threads: field(20)?,
        start_time: boot + field(22)? / ticks,
        vsize: field(23)?,
        rss: field(24)? * page,
    })
}

/// The soft descriptor limit (RLIMIT_NOFILE).
fn max_fds() -> Option<f64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `lim`.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur as f64)
}

impl Collector for StandardProcess {
    fn desc(&self) -> Vec<&Desc> {
        self.all().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(stat) = read_stat() else {
            return Vec::new();
        };
        // A counter only goes up: add what the kernel counted since the last scrape.
        let delta = stat.cpu_seconds - self.cpu.get();
        if delta > 0.0 {
            self.cpu.inc_by(delta);
        }
        self.rss.set(stat.rss);
        self.vsize.set(stat.vsize);
        self.start.set(stat.start_time);
        self.threads.set(stat.threads);
        if let Some(n) = open_fds() {
            self.fds.set(n as f64);
        }
        if let Some(n) = max_fds() {
            self.max_fds.set(n);
        }
        self.all().into_iter().flat_map(|c| c.collect()).collect()
    }
}

/// Gauges read at scrape time, for leak hunting (`scripts/soak.sh`): the tokio
/// runtime's live tasks, and the process's open descriptors and resident memory
/// from `/proc/self` (absent elsewhere than Linux: the gauges then stay 0).
struct ProcessGauges {
    tasks: IntGauge,
    fds: IntGauge,
    rss: IntGauge,
}

impl ProcessGauges {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            tasks: IntGauge::new(
                "tandem_runtime_alive_tasks",
                "Tasks alive on the server's tokio runtime (spawned and not yet finished)",
            )?,
            fds: IntGauge::new(
                "tandem_process_open_fds",
                "Open file descriptors of the server process (the scrape's own connection included)",
            )?,
            rss: IntGauge::new(
                "tandem_process_resident_memory_bytes",
                "Resident memory of the server process (VmRSS)",
            )?,
        })
    }
}

/// Entries of `/proc/self/fd`, less the one `read_dir` itself holds open.
fn open_fds() -> Option<i64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    Some((n - 1).max(0))
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

impl Collector for ProcessGauges {
    fn desc(&self) -> Vec<&Desc> {
        [&self.tasks, &self.fds, &self.rss]
            .into_iter()
            .flat_map(|g| g.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // `gather` runs inside the /metrics handler, so on the server's runtime.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks.set(rt.metrics().num_alive_tasks() as i64);
        }
        if let Some(n) = open_fds() {
            self.fds.set(n);
        }
        if let Some(b) = resident_bytes() {
            self.rss.set(b);
        }
        [&self.tasks, &self.fds, &self.rss]
            .into_iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}

pub async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let mut buf = Vec::with_capacity(16 * 1024);
    let encoder = TextEncoder::new();
    if let Err(err) = encoder.encode(&state.registry.gather(), &mut buf) {
        tracing::error!(error = %err, "encoding metrics");
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_string())],
        buf,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gauges the soak script reads are filled in at scrape time.
    #[tokio::test]
    async fn process_gauges_are_read_at_scrape_time() {
        let registry = Registry::new();
        HttpMetrics::register(&registry).unwrap();
        let held: Vec<_> = (0..3)
            .map(|_| tokio::spawn(std::future::pending::<()>()))
            .collect();
        let families = registry.gather();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert!(value("tandem_runtime_alive_tasks") >= 3.0);
        if cfg!(target_os = "linux") {
            // stdin/stdout/stderr at least; a test process is more than 1 MiB.
            assert!(value("tandem_process_open_fds") >= 3.0);
            assert!(value("tandem_process_resident_memory_bytes") > 1_048_576.0);
        }
        for t in held {
            t.abort();
        }
    }

    /// The standard `process_*` family is there with plausible values.
    #[tokio::test]
    async fn standard_process_metrics_are_exported() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let registry = Registry::new();
        HttpMetrics::register(&registry).unwrap();
        let families = registry.gather();
        let value = |name: &str| {
            let f = families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            // One of the two is the metric's own; the other reads 0.
            let m = &f.get_metric()[0];
            m.get_counter().get_value() + m.get_gauge().get_value()
        };
        assert!(value("process_resident_memory_bytes") > 1_048_576.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = crate::clock::now_secs() as f64;
        let start = value("process_start_time_seconds");
        assert!(
            start > now - 86_400.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
    }

    #[test]
    fn status_codes_print_as_three_digits() {
        assert_eq!(&itoa_status(200), b"200");
        assert_eq!(&itoa_status(501), b"501");
        assert_eq!(&itoa_status(101), b"101");
    }
}
