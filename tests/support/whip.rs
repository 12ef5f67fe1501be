//! WHIP/WHEP requests as the media tests send them: one request helper for every
//! method and body, and an SDP offer POST.

use reqwest::{Method, Response, header};

use super::app::TestApp;

pub const SDP: &str = "application/sdp";
pub const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// `method` on `url` with an optional bearer token and content type.
pub async fn request(
    app: &TestApp,
    method: Method,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Response {
    let mut req = app.http.request(method, url).body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    req.send().await.expect("request reaches the server")
}

/// POSTs `offer` as `application/sdp`.
pub async fn post_offer(app: &TestApp, url: &str, token: Option<&str>, offer: &str) -> Response {
    request(app, Method::POST, url, token, Some(SDP), offer.to_string()).await
}
