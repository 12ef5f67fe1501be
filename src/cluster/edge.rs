//! Media across nodes (issue 18, docs/CLUSTER.md "Media: origin and edges").
//! A publisher's node is its stream's origin (`{prefix}origin:{stream}` in
//! Redis, claimed when the WHIP session goes live, refreshed by the heartbeat,
//! released when it ends). A WHEP request on another node makes that node an
//! edge: it pulls the stream once from the origin over WHEP with the project's
//! own client (`tandem_client::relay`) and publishes it into its own SFU as a
//! local stream, so its viewers get the normal forwarding path. With
//! `cluster.media_redirect` the node answers 307 to the origin instead.
//!
//! A reconcile tick (every [`TICK`]) ends pulls whose last local viewer left
//! `edge_linger_ms` ago, re-pulls from a new origin when the publisher moved
//! (the new local publisher takes the old one's place, so the SFU keeps
//! viewers' numbering continuous, as for any publisher reconnect), and starts
//! pulls for viewers that waited for a stream published elsewhere later.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tandem_client::client::{Peer, PublishOptions};
use tandem_client::media::VideoCodec;
use tandem_client::relay::Relay;
use tandem_media::SessionHolder;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::pulls::{Pull, Slot};
use crate::auth::{Grants, MediaClaims, TokenRequest};
use crate::state::AppState;

/// The role of the media token an edge pulls with: minted by the node with the
/// server's own key, for one stream, subscribe only, for [`TOKEN_TTL_SECS`].
/// The origin lets it watch without an enrollment (`api::access`) and does not
/// count it under the per-user limits.
pub const NODE_ROLE: &str = "node";
/// The user of an edge's local publisher session: the same for every pull, so
/// a re-pull's session takes over the previous one (numbering continuity).
pub const EDGE_USER: &str = "cluster-edge";
/// The user of an edge's pull as the origin sees it: `node.{node id}`.
pub const NODE_USER_PREFIX: &str = "node.";
const TOKEN_TTL_SECS: u64 = 60;
/// How often pulls are checked (linger, origin moves, failures).
pub const TICK: Duration = Duration::from_millis(500);

/// Where a WHEP request is served.
pub enum Route {
    /// Here (published here, pulled here, or nowhere yet: as on one node).
    Local,
    /// 307 to this URL (`cluster.media_redirect`).
    Redirect(String),
}

fn is_edge_candidate(state: &AppState, stream: &str, claims: &MediaClaims) -> bool {
    state.cluster.enabled()
        // Another edge's pull is always served here: no chains of edges.
        && claims.role.as_deref() != Some(NODE_ROLE)
        // A call's streams have their own session rules (api::calls).
        && crate::api::calls::parse_stream(stream).is_none()
        && !published_here(state, stream)
}

/// A real publisher (not this node's pull) is live here.
fn published_here(state: &AppState, stream: &str) -> bool {
    !state.pulls.is_pulling(stream)
        && state
            .sfu
            .stream(stream)
            .is_some_and(|s| s.publisher.is_some())
}

/// The stream's origin when it is another live node.
async fn remote_origin(state: &AppState, stream: &str) -> Option<(String, String)> {
    match state.cluster.origin_of(stream).await {
        Ok(Some((node, url))) if node != state.cluster.node_id() => Some((node, url)),
        _ => None,
    }
}

/// Before a WHEP request's body is read: 307 to the origin in redirect mode.
pub async fn route_viewer(state: &AppState, stream: &str, claims: &MediaClaims) -> Route {
    if !state.config.cluster.media_redirect || !is_edge_candidate(state, stream, claims) {
        return Route::Local;
    }
    match remote_origin(state, stream).await {
        Some((_, url)) => Route::Redirect(format!("{url}/v1/whep/{stream}")),
        None => Route::Local,
    }
}

