//! Test harness of the business API tests: `spawn_app(backend)` starts a real server
//! on a fresh SQLite file or a fresh PostgreSQL database, and drops it afterwards.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use tandem::config::Config;

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";
pub const SERVICE_KEY: &str = "test-service-key-0123456789abcdef";
const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an `async fn(Backend)` test once per backend, as two `#[tokio::test]`s.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::common_api::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::common_api::Backend::Postgres).await
            }
        }
    )*};
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub running: Option<tandem::Running>,
    pub backend: Backend,
    data_dir: PathBuf,
    pg_name: Option<String>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

/// Starts a server with extra `TANDEM_*` settings.
pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let data_dir = std::env::temp_dir().join(format!("tandem-api-{id}"));
    std::fs::create_dir_all(&data_dir).unwrap();
    let (url, pg_name) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}?mode=rwc", data_dir.join("t.db").display()),
            None,
        ),
        Backend::Postgres => {
            let name = format!("tandem_t_{id}");
            let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (trust auth) is needed for these tests");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.ok();
            (
                format!("postgres://postgres@127.0.0.1:5432/{name}"),
                Some(name),
            )
        }
    };
    let mut env: Vec<(String, String)> = [
        ("TANDEM_HTTP_ADDR", "127.0.0.1:0"),
        ("TANDEM_MEDIA_PORT", "0"),
        ("TANDEM_DATA_DIR", data_dir.to_str().unwrap()),
        ("TANDEM_DATABASE_URL", &url),
        ("TANDEM_JWT_SECRET", JWT_SECRET),
        ("TANDEM_SERVICE_KEY", SERVICE_KEY),
        ("TANDEM_DEMO", "false"),
        ("TANDEM_API__JOBS_ENABLED", "false"),
        // These tests open no media sessions; a random UDP port's TCP twin may be taken.
        ("TANDEM_MEDIA__ICE_TCP", "false"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::load_with_env(None, env).unwrap();
    let running = tandem::start(config).await.unwrap();
    TestApp {
        base: running.base_url(),
        client: reqwest::Client::new(),
        running: Some(running),
        backend,
        data_dir,
        pg_name,
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An identity JWT as the platform would issue it.
pub fn identity_token(user: &str, role: &str, ttl_secs: i64) -> String {
    let claims = json!({
        "sub": user,
        "role": "authenticated",
        "app_metadata": {"role": role},
        "exp": now_secs() as i64 + ttl_secs,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
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
    pub fn state(&self) -> &tandem::AppState {
        &self.running.as_ref().unwrap().state
    }

    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.state().db.pool
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
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

    /// Shuts the server down and removes its database.
    pub async fn finish(mut self) {
        if let Some(running) = self.running.take() {
            running.state.db.pool.close().await;
            running.shutdown().await;
        }
        if let Some(name) = self.pg_name.take() {
            drop_pg(&name).await;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

async fn drop_pg(name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
    }
}

impl Drop for TestApp {
    /// A failed test still drops its database.
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(drop_pg(&name))
            })
            .join();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
