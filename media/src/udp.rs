//! The media port's UDP side: the sockets bound to it (one per worker), and a
//! worker's outgoing datagrams, batched: queued while a burst of work runs and
//! handed to the kernel with sendmmsg(2), up to 64 per system call.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use tokio::net::UdpSocket;

use crate::error::MediaError;
use crate::metrics::MediaMetrics;

/// Binds `workers` UDP sockets to one port with SO_REUSEPORT (port 0: the first
/// picks a free port, the rest join it).
pub(crate) fn bind_udp(
    ip: IpAddr,
    port: u16,
    workers: usize,
) -> Result<(Vec<std::net::UdpSocket>, u16), MediaError> {
    use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
    let mut sockets = Vec::with_capacity(workers);
    let mut port = port;
    for _ in 0..workers {
        let addr = SocketAddr::new(ip, port);
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM,
            Some(SockProtocol::UDP),
        )
        .map_err(|e| MediaError::Internal(format!("UDP socket: {e}")))?;
        socket
            .set_reuse_port(true)
            .map_err(|e| MediaError::Internal(format!("SO_REUSEPORT: {e}")))?;
        // Large buffers absorb bursts (a keyframe to many viewers) instead of dropping them.
        let _ = socket.set_send_buffer_size(4 << 20);
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket
            .set_nonblocking(true)
            .map_err(|e| MediaError::Internal(format!("UDP socket: {e}")))?;
        socket.bind(&addr.into()).map_err(|e| {
            MediaError::Internal(format!(
                "cannot bind media port {addr}: {e} (set TANDEM_MEDIA_PORT to a free port)"
            ))
        })?;
        let std_socket: std::net::UdpSocket = socket.into();
        if port == 0 {
            port = std_socket
                .local_addr()
                .map_err(|e| MediaError::Internal(format!("UDP socket: {e}")))?
                .port();
        }
        sockets.push(std_socket);
    }
    Ok((sockets, port))
}

/// This process's claim on the media port, held while the SFU runs.
///
/// The workers' sockets share the port with SO_REUSEPORT on purpose, and the
/// kernel lets any process of the same user join that group and split the
/// packets with us (a broadcaster that never goes live, viewers falling back to
/// TCP). Two checks keep the group within one process:
/// - a probe bound *without* SO_REUSEPORT before our sockets: it fails when
///   anything holds the port (a socket with or without SO_REUSEPORT), so a
///   second server started next to a running one stops;
/// - on Linux, an abstract Unix socket named after the port, held for the
///   server's life: two servers starting at the same instant (both probes passed
///   before either bound) cannot both hold it. The kernel frees it when the
///   process exits, crash included, so no stale lock is left behind; a lock file
///   in the data directory would not conflict between two servers with
///   different data directories, which split packets all the same.
pub struct PortLock {
    #[cfg(target_os = "linux")]
    _name: std::os::unix::net::UnixDatagram,
}

impl PortLock {
    /// Claims `port` before anything of ours is bound to it.
    pub(crate) fn claim(ip: IpAddr, port: u16) -> Result<PortLock, MediaError> {
        let lock = PortLock::claim_bound(port)?;
        let probe = std::net::UdpSocket::bind(SocketAddr::new(ip, port)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                MediaError::PortInUse(port)
            } else {
                MediaError::Internal(format!(
                    "cannot bind media port {ip}:{port}: {e} (set TANDEM_MEDIA_PORT to a free port)"
                ))
            }
        })?;
        drop(probe);
        Ok(lock)
    }

    /// Claims `port` once our own sockets hold it (a port the kernel picked).
    #[cfg(target_os = "linux")]
    pub(crate) fn claim_bound(port: u16) -> Result<PortLock, MediaError> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
        let name = format!("tandem-media-port-{port}");
        let addr = UnixAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| MediaError::Internal(format!("media port lock: {e}")))?;
        match UnixDatagram::bind_addr(&addr) {
            Ok(socket) => Ok(PortLock { _name: socket }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(MediaError::PortInUse(port)),
            Err(e) => Err(MediaError::Internal(format!("media port lock: {e}"))),
        }
    }

    /// Elsewhere the probe alone guards the port.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn claim_bound(_port: u16) -> Result<PortLock, MediaError> {
        Ok(PortLock {})
    }
}

