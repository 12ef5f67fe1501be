//! HTTPS on the HTTP listener (issue 13, item 7): with `http.tls_cert` and
//! `http.tls_key` the listener speaks TLS only (a self-signed certificate made
//! here with rcgen), offers h2 and http/1.1 by ALPN, serves the WebSocket as wss,
//! bounds the handshake by the header timeout, and prints https links. A missing
//! half of the pair and an unreadable or non-PEM file stop the start with a
//! message naming the setting and the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A self-signed certificate for localhost and 127.0.0.1: (cert path, key path, DER).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen makes a certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().clone())
}

/// A TLS client trusting only `der`, offering `alpn`.
fn connector(der: &CertificateDer<'static>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_h2_and_wss() {
    let dir = TempDir::new("tls");
    let (cert, key, der) = self_signed(dir.path());
    let app = TestApp::builder()
        .config(|c| {
            c.http.tls_cert = cert.display().to_string();
            c.http.tls_key = key.display().to_string();
            c.http.header_timeout_ms = 1000;
            c.media.ice_tcp = false;
        })
        .spawn()
        .await;
    let addr = app.running.as_ref().unwrap().http_addr;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    assert!(
        app.state().public_url.starts_with("https://"),
        "printed links are https: {}",
        app.state().public_url
    );

    // reqwest trusting the certificate: /healthz over HTTPS.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&der).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = client
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    // Plain HTTP to the TLS port gets no answer.
    let plain = client
        .get(format!("http://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.as_ref().unwrap().status() != 200,
        "plain HTTP must not be served: {plain:?}"
    );

    // ALPN: h2 when offered first, http/1.1 when that is all the client speaks.
    for (offer, want) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], b"h2".as_slice()),
        (&[b"http/1.1".as_slice()][..], b"http/1.1".as_slice()),
    ] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = connector(&der, offer)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want));
    }

    // The room WebSocket over wss.
    let token = app.room_token("tls-room", "alice", false);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector(&der, &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!(
        "wss://localhost:{}/v1/rooms/tls-room/ws?token={token}",
        addr.port()
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("wss upgrade");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text(
        json!({"type": "hello", "user": {"name": "alice"}}).to_string(),
    ))
    .await
    .unwrap();
    let welcome = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Text(t)) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "welcome" {
                    return v;
                }
            }
        }
        panic!("the wss connection closed before welcome");
    })
    .await
    .expect("welcome over wss");
    assert!(welcome["you"].is_object(), "{welcome}");
    drop(ws);

    // A client that never starts the handshake is closed at the header timeout
    // (1 s here) and counted as one.
    // From the registry: the test's own HTTP client does not trust this certificate.
    let timed_out = || {
        metric_value(
            &app.registry_metrics(),
            "tandem_http_connections_timed_out_total",
            &[("reason", "header")],
        )
    };
    let before = timed_out();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent TLS client is closed: {closed:?}"
    );
    eventually(
        "handshake timeout counted",
        Duration::from_secs(5),
        || async {
            let now = timed_out();
            if now > before {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        },
    )
    .await;
    app.shutdown().await;
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::test]
async fn bad_tls_settings_stop_the_start_with_the_file_named() {
    let dir = TempDir::new("tls-bad");
    let (cert, key, _) = self_signed(dir.path());
    let cert = cert.display().to_string();
    let key = key.display().to_string();

    // One half of the pair: refused when the configuration loads.
    let err = tandem::config::Config::load_with_env(
        None,
        env(&[("TANDEM_HTTP__TLS_CERT", cert.clone())]),
    )
    .expect_err("a certificate without a key is refused");
    let text = err.to_string();
    assert!(text.contains("http.tls_key"), "{text}");

    // A missing file, a file that is not PEM, a key that is not a key: start fails
    // before anything is opened, naming the file.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let junk = junk.display().to_string();
    let missing = dir.path().join("nope.pem").display().to_string();
    for (c, k, named) in [
        (missing.clone(), key.clone(), missing.clone()),
        (junk.clone(), key.clone(), junk.clone()),
        (cert.clone(), junk.clone(), junk.clone()),
        (cert.clone(), cert.clone(), cert.clone()),
    ] {
        let config = tandem::config::Config::load_with_env(
            None,
            env(&[
                ("TANDEM_HTTP__TLS_CERT", c.clone()),
                ("TANDEM_HTTP__TLS_KEY", k.clone()),
                ("TANDEM_HTTP_ADDR", "127.0.0.1:0".into()),
                ("TANDEM_MEDIA_PORT", "0".into()),
                ("TANDEM_DATA_DIR", dir.path().display().to_string()),
            ]),
        )
        .expect("both set: the configuration loads");
        let err = match tandem::start(config).await {
            Ok(_) => panic!("started with cert {c} and key {k}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&named), "names {named}: {err}");
        assert!(err.starts_with("HTTPS"), "{err}");
    }
    assert!(
        !dir.path().join("tandem.db").exists(),
        "nothing was opened before the TLS check"
    );
}
