//! The Watch Together client of the sync tests: a real WebSocket client whose clock
//! runs a (deliberately) skewed amount ahead, answering the server's clock pings in
//! the background. Room tokens and URLs come from [`TestApp`](super::TestApp)
//! (`room_token`, `ws_url`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch, as f64: the protocol's time unit and clock.
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

#[derive(Debug)]
pub enum Event {
    Msg(Value),
    Closed(Option<u16>),
}

/// A sync client whose clock runs `skew` ms ahead of the true one. It answers the
/// server's clock pings in the background, with its own (skewed) timestamps.
pub struct Client {
    sink: Arc<Mutex<Sink>>,
    rx: mpsc::UnboundedReceiver<Event>,
    pub skew: f64,
    /// This client's estimate of server_clock - local_clock.
    pub offset: f64,
    pub welcome: Value,
    pub last_seq: u64,
    pub answered_pings: watch::Receiver<u32>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    pub fn local_now(&self) -> f64 {
        now_ms() + self.skew
    }

    /// Connects, says hello (optionally resuming) and waits for welcome/resumed.
    pub async fn connect(url: &str, skew: f64, resume: Option<Value>) -> Client {
        let mut c = Self::open(url, skew).await.expect("websocket connects");
        let mut hello = json!({"type": "hello", "user": {"name": "tester"}});
        if let Some(r) = resume {
            hello["resume"] = r;
        }
        c.send(hello).await;
        let w = c
            .wait_for(|v| v["type"] == "welcome" || v["type"] == "resumed")
            .await;
        if w["type"] == "welcome" {
            c.last_seq = w["room"]["seq"].as_u64().unwrap();
        }
        c.welcome = w;
        c
    }

    pub async fn open(
        url: &str,
        skew: f64,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url.into_client_request()?).await?;
        let (sink, mut stream) = ws.split();
        let sink = Arc::new(Mutex::new(sink));
        let (tx, rx) = mpsc::unbounded_channel();
        let (ping_tx, ping_rx) = watch::channel(0u32);
        let s2 = sink.clone();
        let reader = tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(&t).expect("server sends JSON");
                        if v["type"] == "time.ping" {
                            let t1 = now_ms() + skew;
                            let pong = json!({"type":"time.pong","id":v["id"],"t0":v["t0"],"t1":t1,"t2":now_ms() + skew});
                            let _ = s2.lock().await.send(Message::text(pong.to_string())).await;
                            ping_tx.send_modify(|n| *n += 1);
                            continue;
                        }
                        if tx.send(Event::Msg(v)).is_err() {
                            return;
                        }
                    }
                    Ok(Message::Close(f)) => {
                        let _ = tx.send(Event::Closed(f.map(|f| f.code.into())));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = tx.send(Event::Closed(None));
                        return;
                    }
                }
            }
            let _ = tx.send(Event::Closed(None));
        });
        Ok(Client {
            sink,
            rx,
            skew,
            offset: 0.0,
            welcome: Value::Null,
            last_seq: 0,
            answered_pings: ping_rx,
            reader,
        })
    }

    pub async fn send(&self, v: Value) {
        self.send_raw(Message::text(v.to_string())).await;
    }

    pub async fn send_raw(&self, m: Message) {
        self.sink.lock().await.send(m).await.expect("send");
    }

    /// Next event (panics after [`WAIT`]).
    pub async fn event(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for the server")
            .expect("client reader ended")
    }

    /// Next message; panics if the connection closes first.
    pub async fn next(&mut self) -> Value {
        match self.event().await {
            Event::Msg(v) => {
                if let Some(s) = v["seq"].as_u64()
                    && v["type"] != "sync.hint"
                {
                    self.last_seq = self.last_seq.max(s);
                }
                v
            }
            Event::Closed(c) => panic!("connection closed ({c:?}) while waiting for a message"),
        }
    }

    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next().await;
            if pred(&v) {
                return v;
            }
        }
    }

    pub async fn wait_type(&mut self, ty: &str) -> Value {
        self.wait_for(|v| v["type"] == ty).await
    }

    /// Sends `room.snapshot` and returns every message received before the fresh
    /// `welcome` it answers with, and that welcome. The room handles a connection's
    /// messages in order, so whatever this client's earlier messages caused (for this
    /// client or as a broadcast) is in the list: an event that is not there never came.
    pub async fn until_snapshot(&mut self) -> (Vec<Value>, Value) {
        self.send(json!({"type": "room.snapshot"})).await;
        let mut before = Vec::new();
        loop {
            let v = self.next().await;
            if v["type"] == "welcome" {
                return (before, v);
            }
            before.push(v);
        }
    }

    /// Messages already received, without waiting.
    pub fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(Event::Msg(v)) = self.rx.try_recv() {
            if let Some(s) = v["seq"].as_u64() {
                self.last_seq = self.last_seq.max(s);
            }
            out.push(v);
        }
        out
    }

    /// Waits for the close; returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Event::Closed(c) = self.event().await {
                return c;
            }
        }
    }

    /// 8 pings; offset = median of the 3 lowest-RTT samples. Sends time.report.
    pub async fn sync_clock(&mut self) {
        let mut samples = Vec::new();
        for id in 0..8u64 {
            let t0 = self.local_now();
            self.send(json!({"type":"time.ping","id":id,"t0":t0})).await;
            let p = self
                .wait_for(|v| v["type"] == "time.pong" && v["id"] == id)
                .await;
            let t3 = self.local_now();
            let (t1, t2) = (p["t1"].as_f64().unwrap(), p["t2"].as_f64().unwrap());
            let rtt = (t3 - t0) - (t2 - t1);
            let offset = ((t1 - t0) + (t2 - t3)) / 2.0;
            samples.push((offset, rtt));
        }
        samples.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut best: Vec<f64> = samples[..3].iter().map(|s| s.0).collect();
        best.sort_by(f64::total_cmp);
        self.offset = best[1];
        let rtt = samples[0].1;
        self.send(json!({"type":"time.report","offset":self.offset,"rtt":rtt}))
            .await;
    }

    /// Waits until this client has answered `n` server clock pings.
    pub async fn answered(&mut self, n: u32) {
        tokio::time::timeout(WAIT, self.answered_pings.wait_for(|c| *c >= n))
            .await
            .expect("server pings")
            .unwrap();
    }

    /// Expected media position from a `playback.state`, at this client's now.
    pub fn position(&self, state: &Value, local_now: f64) -> f64 {
        let p = state["position"].as_f64().unwrap();
        if state["paused"].as_bool().unwrap() {
            return p;
        }
        let server_now = local_now + self.offset;
        p + (server_now - state["at"].as_f64().unwrap()) / 1000.0 * state["rate"].as_f64().unwrap()
    }

    pub fn session(&self) -> String {
        self.welcome["session"].as_str().unwrap().to_string()
    }

    /// The `hello.resume` object for reconnecting as this client.
    pub fn resume(&self) -> Value {
        json!({"session": self.welcome["session"], "resume_token": self.welcome["resume_token"], "last_seq": self.last_seq})
    }
}
