//! A member's socket, shared by the room task and the connection task: the room writes
//! a pre-framed broadcast straight to the socket and only what would block is queued.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use bytes::{Buf, Bytes};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock::now_ms;
use crate::frame::{BACKLOG_CLOSE, Kill, MAX_FRAMES_PER_WRITE, Outbound, SendError, text_frame};
use crate::metrics::Metrics;
use crate::server_msg::ServerMsg;

pub(crate) type Io = TokioIo<Upgraded>;

/// Runs `f`, whose socket writes never wait, outside tokio's cooperative budget.
///
/// A task may do 128 I/O operations per poll; after that every `poll_write` answers
/// `Pending` without trying. The room writes one frame to each of up to thousands of
/// sockets in one poll: under the budget all members past the 128th had their frame
/// queued and their own task woken to write it (measured: ~85 % of the writes to a
/// 1,000-member room, each costing a wake, a poll and an epoll round). The work stays
/// bounded — one non-blocking write per member — so lifting the budget starves nobody.
pub(crate) fn outside_io_budget<R>(f: impl FnOnce() -> R) -> R {
    use futures_util::FutureExt;
    tokio::task::unconstrained(async move { f() })
        .now_or_never()
        .expect("a future without an await point is ready at once")
}

struct Queued {
    bytes: Bytes,
    created: Option<Instant>,
}

impl Queued {
    fn new(bytes: Bytes, created: Option<Instant>) -> Self {
        Self { bytes, created }
    }
}

struct State {
    io: Io,
    /// Bytes that would have blocked, in order; the head may be partly written.
    queue: VecDeque<Queued>,
    /// Bytes in `queue` (what is left of each frame).
    queued_bytes: usize,
    /// `queued_bytes` as last added to the `tandem_ws_queued_bytes` gauge.
    reported_bytes: usize,
    head_started: bool,
    waker: Option<Waker>,
    kill: Option<Kill>,
    close_after: Option<Kill>,
    closing: bool,
    failed: bool,
    /// The connection task is sending its close frame: no more reads, so the few
    /// frames tungstenite still writes (a pending pong, the close) pass the budget.
    finishing: bool,
    /// A limit closed this connection (counted and logged once).
    limited: bool,
}

/// The write side of one connection, shared by the room (direct writes) and the
/// connection task (draining what would have blocked, reading).
pub(crate) struct Link {
    st: Mutex<State>,
    depth: usize,
    /// `rooms.max_queued_bytes_per_connection`: every byte queued for this socket,
    /// whoever wrote it (room broadcasts and replies, tungstenite's pongs and the
    /// answers sent before `hello`).
    max_bytes: usize,
    metrics: Metrics,
}

