//! The database: connect by URL (SQLite embedded default, PostgreSQL in production)
//! and run the matching migrations at start.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AnyPool, ConnectOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A pool over whichever backend the URL names; queries are written once with
/// `$1`-style parameters, which both backends accept.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL must start with sqlite: or postgres:// (got '{0}')")]
    Scheme(String),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "data directory {dir} is not writable ({source}); the SQLite database and its \
         journal live there: mount it read-write, fix its owner/permissions, or set \
         data_dir / database_url elsewhere"
    )]
    NotWritable { dir: String, source: std::io::Error },
}

/// What the write probe found (`/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Not even `SELECT 1` answers.
    Unreachable,
    /// Reads work, writes fail.
    ReadOnly,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Unreachable => "unreachable",
            Health::ReadOnly => "read_only",
        }
    }
}

/// Where the database lives, for errors: the SQLite file, or the redacted URL.
pub fn location(url: &str) -> String {
    match SqliteConnectOptions::from_str(url) {
        Ok(opts) if url.starts_with("sqlite:") => opts.get_filename().display().to_string(),
        _ => redact_url(url),
    }
}

/// Creates and removes a file in `dir`: the honest test of "can we write here"
/// (permission bits say nothing of read-only mounts, and nothing at all to root).
fn check_dir_writable(dir: &std::path::Path) -> Result<(), DbError> {
    let probe = dir.join(format!(".tandem-write-probe-{}", std::process::id()));
    let result = std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe));
    result.map_err(|source| DbError::NotWritable {
        dir: dir.display().to_string(),
        source,
    })
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Db {
    /// Connects and migrates. For SQLite the file (and its directory) is created;
    /// PostgreSQL gets a pool of `pool_size` connections.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::Scheme(redact_url(url)));
        };
        let pool = match backend {
            Backend::Sqlite => {
                let opts = SqliteConnectOptions::from_str(url)?;
                if let Some(dir) = opts.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir)?;
                    check_dir_writable(dir)?;
                }
                // WAL lets readers work while a writer holds the lock; busy_timeout makes
                // concurrent writers wait instead of failing with SQLITE_BUSY.
                let url = opts
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    .to_url_lossy();
                let sqlite_url = url.as_str().to_string();
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // The Any driver does not carry SqliteConnectOptions' pragmas.
                            sqlx::query("PRAGMA foreign_keys = ON")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA busy_timeout = 10000")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&sqlite_url)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(pool_size.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    // sqlx pings every connection on checkout by default: a round trip
                    // per request. A connection that died since its last use fails that
                    // one request instead (a 500, nothing written; sqlx then drops it).
                    .test_before_acquire(false)
                    .connect(url)
                    .await?
            }
        };
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await?;
        Ok(Db { pool, backend })
    }

    /// True when a trivial query succeeds.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Rewrites the one `write_probe` row in a committed statement: a read-only
    /// file or mount, a full disk or a read-only PostgreSQL replica all fail it.
    pub async fn write_probe(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO write_probe (id, at_ms) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
        )
        .bind(crate::clock::now_ms())
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// The write probe, told apart from an unreachable database. Failures are
    /// logged at warn (callers cache the answer, so at most about once a second).
    pub async fn health(&self) -> Health {
        match self.write_probe().await {
            Ok(()) => Health::Ok,
            Err(err) => {
                let health = if self.ping().await {
                    Health::ReadOnly
                } else {
                    Health::Unreachable
                };
                tracing::warn!(error = %err, health = health.as_str(), "database write probe failed");
                health
            }
        }
    }
}

/// Ends every media session record that has no end time (at `now`, unix ms).
/// Called at start, before this node runs any session: a record still open then
/// belongs to a session that died with the previous process (or whose end could
/// not be written). The records carry no node id, so with several nodes on one
/// database a starting node would also end the records of sessions running on the
/// others; such deployments need a `node` column to scope this (see docs/MEDIA.md).
pub async fn end_open_sessions(db: &Db, now: i64) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE media_sessions SET ended_at = $1 WHERE ended_at IS NULL")
            .bind(now)
            .execute(&db.pool)
            .await?
            .rows_affected(),
    )
}

/// Ends of media sessions that could not be written (the database was down), kept
/// to be written when it answers again. Bounded: past [`SessionEnds::CAPACITY`] the
/// oldest is dropped (the next start's [`end_open_sessions`] still closes it).
#[derive(Debug, Default)]
pub struct SessionEnds {
    pending: std::collections::VecDeque<(String, i64)>,
}

impl SessionEnds {
    /// 10,000 ends ≈ 1 MB: hours of churn on one node, a bounded cost however long
    /// the database stays away.
    pub const CAPACITY: usize = 10_000;

    /// Ends still waiting for the database.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes one session's end; on failure keeps it for [`SessionEnds::retry`].
    /// A success also retries what is pending (the database is back).
    pub async fn end(&mut self, db: &Db, id: String, at: i64) -> Result<(), sqlx::Error> {
        match write_end(db, &id, at).await {
            Ok(()) => {
                self.retry(db).await;
                Ok(())
            }
            Err(err) => {
                if self.pending.len() >= Self::CAPACITY {
                    self.pending.pop_front();
                }
                self.pending.push_back((id, at));
                Err(err)
            }
        }
    }

    /// Writes the pending ends, oldest first, until one fails (the database is
    /// still away: the rest wait for the next try). Returns how many were written.
    pub async fn retry(&mut self, db: &Db) -> usize {
        let mut written = 0;
        while let Some((id, at)) = self.pending.front() {
            if write_end(db, id, *at).await.is_err() {
                break;
            }
            self.pending.pop_front();
            written += 1;
        }
        if written > 0 {
            tracing::info!(
                written,
                left = self.pending.len(),
                "wrote media session ends kept while the database was away"
            );
        }
        written
    }
}

async fn write_end(db: &Db, id: &str, at: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE media_sessions SET ended_at = $1 WHERE id = $2 AND ended_at IS NULL")
        .bind(at)
        .bind(id)
        .execute(&db.pool)
        .await
        .map(|_| ())
}

pub use crate::text::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://bob:hunter2@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://data/t.db"), "sqlite://data/t.db");
    }
}
