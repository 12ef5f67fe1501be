//! The real `tandem` binary for tests of what a person at a terminal meets: a
//! child process in a directory of the test's, with none of the test process's
//! own `TANDEM_*` variables, and the banner it prints at start.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary cargo built for these tests.
pub const TANDEM_BIN: &str = env!("CARGO_BIN_EXE_tandem");

/// The lines the server printed on stdout at start, up to its last link.
pub struct Banner {
    pub lines: Vec<String>,
}

impl Banner {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The URL after `name:` (`broadcast`, `watch`, `together`, `streams`).
    pub fn link(&self, name: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name}: link in the banner:\n{}", self.text()))
            .to_string()
    }
}

/// Starts `tandem` (serve) in `cwd` with only `env` among the `TANDEM_*` variables
/// and the default log filter, and reads its banner up to the `streams:` link (the
/// last line of a server with the demo on); the rest of its stdout is read and
/// dropped. The server's stderr goes to `stderr`. The child is killed when dropped.
pub async fn spawn_tandem(cwd: &Path, env: &[(&str, &str)], stderr: Stdio) -> (Child, Banner) {
    let mut cmd = Command::new(TANDEM_BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("TANDEM_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("tandem binary runs");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = out.next_line().await {
            let done = line.trim_start().starts_with("streams:");
            lines.push(line);
            if done {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("banner printed within 60 s; so far:\n{}", lines.join("\n")));
    // Keep reading what else it prints (the banner's closing blank line, and
    // anything later) until it exits, as a terminal would.
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    (child, Banner { lines })
}

/// Sends SIGTERM to a running child (as Ctrl-C or a service manager would).
pub fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}
