//! The Prometheus registry shared by every part of the server, and `/metrics`.
//! Names are `tandem_*`, in base units, with bounded labels only.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};

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
        Ok(Self { build_info })
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
}