/// Before a WHEP session is made here: when the stream is published to
/// another node, the pull from it runs (started now, or shared with the
/// viewers before) once this returns. A pull that cannot start leaves the
/// viewer waiting as on one node; the reconcile tick tries again.
pub async fn before_subscribe(state: &AppState, stream: &str, claims: &MediaClaims) {
    if state.config.cluster.media_redirect || !is_edge_candidate(state, stream, claims) {
        return;
    }
    if let Some((node, url)) = remote_origin(state, stream).await {
        ensure_pull(state, stream, &node, &url).await;
    }
}

/// A real publisher is about to publish `stream` here: the pull stops first
/// (this node becomes the origin; its local viewers carry on with the new
/// publisher's media, numbering continuous).
pub async fn yield_to_publisher(state: &AppState, stream: &str) {
    let Some(slot) = state.pulls.streams.get(stream).map(|s| s.value().clone()) else {
        return;
    };
    let mut guard = slot.pull.lock().await;
    if let Some(old) = guard.take() {
        slot.live.store(false, Ordering::Release);
        state.pulls.metrics.edge_pulls.dec();
        tracing::info!(stream, origin = %old.origin_node, "cluster edge: a publisher here replaces the pull");
        finish(state, old).await;
    }
}

/// Starts the pull of `stream` from `node` unless one from there runs.
async fn ensure_pull(state: &AppState, stream: &str, node: &str, url: &str) {
    let slot = state.pulls.slot(stream);
    let mut guard = slot.pull.lock().await;
    if let Some(p) = guard.as_ref()
        && p.origin_node == node
        && !p.relay.stats.failed.load(Ordering::Acquire)
    {
        return;
    }
    repull(state, stream, &slot, &mut guard, node, url).await;
}

/// Replaces the pull under `guard` by one from `node`: the new local publisher
/// is made before the old one goes (it takes its place in the SFU).
async fn repull(
    state: &AppState,
    stream: &str,
    slot: &Slot,
    guard: &mut Option<Pull>,
    node: &str,
    url: &str,
) {
    match start_pull(state, stream, node, url).await {
        Ok(pull) => {
            tracing::info!(
                stream,
                origin = node,
                "cluster edge: pulling the stream from its origin"
            );
            state.pulls.metrics.edge_pulls_started.inc();
            if !slot.live.swap(true, Ordering::AcqRel) {
                state.pulls.metrics.edge_pulls.inc();
            }
            if let Some(old) = guard.replace(pull) {
                finish(state, old).await;
            }
        }
        Err(e) => {
            state.pulls.metrics.edge_pull_failures.inc();
            tracing::warn!(stream, origin = node, error = %e, "cluster edge: cannot pull the stream from its origin; retrying");
        }
    }
}

/// Ends a pull: the relay's thread, the origin's WHEP session, the local
/// publisher session (already gone when a newer pull took its place).
async fn finish(state: &AppState, old: Pull) {
    old.relay.signal_stop();
    let _ = state.sfu.end(&old.local_session).await;
    let _ = state.pulls.http.delete(&old.upstream_url).send().await;
    drop(old.relay);
}

/// The local address that routes to `url`'s host (the edge's socket for the
/// origin's media); loopback when it cannot be told.
async fn route_ip(url: &str) -> IpAddr {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1");
    let target = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let Ok(mut addrs) = tokio::net::lookup_host(target).await else {
        return Ipv4Addr::LOCALHOST.into();
    };
    let Some(addr) = addrs.find(|a| a.is_ipv4()) else {
        return Ipv4Addr::LOCALHOST.into();
    };
    // connect(2) on UDP sends nothing: it asks the kernel which source address
    // the route to `addr` uses.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(addr).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(Ipv4Addr::LOCALHOST.into())
}

