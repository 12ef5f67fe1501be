//! Kernel receive timestamps (`SO_TIMESTAMPNS`) on the generator's sockets: when a
//! packet reached the client's socket, before the generator's own threads got to it.
//!
//! The generator shares two cores with the server. Its clients read hundreds of
//! sockets on one thread, so the time at which a client *reads* a packet includes
//! its wait behind the others. The kernel stamps each packet as it enters the
//! socket (on loopback that is inside the server's send call), which is when a
//! client on its own machine would have it. Reports give both figures.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Asks the kernel to stamp every packet this socket receives (`SO_TIMESTAMPNS`).
///
/// When no socket on the machine had asked before, the kernel turns stamping on
/// a moment later (`net_enable_timestamp` defers it to a work item). Until then
/// TCP reads come without a stamp; UDP reads are stamped when read.
pub fn enable(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a plain setsockopt of an int on a descriptor the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg(2)`: bytes read, the sender's address (datagram sockets) and the
/// kernel's receive time in µs since the Unix epoch (for TCP, the newest segment read).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>, Option<u64>)> {
    // SAFETY: every pointer handed to recvmsg points into a live local of the size
    // given beside it; the kernel writes at most that much.
    unsafe {
        let mut name: libc::sockaddr_storage = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one timespec control message, aligned as cmsghdr needs.
        let mut control = [MaybeUninit::<u64>::uninit(); 8];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut stamp = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, address(&name, msg.msg_namelen), stamp))
    }
}

fn address(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// The wall clock now, in µs since the Unix epoch: the clock kernel stamps use.
pub fn wall_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The wall clock (µs since the Unix epoch) at a given instant, by one pairing of
/// the two clocks per process. Kernel stamps are wall-clock time; the generator's
/// send times are `Instant`s.
pub fn wall_us_at(t: Instant) -> u64 {
    static PAIR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (base, wall) = *PAIR.get_or_init(|| (Instant::now(), wall_now_us()));
    match t.checked_duration_since(base) {
        Some(d) => wall + d.as_micros() as u64,
        None => wall.saturating_sub(base.duration_since(t).as_micros() as u64),
    }
}

/// A TCP stream that keeps the kernel's receive time of the newest segment it read.
/// WebSocket clients read through it; [`StampedTcp::last_rx_us`] says when the bytes
/// of the message just parsed reached the socket.
pub struct StampedTcp {
    inner: TcpStream,
    last_rx_us: AtomicU64,
}

impl StampedTcp {
    pub fn new(inner: TcpStream) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        enable(inner.as_raw_fd())?;
        Ok(StampedTcp {
            inner,
            last_rx_us: AtomicU64::new(0),
        })
    }

    /// Kernel receive time (µs since the Unix epoch) of the newest segment read; 0
    /// when the last read had none. A message parsed from an earlier read is stamped no earlier
    /// than it arrived, so a latency from it errs long, never short.
    pub fn last_rx_us(&self) -> u64 {
        self.last_rx_us.load(Ordering::Relaxed)
    }
}

impl AsyncRead for StampedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use std::os::fd::AsRawFd;
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let dst = buf.initialize_unfilled();
            match this
                .inner
                .try_io(Interest::READABLE, || recv(fd, dst).map(|(n, _, t)| (n, t)))
            {
                Ok((n, stamp)) => {
                    // No stamp (see `enable`) means unknown, not the previous read's.
                    this.last_rx_us.store(stamp.unwrap_or(0), Ordering::Relaxed);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The stamp must fall between the send and the read, or every latency built
    /// on it is wrong (and it must exist at all: the kernel could ignore the option).
    #[tokio::test]
    async fn tcp_reads_carry_a_stamp_between_send_and_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut stamped = StampedTcp::new(client).unwrap();
        assert_eq!(stamped.last_rx_us(), 0);

        // The first socket on the machine to ask gets stamps a moment later (see
        // `enable`): until then reads report none (0), never a stale stamp.
        let mut buf = [0u8; 16];
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let before = wall_now_us();
            server.write_all(b"hello").await.unwrap();
            let n = stamped.read(&mut buf).await.unwrap();
            let after = wall_now_us();
            assert_eq!(&buf[..n], b"hello");
            let t = stamped.last_rx_us();
            if t == 0 {
                assert!(Instant::now() < deadline, "no TCP receive stamp in 5 s");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
            assert!(
                (before..=after).contains(&t),
                "stamp {t} outside [{before}, {after}]"
            );
            break;
        }

        stamped.write_all(b"back").await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"back");
    }

    #[test]
    fn udp_datagrams_carry_a_stamp_and_the_sender() {
        use std::os::fd::AsRawFd;
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(rx.as_raw_fd()).unwrap();
        let before = wall_now_us();
        tx.send_to(b"datagram", rx.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        let (n, from, stamp) = recv(rx.as_raw_fd(), &mut buf).unwrap();
        let after = wall_now_us();
        assert_eq!(&buf[..n], b"datagram");
        assert_eq!(from, Some(tx.local_addr().unwrap()));
        let t = stamp.expect("SO_TIMESTAMPNS gave no stamp");
        assert!(
            (before..=after).contains(&t),
            "stamp {t} outside [{before}, {after}]"
        );
    }

    #[test]
    fn wall_clock_pairing_keeps_intervals() {
        let a = Instant::now();
        let b = a + std::time::Duration::from_millis(5);
        // Either side of the pairing instant, each truncated to whole µs.
        let d = wall_us_at(b) - wall_us_at(a);
        assert!((4_999..=5_001).contains(&d), "{d} µs");
    }
}
