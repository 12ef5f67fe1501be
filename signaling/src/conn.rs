//! One WebSocket connection: waits for `hello`, joins the room, then one task reads
//! (parse once, forward to the room task) and drains what the room's writes left queued.

use std::time::{Duration, Instant};

use std::sync::Arc;
use std::task::Poll;

use axum::extract::ws::Utf8Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::clock::now_ms;
use crate::link::{Io, Link, LinkEvent, SendError, SharedIo};
use crate::room::{JoinRequest, RoomEvent};
use crate::wire::{self, ClientMsg};
use crate::{Identity, Rooms};

/// What a connection's writer sends. Broadcasts carry bytes serialised once by the room.
#[derive(Debug)]
pub(crate) enum Outbound {
    Text(Utf8Bytes, Instant),
    /// Answer to a client ping; `t2` is stamped when it is handed to the socket.
    Pong {
        id: Value,
        t0: f64,
        t1: f64,
    },
    /// Server-initiated clock measurement; `t0` is stamped when it is handed to the socket.
    Ping {
        id: u64,
    },
    /// Close after everything queued before it (kick, ban).
    Close(u16, &'static str),
}

/// Close request for a connection's writer: (close code, reason).
pub(crate) type Kill = (u16, &'static str);

/// The room's handle on one connection.
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

pub(crate) fn text(v: &Value) -> Utf8Bytes {
    Utf8Bytes::from(v.to_string())
}

struct ConnGauge(prometheus::IntGauge);
impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one upgraded connection of an authenticated user until it closes.
pub(crate) async fn serve(rooms: Rooms, io: Io, room: String, ident: Identity) {
    let inner = rooms.inner.clone();
    let cfg = inner.cfg.clone();
    inner.metrics.connections.inc();
    let _gauge = ConnGauge(inner.metrics.connections.clone());
    let link = Link::new(io, cfg.queue_depth, inner.metrics.clone());
    // Frames a little past the limit are read and answered with 1009; far larger
    // ones are cut off by tungstenite (and also closed with 1009). Client frames are
    // mostly under 300 bytes: a 1 KiB read buffer (it grows for a larger frame) keeps
    // an idle member cheap (18.3 -> 15.4 KiB RSS per idle member against 4 KiB) and
    // zero-fills less per read. Writes bypass tungstenite (link.rs), so no write buffer.
    let limit = cfg.max_frame_bytes * 4 + 1024;
    let ws_cfg = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let mut socket =
        WebSocketStream::from_raw_socket(SharedIo(link.clone()), Role::Server, Some(ws_cfg)).await;

    // 1. hello. This phase, the join and the close are boxed: an async fn's state is
    // as large as its largest await point, and the task keeps that size for the whole
    // connection, so inline they made every idle member's task ~2.3 KiB.
    let (resume, user) = match Box::pin(hello(&inner, &cfg, &mut socket)).await {
        Hello::Joined(resume, user) => (resume, user),
        Hello::Close(close) => {
            Box::pin(finish(&link, socket, close)).await;
            return;
        }
        Hello::Gone => return,
    };

    // 2. join
    let conn_id = inner.next_conn_id();
    let req = JoinRequest {
        conn: ConnHandle {
            id: conn_id,
            tx: link.clone(),
        },
        ident,
        resume,
        user: user.unwrap_or_default(),
    };
    let room_tx = match Box::pin(rooms.join(&room, req)).await {
        Ok(t) => t,
        Err(refused) => {
            Box::pin(async {
                let _ =
                    send_error_direct(&mut socket, refused.code, &refused.message, Some("hello"))
                        .await;
                finish(&link, socket, Some((refused.close, refused.code))).await;
            })
            .await;
            return;
        }
    };

    crate::trim::churn();

    // 3. The room writes to the socket itself; this task reads, and writes out what
    // the room queued because the socket would have blocked (woken by the room).
    let mut clean = false;
    let close: Option<Kill> = loop {
        let ev = std::future::poll_fn(|cx| {
            if let Poll::Ready(e) = link.poll_event(cx) {
                return Poll::Ready(Err(e));
            }
            socket.poll_next_unpin(cx).map(Ok)
        })
        .await;
        let f = match ev {
            Err(LinkEvent::Kill(k)) => break Some(k),
            Err(LinkEvent::Failed) => break None,
            Ok(f) => f,
        };
        let reply = match f {
            Some(Ok(Message::Text(t))) => {
                let recv_at = now_ms();
                inner.metrics.messages_in.inc();
                if t.len() > cfg.max_frame_bytes {
                    let _ = to_room(
                        &room_tx,
                        RoomEvent::Kill {
                            conn: conn_id,
                            code: 1009,
                            reason: "frame too large",
                        },
                    )
                    .await;
                    continue;
                }
                match wire::parse(&t) {
                    Ok(ClientMsg::TimePing { id, t0 }) => Some(Outbound::Pong {
                        id,
                        t0,
                        t1: recv_at,
                    }),
                    Ok(msg) => {
                        if to_room(
                            &room_tx,
                            RoomEvent::Msg {
                                conn: conn_id,
                                msg,
                                recv_at,
                            },
                        )
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
            // tungstenite queues the pong to a ping on the same link as everything else.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
            Some(Ok(Message::Close(frame))) => {
                clean = frame.is_some_and(|f| u16::from(f.code) == 1000);
                break None;
            }
            Some(Err(e)) => {
                if is_capacity(&e) {
                    let _ = to_room(
                        &room_tx,
                        RoomEvent::Kill {
                            conn: conn_id,
                            code: 1009,
                            reason: "frame too large",
                        },
                    )
                    .await;
                    // The room answers with a kill; wait for it to close.
                    continue;
                }
                break None;
            }
            None => break None,
        };
        if let Some(r) = reply
            && link.try_send(r) == Err(SendError::Full)
        {
            break Some((1013, "too slow"));
        }
    };
    let _ = to_room(
        &room_tx,
        RoomEvent::Leave {
            conn: conn_id,
            clean,
        },
    )
    .await;
    drop(room_tx);
    crate::trim::churn();
    Box::pin(finish(&link, socket, close)).await;
}

/// How the `hello` phase ended.
enum Hello {
    Joined(Option<wire::Resume>, Option<wire::UserInfo>),
    /// Close (with this frame) and end.
    Close(Option<Kill>),
    /// The socket failed: end without a close.
    Gone,
}

/// Waits for `hello`, answering anything else with an error, until the deadline.
async fn hello(
    inner: &crate::Inner,
    cfg: &crate::config::RoomsConfig,
    socket: &mut WebSocketStream<SharedIo>,
) -> Hello {
    let hello_deadline = tokio::time::sleep(Duration::from_millis(cfg.hello_timeout_ms));
    tokio::pin!(hello_deadline);
    loop {
        let frame = tokio::select! {
            f = socket.next() => f,
            _ = &mut hello_deadline => {
                let _ = send_error_direct(socket, "bad_request", "no hello within the time limit", None).await;
                return Hello::Close(Some((1008, "no hello")));
            }
        };
        match frame {
            Some(Ok(Message::Text(t))) => {
                inner.metrics.messages_in.inc();
                if t.len() > cfg.max_frame_bytes {
                    return Hello::Close(Some((1009, "frame too large")));
                }
                match wire::parse(&t) {
                    Ok(ClientMsg::Hello { resume, user }) => return Hello::Joined(resume, user),
                    Ok(_) => {
                        let _ = send_error_direct(
                            socket,
                            "bad_request",
                            "the first message must be hello",
                            None,
                        )
                        .await;
                    }
                    Err(e) => {
                        let _ =
                            send_error_direct(socket, e.code, &e.message, e.r#ref.as_deref()).await;
                    }
                }
            }
            Some(Ok(Message::Binary(_))) => {
                let _ = send_error_direct(
                    socket,
                    "bad_request",
                    "binary frames are not accepted",
                    None,
                )
                .await;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Err(e)) => {
                if is_capacity(&e) {
                    return Hello::Close(Some((1009, "frame too large")));
                }
                return Hello::Gone;
            }
            Some(Ok(Message::Close(_))) | None => {
                return Hello::Close(None);
            }
        }
    }
}

/// Hands `ev` to the room. The send future (the event and a semaphore waiter) is
/// boxed, and only when the channel is full: the connection task's state is as large
/// as its largest await point for the connection's whole life.
async fn to_room(tx: &mpsc::Sender<RoomEvent>, ev: RoomEvent) -> Result<(), ()> {
    match tx.try_send(ev) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        Err(mpsc::error::TrySendError::Full(ev)) => Box::pin(tx.send(ev)).await.map_err(drop),
    }
}

/// Sends the close frame (after whatever is still queued; tungstenite also queues its
/// reply to a client's close there), writes the queue out and shuts the socket down.
async fn finish(link: &Arc<Link>, mut socket: WebSocketStream<SharedIo>, close: Option<Kill>) {
    if let Some((code, reason)) = close {
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            })))
            .await;
    }
    let _ = socket.flush().await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        std::future::poll_fn(|cx| link.poll_drain(cx)),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::close(&mut socket)).await;
}

fn is_capacity(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Capacity(_))
}

async fn send_error_direct(
    sink: &mut WebSocketStream<SharedIo>,
    code: &str,
    message: &str,
    r#ref: Option<&str>,
) -> Result<(), tungstenite::Error> {
    let v = wire::error(code, message, r#ref, None);
    sink.send(Message::Text(v.to_string().into())).await
}
