//! `tandem-loadtest enroll`: an HTTP storm of paid enrollments and balance reads, then
//! an audit that no balance went negative and every balance matches its enrollments.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::procstat;
use crate::report::{self, Row};
use crate::stats::{Percentiles, new_histogram};
use crate::sync::identity_jwt;

#[derive(Debug, Clone)]
pub struct EnrollConfig {
    pub base: String,
    pub jwt_secret: String,
    pub service_key: String,
    pub server_pid: Option<u32>,
    pub users: usize,
    pub streams: usize,
    pub price: i64,
    /// Each user is credited enough for this many enrollments (fewer than `streams`,
    /// so the rest must be refused with 402: the overspend check has teeth).
    pub affordable: usize,
    /// Balance reads per enrollment attempt.
    pub reads_per_enrollment: usize,
    pub concurrency: usize,
    /// Stop sending new requests after this long.
    pub max_duration: Duration,
    pub progress: bool,
    /// A label for the database (`sqlite`, `postgres`).
    pub database: String,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        Self {
            base: String::new(),
            jwt_secret: String::new(),
            service_key: String::new(),
            server_pid: None,
            users: 200,
            streams: 20,
            price: 10,
            affordable: 15,
            reads_per_enrollment: 1,
            concurrency: 64,
            max_duration: Duration::from_secs(60),
            progress: false,
            database: "sqlite".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EnrollReport {
    pub database: String,
    pub users: usize,
    pub streams: usize,
    pub attempts: u64,
    pub enrolled: u64,
    pub refused_insufficient: u64,
    pub other_errors: u64,
    pub first_errors: Vec<String>,
    pub reads: u64,
    pub window_s: f64,
    pub enrollments_per_s: f64,
    pub requests_per_s: f64,
    pub enroll_latency: Percentiles,
    pub read_latency: Percentiles,
    pub server_cpu_s: f64,
    pub server_cpu_us_per_enrollment: f64,
    /// Users whose balance is negative or differs from credits − price × enrollments.
    pub overspent_users: usize,
    pub audit_errors: Vec<String>,
    pub load_average_before: f64,
    pub load_average_after: f64,
}

async fn json_req(req: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let v = r.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, v))
}

