//! RTMP destinations for the restream tests: a private nginx with the RTMP
//! module (Debian `nginx-light` + `libnginx-mod-rtmp`, as ../shared/TESTING.md
//! shows) on a free port, whose `on_publish` asks a local HTTP server
//! ([`PublishAuth`]) that refuses one stream key ([`REFUSED_KEY`]) with 403, the way a
//! platform refuses a wrong key. An instance can be killed and started again on
//! the same port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Form, Router};
use serde::Deserialize;

use super::app::TempDir;
use super::wait::eventually;

/// The stream key every [`Nginx`] refuses (`on_publish` answers 403).
pub const REFUSED_KEY: &str = "refused-key-7f3a";

#[derive(Deserialize)]
struct Publish {
    name: String,
}

/// The `on_publish` endpoint: 403 for [`REFUSED_KEY`], 200 otherwise; it
/// remembers the keys it was asked about.
pub struct PublishAuth {
    pub addr: SocketAddr,
    pub asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PublishAuth {
    pub async fn start() -> PublishAuth {
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let app = Router::new()
            .route(
                "/auth",
                post(
                    |State(asked): State<Arc<Mutex<Vec<String>>>>, Form(p): Form<Publish>| async move {
                        asked.lock().unwrap().push(p.name.clone());
                        if p.name == REFUSED_KEY {
                            StatusCode::FORBIDDEN
                        } else {
                            StatusCode::OK
                        }
                    },
                ),
            )
            .with_state(asked.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        PublishAuth { addr, asked, task }
    }

    /// How often `key` was asked about.
    pub fn asked(&self, key: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == key)
            .count()
    }
}

impl Drop for PublishAuth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A private nginx-rtmp on 127.0.0.1 (application `live`).
pub struct Nginx {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Nginx {
    /// Starts on a free port; `on_publish` goes to `auth`.
    pub async fn start(auth: &PublishAuth) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = TempDir::new("tandem-nginx");
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
             daemon off; master_process off; pid nginx.pid;\n\
             error_log logs/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
               application live {{ live on; record off;\n\
                 on_publish http://{}/auth; }} }} }}\n",
            auth.addr
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mut nginx = Nginx {
            port,
            dir,
            child: None,
        };
        nginx.restart().await;
        nginx
    }

    /// (Re)starts the process on the same port; returns once it listens.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "nginx already running");
        let dir = self.dir.path();
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg("nginx.conf")
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx runs (apt install nginx-light libnginx-mod-rtmp)");
        self.child = Some(child);
        let port = self.port;
        eventually("nginx listening", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
    }

    /// Kills the process (SIGKILL): every publisher's connection drops.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `rtmp://127.0.0.1:PORT/live/KEY`.
    pub fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{key}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("nginx")
}

/// Whether process `pid` still exists (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command name in parentheses.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        }
        Err(_) => false,
    }
}

/// A TLS front for an [`Nginx`] (rtmps:// on loopback): a self-signed
/// certificate (rcgen), the server's own rustls acceptor, each connection
/// spliced to nginx's plain RTMP port. ffmpeg does not verify certificates
/// unless told to, as with a platform's ingest behind a public CA.
pub struct TlsFront {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl TlsFront {
    pub async fn start(backend_port: u16) -> TlsFront {
        let dir = TempDir::new("tandem-rtmps");
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let http = tandem::config::HttpSection {
            tls_cert: cert.display().to_string(),
            tls_key: key.display().to_string(),
            ..Default::default()
        };
        let acceptor = tandem::serve::load_tls(&http)
            .unwrap()
            .expect("TLS acceptor");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            port,
            task,
            _dir: dir,
        }
    }

    /// `rtmps://127.0.0.1:PORT/live/KEY`.
    pub fn url(&self, key: &str) -> String {
        format!("rtmps://127.0.0.1:{}/live/{key}", self.port)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// ffprobe of a live RTMP URL: its streams (reads a few seconds at most).
pub fn ffprobe_streams(url: &str) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-rw_timeout",
            "15000000",
            "-show_streams",
            "-of",
            "json",
            url,
        ])
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// [`ffprobe_streams`] off the async runtime, until the answer has a video and
/// an audio stream (at most 3 reads): a probe that joins the live stream just
/// as it starts can see one track's first packets before the other's.
pub async fn probe_rtmp(url: String) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..3 {
        let url = url.clone();
        last = tokio::task::spawn_blocking(move || ffprobe_streams(&url))
            .await
            .unwrap();
        let has = |kind: &str| {
            last["streams"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["codec_type"] == kind))
        };
        if has("video") && has("audio") {
            break;
        }
    }
    last
}
