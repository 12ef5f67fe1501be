//! One WebSocket connection: waits for `hello`, joins the room, then one task reads
//! (parse once, forward to the room task) and drains what the room's writes left queued.

use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::chat::TokenBucket;
use crate::clock::now_ms;
use crate::config::RoomsConfig;
use crate::event::{JoinRequest, RoomEvent};
use crate::frame::{BACKLOG_CLOSE, Kill, Outbound, SendError};
use crate::identity::Identity;
use crate::link::{ConnHandle, Io, Link, LinkEvent, SharedIo, WsUpgrade};
use crate::rooms::Rooms;
use crate::server_msg::ServerMsg;
use crate::state::Inner;
use crate::trim;
use crate::wire::{self, ClientMsg};

/// Frames other than `hello` a connection may send before it (each answered with
/// an `error`, pings with a pong); one more closes it with 1008. Before this, every
/// bad frame got its answer: 24 MB of 1-byte frames grew the server by 464 MB.
pub(crate) const PRE_HELLO_FRAMES: usize = 8;

/// How long a close after the queue waits for the client to read that queue.
const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// Most bytes read and dropped after the close frame (the rest of an oversize
/// frame, a client's close reply, what a flooding client had in flight) before the
/// socket is let go. Closing a socket with unread bytes resets it, and the reset
/// throws away what the server's kernel has not sent yet, the close frame
/// included: a flood can have a few MB in flight (loopback's receive buffer grows
/// to 6 MiB). Reading costs no memory (one 4 KiB buffer) and is cut off after 1 s.
const LINGER_BYTES: usize = 8 * 1024 * 1024;

const TOO_LARGE: Kill = (1009, "frame too large");

struct ConnGauge(prometheus::IntGauge);
impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Rooms {
    /// Answers a WebSocket upgrade and serves the connection of an authenticated user
    /// in `room` until it closes.
    pub fn upgrade(
        &self,
        up: WsUpgrade,
        room: String,
        ident: Identity,
    ) -> axum::response::Response {
        let rooms = self.clone();
        up.on_upgrade(move |io| serve(rooms, io, room, ident))
    }
}

