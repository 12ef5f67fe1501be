//! The HTTP accept loop: what replaces `axum::serve` so that no client can hold
//! the listener's descriptors open-endedly.
//!
//! - A global cap and a per-address cap on open connections ([`Slots`]); a
//!   connection past either is closed as soon as it is accepted, counted in
//!   `tandem_http_connections_refused_total{reason}`, logged at most every 5 s.
//!   A WebSocket keeps its slot until it closes: the slot lives in the socket
//!   wrapper ([`Tracked`]), which the upgrade hands to the room.
//! - hyper's header-read timeout (its timer is on), which on HTTP/1 also bounds
//!   the wait for the next request of a kept-alive connection.
//! - An idle timeout: a connection that moves no byte either way for
//!   `http.idle_timeout_ms` is dropped (a silent socket, a stalled upload, a
//!   response the client does not read, an HTTP/2 connection). Upgraded
//!   connections leave this loop, so WebSockets are not subject to it.
//! - Accept errors (`EMFILE` when descriptors run out) pause the loop for 50 ms
//!   and are logged at most every 5 s, where `axum::serve` logged every second.
//! - Graceful shutdown as before: stop accepting, let every connection finish
//!   its request in flight, wait for them.
//! - HTTPS when `http.tls_cert` and `http.tls_key` are set ([`load_tls`]): rustls
//!   (ring) over the same tracked socket, so the caps and the idle timeout hold
//!   as for plain HTTP; the handshake must finish within the header timeout;
//!   ALPN offers `h2` and `http/1.1`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::HttpSection;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS server configuration from `[http]`, or None for plain HTTP. The error
/// names the file and what is wrong with it (the start-up message).
pub fn load_tls(http: &HttpSection) -> Result<Option<TlsAcceptor>, String> {
    if !http.tls_enabled() {
        return Ok(None);
    }
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|e| format!("http.{what} {path}: cannot read it: {e}"))
    };
    let cert_pem = read("tls_cert", &http.tls_cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "http.tls_cert {}: not a PEM certificate file: {e}",
                http.tls_cert
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "http.tls_cert {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
            http.tls_cert
        ));
    }
    let key_pem = read("tls_key", &http.tls_key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "http.tls_key {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {e}",
            http.tls_key
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "http.tls_cert {} and http.tls_key {}: {e} (does the key belong to the certificate?)",
                http.tls_cert, http.tls_key
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The limits in force, resolved from `[http]` and the descriptor limit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_ip: Option<usize>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    /// `[http]` under the process's current soft `RLIMIT_NOFILE`.
    pub fn resolve(http: &HttpSection) -> Self {
        let nofile = nofile_limit().map(|(soft, _)| soft).unwrap_or(1024);
        let max_connections = http.connection_cap(nofile);
        if http.max_connections > max_connections {
            tracing::warn!(
                configured = http.max_connections,
                used = max_connections,
                nofile,
                "http.max_connections lowered to stay below the descriptor limit"
            );
        }
        Limits {
            max_connections,
            max_per_ip: http.per_ip_cap(max_connections),
            header_timeout: Duration::from_millis(http.header_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
        }
    }
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
// `rlim_t` is u64 on Linux, not on every unix.
#[allow(clippy::unnecessary_cast)]
pub fn nofile_limit() -> Option<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0)
        .then_some((l.rlim_cur as u64, l.rlim_max as u64))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (once, at start: every
/// connection, WebSocket and database connection is a descriptor, and the common
/// soft default of 1024 is far below what the server serves) and logs both.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile_limit() {
    let Some((soft, hard)) = nofile_limit() else {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot read RLIMIT_NOFILE");
        return;
    };
    if soft < hard {
        let l = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            tracing::warn!(
                soft,
                hard,
                error = %io::Error::last_os_error(),
                "cannot raise the descriptor limit (RLIMIT_NOFILE); keeping the soft limit"
            );
            return;
        }
    }
    let now = nofile_limit().map(|(s, _)| s).unwrap_or(soft);
    tracing::info!(
        soft = now,
        hard,
        was = soft,
        "descriptor limit (RLIMIT_NOFILE)"
    );
}

