//! What the business-API tests add to [`TestApp`]: the API preset ([`api_app`]:
//! identity and service secrets, a fresh database of the chosen backend, no
//! background jobs), identity JWTs as the platform issues them, and JSON requests
//! answered as [`Resp`].

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::app::{TestApp, TestAppBuilder};
use super::db::Backend;

/// The identity-JWT secret (`jwt_secret`) of servers that accept platform identities.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";
/// The service key (`service_key`) of [`api_app`] servers.
pub const SERVICE_KEY: &str = "test-service-key-0123456789abcdef";

/// A server for the business-API tests: a fresh `backend` database, [`JWT_SECRET`]
/// and [`SERVICE_KEY`], background jobs off (tests run them by hand).
pub fn api_app(backend: Backend) -> TestAppBuilder {
    TestApp::builder().backend(backend).config(|c| {
        c.jwt_secret = JWT_SECRET.into();
        c.service_key = SERVICE_KEY.into();
        c.api.jobs_enabled = false;
        // These tests open no media sessions; a random UDP port's TCP twin may be taken.
        c.media.ice_tcp = false;
    })
}

/// [`api_app`] started as it is.
pub async fn spawn_api(backend: Backend) -> TestApp {
    api_app(backend).spawn().await
}

/// Unix time in whole seconds, unsigned (token `exp`, `nbf`).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Unix time in whole seconds, signed (to compare with parsed RFC 3339 times).
pub fn unix_secs() -> i64 {
    now_secs() as i64
}

/// An HS256 identity JWT signed with `secret`; `claims` is used as given (so tests
/// can leave out `exp`, put the role anywhere, ...).
pub fn identity_jwt(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing")
}

/// An identity JWT as the platform issues it, signed with [`JWT_SECRET`].
pub fn identity_token(user: &str, role: &str, ttl_secs: i64) -> String {
    let claims = json!({
        "sub": user,
        "role": "authenticated",
        "app_metadata": {"role": role},
        "exp": now_secs() as i64 + ttl_secs,
    });
    identity_jwt(JWT_SECRET, &claims)
}

pub fn user(id: &str) -> String {
    identity_token(id, "user", 3600)
}

pub fn instructor(id: &str) -> String {
    identity_token(id, "instructor", 3600)
}

/// A response as status + JSON (Null when the body is not JSON).
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestApp {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            body,
            text,
            headers,
        }
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Resp {
        self.send(reqwest::Method::GET, path, bearer, None, &[])
            .await
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> Resp {
        self.send(
            reqwest::Method::POST,
            path,
            bearer,
            Some(&body.to_string()),
            &[],
        )
        .await
    }

    pub async fn put(&self, path: &str, bearer: Option<&str>, body: Value) -> Resp {
        self.send(
            reqwest::Method::PUT,
            path,
            bearer,
            Some(&body.to_string()),
            &[],
        )
        .await
    }

    pub async fn credit(&self, user: &str, amount: i64) -> Resp {
        let r = self
            .post(
                &format!("/v1/admin/accounts/{user}/credits"),
                Some(SERVICE_KEY),
                json!({"amount": amount, "reason": "purchase"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r
    }

    /// Creates a scheduled stream starting in a day; returns its id.
    pub async fn create_stream(&self, instructor_id: &str, price: i64) -> String {
        let r = self
            .post(
                "/v1/streams",
                Some(&instructor(instructor_id)),
                json!({
                    "title": format!("Class by {instructor_id}"),
                    "scheduled_start": "2030-01-31T18:00:00Z",
                    "price_tokens": price,
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_string()
    }

    pub async fn balance_of(&self, user: &str) -> i64 {
        let row: Option<(i64,)> = sqlx::query_as("SELECT balance FROM accounts WHERE user_id = $1")
            .bind(user)
            .fetch_optional(self.pool())
            .await
            .unwrap();
        row.map(|r| r.0).unwrap_or(0)
    }

    pub async fn ledger_sum(&self, user: &str) -> i64 {
        let (sum,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM token_transactions WHERE user_id = $1",
        )
        .bind(user)
        .fetch_one(self.pool())
        .await
        .unwrap();
        sum
    }
}