impl Link {
    pub fn new(io: Io, depth: usize, max_bytes: usize, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            st: Mutex::new(State {
                io,
                queue: VecDeque::new(),
                queued_bytes: 0,
                reported_bytes: 0,
                head_started: false,
                waker: None,
                kill: None,
                close_after: None,
                closing: false,
                failed: false,
                finishing: false,
                limited: false,
            }),
            depth: depth.max(1),
            max_bytes: max_bytes.max(1),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the `tandem_ws_queued_bytes` gauge up to date: one atomic add per
    /// operation that changed the queue, none when it did not.
    fn settle(&self, st: &mut State) {
        if st.queued_bytes != st.reported_bytes {
            self.metrics
                .ws_queued_bytes
                .add(st.queued_bytes as i64 - st.reported_bytes as i64);
            st.reported_bytes = st.queued_bytes;
        }
    }

    /// Counts (once per connection) a close caused by limit `reason`.
    fn note_limit(&self, st: &mut State, reason: &str) {
        if !st.limited {
            st.limited = true;
            self.metrics
                .ws_limit_closes
                .with_label_values(&[reason])
                .inc();
        }
    }

    /// Counts a close caused by limit `reason` unless one was already counted.
    pub fn limit_hit(&self, reason: &str) {
        let mut st = self.lock();
        self.note_limit(&mut st, reason);
    }

    /// The connection task is about to send its close frame: the room writes no
    /// more, and that frame (with a pong tungstenite still owes) passes the budget.
    pub fn finishing(&self) {
        let mut st = self.lock();
        st.closing = true;
        st.finishing = true;
    }

    /// A close after the queue is waiting for the queue to drain.
    pub fn close_pending(&self) -> bool {
        self.lock().close_after.is_some()
    }

    /// Gives up waiting for the queue to drain (the client does not read): the
    /// pending close becomes a kill.
    pub fn close_now(&self) {
        let mut st = self.lock();
        if let Some(k) = st.close_after.take() {
            st.kill.get_or_insert(k);
            wake(&mut st);
        }
    }

    /// Writes `o` now if the socket takes it and nothing is queued before it;
    /// otherwise queues it for the connection task (bounded by `queue_depth`).
    pub fn try_send(&self, o: Outbound) -> Result<(), SendError> {
        let (bytes, created) = match o {
            Outbound::Text(t, c) => (text_frame(t.as_bytes()), Some(c)),
            // Stamped when handed to the socket (or, behind a backlog, when queued:
            // the larger RTT then makes the clock filters drop the sample).
            Outbound::Pong { id, t0, t1 } => {
                let pong = ServerMsg::TimePong {
                    id,
                    t0,
                    t1,
                    t2: now_ms(),
                };
                (text_frame(pong.to_text().as_bytes()), None)
            }
            Outbound::Ping { id } => {
                let ping = ServerMsg::TimePing { id, t0: now_ms() };
                (text_frame(ping.to_text().as_bytes()), None)
            }
            Outbound::Close(code, reason) => {
                let mut st = self.lock();
                if st.closing {
                    return Err(SendError::Closed);
                }
                st.closing = true;
                st.close_after = Some((code, reason));
                wake(&mut st);
                return Ok(());
            }
        };
        self.write_or_queue(std::slice::from_ref(&bytes), created)
    }

    /// Writes `frames` (at most [`MAX_FRAMES_PER_WRITE`]) now, in one vectored write, if
    /// nothing is queued before them; queues what the socket does not take. The room
    /// hands over all the broadcasts of one pass together, so a burst costs one write
    /// per member instead of one per message.
    pub fn try_send_frames(&self, frames: &[Bytes], created: Instant) -> Result<(), SendError> {
        self.write_or_queue(frames, Some(created))
    }

    fn write_or_queue(&self, frames: &[Bytes], created: Option<Instant>) -> Result<(), SendError> {
        debug_assert!(!frames.is_empty() && frames.len() <= MAX_FRAMES_PER_WRITE);
        let mut st = self.lock();
        if st.closing || st.failed {
            return Err(SendError::Closed);
        }
        if !st.queue.is_empty() {
            let bytes: usize = frames.iter().map(Bytes::len).sum();
            if st.queue.len() + frames.len() > self.depth.max(frames.len()) {
                self.note_limit(&mut st, "queue_depth");
                return Err(SendError::Full);
            }
            if st.queued_bytes + bytes > self.max_bytes {
                self.note_limit(&mut st, "queued_bytes");
                return Err(SendError::Full);
            }
            st.queue
                .extend(frames.iter().map(|b| Queued::new(b.clone(), created)));
            st.queued_bytes += bytes;
            self.settle(&mut st);
            return Ok(());
        }
        // Nothing queued: the socket is ours. A noop waker is fine here because the
        // connection task is woken below and polls the write with its own waker.
        let mut cx = Context::from_waker(Waker::noop());
        let written = if let [one] = frames {
            Pin::new(&mut st.io).poll_write(&mut cx, one)
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_FRAMES_PER_WRITE];
            for (slice, frame) in slices.iter_mut().zip(frames) {
                *slice = IoSlice::new(frame);
            }
            Pin::new(&mut st.io).poll_write_vectored(&mut cx, &slices[..frames.len()])
        };
        let mut n = match written {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                st.failed = true;
                wake(&mut st);
                return Err(SendError::Closed);
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Pending => 0,
        };
        // One clock read and one counter update per call, however many frames left.
        let waited = created.map(|c| c.elapsed().as_secs_f64());
        let mut whole = 0;
        for (i, frame) in frames.iter().enumerate() {
            if n >= frame.len() {
                n -= frame.len();
                whole += 1;
                if let Some(w) = waited {
                    self.metrics.fanout_delay.observe(w);
                }
                continue;
            }
            st.head_started = n > 0;
            st.queue.push_back(Queued::new(frame.slice(n..), created));
            st.queue.extend(
                frames[i + 1..]
                    .iter()
                    .map(|b| Queued::new(b.clone(), created)),
            );
            st.queued_bytes += frame.len() - n;
            st.queued_bytes += frames[i + 1..].iter().map(Bytes::len).sum::<usize>();
            self.settle(&mut st);
            wake(&mut st);
            break;
        }
        self.metrics.messages_out.inc_by(whole);
        // What one write left may pass the budget once (at most one pass of
        // frames); the room then closes the member, which drops the unstarted ones.
        if st.queued_bytes > self.max_bytes {
            self.note_limit(&mut st, "queued_bytes");
            return Err(SendError::Full);
        }
        Ok(())
    }