/// Instruments of the accept loop.
#[derive(Clone)]
pub struct ConnMetrics {
    open: IntGauge,
    refused: IntCounterVec,
    timed_out: IntCounterVec,
}

impl ConnMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let open = IntGauge::new(
            "tandem_http_connections",
            "Open HTTP connections, upgraded WebSockets included",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "tandem_http_connections_refused_total",
                "Connections closed as soon as accepted: reason=global (http.max_connections) \
                 or per_ip (http.max_connections_per_ip)",
            ),
            &["reason"],
        )?;
        let timed_out = IntCounterVec::new(
            Opts::new(
                "tandem_http_connections_timed_out_total",
                "Connections closed by a timeout: reason=header (http.header_timeout_ms) \
                 or idle (http.idle_timeout_ms)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(timed_out.clone()))?;
        for reason in ["global", "per_ip"] {
            refused.with_label_values(&[reason]);
        }
        for reason in ["header", "idle"] {
            timed_out.with_label_values(&[reason]);
        }
        Ok(Self {
            open,
            refused,
            timed_out,
        })
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Global,
    PerIp,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Global => "global",
            Refusal::PerIp => "per_ip",
        }
    }
}

/// Open connections, in all and per client address. One lock per accept and per
/// close, never per request or byte.
struct Slots {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    gauge: IntGauge,
}

impl Slots {
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.limits.max_connections {
            return Err(Refusal::Global);
        }
        let mine = open.1.entry(ip).or_insert(0);
        if self.limits.max_per_ip.is_some_and(|cap| *mine >= cap) {
            return Err(Refusal::PerIp);
        }
        *mine += 1;
        open.0 += 1;
        self.gauge.inc();
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

/// One open connection's place in [`Slots`], given back on drop.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
        self.slots.gauge.dec();
    }
}

/// The accepted socket: notes that bytes moved (for the idle timeout) and holds
/// the connection's [`Slot`] for as long as the socket lives, upgraded or not.
struct Tracked {
    tcp: TcpStream,
    active: Arc<AtomicBool>,
    _slot: Slot,
}

