//! The outbound HTTP client of the platform calls (OAuth token endpoints, Discord, the
//! YouTube/Twitch/Facebook/Zoom/Graph APIs) and the error a failed call becomes.
//!
//! One client for the process (connection reuse); it follows no redirects (OAuth
//! 2.0 security advice: a token endpoint that redirects is not followed with the
//! code or a secret) and gives up after [`TIMEOUT`], so a hanging provider costs a
//! request its timeout, not a stuck go-live.

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::StatusCode;

use crate::error::AppError;

/// Longest a provider call may take.
pub const TIMEOUT: Duration = Duration::from_secs(15);

static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("the HTTP client builds (rustls, no system configuration)")
});

/// The shared client.
pub fn client() -> &'static reqwest::Client {
    &CLIENT
}

/// 502 `platform_error`: `platform`'s `what` failed, with the HTTP status when
/// there was one. Never carries a response body (it may echo a token).
pub fn platform_error(platform: &str, what: &str, status: Option<u16>) -> AppError {
    let message = match status {
        Some(code) => format!("{platform}: {what} failed with HTTP {code}"),
        None => format!("{platform}: {what} failed: the provider did not answer"),
    };
    AppError::new(StatusCode::BAD_GATEWAY, "platform_error", message)
        .with("platform", platform.to_string())
}

/// A provider call's JSON answer, or [`platform_error`] for a transport error,
/// a non-2xx status or a body that is not the JSON expected.
pub async fn json<T: serde::de::DeserializeOwned>(
    platform: &str,
    what: &str,
    request: reqwest::RequestBuilder,
) -> Result<T, AppError> {
    let resp = request.send().await.map_err(|err| {
        // reqwest's error names the URL, never headers or bodies.
        tracing::warn!(platform, what, error = %err.without_url(), "provider call failed");
        platform_error(platform, what, None)
    })?;
    let status = resp.status();
    if !status.is_success() {
        tracing::warn!(platform, what, status = status.as_u16(), "provider refused");
        return Err(platform_error(platform, what, Some(status.as_u16())));
    }
    resp.json::<T>().await.map_err(|err| {
        tracing::warn!(platform, what, error = %err.without_url(), "provider answer not understood");
        AppError::new(
            StatusCode::BAD_GATEWAY,
            "platform_error",
            format!("{platform}: {what} answered something tandem does not understand"),
        )
        .with("platform", platform.to_string())
    })
}
