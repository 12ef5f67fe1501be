//! What an operator configures shows up in what clients are told: the addresses
//! advertised as host candidates (`public_ip`, `nat_1to1_ips` for servers behind
//! 1:1 NAT), and the feedback a publisher is offered so its encoder adapts to the
//! network (transport-wide congestion control) and its losses are repaired (NACK).

use crate::support::*;

fn candidate_addresses(answer: &str) -> Vec<String> {
    answer
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=candidate:"))
        .filter_map(|c| c.split_whitespace().nth(4).map(str::to_string))
        .collect()
}

async fn answer(app: &TestApp, whip: bool) -> String {
    let (url, token, offer) = if whip {
        (
            app.whip_url("cfg"),
            app.publish_token("cfg"),
            CHROMIUM_SENDONLY_OFFER,
        )
    } else {
        (
            app.whep_url("cfg"),
            app.subscribe_token("cfg"),
            CHROMIUM_RECVONLY_OFFER,
        )
    };
    let resp = app
        .http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.text().await.unwrap()
}

#[tokio::test]
async fn public_ip_is_the_advertised_host_candidate() {
    // 127.0.0.2 is loopback too, so it is a real address of this machine.
    let app = TestApp::builder()
        .config(|c| c.public_ip = "127.0.0.2".into())
        .spawn()
        .await;
    let addrs = candidate_addresses(&answer(&app, false).await);
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a == "127.0.0.2"), "{addrs:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn nat_1to1_ips_replace_local_addresses() {
    let app = TestApp::builder()
        .config(|c| c.nat_1to1_ips = vec!["203.0.113.7".parse().unwrap()])
        .spawn()
        .await;
    let addrs = candidate_addresses(&answer(&app, true).await);
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a == "203.0.113.7"), "{addrs:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn publishers_are_offered_congestion_feedback_and_nack() {
    let app = spawn_app().await;
    let sdp = answer(&app, true).await;
    assert!(
        sdp.contains("transport-wide-cc") && sdp.contains("transport-cc"),
        "TWCC header extension and feedback negotiated with the publisher:\n{sdp}"
    );
    assert!(
        sdp.contains("nack pli") && sdp.contains(" nack\r\n"),
        "{sdp}"
    );
    assert!(
        sdp.contains("a=ice-lite") && sdp.contains("a=setup:passive"),
        "{sdp}"
    );
    app.shutdown().await;
}
