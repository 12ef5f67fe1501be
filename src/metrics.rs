//! The Prometheus registry shared by every part of the server, and `/metrics`.
//! Names are `tandem_*`, in base units, with bounded labels only.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};

use crate::server::AppState;

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
        Ok(Self { build_info })
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
