//! One WebSocket connection: waits for `hello`, joins the room, then one task reads
//! (parse once, forward to the room task) and drains the bounded queue in batches.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::clock::now_ms;
use crate::room::{JoinRequest, RoomEvent};
use crate::wire::{self, ClientMsg};
use crate::{Identity, Rooms};

/// What a connection's writer sends. Broadcasts carry bytes serialised once by the room.
#[derive(Debug)]
pub(crate) enum Outbound {
    Text(Utf8Bytes, Instant),
    /// Answer to a client ping; `t2` is stamped by the writer just before sending.
    Pong {
        id: Value,
        t0: f64,
        t1: f64,
    },
    /// Server-initiated clock measurement; `t0` is stamped by the writer.
    Ping {
        id: u64,
    },
    /// Close after everything queued before it (kick, ban).
    Close(u16, &'static str),
}

/// Close request for a connection's writer: (close code, reason).
pub(crate) type Kill = (u16, &'static str);

/// The room's handle on one connection.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub id: u64,
    pub tx: mpsc::Sender<Outbound>,
    pub kill: Option<oneshot::Sender<Kill>>,
}

impl ConnHandle {
    /// Closes after what is already queued has been written (or at once if the queue is full).
    pub fn close_after_queue(self, code: u16, reason: &'static str) {
        if self.tx.try_send(Outbound::Close(code, reason)).is_err() {
            self.close(code, reason);
        }
    }