/// The video codec (first of the first video section) and whether there is
/// audio, in an origin's WHEP answer.
fn answer_media(sdp: &str) -> (VideoCodec, bool) {
    let mut first_video_pt = None;
    let mut audio = false;
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("m=video ") {
            if first_video_pt.is_none() {
                first_video_pt = rest.split_whitespace().nth(2).map(str::to_string);
            }
        } else if line.starts_with("m=audio ") && !line.starts_with("m=audio 0 ") {
            audio = true;
        }
    }
    let codec = first_video_pt
        .and_then(|pt| {
            sdp.lines().find_map(|l| {
                l.strip_prefix(&format!("a=rtpmap:{pt} "))
                    .map(str::to_string)
            })
        })
        .filter(|m| m.to_ascii_uppercase().starts_with("H264"))
        .map_or(VideoCodec::Vp8, |_| VideoCodec::H264);
    (codec, audio)
}

/// Pulls `stream` from the origin at `url`: a WHEP viewer there, a publisher
/// here, joined by a relay.
async fn start_pull(state: &AppState, stream: &str, node: &str, url: &str) -> Result<Pull, String> {
    let (token, _) = state.tokens.mint(&TokenRequest {
        user: format!("{NODE_USER_PREFIX}{}", state.cluster.node_id()),
        stream: Some(stream.to_string()),
        grants: Grants {
            subscribe: true,
            ..Default::default()
        },
        role: Some(NODE_ROLE.into()),
        ttl_secs: TOKEN_TTL_SECS,
        ..Default::default()
    });
    let whep = format!("{url}/v1/whep/{stream}");
    let ip = route_ip(url).await;
    let up = Peer::offer_on(ip, None, None)?;
    // The token is sent, never logged: errors name the URL and the status only.
    let resp = state
        .pulls
        .http
        .post(&whep)
        .header("Content-Type", "application/sdp")
        .header("Authorization", format!("Bearer {token}"))
        .body(up.sdp.clone())
        .send()
        .await
        .map_err(|e| format!("POST {whep}: {}", e.without_url()))?;
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(|l| {
            if l.starts_with("http") {
                l.to_string()
            } else {
                format!("{url}{l}")
            }
        });
    let answer = resp.text().await.map_err(|e| format!("answer: {e}"))?;
    if status.as_u16() != 201 {
        return Err(format!("POST {whep}: {status}"));
    }
    let upstream_url = location.ok_or("the origin's 201 has no Location")?;
    let (codec, audio) = answer_media(&answer);
    let up = match up.accept(answer, upstream_url.clone()) {
        Ok(p) => p,
        Err(e) => {
            let _ = state.pulls.http.delete(&upstream_url).send().await;
            return Err(e);
        }
    };
    let down = Peer::offer(
        Some(PublishOptions {
            codec,
            audio,
            simulcast: 1,
            ..Default::default()
        }),
        None,
    )
    .map(|o| o.relayed());
    let holder = SessionHolder {
        user: EDGE_USER,
        token: EDGE_USER,
        limited: false,
    };
    let local = match down {
        Ok(offer) => match state.sfu.publish(stream, &offer.sdp, &holder).await {
            Ok(a) => offer
                .accept(a.sdp, format!("local:{}", a.session_id))
                .map(|p| (p, a.session_id))
                .map_err(|e| format!("local publisher: {e}")),
            Err(e) => Err(format!("local publisher: {e}")),
        },
        Err(e) => Err(e),
    };
    let (down, local_session) = match local {
        Ok(l) => l,
        Err(e) => {
            let _ = state.pulls.http.delete(&upstream_url).send().await;
            return Err(e);
        }
    };
    let relay = Relay::start(&format!("edge-{stream}"), up, down)
        .map_err(|e| format!("relay thread: {e}"))?;
    Ok(Pull {
        origin_node: node.to_string(),
        origin_url: url.to_string(),
        relay,
        upstream_url,
        local_session,
        empty_since: None,
    })
}

/// The running reconcile task; [`Reconciler::stop`] ends it and every pull.
pub struct Reconciler {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Reconciler {
    pub async fn stop(mut self, state: &AppState) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let slots: Vec<Arc<Slot>> = state
            .pulls
            .streams
            .iter()
            .map(|e| e.value().clone())
            .collect();
        for slot in slots {
            if let Some(old) = slot.pull.lock().await.take() {
                slot.live.store(false, Ordering::Release);
                state.pulls.metrics.edge_pulls.dec();
                finish(state, old).await;
            }
        }
    }
}

