//! The bare limits every report prints beside its figures: what this kernel costs for
//! the same packets with no application at all (tight `sendmmsg`/`sendto`/`write` loops).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::procstat::thread_cpu;

/// CPU the sending thread spent per operation (one datagram, one write).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BareResult {
    pub what: String,
    pub targets: usize,
    pub size: usize,
    pub ops: u64,
    pub wall_s: f64,
    pub user_us_per_op: f64,
    pub system_us_per_op: f64,
    pub total_us_per_op: f64,
    pub ops_per_s: f64,
}

impl BareResult {
    fn new(
        what: &str,
        targets: usize,
        size: usize,
        ops: u64,
        cpu: (Duration, Duration),
        wall: Duration,
    ) -> Self {
        let n = ops.max(1) as f64;
        let u = cpu.0.as_secs_f64() * 1e6 / n;
        let s = cpu.1.as_secs_f64() * 1e6 / n;
        BareResult {
            what: what.to_string(),
            targets,
            size,
            ops,
            wall_s: wall.as_secs_f64(),
            user_us_per_op: u,
            system_us_per_op: s,
            total_us_per_op: u + s,
            ops_per_s: ops as f64 / wall.as_secs_f64().max(1e-9),
        }
    }
}

/// CPUs of the server under test (`--server-cpus`). The loops' sending thread runs
/// there too and their receivers stay on the generator's CPUs, so that a bare
/// delivery crosses CPUs as the server's deliveries do (a wake-up on another CPU
/// costs the sender several times a same-CPU one).
static SENDER_CPUS: OnceLock<Vec<usize>> = OnceLock::new();

/// Runs the bare loops' sending thread on `cpus` (the server's).
pub fn send_from_cpus(cpus: Vec<usize>) {
    let _ = SENDER_CPUS.set(cpus);
}

/// Moves the calling thread to [`SENDER_CPUS`] until dropped.
struct OnSenderCpus(Option<libc::cpu_set_t>);

impl OnSenderCpus {
    fn enter() -> Self {
        let Some(cpus) = SENDER_CPUS.get() else {
            return Self(None);
        };
        // SAFETY: a zeroed cpu_set_t is valid; getaffinity fills the one we own.
        let mut before: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let got = unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut before)
        };
        if got != 0 || crate::server::set_affinity(cpus).is_err() {
            return Self(None);
        }
        Self(Some(before))
    }
}

impl Drop for OnSenderCpus {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            // SAFETY: restores a mask getaffinity produced.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), before);
            }
        }
    }
}

/// Drains readable sockets on its own thread so senders never meet full buffers.
fn drainer<S: mio::event::Source + Send + 'static>(
    mut sockets: Vec<S>,
    stop: Arc<AtomicBool>,
    mut read: impl FnMut(&mut S, &mut [u8]) -> std::io::Result<usize> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut poll) = Poll::new() else { return };
        for (i, s) in sockets.iter_mut().enumerate() {
            let _ = poll.registry().register(s, Token(i), Interest::READABLE);
        }
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Acquire) {
            if poll
                .poll(&mut events, Some(Duration::from_millis(20)))
                .is_err()
            {
                continue;
            }
            for ev in events.iter() {
                let s = &mut sockets[ev.token().0];
                while let Ok(n) = read(s, &mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
    })
}

fn udp_targets(n: usize) -> std::io::Result<(Vec<mio::net::UdpSocket>, Vec<SocketAddr>)> {
    let mut socks = Vec::with_capacity(n);
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_nonblocking(true)?;
        addrs.push(s.local_addr()?);
        socks.push(mio::net::UdpSocket::from_std(s));
    }
    Ok((socks, addrs))
}

fn sockaddr(addr: &SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = addr else {
        panic!("loopback IPv4 only");
    };
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = v4.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(*v4.ip()).to_be(),
    };
    sa
}

/// A tight `sendmmsg` loop (batches of 64) of `size`-byte datagrams, round robin
/// to `targets` local sockets, for `duration`. `batch = 1` uses plain `sendto`.
pub fn udp(
    targets: usize,
    size: usize,
    duration: Duration,
    batch: usize,
) -> std::io::Result<BareResult> {
    udp_loop(targets, size, duration, batch, None)
}

/// The same datagrams paced like an SFU's forwarding: one to every target per sweep
/// (in `sendmmsg` batches of 64), sweeps `every` apart (the publisher's packet
/// interval). Between sweeps the receivers go idle, as the server's viewers do.
pub fn udp_paced(
    targets: usize,
    size: usize,
    every: Duration,
    duration: Duration,
) -> std::io::Result<BareResult> {
    udp_loop(targets, size, duration, 64, Some(every))
}