    /// Tells the writer to close the socket with `code` now, dropping what is queued.
    pub fn close(mut self, code: u16, reason: &'static str) {
        if let Some(k) = self.kill.take() {
            let _ = k.send((code, reason));
        }
    }
}

pub(crate) fn text(v: &Value) -> Utf8Bytes {
    Utf8Bytes::from(v.to_string())
}

struct ConnGauge(prometheus::IntGauge);
impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one upgraded socket of an authenticated user until it closes.
pub(crate) async fn serve(rooms: Rooms, socket: WebSocket, room: String, ident: Identity) {
    let inner = rooms.inner.clone();
    let cfg = inner.cfg.clone();
    inner.metrics.connections.inc();
    let _gauge = ConnGauge(inner.metrics.connections.clone());
    let mut socket = socket;

    // 1. hello
    let hello_deadline = tokio::time::sleep(Duration::from_millis(cfg.hello_timeout_ms));
    tokio::pin!(hello_deadline);
    let (resume, user) = loop {
        let frame = tokio::select! {
            f = socket.next() => f,
            _ = &mut hello_deadline => {
                let _ = send_error_direct(&mut socket, "bad_request", "no hello within the time limit", None).await;
                let _ = close_direct(&mut socket, 1008, "no hello").await;
                return;
            }
        };
        match frame {
            Some(Ok(Message::Text(t))) => {
                inner.metrics.messages_in.inc();
                if t.len() > cfg.max_frame_bytes {
                    let _ = close_direct(&mut socket, 1009, "frame too large").await;
                    return;
                }
                match wire::parse(&t) {
                    Ok(ClientMsg::Hello { resume, user }) => break (resume, user),
                    Ok(_) => {
                        let _ = send_error_direct(
                            &mut socket,
                            "bad_request",
                            "the first message must be hello",
                            None,
                        )
                        .await;
                    }
                    Err(e) => {
                        let _ =
                            send_error_direct(&mut socket, e.code, &e.message, e.r#ref.as_deref())
                                .await;
                    }
                }
            }
            Some(Ok(Message::Binary(_))) => {
                let _ = send_error_direct(
                    &mut socket,
                    "bad_request",
                    "binary frames are not accepted",
                    None,
                )
                .await;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Err(e)) => {
                if is_capacity(&e) {
                    let _ = close_direct(&mut socket, 1009, "frame too large").await;
                }
                return;
            }
            Some(Ok(Message::Close(_))) | None => return,
        }
    };

    // 2. join
    let (tx, mut rx) = mpsc::channel(cfg.queue_depth.max(1));
    let (kill_tx, kill_rx) = oneshot::channel();
    let conn_id = inner.next_conn_id();
    let req = JoinRequest {
        conn: ConnHandle {
            id: conn_id,
            tx,
            kill: Some(kill_tx),
        },
        ident,
        resume,
        user: user.unwrap_or_default(),
    };
    let room_tx = match rooms.join(&room, req).await {
        Ok(t) => t,
        Err(refused) => {
            let _ =
                send_error_direct(&mut socket, refused.code, &refused.message, Some("hello")).await;
            let _ = close_direct(&mut socket, refused.close, refused.code).await;
            return;
        }
    };

    crate::trim::churn();

    // 3. One task for both directions: a second task per connection costs memory
    // and a cross-task wake per message; queued frames are fed together and leave
    // in one flush (one write for as many as the write buffer holds).
    let mut out = Outgoing {
        socket,
        metrics: inner.metrics.clone(),
        kill: kill_rx,
        armed: true,
        sent: 0,
    };
    let mut clean = false;
    let close: Option<Kill> = loop {
        tokio::select! {
            biased;
            k = &mut out.kill, if out.armed => match k {
                Ok(k) => break Some(k),
                Err(_) => out.armed = false,
            },
            m = rx.recv() => {
                let Some(first) = m else { break Some((1000, "bye")) };
                match out.send_batch(first, &mut rx).await {
                    Ok(()) => {}
                    Err(Stop::Close(k)) => break Some(k),
                    Err(Stop::Failed) => break None,
                }
            }
            f = out.socket.next() => {
                let reply = match f {
                    Some(Ok(Message::Text(t))) => {
                        let recv_at = now_ms();
                        inner.metrics.messages_in.inc();
                        if t.len() > cfg.max_frame_bytes {
                            let _ = room_tx
                                .send(RoomEvent::Kill {
                                    conn: conn_id,
                                    code: 1009,
                                    reason: "frame too large",
                                })
                                .await;
                            continue;
                        }
                        match wire::parse(&t) {
                            Ok(ClientMsg::TimePing { id, t0 }) => Some(Outbound::Pong { id, t0, t1: recv_at }),
                            Ok(msg) => {
                                if room_tx
                                    .send(RoomEvent::Msg {
                                        conn: conn_id,
                                        msg,
                                        recv_at,
                                    })
                                    .await
                                    .is_err()
                                {
                                    break None;
                                }
                                None
                            }
                            Err(e) => {
                                inner.metrics.errors.with_label_values(&[e.code]).inc();
                                let v = wire::error(e.code, &e.message, e.r#ref.as_deref(), None);
                                Some(Outbound::Text(text(&v), Instant::now()))
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let v = wire::error("bad_request", "binary frames are not accepted", None, None);
                        Some(Outbound::Text(text(&v), Instant::now()))
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(Message::Close(frame))) => {
                        clean = frame.is_some_and(|f| f.code == 1000);
                        break None;
                    }
                    Some(Err(e)) => {
                        if is_capacity(&e) {
                            let _ = room_tx
                                .send(RoomEvent::Kill {
                                    conn: conn_id,
                                    code: 1009,
                                    reason: "frame too large",
                                })
                                .await;
                            // The room answers with a kill; wait for it to close.
                            continue;
                        }
                        break None;
                    }
                    None => break None,
                };
                if let Some(r) = reply {
                    match out.send_batch(r, &mut rx).await {
                        Ok(()) => {}
                        Err(Stop::Close(k)) => break Some(k),
                        Err(Stop::Failed) => break None,
                    }
                }
            }
        }
    };
    let _ = room_tx
        .send(RoomEvent::Leave {
            conn: conn_id,
            clean,
        })
        .await;
    drop(room_tx);
    crate::trim::churn();
    let mut socket = out.socket;
    if let Some((code, reason)) = close {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            socket.send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }))),
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close()).await;
}

/// Why a connection stops writing.
enum Stop {
    Close(Kill),
    Failed,
}

/// The writing side of a connection.
struct Outgoing {
    socket: WebSocket,
    metrics: crate::metrics::Metrics,
    kill: oneshot::Receiver<Kill>,
    armed: bool,
    sent: u64,
}

/// Most frames fed before a flush (bounded so one connection cannot hold its task forever).
const BATCH_MAX: usize = 64;

impl Outgoing {
    /// Feeds `first` and whatever else is already queued, then flushes once;
    /// a kill from the room interrupts a write stuck on a client that does not read.
    async fn send_batch(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), Stop> {
        let mut next = Some(first);
        // Allocated only when a broadcast is in the batch, and not kept: an idle
        // connection should hold as little as possible.
        let mut created = Vec::new();
        let mut n = 0;
        while let Some(o) = next.take() {
            let (msg, c) = match o {
                Outbound::Text(t, c) => (Message::Text(t), Some(c)),
                Outbound::Pong { id, t0, t1 } => (
                    Message::Text(wire::pong(&id, t0, t1, now_ms()).into()),
                    None,
                ),
                Outbound::Ping { id } => (
                    Message::Text(
                        json!({"type":"time.ping","id":id,"t0":now_ms()})
                            .to_string()
                            .into(),
                    ),
                    None,
                ),
                Outbound::Close(code, reason) => {
                    self.flush().await?;
                    return Err(Stop::Close((code, reason)));
                }
            };
            let fed = self.socket.feed(msg);
            with_kill(fed, &mut self.kill, &mut self.armed).await?;
            created.extend(c);
            n += 1;
            if n < BATCH_MAX {
                next = rx.try_recv().ok();
            }
        }
        self.flush().await?;
        self.metrics.messages_out.inc_by(n as u64);
        self.sent += n as u64;
        let now = Instant::now();
        for c in &created {
            self.metrics
                .fanout_delay
                .observe(now.duration_since(*c).as_secs_f64());
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        let f = self.socket.flush();
        with_kill(f, &mut self.kill, &mut self.armed).await
    }
}

async fn with_kill<F>(
    fut: F,
    kill: &mut oneshot::Receiver<Kill>,
    armed: &mut bool,
) -> Result<(), Stop>
where
    F: std::future::Future<Output = Result<(), axum::Error>>,
{
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            k = &mut *kill, if *armed => match k {
                Ok(k) => return Err(Stop::Close(k)),
                Err(_) => *armed = false,
            },
            r = &mut fut => return r.map_err(|_| Stop::Failed),
        }
    }
}

fn is_capacity(e: &axum::Error) -> bool {
    let s = e.to_string().to_lowercase();
    s.contains("capacity") || s.contains("too long") || s.contains("too big") || s.contains("limit")
}

async fn send_error_direct<S>(
    sink: &mut S,
    code: &str,
    message: &str,
    r#ref: Option<&str>,
) -> Result<(), axum::Error>
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    let v = wire::error(code, message, r#ref, None);
    sink.send(Message::Text(text(&v))).await
}

async fn close_direct<S>(sink: &mut S, code: u16, reason: &str) -> Result<(), axum::Error>
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    let r = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason.to_string()),
        })))
        .await;
    let _ = sink.close().await;
    r
}
