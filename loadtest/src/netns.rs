//! Network impairment for `sync`: the tool re-runs itself inside a network namespace
//! it creates, whose loopback carries a `tc netem` qdisc (delay, jitter, loss).
//!
//! Server and clients both live in that namespace and talk over its 127.0.0.1, so
//! every packet crosses the impaired loopback twice per round trip (once each way)
//! and no address outside the namespace is ever used. Needs root (`ip`, `tc`) and a
//! kernel with `sch_netem`; where it is missing (this project's VMs), `sync --delay-ms
//! --jitter-ms` impairs the WebSocket path with the tool's own relay instead.

use std::process::{Command, ExitStatus};

/// Set in the re-run child: the netem arguments it runs under.
pub const ENV: &str = "TANDEM_LOADTEST_NETNS";

/// The netem arguments when this process runs inside the impaired namespace.
pub fn current() -> Option<String> {
    std::env::var(ENV).ok()
}

fn ip(args: &[&str]) -> Result<(), String> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {status}", args.join(" ")))
    }
}

/// Creates the namespace, impairs its loopback with `netem` (e.g. "delay 50ms 15ms"),
/// re-runs this binary with the same arguments inside it, and removes the namespace.
pub fn rerun_inside(netem: &str) -> Result<ExitStatus, String> {
    let ns = format!("tandem-lt-{}", std::process::id());
    ip(&["netns", "add", &ns])?;
    let result = (|| {
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let mut tc = Command::new("tc");
        tc.args(["-n", &ns, "qdisc", "add", "dev", "lo", "root", "netem"]);
        tc.args(netem.split_whitespace());
        let status = tc.status().map_err(|e| format!("tc: {e}"))?;
        if !status.success() {
            return Err(format!("tc netem {netem}: {status}"));
        }
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let exe = exe.to_string_lossy().to_string();
        Command::new("ip")
            .args(["netns", "exec", &ns, &exe])
            .args(std::env::args().skip(1))
            .env(ENV, netem)
            .status()
            .map_err(|e| format!("ip netns exec: {e}"))
    })();
    let _ = ip(&["netns", "del", &ns]);
    result
}
