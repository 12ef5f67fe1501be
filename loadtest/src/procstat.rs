//! CPU and memory of a process from `/proc/PID/stat` and `/proc/PID/status`, and
//! of the calling thread from `getrusage(RUSAGE_THREAD)`.

use std::time::{Duration, Instant};

/// One reading of a process's CPU time and resident memory.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    pub user: Duration,
    pub system: Duration,
    pub rss_bytes: u64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads `/proc/PID/stat` (utime, stime) and `/proc/PID/status` (VmRSS).
pub fn sample(pid: u32) -> std::io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| std::io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) ... utime is field 14 overall → index 11 here.
    let parse = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let tps = ticks_per_second();
    let user = Duration::from_secs_f64(parse(11) as f64 / tps);
    let system = Duration::from_secs_f64(parse(12) as f64 / tps);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        at: Instant::now(),
        user,
        system,
        rss_bytes: rss_kb * 1024,
    })
}

/// CPU used between two samples: (user, system, wall).
pub fn delta(a: &ProcSample, b: &ProcSample) -> (Duration, Duration, Duration) {
    (
        b.user.saturating_sub(a.user),
        b.system.saturating_sub(a.system),
        b.at.saturating_duration_since(a.at),
    )
}

/// CPU time of the calling thread: (user, system).
pub fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// The 1-minute load average (how quiet the machine was).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let a = sample(std::process::id()).unwrap();
        let (u0, s0) = thread_cpu();
        // Burn 60 ms of this thread's CPU (however long that takes on a busy machine).
        let start = Instant::now();
        let mut x = 0u64;
        loop {
            let (u, s) = thread_cpu();
            if (u + s).saturating_sub(u0 + s0) >= Duration::from_millis(60)
                || start.elapsed() > Duration::from_secs(10)
            {
                break;
            }
            for _ in 0..10_000 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
        }
        let b = sample(std::process::id()).unwrap();
        let (u, s, _) = delta(&a, &b);
        // /proc counts in clock ticks (10 ms).
        assert!(u + s >= Duration::from_millis(40), "{u:?} {s:?} {x}");
        assert!(b.rss_bytes > 1 << 20);
        assert!(loadavg() >= 0.0);
    }
}