fn udp_loop(
    targets: usize,
    size: usize,
    duration: Duration,
    batch: usize,
    pace: Option<Duration>,
) -> std::io::Result<BareResult> {
    let (socks, addrs) = udp_targets(targets)?;
    let stop = Arc::new(AtomicBool::new(false));
    let drain = drainer(socks, stop.clone(), |s: &mut mio::net::UdpSocket, b| {
        s.recv(b)
    });
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let _ = set_sndbuf(sender.as_raw_fd(), 4 << 20);
    let fd = sender.as_raw_fd();
    let payload = vec![0xa5u8; size];
    let names: Vec<libc::sockaddr_in> = addrs.iter().map(sockaddr).collect();
    let batch = batch.clamp(1, 64);
    let mut iov: Vec<libc::iovec> = (0..batch)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: size,
        })
        .collect();
    let mut next = 0usize;
    let mut ops = 0u64;
    let _on_sender_cpus = OnSenderCpus::enter();
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let mut next_sweep = t0;
    while t0.elapsed() < duration {
        // Tight: 64 calls between clock reads. Paced: one sweep over every target.
        let mut left = match pace {
            Some(_) => targets.max(1),
            None => 64 * batch,
        };
        while left > 0 {
            let batch = batch.min(left);
            left -= batch;
            if batch == 1 {
                let name = &names[next % names.len()];
                next += 1;
                // SAFETY: payload and name outlive the call.
                let r = unsafe {
                    libc::sendto(
                        fd,
                        payload.as_ptr() as *const libc::c_void,
                        size,
                        0,
                        name as *const libc::sockaddr_in as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                if r >= 0 {
                    ops += 1;
                }
                continue;
            }
            // SAFETY: every pointer refers to memory alive across the call.
            let mut msgs: Vec<libc::mmsghdr> = (0..batch)
                .map(|i| {
                    let name = &names[(next + i) % names.len()];
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_name = name as *const libc::sockaddr_in as *mut libc::c_void;
                    m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                    m.msg_hdr.msg_iov = &mut iov[i] as *mut libc::iovec;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), batch as u32, 0) };
            if r > 0 {
                ops += r as u64;
                next += r as usize;
            }
        }
        if let Some(every) = pace {
            wait_for_next_sweep(&mut next_sweep, every);
        }
    }
    let wall = t0.elapsed();
    let cpu1 = thread_cpu();
    stop.store(true, Ordering::Release);
    let _ = drain.join();
    let what = if pace.is_some() {
        "udp sendmmsg, paced sweeps"
    } else if batch == 1 {
        "udp sendto"
    } else {
        "udp sendmmsg"
    };
    Ok(BareResult::new(
        what,
        targets,
        size,
        ops,
        (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1),
        wall,
    ))
}

/// Sleeps until the next paced sweep is due (at once when behind). Sleeping costs
/// the sending thread no CPU: only its sends are counted.
fn wait_for_next_sweep(next: &mut Instant, every: Duration) {
    *next += every;
    std::thread::sleep(next.saturating_duration_since(Instant::now()));
}

fn set_sndbuf(fd: i32, bytes: i32) -> i32 {
    // SAFETY: plain setsockopt with an int we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    }
}

/// A tight `write` loop of `frames_per_write` frames of `size` bytes per write over
/// `conns` local TCP connections (`TCP_NODELAY`), their other ends drained on another
/// thread; only the writing thread's CPU counts. Ops are frames; a connection whose
/// buffer is full is skipped, never waited for. When both ends of every connection
/// would not fit under the open-file limit (10,000 connections need 20,000 files),
/// the other ends live in a child process (`tandem-loadtest bare-drain`).
pub fn tcp(
    conns: usize,
    size: usize,
    frames_per_write: usize,
    duration: Duration,
) -> std::io::Result<BareResult> {
    tcp_loop(conns, size, frames_per_write, duration, None)
}

/// The same writes paced like a server's broadcasts: one frame to every connection,
/// then a pause until the next broadcast, `every` apart. Between sweeps the
/// receivers go idle, so, as for the server's deliveries, writes wake them up.
pub fn tcp_paced(
    conns: usize,
    size: usize,
    every: Duration,
    duration: Duration,
) -> std::io::Result<BareResult> {
    tcp_loop(conns, size, 1, duration, Some(every))
}