pub async fn run(cfg: &EnrollConfig) -> Result<EnrollReport, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(cfg.concurrency.max(1))
        .build()
        .map_err(|e| e.to_string())?;
    let mut report = EnrollReport {
        database: cfg.database.clone(),
        users: cfg.users,
        streams: cfg.streams,
        load_average_before: procstat::loadavg(),
        ..Default::default()
    };
    let run_id: u32 = rand::random();
    let base = &cfg.base;

    // Setup: one instructor's streams, credited users.
    let instructor = identity_jwt(
        &cfg.jwt_secret,
        &format!("lt-instr-{run_id:08x}"),
        "instructor",
    )?;
    let start = time_in_a_day();
    let mut streams = Vec::with_capacity(cfg.streams);
    for s in 0..cfg.streams {
        let (status, v) = json_req(http.post(format!("{base}/v1/streams")).bearer_auth(&instructor).json(
            &json!({"title": format!("load test {s}"), "scheduled_start": start, "price_tokens": cfg.price}),
        ))
        .await?;
        let id = v
            .get("id")
            .and_then(|i| i.as_str().map(String::from).or_else(|| Some(i.to_string())));
        match (status, id) {
            (201, Some(id)) => streams.push(id),
            _ => return Err(format!("creating a stream: {status} {v}")),
        }
    }
    let credit = cfg.price * cfg.affordable as i64;
    let users: Vec<(String, String)> = (0..cfg.users)
        .map(|u| {
            let id = format!("lt-{run_id:08x}-{u}");
            identity_jwt(&cfg.jwt_secret, &id, "user").map(|jwt| (id, jwt))
        })
        .collect::<Result<_, _>>()?;
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut setup = Vec::new();
    for (id, _) in &users {
        let req = http
            .post(format!("{base}/v1/admin/accounts/{id}/credits"))
            .bearer_auth(&cfg.service_key)
            .json(&json!({"amount": credit, "reason": "load test"}));
        let sem = sem.clone();
        setup.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            json_req(req).await
        }));
    }
    for t in setup {
        match t.await.map_err(|e| e.to_string())? {
            Ok((201, _)) => {}
            Ok((s, v)) => return Err(format!("crediting a user: {s} {v}")),
            Err(e) => return Err(format!("crediting a user: {e}")),
        }
    }

    // The storm: every user tries every stream (shuffled), with balance reads between.
    let mut jobs: Vec<(usize, usize)> = (0..cfg.users)
        .flat_map(|u| (0..cfg.streams).map(move |s| (u, s)))
        .collect();
    for i in (1..jobs.len()).rev() {
        jobs.swap(i, rand::random_range(0..=i));
    }
    let total = jobs.len() as u64;
    let pb = report::progress(cfg.progress, total, "enrollments");
    let counters = Arc::new([
        AtomicU64::new(0), // enrolled
        AtomicU64::new(0), // 402
        AtomicU64::new(0), // other
        AtomicU64::new(0), // reads
        AtomicU64::new(0), // attempts
    ]);
    let hist = Arc::new(std::sync::Mutex::new((
        new_histogram(),
        new_histogram(),
        Vec::<String>::new(),
    )));
    let users = Arc::new(users);
    let streams = Arc::new(streams);
    let p0 = cfg.server_pid.and_then(|p| procstat::sample(p).ok());
    let t0 = Instant::now();
    let deadline = t0 + cfg.max_duration;
    let mut tasks = Vec::with_capacity(jobs.len());
    for (u, s) in jobs {
        if Instant::now() > deadline {
            break;
        }
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (http, users, streams, c, hist) = (
            http.clone(),
            users.clone(),
            streams.clone(),
            counters.clone(),
            hist.clone(),
        );
        let base = base.clone();
        let reads = cfg.reads_per_enrollment;
        tasks.push(tokio::spawn(async move {
            let (_, jwt) = &users[u];
            let t = Instant::now();
            let r = json_req(
                http.post(format!("{base}/v1/streams/{}/enrollments", streams[s]))
                    .bearer_auth(jwt)
                    .header("Idempotency-Key", format!("lt-{u}-{s}")),
            )
            .await;
            let us = t.elapsed().as_micros() as u64;
            c[4].fetch_add(1, Ordering::Relaxed);
            let idx = match &r {
                Ok((201, _)) => 0,
                Ok((402, _)) => 1,
                _ => 2,
            };
            c[idx].fetch_add(1, Ordering::Relaxed);
            if let Ok(mut h) = hist.lock() {
                let _ = h.0.record(us.max(1));
                if idx == 2 && h.2.len() < 5 {
                    h.2.push(format!("{r:?}"));
                }
            }
            for _ in 0..reads {
                let t = Instant::now();
                let r = json_req(http.get(format!("{base}/v1/me/balance")).bearer_auth(jwt)).await;
                let us = t.elapsed().as_micros() as u64;
                c[3].fetch_add(1, Ordering::Relaxed);
                if let Ok(mut h) = hist.lock() {
                    let _ = h.1.record(us.max(1));
                    if !matches!(r, Ok((200, _))) && h.2.len() < 5 {
                        h.2.push(format!("balance: {r:?}"));
                    }
                }
            }
            drop(permit);
        }));
        pb.set_position(counters[4].load(Ordering::Relaxed));
    }
    for t in tasks {
        let _ = t.await;
    }
    let window = t0.elapsed().as_secs_f64();
    let p1 = cfg.server_pid.and_then(|p| procstat::sample(p).ok());
    pb.finish_and_clear();
    report.enrolled = counters[0].load(Ordering::Relaxed);
    report.refused_insufficient = counters[1].load(Ordering::Relaxed);
    report.other_errors = counters[2].load(Ordering::Relaxed);
    report.reads = counters[3].load(Ordering::Relaxed);
    report.attempts = counters[4].load(Ordering::Relaxed);
    report.window_s = window;
    report.enrollments_per_s = report.enrolled as f64 / window;
    report.requests_per_s = (report.attempts + report.reads) as f64 / window;
    if let Ok(h) = hist.lock() {
        report.enroll_latency = Percentiles::of(&h.0);
        report.read_latency = Percentiles::of(&h.1);
        report.first_errors = h.2.clone();
    }
    if let (Some(a), Some(b)) = (p0, p1) {
        let (u, s, _) = procstat::delta(&a, &b);
        report.server_cpu_s = (u + s).as_secs_f64();
        report.server_cpu_us_per_enrollment =
            report.server_cpu_s * 1e6 / report.enrolled.max(1) as f64;
    }

    // Audit: balance ≥ 0, balance = credit − price × enrollments, enrollments ≤ affordable.
    for (id, jwt) in users.iter() {
        let bal = json_req(http.get(format!("{base}/v1/me/balance")).bearer_auth(jwt)).await;
        let enr = json_req(
            http.get(format!("{base}/v1/me/enrollments"))
                .bearer_auth(jwt),
        )
        .await;
        let (Ok((200, b)), Ok((200, e))) = (bal, enr) else {
            report
                .audit_errors
                .push(format!("{id}: audit reads failed"));
            continue;
        };
        let balance = b.get("balance").and_then(Value::as_i64).unwrap_or(i64::MIN);
        let n = e
            .as_array()
            .or_else(|| e.get("enrollments").and_then(Value::as_array))
            .or_else(|| e.get("items").and_then(Value::as_array))
            .map(|a| a.len() as i64)
            .unwrap_or(-1);
        let ok = balance >= 0
            && n >= 0
            && n <= cfg.affordable as i64
            && balance == credit - cfg.price * n;
        if !ok {
            report.overspent_users += 1;
            if report.audit_errors.len() < 5 {
                report.audit_errors.push(format!(
                    "{id}: balance {balance}, {n} enrollments, credited {credit}"
                ));
            }
        }
    }
    report.load_average_after = procstat::loadavg();
    Ok(report)
}