impl Tracked {
    fn moved<T>(&self, r: &Poll<io::Result<T>>) {
        if matches!(r, Poll::Ready(Ok(_))) {
            self.active.store(true, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        self.moved(&r);
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.moved(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.moved(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A warning logged at most once per [`LOG_EVERY`], with how many it stood for.
struct Throttled {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
    epoch: Instant,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Throttled {
    fn new() -> Self {
        Self {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Some(how many events since the last log) when this one should be logged.
    fn check(&self) -> Option<u64> {
        // +LOG_EVERY so that the first event logs.
        let now = self.epoch.elapsed().as_millis() as u64 + LOG_EVERY.as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed) + 1)
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is set) until `stop` turns
/// true, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    metrics: ConnMetrics,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(
        tls = tls.is_some(),
        max_connections = limits.max_connections,
        max_connections_per_ip = limits.max_per_ip.unwrap_or(0),
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "HTTP connection limits"
    );
    let slots = Arc::new(Slots {
        limits,
        open: Mutex::new((0, HashMap::new())),
        gauge: metrics.open.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let refused_log = Throttled::new();
    let accept_log = Throttled::new();
    // Every connection task holds a receiver; `closed()` is when the last ended.
    let (drained_tx, drained_rx) = watch::channel(());

    loop {
        let (tcp, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    on_accept_error(&err, &accept_log).await;
                    continue;
                }
            },
        };
        let ip = peer.ip().to_canonical();
        let slot = match slots.acquire(ip) {
            Ok(slot) => slot,
            Err(refusal) => {
                metrics.refused.with_label_values(&[refusal.label()]).inc();
                if let Some(n) = refused_log.check() {
                    tracing::warn!(
                        reason = refusal.label(),
                        client = %ip,
                        refused = n,
                        max_connections = limits.max_connections,
                        max_connections_per_ip = limits.max_per_ip.unwrap_or(0),
                        "HTTP connections refused at a cap (http.max_connections*); \
                         logged at most every 5 s"
                    );
                }
                drop(tcp);
                continue;
            }
        };
        // No Nagle: a room writes each member one small frame at a time, and a frame
        // sent while the client's delayed ACK of the previous one is outstanding would
        // wait for it (up to 40 ms on Linux): sync messages must leave at once.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY on an accepted connection");
        }
        tokio::spawn(serve_connection(
            builder.clone(),
            tcp,
            slot,
            peer,
            router.clone(),
            limits,
            tls.clone(),
            metrics.clone(),
            stop.clone(),
            drained_rx.clone(),
        ));
    }
    drop(listener);
    drop(drained_rx);
    drained_tx.closed().await;
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` leave the connection in the backlog; retrying
/// at once would spin. Per-connection errors (reset before accept) are not ours.
async fn on_accept_error(err: &io::Error, log: &Throttled) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    if let Some(n) = log.check() {
        tracing::error!(
            error = %err,
            errors = n,
            "HTTP accept failed (out of descriptors? see http.max_connections); \
             logged at most every 5 s"
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    builder: auto::Builder<TokioExecutor>,
    tcp: TcpStream,
    slot: Slot,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    metrics: ConnMetrics,
    stop: watch::Receiver<bool>,
    _drained: watch::Receiver<()>,
) {
    let active = Arc::new(AtomicBool::new(false));
    let tracked = Tracked {
        tcp,
        active: active.clone(),
        _slot: slot,
    };
    let Some(acceptor) = tls else {
        let io = TokioIo::new(tracked);
        return drive(builder, io, active, peer, router, limits, metrics, stop).await;
    };
    // The handshake is the first thing a client must send: it counts against the
    // header timeout, so a silent TLS client holds its slot no longer than a
    // silent plain one.
    match tokio::time::timeout(limits.header_timeout, acceptor.accept(tracked)).await {
        Ok(Ok(stream)) => {
            let io = TokioIo::new(stream);
            drive(builder, io, active, peer, router, limits, metrics, stop).await
        }
        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
        Err(_) => {
            metrics.timed_out.with_label_values(&["header"]).inc();
            tracing::debug!(%peer, "TLS handshake not done within the header timeout");
        }
    }
}

/// Serves one connection (plain or TLS) until it ends, idles out or drains.
#[allow(clippy::too_many_arguments)]
async fn drive<I>(
    builder: auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    active: Arc<AtomicBool>,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    metrics: ConnMetrics,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = limits.idle_timeout;
    // `Router<()>` clones share the route table (an `Arc`): nothing rebuilt per connection.
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    // Idle: no byte moved during IDLE_TICKS ticks in a row, so a connection is closed
    // between idle_timeout and 1.25 × idle_timeout after its last byte, for one
    // flag store per read/write and one timer per connection.
    const IDLE_TICKS: u32 = 4;
    let mut tick = tokio::time::interval(idle_timeout / IDLE_TICKS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut quiet = 0u32;
    let mut draining = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(err) = done {
                    let header_timeout = err
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if header_timeout {
                        metrics.timed_out.with_label_values(&["header"]).inc();
                    }
                    tracing::debug!(%peer, error = %err, header_timeout, "HTTP connection ended");
                }
                return;
            }
            () = stopped(&mut stop), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                if active.swap(false, Ordering::Relaxed) {
                    quiet = 0;
                } else {
                    quiet += 1;
                    if quiet >= IDLE_TICKS {
                        metrics.timed_out.with_label_values(&["idle"]).inc();
                        tracing::debug!(%peer, "HTTP connection idle; closed");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_logs_the_first_then_counts() {
        let t = Throttled::new();
        assert_eq!(t.check(), Some(1));
        assert_eq!(t.check(), None);
        assert_eq!(t.check(), None);
        t.last_ms.store(0, Ordering::Relaxed);
        assert_eq!(t.check(), Some(3), "the two suppressed and this one");
    }
}
