//! ICE-TCP, passive side (RFC 6544) on the media port number: RFC 4571 framing,
//! each connection routed by its first STUN check to the worker owning the session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtc::shared::tcp_framing::TcpFrameDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::error::MediaError;
use crate::registry::Registry;
use crate::worker::{Inbound, WorkerHandle};

/// Packets queued for one TCP peer before more are dropped.
const LINK_QUEUE: usize = 512;
/// Largest frame accepted from a client (a UDP-sized datagram).
const MAX_FRAME: usize = 1500 + 64;

pub(crate) async fn bind(ip: IpAddr, port: u16) -> Result<TcpListener, MediaError> {
    let addr = SocketAddr::new(ip, port);
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| MediaError::Internal(format!("TCP socket: {e}")))?;
    let _ = socket.set_reuseaddr(true);
    socket.bind(addr).map_err(|e| {
        MediaError::Internal(format!(
            "cannot bind ICE-TCP on {addr}: {e} (set media.ice_tcp = false or free the port)"
        ))
    })?;
    socket
        .listen(1024)
        .map_err(|e| MediaError::Internal(format!("TCP listen: {e}")))
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    workers: Arc<[WorkerHandle]>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "ICE-TCP accept");
                continue;
            }
        };
        if !registry.running.load(std::sync::atomic::Ordering::Acquire) {
            break;
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, peer, registry.clone(), workers.clone()));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    registry: Arc<Registry>,
    workers: Arc<[WorkerHandle]>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (link, mut outgoing) = mpsc::channel::<Bytes>(LINK_QUEUE);
    let write_task = tokio::spawn(async move {
        let mut frame = Vec::with_capacity(MAX_FRAME + 2);
        while let Some(packet) = outgoing.recv().await {
            frame.clear();
            frame.extend_from_slice(&(packet.len() as u16).to_be_bytes());
            frame.extend_from_slice(&packet);
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut decoder = TcpFrameDecoder::new();
    let mut buf = vec![0u8; 8192];
    let mut owner: Option<usize> = None;
    'read: loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        decoder.extend_from_slice(&buf[..n]);
        if decoder.buffered_len() > 64 * 1024 {
            break;
        }
        while let Some(packet) = decoder.next_packet() {
            if packet.len() > MAX_FRAME {
                break 'read;
            }
            if owner.is_none() {
                // The first frame must be a STUN check naming one of our sessions.
                let route = crate::stun::local_ufrag(&packet)
                    .and_then(|u| registry.ufrags.get(u).map(|r| *r));
                match route {
                    Some(r) => owner = Some(r.worker),
                    None => break 'read,
                }
            }
            let Some(w) = owner else { break 'read };
            let msg = Inbound::Datagram {
                from: peer,
                tcp: Some(link.clone()),
                data: BytesMut::from(&packet[..]),
                at: Instant::now(),
            };
            if workers[w].inbound.send(msg).await.is_err() {
                break 'read;
            }
        }
    }
    drop(link);
    write_task.abort();
}
