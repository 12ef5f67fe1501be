//! `tandem-loadtest enroll` on a small storm against a server in this process (SQLite):
//! every affordable enrollment succeeds, the rest are refused, nobody overspends.

use crate::support::*;
use std::time::Duration;

use tandem_loadtest::enroll::{self, EnrollConfig};

const SECRET: &str = "loadtest-enroll-identity-secret-0123456789";
const SERVICE: &str = "loadtest-enroll-service-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_mode_counts_enrollments_and_audits_balances() {
    let app = TestApp::builder()
        .config(|c| {
            c.jwt_secret = SECRET.into();
            c.service_key = SERVICE.into();
        })
        .spawn()
        .await;
    let cfg = EnrollConfig {
        base: app.base.clone(),
        jwt_secret: SECRET.into(),
        service_key: SERVICE.into(),
        server_pid: Some(std::process::id()),
        users: 20,
        streams: 5,
        price: 10,
        affordable: 3,
        reads_per_enrollment: 1,
        concurrency: 16,
        max_duration: Duration::from_secs(60),
        progress: false,
        database: "sqlite".into(),
    };
    let r = enroll::run(&cfg).await.expect("the enroll run completes");
    let table = tandem_loadtest::report::table("enroll", &enroll::rows(&r));
    println!("{table}");

    assert_eq!(r.attempts, 100, "{table}");
    assert_eq!(r.other_errors, 0, "{table}\n{:?}", r.first_errors);
    assert_eq!(r.enrolled, 60, "{table}");
    assert_eq!(r.refused_insufficient, 40, "{table}");
    assert_eq!(r.reads, 100, "{table}");
    assert_eq!(r.overspent_users, 0, "{table}\n{:?}", r.audit_errors);
    assert!(r.audit_errors.is_empty(), "{:?}", r.audit_errors);
    assert!(
        r.enrollments_per_s > 0.0 && r.enroll_latency.count == 100,
        "{table}"
    );
    app.shutdown().await;
}