    /// Closes now: frames not yet started are dropped (a partly written one is
    /// finished, or the client would see a broken frame), then the close frame.
    pub fn kill(&self, k: Kill) {
        let mut st = self.lock();
        if st.kill.is_none() {
            st.kill = Some(k);
            st.closing = true;
            wake(&mut st);
        }
    }

    /// Closes after what is queued (the room dropped its handle).
    pub fn close_after(&self, k: Kill) {
        let mut st = self.lock();
        if !st.closing {
            st.closing = true;
            st.close_after = Some(k);
            wake(&mut st);
        }
    }

    /// The connection task's poll: a kill, a failure, or (with the queue drained)
    /// a close after the queue; registers `cx` to be woken by the room.
    pub fn poll_event(&self, cx: &mut Context<'_>) -> Poll<LinkEvent> {
        let mut st = self.lock();
        if let Some(k) = st.kill.take() {
            st.drop_unstarted();
            self.settle(&mut st);
            return Poll::Ready(LinkEvent::Kill(k));
        }
        if st.failed {
            return Poll::Ready(LinkEvent::Failed);
        }
        match self.poll_drain_locked(&mut st, cx) {
            Poll::Ready(Err(_)) => return Poll::Ready(LinkEvent::Failed),
            Poll::Ready(Ok(())) => {
                if let Some(k) = st.close_after.take() {
                    return Poll::Ready(LinkEvent::Kill(k));
                }
            }
            Poll::Pending => {}
        }
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Sends FIN (the close frame has been written or given up on).
    pub fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        Pin::new(&mut st.io).poll_shutdown(cx)
    }

    /// Reads and drops what the client still sends, until its EOF or `*budget`
    /// bytes. A socket closed with unread bytes is reset, which drops what its
    /// kernel had not sent yet: the close frame could be lost that way.
    pub fn poll_discard(&self, cx: &mut Context<'_>, budget: &mut usize) -> Poll<()> {
        let mut st = self.lock();
        let mut buf = [0u8; 4096];
        while *budget > 0 {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut st.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
                Poll::Ready(Ok(())) => *budget = budget.saturating_sub(rb.filled().len()),
            }
        }
        Poll::Ready(())
    }

    /// Writes out everything queued.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        self.poll_drain_locked(&mut st, cx)
    }

    fn poll_drain_locked(&self, st: &mut State, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.drain_locked(st, cx);
        self.settle(st);
        r
    }

    fn drain_locked(&self, st: &mut State, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !st.queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = st
                .queue
                .iter()
                .take(MAX_FRAMES_PER_WRITE)
                .map(|q| IoSlice::new(&q.bytes))
                .collect();
            let r = Pin::new(&mut st.io).poll_write_vectored(cx, &slices);
            drop(slices);
            let mut n = match r {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    st.failed = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(0)) => {
                    st.failed = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => n,
            };
            st.queued_bytes -= n;
            let now = Instant::now();
            while n > 0 {
                let head = st.queue.front_mut().expect("written bytes were queued");
                if n >= head.bytes.len() {
                    n -= head.bytes.len();
                    if let Some(c) = head.created {
                        self.metrics
                            .fanout_delay
                            .observe(now.duration_since(c).as_secs_f64());
                    }
                    st.queue.pop_front();
                    st.head_started = false;
                    self.metrics.messages_out.inc();
                } else {
                    head.bytes.advance(n);
                    st.head_started = true;
                    n = 0;
                }
            }
        }
        // The queue's buffer is not kept: an idle member should hold nothing.
        st.queue = VecDeque::new();
        Poll::Ready(Ok(()))
    }
}