fn time_in_a_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub fn rows(r: &EnrollReport) -> Vec<Row> {
    vec![
        Row::new("database", r.database.clone()),
        Row::new(
            "users × streams",
            format!("{} × {} ({} attempts)", r.users, r.streams, r.attempts),
        ),
        Row::new(
            "enrolled / refused 402 / other errors",
            format!(
                "{} / {} / {}",
                r.enrolled, r.refused_insufficient, r.other_errors
            ),
        ),
        Row::new("enrollments/s", format!("{:.0}", r.enrollments_per_s)).target(
            "≥ 2,000/s on PostgreSQL",
            (r.database == "postgres").then_some(r.enrollments_per_s >= 2000.0),
        ),
        Row::new(
            "requests/s (with balance reads)",
            format!("{:.0}", r.requests_per_s),
        ),
        Row::new(
            "enrollment latency p50 / p99",
            report::ms_each(&[r.enroll_latency.p50_ms, r.enroll_latency.p99_ms]),
        ),
        Row::new(
            "balance read latency p50 / p99",
            report::ms_each(&[r.read_latency.p50_ms, r.read_latency.p99_ms]),
        ),
        Row::new(
            "server CPU / enrollment",
            report::us(r.server_cpu_us_per_enrollment),
        ),
        Row::new("overspent users", r.overspent_users.to_string()).target(
            "0",
            Some(r.overspent_users == 0 && r.audit_errors.is_empty()),
        ),
        Row::new(
            "load average before / after",
            format!("{:.2} / {:.2}", r.load_average_before, r.load_average_after),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_tomorrow_is_well_formed() {
        let s = super::time_in_a_day();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }
}
