//! Background jobs: replay-access expiry and recording cleanup, catalog migration
//! to a webhook, idempotency-key pruning, peak-viewer sampling.
//!
//! Every job claims its work with a conditional UPDATE, so several nodes can run
//! them at once without doing anything twice. Time comes from a [`Clock`], so tests
//! advance it instead of sleeping.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::streams::{self, StreamRow};
use crate::state::AppState;

// Re-exported where the jobs' tests have always found them.
pub use crate::clock::{Clock, ManualClock, SystemClock};

/// What one catalog-migration pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub delivered: Vec<String>,
    pub failed: Vec<String>,
}

/// What one replay-expiry pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExpiryReport {
    pub closed: Vec<String>,
    pub recordings_deleted: Vec<String>,
    /// Recordings of non-business streams deleted after `[recording] keep_days`.
    pub other_recordings_deleted: usize,
}

/// One job runner (one per node). Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    state: AppState,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    runner: String,
}

impl Jobs {
    pub fn new(state: AppState, clock: Arc<dyn Clock>) -> Self {
        let timeout = Duration::from_secs(state.config.api.catalog_timeout_seconds.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self {
            state,
            clock,
            http,
            runner: format!("runner-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Closes replay windows that have passed and deletes their recordings.
    pub async fn expire_replays(&self) -> Result<ExpiryReport, sqlx::Error> {
        let now = self.now();
        let db = &self.state.db;
        let mut report = ExpiryReport::default();
        let due: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM streams WHERE status = 'ended' AND replay_closed_at IS NULL \
             AND replay_expires_at <= $1 ORDER BY replay_expires_at LIMIT 200",
        )
        .bind(now)
        .fetch_all(&db.pool)
        .await?;
        for (id,) in due {
            let claimed = sqlx::query(
                "UPDATE streams SET replay_closed_at = $1, updated_at = $1 \
                 WHERE id = $2 AND replay_closed_at IS NULL AND replay_expires_at <= $1",
            )
            .bind(now)
            .bind(&id)
            .execute(&db.pool)
            .await?
            .rows_affected();
            if claimed == 1 {
                sqlx::query(
                    "DELETE FROM media_grants WHERE enrollment_id IN \
                     (SELECT id FROM enrollments WHERE stream_id = $1)",
                )
                .bind(&id)
                .execute(&db.pool)
                .await?;
                tracing::info!(stream = %id, "replay access ended");
                // The course server's role goes with the access.
                self.state.discord.stream_changed(&id);
                report.closed.push(id);
            }
        }
        // Recordings of closed replays, including ones that appeared after the close.
        let recordings: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, recording_path FROM streams WHERE replay_closed_at IS NOT NULL \
             AND recording_path IS NOT NULL AND recording_deleted_at IS NULL LIMIT 200",
        )
        .fetch_all(&db.pool)
        .await?;
        for (id, path) in recordings {
            let claimed = sqlx::query(
                "UPDATE streams SET recording_deleted_at = $1 WHERE id = $2 AND recording_deleted_at IS NULL",
            )
            .bind(now)
            .bind(&id)
            .execute(&db.pool)
            .await?
            .rows_affected();
            if claimed == 0 {
                continue;
            }
            match self.delete_recording(&path).await {
                Ok(()) => report.recordings_deleted.push(id),
                Err(err) => {
                    tracing::warn!(stream = %id, error = %err, "deleting a recording; will retry");
                    sqlx::query("UPDATE streams SET recording_deleted_at = NULL WHERE id = $1")
                        .bind(&id)
                        .execute(&db.pool)
                        .await?;
                }
            }
        }
        // Recordings of non-business streams (operator, demo) after `keep_days`.
        report.other_recordings_deleted = self.state.recordings.expire_other().await;
        Ok(report)
    }

    /// A recording path inside the data directory (relative paths are taken from it).
    fn recording_file(&self, path: &str) -> Option<PathBuf> {
        let p = Path::new(path);
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return None;
        }
        let data_dir = &self.state.config.data_dir;
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            data_dir.join(p)
        };
        // Inside the data directory, or inside the recording root when that is
        // configured elsewhere (an absolute `[recording] root`).
        (full.starts_with(data_dir) || full.starts_with(self.state.recordings.root()))
            .then_some(full)
    }