/// Serves one upgraded connection of an authenticated user until it closes.
async fn serve(rooms: Rooms, io: Io, room: String, ident: Identity) {
    let inner = rooms.inner.clone();
    let cfg = inner.cfg.clone();
    inner.metrics.connections.inc();
    let _gauge = ConnGauge(inner.metrics.connections.clone());
    let link = Link::new(
        io,
        cfg.queue_depth,
        cfg.max_queued_bytes_per_connection,
        inner.metrics.clone(),
    );
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
    let (resume, user) = match Box::pin(hello(&inner, &cfg, &link, &mut socket)).await {
        Hello::Joined(resume, user) => (resume, user),
        Hello::Close(close) => {
            log_limit(&room, close);
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

    trim::churn();

    // 3. The room writes to the socket itself; this task reads, and writes out what
    // the room queued because the socket would have blocked (woken by the room).
    let mut clean = false;
    // `time.ping` is answered here, not by the room, so it needs a bucket of its own
    // (the same rate as the room's for other messages): without one a client that
    // reads its pongs could make the server answer as fast as it can send.
    let mut pings = TokenBucket::new(cfg.messages_burst, now_ms());
    // A close after the queue (kick, ban, the room let go) waits for the client to
    // read what is queued, but not forever: a client that never reads is closed now.
    let mut close_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let close: Option<Kill> = loop {
        let ev = std::future::poll_fn(|cx| {
            if let Poll::Ready(e) = link.poll_event(cx) {
                return Poll::Ready(Err(e));
            }
            if close_deadline.is_none() && link.close_pending() {
                close_deadline = Some(Box::pin(tokio::time::sleep(CLOSE_DRAIN)));
            }
            if let Some(d) = &mut close_deadline
                && d.as_mut().poll(cx).is_ready()
            {
                link.close_now();
                if let Poll::Ready(e) = link.poll_event(cx) {
                    return Poll::Ready(Err(e));
                }
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
                    link.limit_hit("frame_too_large");
                    break Some(TOO_LARGE);
                }
                match wire::parse(&t) {
                    Ok(ClientMsg::TimePing { id, t0 }) => {
                        match pings.take(recv_at, cfg.messages_per_second, cfg.messages_burst) {
                            Ok(()) => Some(Outbound::Pong {
                                id,
                                t0,
                                t1: recv_at,
                            }),
                            Err(retry) => {
                                inner
                                    .metrics
                                    .errors
                                    .with_label_values(&["rate_limited"])
                                    .inc();
                                let v = ServerMsg::error(
                                    "rate_limited",
                                    "too many time.ping messages: a burst of 8 on join, then one every few seconds is enough",
                                    Some("time.ping"),
                                    Some(retry.as_millis() as u64 + 1),
                                );
                                Some(Outbound::Text(v.to_text().into(), Instant::now()))
                            }
                        }
                    }
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
                        let v = ServerMsg::error(e.code, e.message, e.r#ref.as_deref(), None);
                        Some(Outbound::Text(v.to_text().into(), Instant::now()))
                    }
                }
            }
            Some(Ok(Message::Binary(_))) => {
                let v =
                    ServerMsg::error("bad_request", "binary frames are not accepted", None, None);
                Some(Outbound::Text(v.to_text().into(), Instant::now()))
            }
            // tungstenite queues the pong to a ping on the same link as everything else.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
            Some(Ok(Message::Close(frame))) => {
                clean = frame.is_some_and(|f| u16::from(f.code) == 1000);
                break None;
            }
            Some(Err(e)) => {
                // tungstenite ends the stream after any error, so the 1009 is sent
                // here: waiting for the room to send it raced the stream's end, and
                // the connection then closed without a close frame.
                if is_capacity(&e) {
                    link.limit_hit("frame_too_large");
                    break Some(TOO_LARGE);
                }
                break None;
            }
            None => break None,
        };
        if let Some(r) = reply
            && link.try_send(r) == Err(SendError::Full)
        {
            break Some(BACKLOG_CLOSE);
        }
    };
    log_limit(&room, close);
    let _ = to_room(
        &room_tx,
        RoomEvent::Leave {
            conn: conn_id,
            clean,
        },
    )
    .await;
    drop(room_tx);
    trim::churn();
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

/// Waits for `hello`, answering anything else with an error, until the deadline or
/// [`PRE_HELLO_FRAMES`] other frames. What is answered is written out as the
/// socket takes it, within the connection's byte budget (a kill from the link,
/// i.e. the budget, ends the wait too).
async fn hello(
    inner: &Inner,
    cfg: &RoomsConfig,
    link: &Link,
    socket: &mut WebSocketStream<SharedIo>,
) -> Hello {
    let hello_deadline = tokio::time::sleep(Duration::from_millis(cfg.hello_timeout_ms));
    tokio::pin!(hello_deadline);
    let mut others = 0usize;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(e) = link.poll_event(cx) {
                return Poll::Ready(Err(e));
            }
            socket.poll_next_unpin(cx).map(Ok)
        });
        let frame = tokio::select! {
            f = next => match f {
                Ok(f) => f,
                Err(LinkEvent::Kill(k)) => return Hello::Close(Some(k)),
                Err(LinkEvent::Failed) => return Hello::Gone,
            },
            _ = &mut hello_deadline => {
                link.limit_hit("no_hello");
                let _ = send_error_direct(socket, "bad_request", "no hello within the time limit", None).await;
                return Hello::Close(Some((1008, "no hello")));
            }
        };
        if !matches!(&frame, Some(Ok(Message::Close(_))) | Some(Err(_)) | None) {
            others += 1;
            if others > PRE_HELLO_FRAMES {
                link.limit_hit("pre_hello_frames");
                return Hello::Close(Some((1008, "the first message must be hello")));
            }
        }
        match frame {
            Some(Ok(Message::Text(t))) => {
                inner.metrics.messages_in.inc();
                if t.len() > cfg.max_frame_bytes {
                    link.limit_hit("frame_too_large");
                    return Hello::Close(Some(TOO_LARGE));
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
                    link.limit_hit("frame_too_large");
                    return Hello::Close(Some(TOO_LARGE));
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
/// reply to a client's close there), writes the queue out, shuts the socket down and
/// reads what the client still sends until its EOF (all bounded in time and bytes).
async fn finish(link: &Arc<Link>, mut socket: WebSocketStream<SharedIo>, close: Option<Kill>) {
    link.finishing();
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
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        std::future::poll_fn(|cx| link.poll_shutdown(cx)),
    )
    .await;
    let mut budget = LINGER_BYTES;
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        std::future::poll_fn(|cx| link.poll_discard(cx, &mut budget)),
    )
    .await;
}

/// Logs (once: the connection then ends) a close caused by a limit. The room id is
/// logged; the token never is.
fn log_limit(room: &str, close: Option<Kill>) {
    if let Some((code @ (1008 | 1009 | 1013), reason)) = close {
        tracing::info!(room, code, reason, "closing a room WebSocket");
    }
}

fn is_capacity(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Capacity(_))
}

async fn send_error_direct(
    sink: &mut WebSocketStream<SharedIo>,
    code: &'static str,
    message: &str,
    r#ref: Option<&str>,
) -> Result<(), tungstenite::Error> {
    let v = ServerMsg::error(code, message, r#ref, None);
    sink.send(Message::Text(v.to_text().into())).await
}