impl State {
    fn drop_unstarted(&mut self) {
        let keep = usize::from(self.head_started);
        self.queue.truncate(keep);
        self.queued_bytes = self.queue.iter().map(|q| q.bytes.len()).sum();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let st = self.st.get_mut().unwrap_or_else(|e| e.into_inner());
        self.metrics.ws_queued_bytes.sub(st.reported_bytes as i64);
    }
}

fn wake(st: &mut State) {
    if let Some(w) = st.waker.take() {
        w.wake();
    }
}

/// The room's handle on one connection: its id and its link.
pub(crate) struct ConnHandle {
    pub id: u64,
    pub tx: Arc<Link>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle").field("id", &self.id).finish()
    }
}

impl ConnHandle {
    /// Closes after what is already queued has been written.
    pub fn close_after_queue(self, code: u16, reason: &'static str) {
        let _ = self.tx.try_send(Outbound::Close(code, reason));
    }

    /// Closes the socket with `code` now, dropping what is queued.
    pub fn close(self, code: u16, reason: &'static str) {
        self.tx.kill((code, reason));
    }
}

impl Drop for ConnHandle {
    /// The room let go of the member without a close: close normally after the queue
    /// (a no-op when a close is already under way).
    fn drop(&mut self) {
        self.tx.close_after((1000, "bye"));
    }
}

/// What the connection task learns from its link.
pub(crate) enum LinkEvent {
    Kill(Kill),
    Failed,
}

/// The socket as tungstenite sees it: reads go to the socket; writes (its
/// control frames: pongs, close replies, and the connection's answers before
/// `hello`) join the same ordered queue as the room's, under the same byte budget.
pub(crate) struct SharedIo(pub Arc<Link>);

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.0.lock();
        Pin::new(&mut st.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let link = &*self.0;
        let mut st = link.lock();
        if st.failed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // A client that sends pings (or anything answered) faster than it reads
        // made this queue grow without end: 137 MB -> 1.96 GB RSS in 8.5 s. Past
        // the budget the connection is closed now and the frame is dropped: the
        // reader stops at its next frame, so nothing more is queued. tungstenite
        // hands over whole frames, so dropping one leaves the stream well formed.
        if !st.finishing && !st.queue.is_empty() && st.queued_bytes + buf.len() > link.max_bytes {
            link.note_limit(&mut st, "queued_bytes");
            let k = st.close_after.take().unwrap_or(BACKLOG_CLOSE);
            st.kill.get_or_insert(k);
            st.closing = true;
            wake(&mut st);
            return Poll::Ready(Ok(buf.len()));
        }
        let mut from = 0;
        if st.queue.is_empty() {
            match Pin::new(&mut st.io).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) if n == buf.len() => return Poll::Ready(Ok(n)),
                Poll::Ready(Ok(n)) => {
                    from = n;
                    st.head_started = n > 0;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        st.queue.push_back(Queued {
            bytes: Bytes::copy_from_slice(&buf[from..]),
            created: None,
        });
        st.queued_bytes += buf.len() - from;
        link.settle(&mut st);
        wake(&mut st);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued bytes are written by the connection task (`poll_event`/`poll_drain`).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.0.lock();
        Pin::new(&mut st.io).poll_shutdown(cx)
    }
}

/// The WebSocket upgrade request (RFC 6455 §4.2.1), taken without tungstenite's
/// stream so that the room can write to the upgraded connection itself.
pub struct WsUpgrade {
    on_upgrade: OnUpgrade,
    key: HeaderValue,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for WsUpgrade {
    type Rejection = StatusCode;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET || !is_upgrade(&parts.headers) {
            return Err(StatusCode::BAD_REQUEST);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(StatusCode::BAD_REQUEST)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(StatusCode::UPGRADE_REQUIRED)?;
        Ok(Self { on_upgrade, key })
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && h.get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13")
}

impl WsUpgrade {
    /// Answers 101 and runs `f` on the upgraded connection.
    pub fn on_upgrade<F, Fut>(self, f: F) -> axum::response::Response
    where
        F: FnOnce(Io) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                f(TokioIo::new(up)).await;
            }
        });
        axum::response::Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(axum::body::Body::empty())
            .expect("static 101 response")
    }
}