    async fn delete_recording(&self, path: &str) -> std::io::Result<()> {
        let Some(file) = self.recording_file(path) else {
            return Err(std::io::Error::other(
                "recording path outside the data directory",
            ));
        };
        let result = match tokio::fs::metadata(&file).await {
            Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(&file).await,
            Ok(_) => tokio::fs::remove_file(&file).await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Sends streams due for catalog migration to the webhook, once each: a stream
    /// is claimed with a lease, marked `migrated_at` only on a 2xx, and otherwise
    /// retried after an exponential backoff with jitter.
    pub async fn migrate_catalog(&self) -> Result<MigrationReport, sqlx::Error> {
        let url = self.state.config.api.catalog_webhook_url.clone();
        let mut report = MigrationReport::default();
        if url.is_empty() {
            return Ok(report);
        }
        let now = self.now();
        let db = &self.state.db;
        let api = &self.state.config.api;
        let due: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM streams WHERE migrated_at IS NULL AND catalog_migration_at <= $1 \
             AND (migration_next_at IS NULL OR migration_next_at <= $1) \
             AND (migration_claimed_until IS NULL OR migration_claimed_until < $1) \
             ORDER BY catalog_migration_at LIMIT 50",
        )
        .bind(now)
        .fetch_all(&db.pool)
        .await?;
        for (id,) in due {
            let lease_until = now + (api.catalog_lease_seconds.max(1) as i64) * 1000;
            let claimed = sqlx::query(
                "UPDATE streams SET migration_claimed_by = $1, migration_claimed_until = $2 \
                 WHERE id = $3 AND migrated_at IS NULL AND catalog_migration_at <= $4 \
                 AND (migration_next_at IS NULL OR migration_next_at <= $4) \
                 AND (migration_claimed_until IS NULL OR migration_claimed_until < $4)",
            )
            .bind(&self.runner)
            .bind(lease_until)
            .bind(&id)
            .bind(now)
            .execute(&db.pool)
            .await?
            .rows_affected();
            if claimed == 0 {
                continue;
            }
            let row: StreamRow = sqlx::query_as(&format!(
                "SELECT {} FROM streams WHERE id = $1",
                streams::COLUMNS
            ))
            .bind(&id)
            .fetch_one(&db.pool)
            .await?;
            let (enrollments, revenue): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), CAST(COALESCE(SUM(price_paid), 0) AS BIGINT) FROM enrollments \
                 WHERE stream_id = $1 AND status = 'active'",
            )
            .bind(&id)
            .fetch_one(&db.pool)
            .await?;
            let payload = json!({
                "event": "stream.catalog_migration",
                "stream": streams::to_out(&self.state, &row, now),
                "recording_path": row.recording_path,
                // The replay's files: the HLS playlists (relative to the
                // recording's folder) and its length, for the catalog to import.
                "recording": row.recording_path.as_ref().filter(|_| row.has_recording()).map(|path| json!({
                    "path": path,
                    "playlist": "master.m3u8",
                    "media_playlist": "index.m3u8",
                    "duration_seconds": row.recording_duration_ms.map(|ms| ms as f64 / 1000.0),
                    "codecs": row.recording_codecs,
                })),
                "enrollments": enrollments,
                "revenue_tokens": revenue,
            });
            let sent = self
                .http
                .post(&url)
                .header("idempotency-key", format!("catalog-migration-{id}"))
                .json(&payload)
                .send()
                .await;
            let error = match sent {
                Ok(resp) if resp.status().is_success() => None,
                Ok(resp) => Some(format!("webhook answered {}", resp.status().as_u16())),
                // Without the URL: it may carry a secret.
                Err(err) => Some(format!("webhook unreachable: {}", err.without_url())),
            };
            match error {
                None => {
                    sqlx::query(
                        "UPDATE streams SET migrated_at = $1, migration_attempts = migration_attempts + 1, \
                         migration_claimed_by = NULL, migration_claimed_until = NULL, \
                         migration_last_error = NULL WHERE id = $2 AND migration_claimed_by = $3",
                    )
                    .bind(now)
                    .bind(&id)
                    .bind(&self.runner)
                    .execute(&db.pool)
                    .await?;
                    tracing::info!(stream = %id, "stream migrated to the catalog");
                    report.delivered.push(id);
                }
                Some(error) => {
                    let (attempts,): (i64,) =
                        sqlx::query_as("SELECT migration_attempts FROM streams WHERE id = $1")
                            .bind(&id)
                            .fetch_one(&db.pool)
                            .await?;
                    let delay = backoff_ms(
                        attempts + 1,
                        api.catalog_backoff_base_seconds,
                        api.catalog_backoff_max_seconds,
                    );
                    sqlx::query(
                        "UPDATE streams SET migration_attempts = migration_attempts + 1, \
                         migration_next_at = $1, migration_last_error = $2, \
                         migration_claimed_by = NULL, migration_claimed_until = NULL \
                         WHERE id = $3 AND migration_claimed_by = $4",
                    )
                    .bind(now + delay)
                    .bind(&error)
                    .bind(&id)
                    .bind(&self.runner)
                    .execute(&db.pool)
                    .await?;
                    tracing::warn!(stream = %id, attempt = attempts + 1, %error, retry_in_ms = delay, "catalog migration failed");
                    report.failed.push(id);
                }
            }
        }
        Ok(report)
    }

    /// Deletes idempotency keys older than the configured retention (≥ 24 h) and
    /// expired media grants. Returns how many keys went.
    pub async fn prune(&self) -> Result<u64, sqlx::Error> {
        let now = self.now();
        let keep_ms = self.state.config.api.idempotency_keep_hours.max(24) * 3_600_000;
        let n = super::idempotency::prune(&self.state.db, now, keep_ms).await?;
        sqlx::query("DELETE FROM media_grants WHERE expires_at < $1")
            .bind(now)
            .execute(&self.state.db.pool)
            .await?;
        Ok(n)
    }

    /// Persists the peak viewer count of live streams from the SFU's live counts.
    pub async fn sample_viewers(&self) -> Result<(), sqlx::Error> {
        let live: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, peak_viewers FROM streams WHERE status = 'live'")
                .fetch_all(&self.state.db.pool)
                .await?;
        for (id, peak) in live {
            let current = streams::live_viewers(&self.state, &id);
            streams::record_peak(&self.state, &id, peak, current).await?;
        }
        Ok(())
    }
}

