//! A loopback TCP relay that delays every chunk by a base delay plus uniform jitter,
//! each way, keeping byte order: `sync`'s network impairment where `tc netem` is missing.
//!
//! A chunk read at `t` leaves at `max(t + delay ± jitter, previous departure)`, which is
//! what a TCP receiver sees of a jittery path (late segments hold back later ones).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Starts the relay on 127.0.0.1 (free port) towards `upstream`; returns its address.
/// It runs until the runtime stops.
pub async fn start(
    upstream: SocketAddr,
    delay: Duration,
    jitter: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, delay, jitter));
                tokio::spawn(pump(ur, dw, delay, jitter));
            });
        }
    });
    Ok(addr)
}

async fn pump<R, W>(mut r: R, mut w: W, delay: Duration, jitter: Duration)
where
    R: AsyncReadExt + Unpin + Send + 'static,
    W: AsyncWriteExt + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut last = tokio::time::Instant::now();
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let j = jitter.as_secs_f64() * (rand::random::<f64>() * 2.0 - 1.0);
        let d = Duration::from_secs_f64((delay.as_secs_f64() + j).max(0.0));
        let due = (tokio::time::Instant::now() + d).max(last);
        last = due;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_in_order_after_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut b = [0u8; 64];
            loop {
                let n = s.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&b[..n]).await.unwrap();
            }
        });
        let relay = start(
            echo_addr,
            Duration::from_millis(40),
            Duration::from_millis(10),
        )
        .await
        .unwrap();
        let mut c = TcpStream::connect(relay).await.unwrap();
        let t = std::time::Instant::now();
        c.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // Two relayed legs of 30–50 ms each.
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t.elapsed()
        );
    }
}
