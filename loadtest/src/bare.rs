//! The bare limits every report prints beside its figures: what this kernel costs for
//! the same packets with no application at all (tight `sendmmsg`/`sendto`/`write` loops).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        for _ in 0..64 {
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
    }
    let wall = t0.elapsed();
    let cpu1 = thread_cpu();
    stop.store(true, Ordering::Release);
    let _ = drain.join();
    let what = if batch == 1 {
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

/// A tight write loop of `size`-byte frames to `conns` local TCP connections (the
/// accepting side writes, as a server does), `frames_per_write` frames per `write`.
/// Ops are frames; a connection whose buffer is full is skipped, never waited for.
pub fn tcp(
    conns: usize,
    size: usize,
    frames_per_write: usize,
    duration: Duration,
) -> std::io::Result<BareResult> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut clients = Vec::with_capacity(conns);
    let mut servers = Vec::with_capacity(conns);
    for _ in 0..conns.max(1) {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        c.set_nonblocking(true)?;
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
        clients.push(mio::net::TcpStream::from_std(c));
        servers.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let drain = drainer(clients, stop.clone(), |s: &mut mio::net::TcpStream, b| {
        s.read(b)
    });
    let k = frames_per_write.max(1);
    let buf = vec![0x5au8; size * k];
    let mut ops = 0u64;
    let mut i = 0usize;
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        for _ in 0..64 {
            let s = &mut servers[i % conns.max(1)];
            i += 1;
            if let Ok(n) = s.write(&buf) {
                ops += (n / size.max(1)) as u64;
            }
        }
    }
    let wall = t0.elapsed();
    let cpu1 = thread_cpu();
    stop.store(true, Ordering::Release);
    let _ = drain.join();
    let what = if k == 1 {
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
        let t = tcp(8, 200, 1, Duration::from_millis(100)).unwrap();
        assert!(t.ops > 100 && t.total_us_per_op > 0.0, "{t:?}");
    }
}