/// Exponential backoff with "equal jitter": half the delay fixed, half random.
pub fn backoff_ms(attempt: i64, base_secs: u64, max_secs: u64) -> i64 {
    let exp = attempt.clamp(1, 30) - 1;
    let full = (base_secs.max(1) as i64 * 1000)
        .saturating_mul(1i64 << exp)
        .min(max_secs.max(1) as i64 * 1000);
    let half = full / 2;
    half + (rand::random::<u64>() % (half as u64 + 1)) as i64
}

/// The running interval tasks; [`JobsHandle::stop`] ends them.
pub struct JobsHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl JobsHandle {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts the jobs as tokio interval tasks on the wall clock (none when
/// `api.jobs_enabled` is false).
pub fn spawn(state: &AppState) -> JobsHandle {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let api = state.config.api.clone();
    if api.jobs_enabled {
        let jobs = Jobs::new(state.clone(), Arc::new(SystemClock));
        let every = |s: u64| Duration::from_secs(s.max(1));
        tasks.push(interval_task(
            "replay_expiry",
            every(api.replay_expiry_interval_seconds),
            stopped.clone(),
            jobs.clone(),
            |j| Box::pin(async move { j.expire_replays().await.map(|_| ()) }),
        ));
        tasks.push(interval_task(
            "catalog_migration",
            every(api.catalog_interval_seconds),
            stopped.clone(),
            jobs.clone(),
            |j| Box::pin(async move { j.migrate_catalog().await.map(|_| ()) }),
        ));
        tasks.push(interval_task(
            "prune",
            every(api.prune_interval_seconds),
            stopped.clone(),
            jobs.clone(),
            |j| Box::pin(async move { j.prune().await.map(|_| ()) }),
        ));
        tasks.push(interval_task(
            "viewer_sample",
            every(api.viewer_sample_interval_seconds),
            stopped,
            jobs,
            |j| Box::pin(async move { j.sample_viewers().await }),
        ));
    }
    JobsHandle { stop, tasks }
}

type JobFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send>>;

fn interval_task(
    name: &'static str,
    period: Duration,
    mut stopped: watch::Receiver<bool>,
    jobs: Jobs,
    run: fn(Jobs) -> JobFuture,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(err) = run(jobs.clone()).await {
                        tracing::warn!(job = name, error = %err, "job failed; will run again");
                    }
                }
                _ = stopped.changed() => break,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..40 {
            let d = backoff_ms(attempt, 30, 3600);
            let full = (30_000i64 << (attempt.min(30) - 1)).min(3_600_000);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}");
        }
    }
}
