//! The one error type of the HTTP surface and its JSON shape
//! (`{"error":{"code","message",...details}}`, API.md "Conventions"), and the
//! middleware that gives that shape to every error our handlers did not write
//! (axum's plain-text rejections, its empty 404 and 405).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

#[derive(Debug, Clone)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Map<String, Value>,
    pub retry_after_secs: Option<u64>,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            retry_after_secs: None,
        }
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has details",
        )
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for AppError {}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut body = self.details;
        body.insert("code".into(), Value::from(self.code));
        body.insert("message".into(), Value::from(self.message));
        let mut resp = (self.status, axum::Json(json!({ "error": body }))).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Database failures become a plain 500; the detail goes to the log, never to the client.
impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        tracing::error!(error = %err, "database error");
        AppError::internal()
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// Largest error body read to carry its text into the JSON message; axum's
/// rejection texts are under 300 bytes.
const ERROR_TEXT_LIMIT: usize = 2048;

/// Rewrites every 4xx/5xx answer that is not JSON already into [`AppError`]'s
/// shape, keeping its status and headers (`Allow`, CORS, `Retry-After`…). Answers
/// that are JSON (ours) or not errors (SDP, pages, files) pass untouched.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(resp.headers()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, ERROR_TEXT_LIMIT)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    let path = uri.path();
    let allow = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut err = match status {
        StatusCode::NOT_FOUND => AppError::not_found(format!("no route for {method} {path}")),
        StatusCode::METHOD_NOT_ALLOWED => AppError::new(
            status,
            "method_not_allowed",
            format!("{method} is not allowed on {path}; allowed: {allow}"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => AppError::new(
            status,
            "payload_too_large",
            "the request body is larger than this route accepts",
        ),
        StatusCode::BAD_REQUEST => {
            AppError::bad_request(or_default(&text, "bad request")).with("field", field_of(&text))
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::new(
            status,
            "unsupported_media_type",
            or_default(&text, "unsupported Content-Type"),
        ),
        StatusCode::UNPROCESSABLE_ENTITY => AppError::new(
            status,
            "unprocessable",
            or_default(&text, "the request cannot be processed"),
        ),
        StatusCode::RANGE_NOT_SATISFIABLE => AppError::new(
            status,
            "range_not_satisfiable",
            "the requested range is outside the file",
        ),
        StatusCode::UNAUTHORIZED => AppError::unauthorized(or_default(&text, "unauthorized")),
        StatusCode::FORBIDDEN => AppError::forbidden(or_default(&text, "forbidden")),
        StatusCode::REQUEST_TIMEOUT => AppError::new(
            status,
            "request_timeout",
            "the request took too long to arrive",
        ),
        StatusCode::TOO_MANY_REQUESTS => {
            AppError::new(status, "rate_limited", "too many requests; retry later")
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            AppError::unavailable(or_default(&text, "unavailable; retry later"))
        }
        s if s.is_server_error() => {
            // Whatever produced it, its text is not for clients.
            if !text.is_empty() {
                tracing::error!(status = s.as_u16(), body = %text, "non-JSON server error");
            }
            AppError::new(s, "internal", "internal error; the server log has details")
        }
        s => AppError::new(
            s,
            "bad_request",
            or_default(&text, "the request was refused"),
        ),
    };
    if let Some(secs) = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        err.retry_after_secs = Some(secs);
    }
    let mut out = err.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE
            && name != header::CONTENT_LENGTH
            && name != header::RETRY_AFTER
        {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        })
}

fn or_default(text: &str, default: &str) -> String {
    if text.is_empty() {
        default.to_string()
    } else {
        text.to_string()
    }
}

/// The part of the request a 400 rejection of axum's is about, from its text
/// (the rejection types do not survive into the response).
fn field_of(text: &str) -> &'static str {
    if text.starts_with("Invalid URL")
        || text.starts_with("Invalid UTF-8")
        || text.contains("path param")
        || text.starts_with("Wrong number of path arguments")
    {
        "path"
    } else if text.starts_with("Failed to deserialize query string") {
        "query"
    } else if text.contains("body") || text.contains("JSON") {
        "body"
    } else {
        "request"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_texts_name_their_field() {
        assert_eq!(field_of("Invalid UTF-8 in `id`"), "path");
        assert_eq!(field_of("Invalid URL: Cannot parse `x` to a `u64`"), "path");
        assert_eq!(
            field_of("Failed to deserialize query string: missing field `a`"),
            "query"
        );
        assert_eq!(
            field_of("Failed to parse the request body as JSON: EOF"),
            "body"
        );
        assert_eq!(field_of("something else"), "request");
    }
}