fn tcp_loop(
    conns: usize,
    size: usize,
    frames_per_write: usize,
    duration: Duration,
    pace: Option<Duration>,
) -> std::io::Result<BareResult> {
    let conns = conns.max(1);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut servers = Vec::with_capacity(conns);
    if 2 * conns + 256 <= open_file_limit() {
        let mut clients = Vec::with_capacity(conns);
        for _ in 0..conns {
            let c = TcpStream::connect(addr)?;
            let (s, _) = listener.accept()?;
            c.set_nonblocking(true)?;
            clients.push(mio::net::TcpStream::from_std(c));
            servers.push(s);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let drain = drainer(clients, stop.clone(), |s: &mut mio::net::TcpStream, b| {
            s.read(b)
        });
        let r = write_loop(&mut servers, size, frames_per_write, duration, pace);
        stop.store(true, Ordering::Release);
        let _ = drain.join();
        return r;
    }
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["bare-drain", &addr.to_string(), &conns.to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    let accepted = (0..conns)
        .map(|_| listener.accept().map(|(s, _)| s))
        .collect::<std::io::Result<Vec<_>>>();
    let r = accepted
        .and_then(|mut servers| write_loop(&mut servers, size, frames_per_write, duration, pace));
    drop(child.stdin.take()); // EOF: the child stops draining and exits.
    let _ = child.wait();
    r
}

/// The other ends of [`tcp`]'s connections, in a child process: connects `conns`
/// times to `addr` and drains them until its standard input closes.
pub fn drain_child(addr: SocketAddr, conns: usize) -> std::io::Result<()> {
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let c = TcpStream::connect(addr)?;
        c.set_nonblocking(true)?;
        clients.push(mio::net::TcpStream::from_std(c));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let drain = drainer(clients, stop.clone(), |s: &mut mio::net::TcpStream, b| {
        s.read(b)
    });
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    stop.store(true, Ordering::Release);
    let _ = drain.join();
    Ok(())
}

fn open_file_limit() -> usize {
    // SAFETY: getrlimit fills a struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            return l.rlim_cur.min(usize::MAX as libc::rlim_t) as usize;
        }
    }
    1024
}

fn write_loop(
    servers: &mut [TcpStream],
    size: usize,
    frames_per_write: usize,
    duration: Duration,
    pace: Option<Duration>,
) -> std::io::Result<BareResult> {
    for s in servers.iter() {
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
    }
    let conns = servers.len();
    let k = frames_per_write.max(1);
    let buf = vec![0x5au8; size * k];
    let mut ops = 0u64;
    let mut i = 0usize;
    let _on_sender_cpus = OnSenderCpus::enter();
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let mut next_sweep = t0;
    while t0.elapsed() < duration {
        if let Some(every) = pace {
            for s in servers.iter_mut() {
                if let Ok(n) = s.write(&buf) {
                    ops += (n / size.max(1)) as u64;
                }
            }
            wait_for_next_sweep(&mut next_sweep, every);
            continue;
        }
        for _ in 0..64 {
            let s = &mut servers[i % conns];
            i += 1;
            if let Ok(n) = s.write(&buf) {
                ops += (n / size.max(1)) as u64;
            }
        }
    }
    let wall = t0.elapsed();
    let cpu1 = thread_cpu();
    let what = if pace.is_some() {
        "tcp write, paced sweeps".to_string()
    } else if k == 1 {
        "tcp write".to_string()
    } else {
        format!("tcp write ({k} frames each)")
    };
    Ok(BareResult::new(
        &what,
        conns,
        size,
        ops,
        (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1),
        wall,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_and_tcp_loops_measure_something() {
        let u = udp(8, 1200, Duration::from_millis(100), 64).unwrap();
        assert!(u.ops > 100 && u.total_us_per_op > 0.0, "{u:?}");
        let s = udp(8, 1200, Duration::from_millis(100), 1).unwrap();
        assert!(s.ops > 100, "{s:?}");
        // 10 sweeps of 8 datagrams in 100 ms: paced, not a tight loop.
        let p = udp_paced(
            8,
            1200,
            Duration::from_millis(10),
            Duration::from_millis(100),
        )
        .unwrap();
        assert!((40..=120).contains(&p.ops), "{p:?}");
        let t = tcp(8, 200, 1, Duration::from_millis(100)).unwrap();
        assert!(t.ops > 100 && t.total_us_per_op > 0.0, "{t:?}");
        // 10 sweeps of 8 writes in 100 ms: paced, not a tight loop.
        let p = tcp_paced(
            8,
            200,
            Duration::from_millis(10),
            Duration::from_millis(100),
        )
        .unwrap();
        assert!((40..=120).contains(&p.ops), "{p:?}");
    }
}