/// Starts the reconcile tick (nothing to run on a single node).
pub fn spawn(state: &AppState) -> Reconciler {
    let (stop, mut stopped) = watch::channel(false);
    if !state.cluster.enabled() {
        return Reconciler { stop, task: None };
    }
    let state = state.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                _ = tick.tick() => {}
            }
            reconcile(&state).await;
        }
    });
    Reconciler {
        stop,
        task: Some(task),
    }
}

async fn reconcile(state: &AppState) {
    let linger = Duration::from_millis(state.config.cluster.edge_linger_ms);
    let now = Instant::now();
    let slots: Vec<(Arc<str>, Arc<Slot>)> = state
        .pulls
        .streams
        .iter()
        .map(|e| (e.key().clone(), e.value().clone()))
        .collect();
    for (stream, slot) in slots {
        let mut guard = slot.pull.lock().await;
        let Some(pull) = guard.as_mut() else {
            drop(guard);
            // A slot whose pull never started (or ended): gone unless in use.
            state.pulls.streams.remove_if(&stream, |_, s| {
                Arc::strong_count(s) <= 2 && !s.live.load(Ordering::Acquire)
            });
            continue;
        };
        let viewers = state.sfu.stream(&stream).map_or(0, |s| s.viewers);
        if viewers == 0 {
            let since = *pull.empty_since.get_or_insert(now);
            if now.duration_since(since) >= linger {
                let old = guard.take();
                slot.live.store(false, Ordering::Release);
                state.pulls.metrics.edge_pulls.dec();
                drop(guard);
                if let Some(old) = old {
                    tracing::info!(stream = %stream, origin = %old.origin_node, "cluster edge: the last viewer left; the pull ends");
                    finish(state, old).await;
                }
                continue;
            }
        } else {
            pull.empty_since = None;
        }
        let failed = pull.relay.stats.failed.load(Ordering::Acquire);
        let current = pull.origin_node.clone();
        match state.cluster.origin_of(&stream).await {
            Ok(Some((node, url)))
                if node != state.cluster.node_id() && (node != current || failed) =>
            {
                if node != current {
                    tracing::info!(stream = %stream, from = %current, to = %node, "cluster edge: the origin moved; pulling from the new one");
                }
                repull(state, &stream, &slot, &mut guard, &node, &url).await;
            }
            Ok(Some((node, url))) if failed && node == current => {
                repull(state, &stream, &slot, &mut guard, &node, &url).await;
            }
            _ => {}
        }
    }
    // Viewers waiting here for a stream published to another node (it was
    // published after they came, or this node was its origin before).
    if state.config.cluster.media_redirect {
        return;
    }
    for s in state.sfu.streams() {
        if s.viewers == 0
            || s.publisher.is_some()
            || state.pulls.is_pulling(&s.name)
            || crate::api::calls::parse_stream(&s.name).is_some()
            || !has_end_viewers(state, &s.name)
        {
            continue;
        }
        if let Some((node, url)) = remote_origin(state, &s.name).await {
            ensure_pull(state, &s.name, &node, &url).await;
        }
    }
}

/// Viewers of `stream` here other than other nodes' edges (an old origin
/// whose only viewers are edges does not pull: the edges re-pull themselves).
fn has_end_viewers(state: &AppState, stream: &str) -> bool {
    state.sfu.sessions().iter().any(|s| {
        &*s.stream == stream
            && s.kind == tandem_media::SessionKind::Viewer
            && !s.user.starts_with(NODE_USER_PREFIX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_names_its_codec_and_audio() {
        let h264 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(matches!(answer_media(h264), (VideoCodec::H264, true)));
        let vp8 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\n";
        assert!(matches!(answer_media(vp8), (VideoCodec::Vp8, false)));
    }
}
