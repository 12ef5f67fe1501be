//! The real WebRTC peers the media tests drive, as child processes: headless
//! Chromium through `tests/peers/browser.js` ([`Browser`]) and aiortc through
//! `tests/peers/*.py` ([`PyPeer`]). A peer is killed when its handle drops; its
//! stderr is kept and printed only when a test fails.
//!
//! The peers are installed by `scripts/test.sh` (Chromium, `.venv` with aiortc,
//! `tests/peers/node_modules`); a test run without them fails and says so.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::app::{TestApp, repo_root};

fn require(path: &Path, what: &str) {
    assert!(
        path.exists(),
        "{what} not found at {} — run scripts/test.sh once (it installs the real test peers)",
        path.display()
    );
}

pub fn python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    require(&p, "the Python venv with aiortc");
    p
}

pub fn peers_dir() -> PathBuf {
    repo_root().join("tests/peers")
}

/// `tests/peers` with playwright-core installed (`scripts/test.sh` runs `npm ci`).
pub fn playwright_peers() -> PathBuf {
    let dir = peers_dir();
    require(
        &dir.join("node_modules/playwright-core"),
        "playwright-core (npm ci in tests/peers)",
    );
    dir
}

pub fn chromium() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("TANDEM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    require(&p, "Chromium");
    p
}

/// Collected stderr of a peer, printed if the test fails while it is alive.
#[derive(Clone, Default)]
struct StderrLog(Arc<Mutex<Vec<String>>>);

impl StderrLog {
    fn spawn_reader(&self, stderr: tokio::process::ChildStderr) {
        let log = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut v = log.0.lock().unwrap();
                v.push(line);
                if v.len() > 2000 {
                    v.drain(..500);
                }
            }
        });
    }
    fn tail(&self, n: usize) -> String {
        let v = self.0.lock().unwrap();
        v[v.len().saturating_sub(n)..].join("\n")
    }
}

/// A child process speaking JSON lines on stdout; killed on drop.
struct JsonChild {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: StderrLog,
}

impl JsonChild {
    fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stderr = StderrLog::default();
        stderr.spawn_reader(child.stderr.take().expect("stderr piped"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        JsonChild {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// The next JSON line, or an error on EOF/timeout/garbage.
    async fn next(&mut self, within: Duration) -> Result<Value, String> {
        loop {
            let line = match tokio::time::timeout(within, self.stdout.next_line()).await {
                Err(_) => return Err(format!("{}: no output within {within:?}", self.name)),
                Ok(Err(e)) => return Err(format!("{}: reading stdout: {e}", self.name)),
                Ok(Ok(None)) => {
                    return Err(format!(
                        "{}: exited ({:?}); stderr:\n{}",
                        self.name,
                        self.child.try_wait().ok().flatten(),
                        self.stderr.tail(60)
                    ));
                }
                Ok(Ok(Some(line))) => line,
            };
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(&line)
                .map_err(|e| format!("{}: not JSON ({e}): {line}", self.name));
        }
    }

    async fn send_line(&mut self, line: &str) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{}: stdin closed", self.name))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| format!("{}: writing stdin: {e}", self.name))?;
        stdin
            .flush()
            .await
            .map_err(|e| format!("{}: flushing stdin: {e}", self.name))
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }
}

impl Drop for JsonChild {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- stderr of {} (last lines) -----\n{}\n-----",
                self.name,
                self.stderr.tail(80)
            );
        }
        // SIGTERM first so node can close Chromium; kill_on_drop's SIGKILL follows.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.start_kill();
    }
}

/// An aiortc peer (`tests/peers/publisher.py` or `viewer.py`).
pub struct PyPeer {
    proc: JsonChild,
    /// Every event seen so far, in order.
    pub events: Vec<Value>,
}

impl PyPeer {
    /// Runs `tests/peers/{script}` with `args` under the venv's Python.
    pub fn spawn(name: &str, script: &str, args: &[&str]) -> PyPeer {
        let mut cmd = Command::new(python());
        cmd.arg("-u")
            .arg(peers_dir().join(script))
            .args(args)
            .current_dir(peers_dir());
        PyPeer {
            proc: JsonChild::spawn(name, cmd),
            events: Vec::new(),
        }
    }

    /// An aiortc WHIP publisher sending synthetic video and audio until stopped.
    pub fn publisher(app: &TestApp, stream: &str, extra: &[&str]) -> PyPeer {
        let url = app.whip_url(stream);
        let token = app.publish_token(stream);
        let mut args = vec!["--url", &url, "--token", &token];
        args.extend_from_slice(extra);
        PyPeer::spawn(&format!("publisher({stream})"), "publisher.py", &args)
    }

    /// An aiortc WHEP viewer; `extra` sets its goals (`--frames`, `--min-seconds`, ...).
    pub fn viewer(app: &TestApp, name: &str, stream: &str, extra: &[&str]) -> PyPeer {
        let url = app.whep_url(stream);
        let token = app.subscribe_token(stream);
        let mut args = vec!["--url", &url, "--token", &token];
        args.extend_from_slice(extra);
        PyPeer::spawn(name, "viewer.py", &args)
    }

