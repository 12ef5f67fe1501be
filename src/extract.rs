//! Who is calling, as axum extractors: a handler names the caller it needs in
//! its arguments ([`Identity`], [`Instructor`], [`ServiceCaller`]) instead of
//! checking the `Authorization` header in its first line. A refused caller gets
//! the contract's JSON error (401 or 403) before the handler runs.
//!
//! Handlers take them after their path and query and before the body, where the
//! check used to run: a refused caller's body is never read.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

pub use crate::auth::Identity;
use crate::auth::{NO_JWT_SECRET, NO_SERVICE_KEY, Role, bearer, secrets_equal};
use crate::error::AppError;
use crate::state::AppState;

/// The platform user behind `Authorization: Bearer <identity JWT>`.
impl FromRequestParts<AppState> for Identity {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        // Without a jwt_secret no token can pass: say so before asking for one.
        if !state.identity.configured() {
            return Err(AppError::unauthorized(NO_JWT_SECRET));
        }
        let token = bearer(&parts.headers).ok_or_else(|| {
            AppError::unauthorized("missing identity token: send Authorization: Bearer <JWT>")
        })?;
        state.identity.verify(token)
    }
}

/// An instructor (or admin) identity; a plain user gets 403.
#[derive(Debug, Clone)]
pub struct Instructor(pub Identity);

impl FromRequestParts<AppState> for Instructor {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let id = Identity::from_request_parts(parts, state).await?;
        match id.role {
            Role::Instructor | Role::Admin => Ok(Instructor(id)),
            Role::User => Err(AppError::forbidden("this needs the instructor role")),
        }
    }
}

/// A server-to-server call with the configured service key. A valid identity
/// token instead gets 403; anything else 401.
#[derive(Debug, Clone, Copy)]
pub struct ServiceCaller;

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let key = &state.config.service_key;
        let token = bearer(&parts.headers);
        // No key configured: nothing can pass, and the caller (often the operator
        // trying the API for the first time) is told why instead of "not valid".
        if key.is_empty() {
            if token.is_some_and(|t| state.identity.verify(t).is_ok()) {
                return Err(AppError::forbidden(format!(
                    "this route needs the service key; {NO_SERVICE_KEY}"
                )));
            }
            return Err(AppError::unauthorized(NO_SERVICE_KEY));
        }
        let token = token.ok_or_else(|| {
            AppError::unauthorized("missing service key: send Authorization: Bearer <service key>")
        })?;
        if secrets_equal(token, key) {
            return Ok(ServiceCaller);
        }
        if state.identity.verify(token).is_ok() {
            return Err(AppError::forbidden("this route needs the service key"));
        }
        Err(AppError::unauthorized("the service key is not valid"))
    }
}
