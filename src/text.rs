//! Clean text at the edge: strings that reach SQL or a room carry no NUL and no
//! control characters where they make no sense. PostgreSQL refuses NUL in `TEXT`
//! (a 500 and an ERROR line per request, from anonymous routes too), SQLite stores
//! it and truncates it in places; either way the answer must be a 400 that names
//! the field, the same on every backend.
//!
//! - [`refuse_control_chars`]: a route layer over the business and room routes that
//!   checks every path parameter and every query parameter (names and values).
//! - [`check_json`]: every string of a JSON body (`api::parse_json`).
//! - [`is_clean_id`] / [`is_clean_line`]: for token claims (`auth`) and single fields.
//! - [`valid_stream_name`]: what a stream name (a URL path segment) may hold;
//!   `whip`, the call and media-stream routes and the CLI share it.
//! - [`redact_url`]: a database or Redis URL without its password, for logs.

use axum::extract::{RawPathParams, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::AppError;

/// No control character at all (C0, DEL, C1): ids, names, titles, query values.
pub fn is_clean_line(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Text that may span lines: tab, CR and LF allowed, every other control character
/// (NUL first of all) refused.
pub fn is_clean_text(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// A user id: not empty or blank, at most 255 bytes, no control character.
pub fn is_clean_id(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= 255 && is_clean_line(s)
}

/// The 400 for a field with a control character. The field name itself is shown
/// with control characters escaped (it may come from the query string).
pub fn control_char_error(field: &str) -> AppError {
    let field: String = field.chars().flat_map(char::escape_debug).collect();
    AppError::bad_request(format!(
        "{field} contains a NUL or another control character; send plain text"
    ))
    .with("field", field)
}

/// Route layer: 400 naming the parameter when a path or query parameter holds a
/// control character, before the handler (and its SQL) runs.
pub async fn refuse_control_chars(
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    match params {
        Ok(params) => {
            for (name, value) in &params {
                if !is_clean_line(value) {
                    return control_char_error(name).into_response();
                }
            }
        }
        Err(_) => {
            return AppError::bad_request("a path parameter is not valid UTF-8")
                .with("field", "path")
                .into_response();
        }
    }
    // A query that does not even parse is left to the handler's own 400.
    if let Ok(axum::extract::Query(pairs)) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri())
    {
        for (name, value) in &pairs {
            if !is_clean_line(name) || !is_clean_line(value) {
                return control_char_error(name).into_response();
            }
        }
    }
    next.run(req).await
}

/// Every string in a JSON body (object keys too) must be clean text; the error
/// names the JSON path of the first that is not (`title`, `items[2].name`).
pub fn check_json(value: &Value) -> Result<(), AppError> {
    fn walk(v: &Value, path: &mut String) -> Result<(), AppError> {
        match v {
            Value::String(s) if !is_clean_text(s) => Err(control_char_error(if path.is_empty() {
                "body"
            } else {
                path
            })),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    if !is_clean_line(k) {
                        return Err(control_char_error(path));
                    }
                    walk(item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(value, &mut String::new())
}

/// Stream names: what a URL path segment and a Discord instance id can hold.
pub fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// A database or Redis URL with any password removed, for logs and errors
/// (`storage`, `config::ClusterConfig`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(is_clean_line("Yoga at 7 — é"));
        assert!(!is_clean_line("a\0b"));
        assert!(!is_clean_line("a\nb"));
        assert!(is_clean_text("line 1\nline 2\ttab\r\n"));
        assert!(!is_clean_text("a\0b"));
        assert!(!is_clean_text("a\u{7f}b"));
        assert!(!is_clean_id(""));
        assert!(!is_clean_id("  "));
        assert!(!is_clean_id("u\0"));
        assert!(is_clean_id("user-1"));
    }

    #[test]
    fn json_paths() {
        let v = serde_json::json!({"a": "ok", "b": [{"c": "x\u{0}y"}]});
        let err = check_json(&v).unwrap_err();
        assert_eq!(err.details["field"], "b[0].c");
        assert!(check_json(&serde_json::json!({"d": "two\nlines"})).is_ok());
    }
}