    /// Waits for the event named `event` (earlier ones are kept in `events`);
    /// panics if the peer ends ("done") first or nothing comes within `within`.
    pub async fn wait_event(&mut self, event: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .proc
                .next(left.max(Duration::from_millis(1)))
                .await
                .unwrap_or_else(|e| panic!("waiting for '{event}': {e}"));
            self.events.push(v.clone());
            let name = v["event"].as_str().unwrap_or_default();
            if name == event {
                return v;
            }
            if name == "done" {
                panic!(
                    "{} ended before '{event}': {v}\nstderr:\n{}",
                    self.proc.name,
                    self.proc.stderr.tail(60)
                );
            }
        }
    }

    /// Tells the peer to finish (closes its stdin) and returns its "done" event.
    pub async fn stop(mut self, within: Duration) -> Value {
        self.proc.close_stdin();
        self.done(within).await
    }

    /// Waits for the peer's "done" event without telling it to stop.
    pub async fn done(&mut self, within: Duration) -> Value {
        if let Some(v) = self.events.iter().find(|v| v["event"] == "done") {
            return v.clone();
        }
        self.wait_event("done", within).await
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        self.proc.stderr.tail(n)
    }

    /// The peer's process id (to pause it with SIGSTOP, say).
    pub fn pid(&self) -> u32 {
        self.proc.child.id().expect("the peer is running")
    }
}

/// Headless Chromium (Debian's) with pages the test opens and inspects.
pub struct Browser {
    proc: JsonChild,
    next_id: u64,
    pub version: String,
}

impl Browser {
    pub async fn launch() -> Browser {
        let node_modules = peers_dir().join("node_modules/playwright-core");
        require(&node_modules, "playwright-core (tests/peers/node_modules)");
        let chromium = chromium();
        let mut cmd = Command::new("node");
        cmd.arg(peers_dir().join("browser.js"))
            .env("TANDEM_CHROMIUM", chromium)
            .current_dir(peers_dir());
        let mut proc = JsonChild::spawn("chromium", cmd);
        let ready = proc
            .next(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("Chromium did not start: {e}"));
        assert_eq!(ready["ready"], true, "unexpected first line: {ready}");
        Browser {
            version: ready["version"].as_str().unwrap_or_default().to_string(),
            proc,
            next_id: 1,
        }
    }

    async fn call(&mut self, mut msg: Value, within: Duration) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        msg["id"] = json!(id);
        self.proc.send_line(&msg.to_string()).await?;
        loop {
            let v = self.proc.next(within).await?;
            if v["id"] != json!(id) {
                continue; // an answer to an earlier, timed-out call
            }
            return if v["ok"] == true {
                Ok(v["value"].clone())
            } else {
                Err(v["error"].as_str().unwrap_or("?").to_string())
            };
        }
    }

    /// Opens `url` in a new page called `name`.
    pub async fn open(&mut self, name: &str, url: &str) {
        self.call(
            json!({"cmd": "open", "name": name, "url": url}),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("opening {name} ({url}): {e}"));
    }

    /// Opens `url` in a new page called `name`, with `init` (JavaScript) run
    /// before the page's own scripts.
    pub async fn open_with_init(&mut self, name: &str, url: &str, init: &str) {
        self.call(
            json!({"cmd": "open", "name": name, "url": url, "init": init}),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("opening {name} ({url}): {e}"));
    }

    /// Evaluates a JS expression (may be a promise) in page `name`.
    pub async fn eval(&mut self, name: &str, expr: &str) -> Result<Value, String> {
        self.call(
            json!({"cmd": "eval", "name": name, "expr": expr}),
            Duration::from_secs(30),
        )
        .await
    }

    /// `window.tandem.stats()` of page `name`.
    pub async fn stats(&mut self, name: &str) -> Value {
        self.eval(name, "window.tandem.stats()")
            .await
            .unwrap_or_else(|e| panic!("stats of {name}: {e}"))
    }

    /// Polls `window.tandem.stats()` of `pages` (every 250 ms) until `check` accepts
    /// them; panics after `within` with what `check` last said.
    pub async fn wait_stats<T>(
        &mut self,
        pages: &[&str],
        what: &str,
        within: Duration,
        mut check: impl FnMut(&[Value]) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let mut all = Vec::with_capacity(pages.len());
            for p in pages {
                all.push(self.stats(p).await);
            }
            match check(&all) {
                Ok(v) => return v,
                Err(last) if Instant::now() >= deadline => {
                    panic!("timed out after {within:?} waiting for {what}; last seen: {last}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Saves a PNG of page `name` (for looking at a failure).
    pub async fn screenshot(&mut self, name: &str, path: &Path) -> Result<Value, String> {
        self.call(
            json!({"cmd": "screenshot", "name": name, "path": path}),
            Duration::from_secs(30),
        )
        .await
    }

    /// Closes page `name` (its pagehide handler DELETEs the session).
    pub async fn close(&mut self, name: &str) {
        let _ = self
            .call(
                json!({"cmd": "close", "name": name}),
                Duration::from_secs(30),
            )
            .await;
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        self.proc.stderr.tail(n)
    }

    pub async fn quit(mut self) {
        let _ = self
            .call(json!({"cmd": "quit"}), Duration::from_secs(10))
            .await;
        self.proc.close_stdin();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.proc.child.wait()).await;
    }
}

/// `Some(n)` for a JSON number (integer or float).
pub fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// `encodeURIComponent`-safe enough for tokens (JWTs are URL-safe already).
pub fn page_url(app: &TestApp, page: &str, stream: &str, token: &str, extra: &str) -> String {
    format!("{}/{page}/{stream}?token={token}{extra}", app.base)
}