/// Datagrams per sendmmsg call (and the size at which a batch is flushed early).
pub const BATCH: usize = 64;

pub struct SendBatch {
    /// Destinations of the queued datagrams; `slots[i]` holds datagram `i`.
    queue: Vec<socket2::SockAddr>,
    /// Datagram buffers, reused from one flush to the next so queueing allocates nothing.
    slots: Vec<BytesMut>,
    #[cfg(target_os = "linux")]
    headers: Vec<libc::mmsghdr>,
    #[cfg(target_os = "linux")]
    iovecs: Vec<libc::iovec>,
}

/// Room for one full-size datagram per slot.
const SLOT_BYTES: usize = 1500;

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            queue: Vec::with_capacity(BATCH),
            slots: (0..BATCH)
                .map(|_| BytesMut::with_capacity(SLOT_BYTES))
                .collect(),
            #[cfg(target_os = "linux")]
            headers: Vec::with_capacity(BATCH),
            #[cfg(target_os = "linux")]
            iovecs: Vec::with_capacity(BATCH),
        }
    }
}

impl SendBatch {
    /// Queues a copy of `data`; true when the batch is full and should be flushed.
    pub fn push(&mut self, to: SocketAddr, data: &[u8]) -> bool {
        let slot = self.slot();
        slot.extend_from_slice(data);
        self.commit(to)
    }

    /// The (empty) buffer the next datagram is written into; it is queued by
    /// [`commit`](Self::commit), or left unqueued by not committing.
    pub fn slot(&mut self) -> &mut BytesMut {
        let i = self.queue.len();
        debug_assert!(i < BATCH, "flush a full batch before writing more");
        let slot = &mut self.slots[i];
        slot.clear();
        slot
    }

    /// Queues what was written into [`slot`](Self::slot); true when the batch is full.
    pub fn commit(&mut self, to: SocketAddr) -> bool {
        self.queue.push(socket2::SockAddr::from(to));
        self.queue.len() >= BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends everything queued. Never waits: what the socket buffer cannot take
    /// is dropped and counted (`socket_full`), as a congested link would.
    pub fn flush(&mut self, socket: &UdpSocket, metrics: &MediaMetrics) {
        if self.queue.is_empty() {
            return;
        }
        #[cfg(target_os = "linux")]
        self.flush_mmsg(socket, metrics);
        #[cfg(not(target_os = "linux"))]
        for (to, data) in self.queue.drain(..).zip(&self.slots) {
            if let Some(to) = to.as_socket()
                && socket.try_send_to(data, to).is_err()
            {
                metrics.dropped.socket_full.inc();
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn flush_mmsg(&mut self, socket: &UdpSocket, metrics: &MediaMetrics) {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        let mut sent_total = 0;
        while sent_total < self.queue.len() {
            let end = (sent_total + BATCH).min(self.queue.len());
            let chunk = &self.queue[sent_total..end];
            self.iovecs.clear();
            self.headers.clear();
            for data in &self.slots[sent_total..end] {
                self.iovecs.push(libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                });
            }
            for (i, to) in chunk.iter().enumerate() {
                // SAFETY: an all-zero msghdr is a valid "no control data" header.
                let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
                hdr.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
                hdr.msg_hdr.msg_namelen = to.len();
                hdr.msg_hdr.msg_iov = &mut self.iovecs[i] as *mut libc::iovec;
                hdr.msg_hdr.msg_iovlen = 1;
                self.headers.push(hdr);
            }
            // SAFETY: every header points into `self.iovecs`, `self.queue` and `self.slots`, which
            // outlive the call and are not touched until it returns.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    self.headers.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if sent <= 0 {
                let err = std::io::Error::last_os_error();
                if sent == 0 || err.kind() == std::io::ErrorKind::WouldBlock {
                    // The socket buffer is full: drop the rest of this chunk.
                    metrics.dropped.socket_full.inc_by(chunk.len() as u64);
                    sent_total += chunk.len();
                } else {
                    // A per-destination error (e.g. unreachable) stops the call at that
                    // datagram: skip it and carry on with the next.
                    tracing::trace!(error = %err, "sendmmsg");
                    sent_total += 1;
                }
                continue;
            }
            sent_total += sent as usize;
        }
        self.queue.clear();
    }
}
