//! A fresh database per test: a SQLite file in the test's data directory, or a
//! PostgreSQL database `tandem_t_<uuid>` on 127.0.0.1:5432 (trust auth, user
//! `postgres`) created for the test and dropped afterwards, even when it fails.

use std::path::Path;

use sqlx::Connection;

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an `async fn(Backend)` test once per backend, as two `#[tokio::test]`s named
/// `<test>::sqlite` and `<test>::postgres` (the fast tier filters on `::sqlite`).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::support::Backend::Postgres).await
            }
        }
    )*};
}

/// One test's database; a PostgreSQL one is dropped with this handle.
pub struct TestDb {
    url: String,
    pg_name: Option<String>,
}

impl TestDb {
    /// A SQLite file `t.db` in `dir` (created on first connect).
    pub fn sqlite(dir: &Path) -> TestDb {
        TestDb {
            url: format!("sqlite://{}?mode=rwc", dir.join("t.db").display()),
            pg_name: None,
        }
    }

    /// A new, empty PostgreSQL database; an error when no server answers.
    pub async fn postgres() -> Result<TestDb, sqlx::Error> {
        let name = format!("tandem_t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await.ok();
        Ok(TestDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            pg_name: Some(name),
        })
    }

    /// A fresh database of `backend`; SQLite's lives in `dir`.
    pub async fn fresh(backend: Backend, dir: &Path) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb::sqlite(dir),
            Backend::Postgres => TestDb::postgres()
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (trust auth) is needed for these tests"),
        }
    }

    /// The `database_url` a server uses for it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops a PostgreSQL database now (after its server is shut down).
    pub async fn drop_now(mut self) {
        if let Some(name) = self.pg_name.take() {
            drop_pg(&name).await;
        }
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

impl Drop for TestDb {
    /// A failed test still drops its database: on a thread of its own, because the
    /// test's runtime may be the one unwinding.
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
    }
}
