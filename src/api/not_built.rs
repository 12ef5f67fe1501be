//! Routes of the contract (API.md) that this version of tandem does not build
//! yet. Each answers 501 `not_implemented` in the contract's JSON shape, with the
//! methods the contract gives it (others get 405), instead of an empty 404 that
//! reads as a typo in the client. Merged into the router, so also under `/.proxy`.
//!
//! One list, one place: the issue that builds a route deletes its line here
//! (axum refuses two handlers for one method and path, so a forgotten line
//! fails at start and in every test).

use axum::Router;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::error::AppError;
use crate::state::AppState;

/// `(method, path)` of every contract route not built yet, in API.md's order.
pub const NOT_BUILT: &[(&str, &str)] = &[
    // Every route of API.md is built (the last, `GET /v1/cluster/nodes`, with the
    // node registry of issue 18); routes a later contract adds wait here.
];

/// The 501 answer for `method path`.
pub fn not_implemented(method: &str, path: &str) -> AppError {
    AppError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        format!("{method} {path} is not built yet in this version of tandem"),
    )
}

/// Every route of [`NOT_BUILT`], one method router per path.
pub fn routes() -> Router<AppState> {
    let mut paths: Vec<(&str, MethodRouter<AppState>)> = Vec::new();
    for &(method, path) in NOT_BUILT {
        let filter = Method::from_bytes(method.as_bytes())
            .ok()
            .and_then(|m| MethodFilter::try_from(m).ok())
            .expect("NOT_BUILT names standard methods");
        let handler = move || async move { not_implemented(method, path) };
        match paths.iter_mut().find(|(p, _)| *p == path) {
            Some((_, router)) => *router = std::mem::take(router).on(filter, handler),
            None => paths.push((path, on(filter, handler))),
        }
    }
    paths
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
}
