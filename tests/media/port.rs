//! One media port, one server (issue 13, item 11): the workers share the port
//! with SO_REUSEPORT inside one process, but a second server on the same port
//! (which would join that group and split the packets) fails to start, saying
//! why and what to set, whatever `media.ice_tcp` is.

use crate::support::*;

async fn second_server_on(port: u16, ice_tcp: bool) -> String {
    let mut config = tandem::config::Config::load_with_env(None, Vec::<(String, String)>::new())
        .expect("the default configuration loads");
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.demo = false;
    config.media_port = port;
    config.media.ice_tcp = ice_tcp;
    let dir = std::env::temp_dir().join(format!(
        "tandem-port-{port}-{ice_tcp}-{}",
        std::process::id()
    ));
    config.data_dir = dir.clone();
    let result = tandem::start(config).await;
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(_) => panic!("a second server started on media port {port} (ice_tcp = {ice_tcp})"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_media_port_fails_to_start() {
    for ice_tcp in [false, true] {
        let first = TestApp::builder()
            .config(|c| c.media.ice_tcp = ice_tcp)
            .spawn()
            .await;
        let port = first.media_port;
        let message = second_server_on(port, ice_tcp).await;
        assert!(
            message.contains(&format!(
                "media port {port}/udp is in use by another process (another tandem?): set TANDEM_MEDIA_PORT"
            )),
            "ice_tcp = {ice_tcp}: {message}"
        );
        // The first server is unharmed: it still takes sessions.
        let resp = post_offer(
            &first,
            &first.whip_url("cam"),
            Some(&first.publish_token("cam")),
            CHROMIUM_SENDONLY_OFFER,
        )
        .await;
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
        first.shutdown().await;
    }
}

/// Another program on the port (not a tandem: no lock of ours) is found by the probe.
#[tokio::test]
async fn a_port_held_by_another_program_is_named() {
    let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    let message = second_server_on(port, false).await;
    assert!(
        message.contains(&format!("media port {port}/udp is in use")),
        "{message}"
    );
}
