//! The server under test: one the tool starts itself (`--spawn`, loopback ports, a
//! temporary data directory) or one already running (`--server URL --pid PID`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the server is and what the tool knows about it.
pub struct Target {
    pub base: String,
    pub pid: Option<u32>,
    pub bin: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub jwt_secret: Option<String>,
    pub service_key: Option<String>,
    child: Option<Child>,
    temp_dir: Option<PathBuf>,
}

fn free_tcp_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl Target {
    /// A server already running at `base`.
    pub fn external(
        base: &str,
        pid: Option<u32>,
        bin: Option<PathBuf>,
        data_dir: Option<PathBuf>,
    ) -> Self {
        Target {
            base: base.trim_end_matches('/').to_string(),
            pid,
            bin,
            data_dir,
            jwt_secret: None,
            service_key: None,
            child: None,
            temp_dir: None,
        }
    }

    /// Starts `bin` on free loopback ports with a fresh data directory, the given
    /// extra `TANDEM_*` variables, and waits for `/readyz`.
    /// With `cpus`, the server runs on those CPUs only.
    pub async fn spawn(
        bin: &Path,
        extra_env: &[(String, String)],
        cpus: Option<&[usize]>,
    ) -> Result<Target, String> {
        let dir = std::env::temp_dir().join(format!(
            "tandem-loadtest-{}-{}",
            std::process::id(),
            random_hex(6)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
        let http_port = free_tcp_port().map_err(|e| e.to_string())?;
        let jwt_secret = random_hex(32);
        let service_key = random_hex(24);
        let mut cmd = Command::new(bin);
        cmd.env("TANDEM_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            // Port 0: the server picks one free for both UDP and ICE-TCP (a port
            // free for UDP here may be taken for TCP).
            .env("TANDEM_MEDIA_PORT", "0")
            .env("TANDEM_MEDIA_BIND", "127.0.0.1")
            .env("TANDEM_PUBLIC_IP", "127.0.0.1")
            .env("TANDEM_DATA_DIR", &dir)
            .env("TANDEM_DEMO", "false")
            .env("TANDEM_JWT_SECRET", &jwt_secret)
            .env("TANDEM_SERVICE_KEY", &service_key)
            .env("TANDEM_MEDIA__MAX_SESSIONS", "20000")
            .env("TANDEM_MEDIA__MAX_VIEWERS_PER_STREAM", "20000")
            // Every simulated client connects from 127.0.0.1: no per-address cap.
            .env("TANDEM_HTTP__MAX_CONNECTIONS_PER_IP", "0")
            .env(
                "RUST_LOG",
                std::env::var("TANDEM_LOADTEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        if let Some(cpus) = cpus {
            let cpus = cpus.to_vec();
            // SAFETY: between fork and exec the closure only calls sched_setaffinity
            // (async-signal-safe) on a CPU list allocated before the fork.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || set_affinity(&cpus));
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut target = Target {
            base: format!("http://127.0.0.1:{http_port}"),
            pid: Some(child.id()),
            bin: Some(bin.to_path_buf()),
            data_dir: Some(dir.clone()),
            jwt_secret: Some(jwt_secret),
            service_key: Some(service_key),
            child: Some(child),
            temp_dir: Some(dir),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = target.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("{} exited during start: {status}", bin.display()));
            }
            if let Ok(r) = http.get(format!("{}/readyz", target.base)).send().await
                && r.status().is_success()
            {
                return Ok(target);
            }
            if Instant::now() > deadline {
                return Err("the spawned server did not become ready within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A media token from `tandem token` run with the server's data directory.
    pub fn media_token(&self, stream: &str, publish: bool) -> Result<String, String> {
        let bin = self
            .bin
            .as_ref()
            .ok_or("no tandem binary given (--tandem-bin) to mint tokens")?;
        let dir = self
            .data_dir
            .as_ref()
            .ok_or("no data directory given (--data-dir) to mint tokens")?;
        let out = Command::new(bin)
            .env("TANDEM_DATA_DIR", dir)
            .args([
                "token",
                "--stream",
                stream,
                if publish { "--publish" } else { "--subscribe" },
            ])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("tandem token: {e}"))?;
        if !out.status.success() {
            return Err(format!("tandem token failed: {}", out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops a spawned server (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the child this tool started, by its own pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sum of a Prometheus metric's samples whose labels include `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (lbls, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        if labels
            .iter()
            .all(|(k, v)| lbls.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// Restricts the calling thread (and the threads and processes it starts later) to
/// `cpus`.
pub fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET is bounds-checked by
    // the caller's CPU numbers being below CPU_SETSIZE (parse_cpus) and the set is ours.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Fetches `/metrics`.
pub async fn scrape(http: &reqwest::Client, base: &str) -> String {
    match http.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_sums_matching_samples() {
        let text = "# HELP x\nx_total{direction=\"out\"} 5\nx_total{direction=\"in\"} 2\nx_total_other 9\ny 1\n";
        assert_eq!(super::metric(text, "x_total", &[("direction", "out")]), 5.0);
        assert_eq!(super::metric(text, "x_total", &[]), 7.0);
        assert_eq!(super::metric(text, "y", &[]), 1.0);
    }
}
