//! [`Core`]: one worker's sessions as a sans-IO state machine. Inputs come in
//! with the time they happened (`handle_datagram`, `handle_media`,
//! `handle_timeout`, and the session requests); everything that must go out is
//! written into an [`Egress`]. It never reads the clock, touches a socket or a
//! channel, or spawns: the shell (`crate::worker`) does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use rtc::shared::time::SystemInstant;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::egress::{Egress, Event, Forward};
use super::forward::{self, LocalStream};
use crate::admission::SessionSlot;
use crate::bwe::Bwe;
use crate::codec::{self, VideoCodec};
use crate::error::MediaError;
use crate::kinds::{MediaKind, SessionKind, Transport};
use crate::layers::{LayerRequest, MAX_ENCODINGS, NO_ENCODING, SwitchReason, ViewerLayerShared};
use crate::metrics::MediaMetrics;
use crate::registry::{
    PatchOutcome, PublisherInfo, RATE_WINDOW, Registry, Route, SessionAnswer, SessionEntry,
    SessionSummary, StreamShared, log_id, random_hex,
};
use crate::sdp::{self, CheckedOffer, IceFragment};
use crate::session::{
    self, BuildParams, Publisher, PublisherEncoding, RateMeter, Role, Session, Viewer, ViewerVideo,
};
use crate::simulcast::{Offered, Path, Selector};
use crate::srtp::SrtpSender;
use crate::tap::{TapCodec, TapPacket};
use crate::track::Continuity;

/// How often every session's next timer is asked for again (the stack's timers
/// can move without any input to the session).
const REFRESH_TIMEOUTS: Duration = Duration::from_millis(100);
/// Media older than this when it reaches the worker that serves its viewers is
/// dropped, not sent: the queue between workers is bounded by age as well as count,
/// so a saturated worker sheds load instead of building up seconds of delay.
pub const MAX_HANDOVER_AGE: Duration = Duration::from_millis(150);
/// How often a viewer gets a sender report per track (browsers use them for lip sync).
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// An encoding with no packet for this long is inactive (the browser paused
/// it): viewers on it move to another. Chromium sends every encoding at its
/// frame rate, so 1 s is about 30 missing frames, never an ordinary gap.
pub const ENCODING_INACTIVE_AFTER: Duration = Duration::from_secs(1);
/// The shortest gap between two PLIs for one encoding, urgent ones included
/// (a worker's first viewer of an encoding; `feedback::KeyframeThrottle`).
const URGENT_PLI_GAP: Duration = Duration::from_millis(100);
/// How often a simulcast viewer's encoding is reconsidered.
const LAYER_DECISION_INTERVAL: Duration = Duration::from_millis(200);
/// Why a publisher session ended when the same user's new session took its place.
pub const REPLACED: &str = "replaced by the same user's new session";
/// Why sessions end when the server stops.
pub const SHUTDOWN: &str = "shutdown";

/// A request for a new session, as admitted by the HTTP side.
pub struct NewSession {
    pub key: u64,
    pub id: Arc<str>,
    pub kind: SessionKind,
    pub stream: Arc<StreamShared>,
    pub offer: String,
    pub checked: CheckedOffer,
    pub user: Arc<str>,
    /// The session's place in the admission counts, held until it ends.
    pub(crate) slot: SessionSlot,
}

pub struct Core {
    idx: usize,
    registry: Arc<Registry>,
    metrics: MediaMetrics,
    /// The address incoming packets are attributed to.
    local_udp: SocketAddr,
    sessions: HashMap<u64, Session>,
    by_addr: HashMap<(SocketAddr, Transport), u64>,
    /// Addresses whose sessions live on another worker.
    foreign: HashMap<(SocketAddr, Transport), usize>,
    streams: HashMap<u64, LocalStream>,
    publishers: Vec<u64>,
    /// Packets read from local publishers, fanned out once their session is serviced.
    forwards: Vec<Forward>,
    to_close: Vec<(u64, &'static str)>,
    scratch_keys: Vec<u64>,
    last_refresh: Instant,
    /// Maps the monotonic clock to wall-clock time (sender reports' NTP field,
    /// sessions' start time), captured once by the shell.
    clock: SystemInstant,
}

impl Core {
    /// Worker `idx`'s core, started at `now`; `clock` pairs `now` with the wall clock.
    pub fn new(idx: usize, registry: Arc<Registry>, now: Instant, clock: SystemInstant) -> Self {
        Self {
            idx,
            metrics: registry.metrics.clone(),
            local_udp: SocketAddr::new(registry.local_ip, registry.port),
            registry,
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            foreign: HashMap::new(),
            streams: HashMap::new(),
            publishers: Vec::new(),
            forwards: Vec::with_capacity(64),
            to_close: Vec::new(),
            scratch_keys: Vec::new(),
            last_refresh: now,
            clock,
        }
    }

    /// A datagram from `from` read at `now`. True when it reached a session of
    /// this worker (the shell then keeps an ICE-TCP connection it came on).
    /// What a publisher's datagram produced for viewers waits for [`Core::settle`],
    /// which the shell calls once per batch of reads.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        transport: Transport,
        data: &[u8],
        out: &mut impl Egress,
    ) -> bool {
        self.route_datagram(now, from, transport, data, out)
    }

    /// Media from a publisher on another worker, for the viewers here.
    pub fn handle_media(&mut self, now: Instant, forward: &Forward, out: &mut impl Egress) {
        if now.saturating_duration_since(forward.arrived) > MAX_HANDOVER_AGE {
            self.metrics.dropped.stale.inc();
            return;
        }
        self.fanout_local(now, forward, out);
    }

    /// The periodic tick (every 10 ms): session timers, timeouts, sender reports,
    /// keyframe requests.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Egress) {
        self.on_tick(now, out);
        self.settle(now, out);
    }

    /// Builds a session for an admitted offer and answers it.
    pub fn create_session(
        &mut self,
        now: Instant,
        req: NewSession,
        out: &mut impl Egress,
    ) -> Result<SessionAnswer, MediaError> {
        let answer = self.create(now, req, out);
        self.settle(now, out);
        answer
    }

    /// Trickled candidates or an ICE restart (PATCH).
    pub fn patch_session(
        &mut self,
        now: Instant,
        key: u64,
        fragment: IceFragment,
        out: &mut impl Egress,
    ) -> Result<PatchOutcome, MediaError> {
        let outcome = self.patch(now, key, fragment);
        if outcome.is_ok() {
            self.service(key, out);
        }
        self.settle(now, out);
        outcome
    }

    /// Ends a session at `now`; false when there is none with this key.
    /// `reason` is logged; [`REPLACED`] and [`SHUTDOWN`] leave no "ended" mark
    /// on the stream (another publisher follows, or the server goes).
    pub fn end_session(
        &mut self,
        now: Instant,
        key: u64,
        reason: &'static str,
        out: &mut impl Egress,
    ) -> bool {
        self.close(now, key, reason, out)
    }

    /// The WHEP `layer` extension: checks the request against the stream and
    /// the viewer (nothing changes on error), then pins, caps or frees the
    /// viewer's choice; a pinned encoding that arrives is switched to at its
    /// next key frame, asked for now.
    pub fn select_layer(
        &mut self,
        now: Instant,
        key: u64,
        request: LayerRequest,
        _out: &mut impl Egress,
    ) -> Result<(), MediaError> {
        let Some(s) = self.sessions.get_mut(&key) else {
            return Err(MediaError::UnknownSession);
        };
        let Role::Viewer(viewer) = &mut s.role else {
            return Err(MediaError::BadLayer(
                "this is a WHIP publisher's session; layers are chosen by WHEP viewers".into(),
            ));
        };
        let video = &mut viewer.video;
        let media_id = video.shared.video_media_id.load(Ordering::Relaxed);
        let pref = crate::simulcast::preference(
            &request,
            &s.stream.rids(),
            (media_id != u32::MAX).then_some(media_id as usize),
        )
        .map_err(MediaError::BadLayer)?;
        video.pref = pref;
        video
            .shared
            .pinned
            .store(pref.pinned.is_some(), Ordering::Release);
        if let Some(pinned) = pref.pinned
            && s.stream.encodings[pinned as usize]
                .active
                .load(Ordering::Acquire)
            && video.current != NO_ENCODING
        {
            set_target(
                video,
                &s.stream,
                pinned,
                SwitchReason::Request,
                now,
                &self.metrics,
            );
        } else {
            // Decided at the next tick, with the estimate.
            video.next_decision = now;
        }
        tracing::debug!(session = log_id(&s.id), pinned = ?pref.pinned, "layer request");
        Ok(())
    }

    /// Sessions that ended on another worker: stop routing these addresses there.
    pub fn forget(&mut self, addrs: &[(SocketAddr, Transport)]) {
        for a in addrs {
            self.foreign.remove(a);
        }
    }

    /// Closes every session (their DTLS close alerts go into `out`).
    pub fn shutdown(&mut self, now: Instant, out: &mut impl Egress) {
        let keys: Vec<u64> = self.sessions.keys().copied().collect();
        for key in keys {
            self.close(now, key, SHUTDOWN, out);
        }
    }

    /// Fans out what publishers produced since the last call and closes what
    /// failed. The shell calls it once per batch of up to 64 reads, not per
    /// datagram: the batch's packets then go through each viewer's state and
    /// cipher one after another. Settled per datagram, the user-space CPU per
    /// forwarded packet was 0.64-0.74 µs against 0.57-0.61 µs per batch
    /// (interleaved runs, 200 viewers; docs/PERFORMANCE.md), at the price of a
    /// longer forwarding delay for the batch's first packets (as before the core).
    pub fn settle(&mut self, now: Instant, out: &mut impl Egress) {
        self.flush_forwards(now, out);
        while let Some((key, reason)) = self.to_close.pop() {
            self.close(now, key, reason, out);
        }
    }

    fn route_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        transport: Transport,
        data: &[u8],
        out: &mut impl Egress,
    ) -> bool {
        let addr_key = (from, transport);
        let key = if let Some(&key) = self.by_addr.get(&addr_key) {
            key
        } else if let Some(&owner) = self.foreign.get(&addr_key) {
            self.hand_over(owner, from, data, now, out);
            return false;
        } else if let Some(route) = stun_route(&self.registry, data) {
            if route.worker != self.idx {
                self.foreign.insert(addr_key, route.worker);
                self.hand_over(route.worker, from, data, now, out);
                return false;
            }
            let Some(session) = self.sessions.get_mut(&route.key) else {
                self.metrics.dropped.unknown_source.inc();
                return false;
            };
            if session.addrs.is_empty() {
                // What `media.ice_start_timeout_ms` bounds (Chromium and aiortc
                // on loopback: 3-70 ms after creation, see docs/MEDIA.md).
                tracing::debug!(
                    session = log_id(&session.id),
                    after_ms = now.saturating_duration_since(session.created).as_millis() as u64,
                    "ICE started"
                );
            }
            session.addrs.push(addr_key);
            self.by_addr.insert(addr_key, route.key);
            route.key
        } else {
            self.metrics.dropped.unknown_source.inc();
            return false;
        };
        let Some(session) = self.sessions.get_mut(&key) else {
            return false;
        };
        session.last_rx = now;
        let read = session.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local_udp,
                peer_addr: from,
                ecn: None,
                transport_protocol: match transport {
                    Transport::Udp => TransportProtocol::UDP,
                    Transport::Tcp => TransportProtocol::TCP,
                },
            },
            message: BytesMut::from(data),
        });
        if let Err(e) = read {
            tracing::trace!(session = log_id(&session.id), error = %e, "packet refused");
        }
        self.service(key, out);
        true
    }

    /// A datagram for a session on another worker crosses over (bounded, lossy).
    fn hand_over(
        &self,
        owner: usize,
        from: SocketAddr,
        data: &[u8],
        at: Instant,
        out: &mut impl Egress,
    ) {
        if !out.hand_over(owner, from, data, at) {
            self.metrics.dropped.worker_queue_full.inc();
        }
    }

    /// Drains a session's output, events and input after anything touched it.
    fn service(&mut self, key: u64, out: &mut impl Egress) {
        let Core {
            sessions,
            metrics,
            forwards,
            to_close,
            streams,
            idx,
            registry,
            clock,
            ..
        } = self;
        let Some(s) = sessions.get_mut(&key) else {
            return;
        };
        forward::drain_writes(&mut s.pc, metrics, out);
        let mut opened: Vec<RTCTrackEventInit> = Vec::new();
        let mut became_connected = false;
        while let Some(event) = s.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    tracing::debug!(session = log_id(&s.id), %state, "connection state");
                    match state {
                        RTCPeerConnectionState::Connected if !s.connected => {
                            s.connected = true;
                            became_connected = true;
                        }
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            to_close.push((key, "connection failed"));
                        }
                        _ => {}
                    }
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => opened.push(init),
                _ => {}
            }
        }
        if matches!(s.role, Role::Publisher(_)) {
            for init in opened {
                let now = s.last_rx;
                open_publisher_track(s, init, now, metrics);
            }
        }
        if became_connected {
            let transport = s.addrs.last().map_or(Transport::Udp, |a| a.1);
            tracing::info!(session = log_id(&s.id), stream = %s.stream.name, kind = s.kind().as_str(), transport = transport.as_str(), "session connected");
            if matches!(s.role, Role::Publisher(_)) {
                // Connected on the datagram just read: `last_rx` is its time.
                let since = clock.unix(s.last_rx).as_millis() as i64;
                publisher_connected(registry, &s.stream, key, since, transport);
            }
            if let Role::Viewer(viewer) = &mut s.role {
                match s.pc.local_srtp_keying().map(SrtpSender::new) {
                    Some(Ok(sender)) => viewer.srtp = Some(sender),
                    Some(Err(e)) => {
                        tracing::warn!(session = log_id(&s.id), error = %e, "viewer SRTP setup failed");
                        to_close.push((key, "srtp setup failed"));
                    }
                    None => {
                        tracing::warn!(session = log_id(&s.id), "connected without SRTP keys");
                        to_close.push((key, "srtp setup failed"));
                    }
                }
                join_fanout(key, viewer, &s.stream, *idx, streams, s.last_rx, metrics);
            }
        }
        let mut nacks: Vec<TransportLayerNack> = Vec::new();
        while let Some(TaggedRTCMessage {
            now: arrived,
            message,
        }) = s.pc.poll_read()
        {
            match (message, &mut s.role) {
                (RTCMessage::RtpPacket(track_id, packet), Role::Publisher(publisher)) => {
                    let Some(&kind) = publisher.tracks.get(&track_id) else {
                        continue;
                    };
                    metrics.packets_in.inc();
                    metrics.bytes_in.inc_by(packet.payload.len() as u64);
                    if packet.payload.is_empty() {
                        // Padding-only probes are the publisher's business, not the viewers'.
                        continue;
                    }

                    if let Some(forward) =
                        forward_packet(registry, publisher, &s.stream, kind, packet, arrived)
                    {
                        forwards.push(forward);
                    }
                }
                (RTCMessage::RtcpPacket(_, packets), Role::Viewer(viewer)) => {
                    for p in &packets {
                        let any = p.as_any();
                        if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                            if any.is::<PictureLossIndication>() {
                                metrics.plis.inc();
                            } else {
                                metrics.firs.inc();
                            }
                            // A key frame of the encoding this viewer gets (or waits for).
                            let video = &viewer.video;
                            let encoding = if video.target != NO_ENCODING {
                                video.target
                            } else {
                                video.current
                            };
                            if encoding == NO_ENCODING {
                                s.stream.keyframe_wanted.store(true, Ordering::Release);
                            } else {
                                s.stream.want_keyframe(encoding as usize);
                            }
                        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                            metrics.nacks.inc();
                            nacks.push(nack.clone());
                        } else if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
                            metrics.twcc.inc();
                            if let Some(bwe) = viewer.video.bwe.as_deref_mut() {
                                bwe.on_twcc(arrived, cc);
                            }
                        } else if let Some(remb) =
                            any.downcast_ref::<ReceiverEstimatedMaximumBitrate>()
                        {
                            metrics.remb.inc();
                            if let Some(bwe) = viewer.video.bwe.as_deref_mut() {
                                bwe.on_remb(arrived, remb.bitrate);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if let Role::Viewer(viewer) = &mut s.role {
            if !nacks.is_empty()
                && let Some(ls) = streams.get(&s.stream.id)
            {
                forward::retransmit(viewer, &ls.caches, &nacks, metrics, out);
            }
            // The last selected pair is kept while none is (during an ICE
            // restart media keeps going to the address that worked).
            if let Some((addr, proto)) = s.pc.selected_remote() {
                let transport = if proto == TransportProtocol::TCP {
                    Transport::Tcp
                } else {
                    Transport::Udp
                };
                viewer.media_dest = Some((addr, transport));
            }
        }
        forward::drain_writes(&mut s.pc, metrics, out);
        s.next_timeout = s.pc.poll_timeout();
    }

    /// Sends this worker's freshly read publisher packets to every other worker
    /// that has viewers of the stream, and to the viewers here.
    fn flush_forwards(&mut self, now: Instant, out: &mut impl Egress) {
        if self.forwards.is_empty() {
            return;
        }
        let mut forwards = std::mem::take(&mut self.forwards);
        for forward in forwards.drain(..) {
            if let Some(ls) = self.streams.get(&forward.stream) {
                let stream = &ls.shared;
                let video = forward.kind == MediaKind::Video;
                for w in 0..self.registry.workers {
                    if w == self.idx
                        || stream.viewers_on[w].load(Ordering::Acquire) == 0
                        || (video && !stream.watched(w, forward.encoding))
                    {
                        continue;
                    }
                    if !out.media(w, forward.share()) {
                        self.metrics.dropped.worker_queue_full.inc();
                    }
                }
            }
            self.fanout_local(now, &forward, out);
        }
        // Keep the allocation for the next round.
        self.forwards = forwards;
    }

    fn fanout_local(&mut self, now: Instant, forward: &Forward, out: &mut impl Egress) {
        if let Some(ls) = self.streams.get_mut(&forward.stream) {
            forward::fanout(&mut self.sessions, ls, forward, now, &self.metrics, out);
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut impl Egress) {
        let refresh = now.saturating_duration_since(self.last_refresh) >= REFRESH_TIMEOUTS;
        if refresh {
            self.last_refresh = now;
        }
        let config = &self.registry.config;
        let (idle_timeout, ice_start_timeout, connect_timeout) = (
            config.idle_timeout,
            config.ice_start_timeout,
            config.connect_timeout,
        );
        let mut keys = std::mem::take(&mut self.scratch_keys);
        keys.clear();
        keys.extend(self.sessions.keys().copied());
        for &key in &keys {
            let Some(s) = self.sessions.get_mut(&key) else {
                continue;
            };
            if refresh {
                s.next_timeout = s.pc.poll_timeout();
            }
            if now.saturating_duration_since(s.last_rx) > idle_timeout {
                self.to_close.push((key, "idle timeout"));
                continue;
            }
            // Never-connected sessions hold a place for a short time only: the
            // client's first check (which binds its address) must come within
            // the ICE-start timeout, the connection within the connect timeout.
            if !s.connected {
                let age = now.saturating_duration_since(s.created);
                if s.addrs.is_empty() && age > ice_start_timeout {
                    self.to_close.push((key, "ICE did not start"));
                    continue;
                }
                if age > connect_timeout {
                    self.to_close.push((key, "not connected in time"));
                    continue;
                }
            }
            let mut report_due = false;
            if let Role::Viewer(viewer) = &mut s.role
                && viewer.srtp.is_some()
                && viewer.next_sender_report <= now
            {
                report_due = true;
                viewer.next_sender_report = now + SENDER_REPORT_INTERVAL;
                forward::write_sender_reports(&s.id, &mut s.pc, viewer, &self.clock, now);
            }
            let timed_out = s.next_timeout.is_some_and(|t| t <= now);
            if timed_out && let Err(e) = s.pc.handle_timeout(now) {
                tracing::debug!(session = log_id(&s.id), error = %e, "timeout handling");
            }
            if timed_out || report_due {
                self.service(key, out);
            }
        }
        self.scratch_keys = keys;
        self.publish_rates(now);
        self.choose_layers(now);
        self.request_keyframes(now, out);
    }

    /// Reconsiders each simulcast viewer's encoding (every
    /// [`LAYER_DECISION_INTERVAL`]): its bandwidth estimate, its pin and caps,
    /// the encodings arriving. See `crate::simulcast` for the rules.
    fn choose_layers(&mut self, now: Instant) {
        let Core {
            streams,
            sessions,
            metrics,
            ..
        } = self;
        for ls in streams.values() {
            if ls.viewers.is_empty() || ls.shared.rids().is_empty() {
                continue;
            }
            let stream = &ls.shared;
            let (all, count) = offered(stream);
            let offered = &all[..count];
            for key in &ls.viewers {
                let Some(Session {
                    role: Role::Viewer(viewer),
                    ..
                }) = sessions.get_mut(key)
                else {
                    continue;
                };
                let video = &mut viewer.video;
                if video.next_decision > now {
                    continue;
                }
                video.next_decision = now + LAYER_DECISION_INTERVAL;
                if video.current == NO_ENCODING && video.target == NO_ENCODING {
                    start_video(video, stream, Some(ls), now, metrics);
                    continue;
                }
                if video.bwe.is_none() && video.twcc_ext != 0 {
                    // Generous until the viewer says otherwise: the delay and
                    // loss controllers bring it down within a round of
                    // feedback on a path that cannot carry it, while a low
                    // start would step a good path down for nothing.
                    let initial = offered
                        .iter()
                        .map(|o| o.bitrate)
                        .max()
                        .unwrap_or(0)
                        .saturating_mul(2)
                        .max(5_000_000);
                    video.bwe = Some(Box::new(Bwe::new(video.twcc_ext, initial)));
                }
                let estimate = video.bwe.as_deref().and_then(|b| b.estimate(now));
                let path = Path {
                    estimate,
                    loss: video.bwe.as_deref().map_or(0.0, |b| b.loss()),
                };
                video
                    .shared
                    .estimate_bps
                    .store(estimate.unwrap_or(0), Ordering::Relaxed);
                let at = if video.target != NO_ENCODING {
                    video.target
                } else {
                    video.current
                };
                let pref = video.pref;
                if let Some(d) = video.selector.decide(now, offered, at, &pref, &path) {
                    if d.probe
                        && let Some(bwe) = video.bwe.as_deref_mut()
                    {
                        // Half again the encoding's rate: its measured rate
                        // jumps with the key frame the switch asks for, and a
                        // path that cannot carry it shows overuse within a
                        // second anyway.
                        let rate = offered[d.encoding as usize].bitrate;
                        bwe.restart_at(rate + rate / 2);
                    }
                    set_target(video, stream, d.encoding, d.reason, now, metrics);
                } else if video.target != video.current && video.target != NO_ENCODING {
                    // Still waiting for the target's key frame: ask again (the
                    // publisher's throttle keeps this to one PLI per interval).
                    stream.want_keyframe(video.target as usize);
                }
            }
        }
    }

    /// Publishes each local publisher's received rate to its stream once per
    /// [`RATE_WINDOW`] (the operator view's `bitrate_kbps`).
    fn publish_rates(&mut self, now: Instant) {
        for key in &self.publishers {
            let Some(Session {
                role: Role::Publisher(publisher),
                stream,
                ..
            }) = self.sessions.get_mut(key)
            else {
                continue;
            };
            if let Some(bps) = publisher.rate.roll(now, RATE_WINDOW) {
                stream.bitrate_bps.store(bps, Ordering::Relaxed);
            }
            // Each encoding's window runs from its own first packet; its
            // activity is looked at every tick.
            for (i, e) in publisher.encodings.iter_mut().enumerate() {
                let Some(e) = e else { continue };
                if let Some(bps) = e.rate.roll(now, RATE_WINDOW) {
                    stream.encodings[i]
                        .bitrate_bps
                        .store(bps, Ordering::Relaxed);
                }
                let active = now.saturating_duration_since(e.last_packet) < ENCODING_INACTIVE_AFTER;
                stream.encodings[i].active.store(active, Ordering::Release);
            }
        }
    }

    /// Sends PLIs to this worker's publishers whose viewers want a keyframe, at most
    /// one per encoding per `pli_interval`: a stream-wide wish (a new publisher,
    /// the recorder) asks every encoding, a viewer's asks the encoding it gets or
    /// waits for. The first request after a quiet interval goes out at once.
    fn request_keyframes(&mut self, now: Instant, out: &mut impl Egress) {
        let interval = self.registry.config.pli_interval;
        for key in &self.publishers {
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            let Role::Publisher(publisher) = &mut s.role else {
                continue;
            };
            if !s.connected {
                continue;
            }
            if s.stream.keyframe_wanted.swap(false, Ordering::AcqRel) {
                for e in &s.stream.encodings {
                    e.keyframe_wanted.store(true, Ordering::Release);
                }
            }
            let mut sent = false;
            for (i, encoding) in publisher.encodings.iter_mut().enumerate() {
                let Some(encoding) = encoding else {
                    continue;
                };
                let shared = &s.stream.encodings[i];
                let urgent =
                    encoding
                        .keyframes
                        .due_urgent(&shared.keyframe_urgent, now, URGENT_PLI_GAP);
                if urgent {
                    shared.keyframe_wanted.store(false, Ordering::Release);
                } else if !encoding
                    .keyframes
                    .due(&shared.keyframe_wanted, now, interval)
                {
                    continue;
                }
                if let Some(mut r) = s.pc.rtp_receiver(encoding.receiver) {
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: encoding.ssrc,
                    };
                    if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                        self.metrics.plis_sent.inc();
                        sent = true;
                    }
                }
            }
            if sent {
                forward::drain_writes(&mut s.pc, &self.metrics, out);
            }
        }
    }

    fn create(
        &mut self,
        now: Instant,
        req: NewSession,
        out: &mut impl Egress,
    ) -> Result<SessionAnswer, MediaError> {
        // A publisher whose place was taken over (the same user's newer session)
        // between its reservation and now is not built: it would feed the stream
        // beside its successor.
        if req.kind == SessionKind::Publisher && !req.stream.holds_publisher(req.key) {
            return Err(MediaError::StreamBusy(req.stream.name.to_string()));
        }
        let publisher_codecs = req.stream.codecs();
        let candidates = self.registry.candidates();
        let built = session::build(BuildParams {
            kind: req.kind,
            offer_sdp: &req.offer,
            offer: &req.checked,
            stream_name: &req.stream.name,
            candidates: &candidates,
            publisher_codecs: &publisher_codecs,
            now,
        })?;
        let etag = random_hex(8);
        let role = match req.kind {
            SessionKind::Publisher => {
                let epoch = req
                    .stream
                    .epoch
                    .fetch_add(1, Ordering::AcqRel)
                    .wrapping_add(1);
                let saved = req.stream.continuity.lock().ok().and_then(|mut c| c.take());
                let rids: Vec<String> = req
                    .checked
                    .media
                    .iter()
                    .find(|m| m.kind == MediaKind::Video && !m.rejected)
                    .map(|m| m.rids.clone())
                    .unwrap_or_default();
                let tap_encoding =
                    rids.iter()
                        .position(|r| r == "f")
                        .unwrap_or(rids.len().saturating_sub(1)) as u8;
                if let Ok(mut current) = req.stream.rids.write() {
                    *current = Arc::new(rids);
                }
                for e in &req.stream.encodings {
                    e.active.store(false, Ordering::Release);
                    e.bitrate_bps.store(0, Ordering::Relaxed);
                }
                Role::Publisher(Publisher {
                    tracks: HashMap::new(),
                    encodings: Default::default(),
                    video_codecs: [None; 128],
                    tap_encoding,
                    tap_layer: None,
                    tap_video: Continuity::new(90_000),
                    continuity: saved.unwrap_or_else(|| {
                        [
                            Continuity::new(48_000),
                            Continuity::new(90_000),
                            Continuity::new(90_000),
                            Continuity::new(90_000),
                        ]
                    }),
                    epoch,
                    keyframes: Default::default(),
                    rate: RateMeter::new(now),
                    tap_generation: self.registry.taps_generation.load(Ordering::Acquire),
                    tap: self.registry.taps(&req.stream.name),
                    tap_codecs: Default::default(),
                })
            }
            SessionKind::Viewer => Role::Viewer(Viewer {
                video: ViewerVideo::new(
                    now,
                    self.idx,
                    built.twcc_ext,
                    Arc::new(ViewerLayerShared::new(built.video_media_id)),
                ),
                tracks: built.viewer_tracks,
                forwarding: false,
                srtp: None,
                media_dest: None,
                next_sender_report: now + SENDER_REPORT_INTERVAL,
            }),
        };
        let summary = SessionSummary {
            id: req.id.clone(),
            stream: req.stream.name.clone(),
            kind: req.kind,
            user: req.user.clone(),
            etag: etag.clone(),
            started_at_ms: self.clock.unix(now).as_millis() as i64,
        };
        self.registry.sessions.insert(
            req.id.clone(),
            SessionEntry {
                summary: summary.clone(),
                key: req.key,
                worker: self.idx,
                layer: match &role {
                    Role::Viewer(v) => Some(v.video.shared.clone()),
                    Role::Publisher(_) => None,
                },
                stream: req.stream.clone(),
            },
        );
        self.registry.ufrags.insert(
            built.local_ufrag.clone(),
            Route {
                key: req.key,
                worker: self.idx,
            },
        );
        self.streams
            .entry(req.stream.id)
            .or_insert_with(|| LocalStream::new(req.stream.clone(), self.idx))
            .sessions += 1;
        match req.kind {
            SessionKind::Publisher => {
                self.publishers.push(req.key);
                self.metrics.publishers.inc();
            }
            SessionKind::Viewer => self.metrics.viewers.inc(),
        }
        self.sessions.insert(
            req.key,
            Session {
                key: req.key,
                id: req.id.clone(),
                stream: req.stream.clone(),
                pc: built.pc,
                remote_offer: req.offer,
                local_ufrag: built.local_ufrag,
                addrs: Vec::new(),
                created: now,
                last_rx: now,
                next_timeout: None,
                connected: false,
                role,
                _slot: req.slot,
            },
        );
        out.event(Event::SessionStarted(summary));
        tracing::info!(session = log_id(&req.id), stream = %req.stream.name, kind = req.kind.as_str(), user = %req.user, "session created");
        self.service(req.key, out);
        Ok(SessionAnswer {
            session_id: req.id.to_string(),
            sdp: built.answer,
            etag,
        })
    }

    fn patch(
        &mut self,
        now: Instant,
        key: u64,
        fragment: IceFragment,
    ) -> Result<PatchOutcome, MediaError> {
        let Some(s) = self.sessions.get_mut(&key) else {
            return Err(MediaError::UnknownSession);
        };
        let current = sdp::attribute(&s.remote_offer, "ice-ufrag")
            .unwrap_or("")
            .to_string();
        let outcome = match (&fragment.ufrag, &fragment.pwd) {
            (Some(ufrag), Some(pwd)) if *ufrag != current => {
                let offer = sdp::with_credentials(&s.remote_offer, ufrag, pwd);
                let desc = RTCSessionDescription::offer(offer.clone())
                    .map_err(|e| MediaError::BadSdp(format!("restart: {e}")))?;
                s.pc.set_remote_description(now, desc)
                    .map_err(|e| MediaError::BadSdp(format!("restart rejected: {e}")))?;
                let answer =
                    s.pc.create_answer(None)
                        .map_err(|e| MediaError::Internal(format!("restart answer: {e}")))?;
                s.pc.set_local_description(now, answer)
                    .map_err(|e| MediaError::Internal(format!("restart answer: {e}")))?;
                let sdp_answer =
                    s.pc.local_description()
                        .map(|d| d.sdp)
                        .ok_or_else(|| MediaError::Internal("no local description".into()))?;
                let new_ufrag = sdp::attribute(&sdp_answer, "ice-ufrag")
                    .unwrap_or_default()
                    .to_string();
                self.registry.ufrags.remove(&s.local_ufrag);
                self.registry.ufrags.insert(
                    new_ufrag.clone(),
                    Route {
                        key,
                        worker: self.idx,
                    },
                );
                s.local_ufrag = new_ufrag;
                s.remote_offer = offer;
                tracing::info!(session = log_id(&s.id), "ICE restart");
                PatchOutcome::Restarted {
                    sdpfrag: sdp::restart_answer_fragment(&sdp_answer),
                    etag: random_hex(8),
                }
            }
            _ => {
                // An ICE-lite server never starts checks, so remote candidates are
                // informational; the client's checks tell us its address.
                for (mid, candidate) in &fragment.candidates {
                    let init = RTCIceCandidateInit {
                        candidate: format!("candidate:{candidate}"),
                        sdp_mid: mid.clone(),
                        ..Default::default()
                    };
                    if let Err(e) = s.pc.add_remote_candidate(init) {
                        tracing::debug!(session = log_id(&s.id), error = %e, "trickled candidate ignored");
                    }
                }
                PatchOutcome::Trickled
            }
        };
        Ok(outcome)
    }

    /// Ends a session: DTLS close, routes and registries cleaned, stream released.
    fn close(
        &mut self,
        now: Instant,
        key: u64,
        reason: &'static str,
        out: &mut impl Egress,
    ) -> bool {
        let Some(mut s) = self.sessions.remove(&key) else {
            return false;
        };
        let _ = s.pc.close();
        forward::drain_writes(&mut s.pc, &self.metrics, out);
        for addr in &s.addrs {
            self.by_addr.remove(addr);
        }
        if !s.addrs.is_empty() {
            out.forget(s.addrs.clone());
        }
        let summary = self.registry.sessions.remove(&s.id).map(|(_, e)| e.summary);
        self.registry
            .ufrags
            .remove_if(&s.local_ufrag, |_, r| r.key == key);
        let stream = s.stream.clone();
        let kind = s.kind();
        match &s.role {
            Role::Viewer(viewer) => {
                let current = viewer.video.current;
                if current != NO_ENCODING {
                    self.metrics.layer_viewers[current as usize].dec();
                }
                if viewer.forwarding {
                    stream.rewatch(self.idx, viewer.video.watching(), Default::default());
                    stream.viewers_on[self.idx].fetch_sub(1, Ordering::AcqRel);
                    if let Some(ls) = self.streams.get_mut(&stream.id) {
                        ls.viewers.retain(|k| *k != key);
                    }
                }
                stream.viewers.fetch_sub(1, Ordering::AcqRel);
                self.metrics.viewers.dec();
            }
            Role::Publisher(publisher) => {
                for (_, tap) in publisher.tap.iter().flat_map(|t| t.iter()) {
                    tap.publisher_left();
                }
                if let Ok(mut saved) = stream.continuity.lock() {
                    *saved = Some(publisher.continuity.clone());
                }
                if stream.live.swap(false, Ordering::AcqRel) {
                    self.metrics.streams_live.dec();
                }
                // Nothing arrives any more: the layers event and the operator
                // view say so. A successor is built only after this close (a
                // takeover waits for it) and marks its own encodings.
                for e in &stream.encodings {
                    e.active.store(false, Ordering::Release);
                    e.bitrate_bps.store(0, Ordering::Relaxed);
                }
                let was_connected = match stream.publisher_info.lock() {
                    Ok(mut info) if info.as_ref().is_some_and(|i| i.key == key) => {
                        *info = None;
                        stream.bitrate_bps.store(0, Ordering::Relaxed);
                        if let Ok(mut active) = stream.active_codecs.lock() {
                            *active = [None, None];
                        }
                        true
                    }
                    _ => false,
                };
                // A publisher that was live and left (not replaced, not the server
                // stopping): pages say "ended" for a while, not "no such stream".
                if was_connected
                    && reason != REPLACED
                    && reason != SHUTDOWN
                    && let Ok(mut ended) = self.registry.recently_ended.lock()
                {
                    ended.insert(stream.name.clone(), now);
                }
                stream.release_publisher(key);
                self.publishers.retain(|k| *k != key);
                self.metrics.publishers.dec();
            }
        }
        if let Some(ls) = self.streams.get_mut(&stream.id) {
            ls.sessions -= 1;
            if ls.sessions == 0 {
                self.streams.remove(&stream.id);
            }
        }
        self.registry.forget_stream_if_idle(&stream.name);
        if let Some(summary) = summary {
            out.event(Event::SessionEnded(summary));
        }
        tracing::info!(session = log_id(&s.id), stream = %stream.name, kind = kind.as_str(), reason, "session ended");
        true
    }
}

// The core's tests and the fuzz target (`crate::fuzzing`) skip what only a real
// peer can do: a DTLS handshake, a decrypted track.
#[cfg(any(test, feature = "fuzzing"))]
impl Core {
    /// A viewer as its DTLS handshake leaves it: SRTP keys and a selected address
    /// (the core's tests skip the handshake).
    pub(crate) fn connect_viewer(
        &mut self,
        key: u64,
        srtp: SrtpSender,
        dest: (SocketAddr, Transport),
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        s.connected = true;
        if let Role::Viewer(viewer) = &mut s.role {
            viewer.srtp = Some(srtp);
            viewer.media_dest = Some(dest);
            join_fanout(
                key,
                viewer,
                &s.stream,
                self.idx,
                &mut self.streams,
                now,
                &self.metrics,
            );
        }
    }

    /// A publisher's track (video: its encoding `encoding`, SSRC `ssrc`, VP8 on
    /// payload type 96) opens at `clock_rate`: what its `OnTrack` event does.
    pub(crate) fn open_track(
        &mut self,
        key: u64,
        kind: MediaKind,
        encoding: u8,
        ssrc: u32,
        clock_rate: u32,
        now: Instant,
    ) {
        if let Some(Session {
            role: Role::Publisher(publisher),
            stream,
            ..
        }) = self.sessions.get_mut(&key)
        {
            if kind == MediaKind::Video {
                publisher.video_codecs[96] = Some(VideoCodec::Vp8);
                publisher.encodings[encoding as usize] = Some(PublisherEncoding {
                    ssrc,
                    receiver: Default::default(),
                    rate: RateMeter::new(now),
                    last_packet: now,
                    keyframes: Default::default(),
                });
                stream.encodings[encoding as usize]
                    .active
                    .store(true, Ordering::Release);
            }
            publisher.continuity[forward::cache_slot(kind, encoding)].rebase(clock_rate);
        }
    }

    /// An RTP packet as a publisher's peer connection hands it over after SRTP.
    pub(crate) fn publisher_rtp(
        &mut self,
        now: Instant,
        key: u64,
        kind: MediaKind,
        packet: rtc::rtp::Packet,
        out: &mut impl Egress,
    ) {
        if let Some(s) = self.sessions.get_mut(&key)
            && let Role::Publisher(publisher) = &mut s.role
            && let Some(forward) =
                forward_packet(&self.registry, publisher, &s.stream, kind, packet, now)
        {
            self.forwards.push(forward);
        }
        self.settle(now, out);
    }

    /// A viewer's NACKs as its peer connection hands them over.
    pub(crate) fn viewer_nacks(
        &mut self,
        key: u64,
        nacks: &[TransportLayerNack],
        out: &mut impl Egress,
    ) {
        if let Some(s) = self.sessions.get_mut(&key)
            && let Role::Viewer(viewer) = &mut s.role
            && let Some(ls) = self.streams.get(&s.stream.id)
        {
            forward::retransmit(viewer, &ls.caches, nacks, &self.metrics, out);
        }
    }
}

// Only the core's tests: the fuzz target never connects a publisher.
#[cfg(test)]
impl Core {
    /// A publisher as its DTLS handshake leaves it: connected at `now` over UDP.
    pub(crate) fn connect_publisher(&mut self, key: u64, now: Instant) {
        let since = self.clock.unix(now).as_millis() as i64;
        if let Some(s) = self.sessions.get_mut(&key) {
            s.connected = true;
            publisher_connected(&self.registry, &s.stream, key, since, Transport::Udp);
        }
    }

    /// A viewer's (current, target) encoding.
    pub(crate) fn viewer_video(&self, key: u64) -> Option<(u8, u8)> {
        match &self.sessions.get(&key)?.role {
            Role::Viewer(v) => Some((v.video.current, v.video.target)),
            Role::Publisher(_) => None,
        }
    }

    /// Whether the registry remembers `stream` as recently ended at `now`.
    pub(crate) fn recently_ended(&self, stream: &str, now: Instant) -> bool {
        self.registry
            .recently_ended
            .lock()
            .map(|mut r| r.contains(stream, now))
            .unwrap_or(false)
    }
}

/// A publisher's session connected at `since` (unix ms): the stream is live
/// for the operator view and the status endpoint, and no longer "ended".
fn publisher_connected(
    registry: &Registry,
    stream: &StreamShared,
    key: u64,
    since: i64,
    transport: Transport,
) {
    if let Ok(mut info) = stream.publisher_info.lock() {
        *info = Some(PublisherInfo {
            key,
            connected_since_ms: since,
            transport,
        });
    }
    let _ = stream
        .started_at_ms
        .compare_exchange(0, since, Ordering::AcqRel, Ordering::Acquire);
    if let Ok(mut ended) = registry.recently_ended.lock() {
        ended.remove(&stream.name);
    }
}

/// A connected viewer joins its stream's fan-out on this worker, and asks the
/// publisher for a keyframe to start from: of every encoding without simulcast
/// (the viewer takes packets from the first one on, as before), of the encoding
/// it starts on with simulcast (it gets nothing until that key frame).
fn join_fanout(
    key: u64,
    viewer: &mut Viewer,
    stream: &StreamShared,
    idx: usize,
    streams: &mut HashMap<u64, LocalStream>,
    now: Instant,
    metrics: &MediaMetrics,
) {
    viewer.forwarding = true;
    stream.viewers_on[idx].fetch_add(1, Ordering::AcqRel);
    let ls = streams.get_mut(&stream.id);
    let ls = match ls {
        Some(ls) => {
            ls.viewers.push(key);
            Some(&*ls)
        }
        None => None,
    };
    start_video(&mut viewer.video, stream, ls, now, metrics);
}

/// The encodings of `stream` as the selector sees them (as many as the
/// publisher offered, at least one).
fn offered(stream: &StreamShared) -> ([Offered; MAX_ENCODINGS], usize) {
    let count = stream.rids().len().clamp(1, MAX_ENCODINGS);
    let all = std::array::from_fn(|i| {
        let e = &stream.encodings[i];
        Offered {
            active: e.active.load(Ordering::Acquire),
            bitrate: e.bitrate_bps.load(Ordering::Relaxed),
            width: e.width.load(Ordering::Relaxed),
            height: e.height.load(Ordering::Relaxed),
        }
    });
    (all, count)
}

/// Picks a viewer's first encoding (if it has none yet) and asks for its key
/// frame, unless the worker's cache holds a recent one to start from.
fn start_video(
    video: &mut ViewerVideo,
    stream: &StreamShared,
    ls: Option<&LocalStream>,
    now: Instant,
    metrics: &MediaMetrics,
) {
    if video.current != NO_ENCODING || video.target != NO_ENCODING {
        return;
    }
    video.catch_up = true;
    if stream.rids().is_empty() {
        // One encoding: forwarded from the next packet on, key frame or not.
        let first_here = !stream.watched(video.worker, 0);
        let before = video.watching();
        video.current = 0;
        video.target = 0;
        stream.rewatch(video.worker, before, video.watching());
        metrics.layer_viewers[0].inc();
        video.shared.current.store(0, Ordering::Release);
        video.shared.target.store(0, Ordering::Release);
        if !ls.is_some_and(|ls| forward::can_catch_up(ls, 0, now)) {
            stream.keyframe_wanted.store(true, Ordering::Release);
            if first_here {
                // See `set_target`: nothing cached on this worker to start from.
                stream.encodings[0]
                    .keyframe_urgent
                    .store(true, Ordering::Release);
            }
        }
        return;
    }
    let (all, count) = offered(stream);
    let Some(first) = Selector::start(&all[..count], &video.pref) else {
        return;
    };
    if ls.is_some_and(|ls| forward::can_catch_up(ls, first, now)) {
        // Started from the cache: no key frame to wait for.
        let before = video.watching();
        video.target = first;
        stream.rewatch(video.worker, before, video.watching());
        video.switch = Some((now, SwitchReason::Start));
        video.shared.target.store(first, Ordering::Release);
        return;
    }
    set_target(video, stream, first, SwitchReason::Start, now, metrics);
}

/// Wants `encoding` for a viewer: the switch happens at its next key frame,
/// which is asked for now.
fn set_target(
    video: &mut ViewerVideo,
    stream: &StreamShared,
    encoding: u8,
    reason: SwitchReason,
    now: Instant,
    metrics: &MediaMetrics,
) {
    let before = video.watching();
    if encoding == video.current {
        // Back to what it has: a pending switch is called off.
        video.target = encoding;
        video.switch = None;
    } else {
        video.target = encoding;
        video.switch = Some((now, reason));
        stream.want_keyframe(encoding as usize);
        if !stream.watched(video.worker, encoding) {
            // This worker's first viewer of the encoding: nothing cached here
            // to start from, so its key frame does not wait for the throttle.
            stream.encodings[encoding as usize]
                .keyframe_urgent
                .store(true, Ordering::Release);
        }
        metrics.switch_plis.inc();
    }
    stream.rewatch(video.worker, before, video.watching());
    video.shared.target.store(video.target, Ordering::Release);
}

/// One of a publisher's packets, rewritten into the stream's numbering (once,
/// for every viewer), on its way to the fan-out, and to the stream's tap. Video
/// is sorted into its encoding by SSRC and read for a key-frame start; a video
/// packet of an SSRC no encoding claims (none opened yet) is dropped.
fn forward_packet(
    registry: &Registry,
    publisher: &mut Publisher,
    stream: &StreamShared,
    kind: MediaKind,
    mut packet: rtc::rtp::Packet,
    arrived: Instant,
) -> Option<Forward> {
    let bytes = packet.payload.len() as u64;
    publisher.rate.bytes += bytes;
    let (mut encoding, mut keyframe) = (0u8, false);
    if kind == MediaKind::Video {
        let ssrc = packet.header.ssrc;
        let e = publisher
            .encodings
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.ssrc == ssrc))?;
        encoding = e as u8;
        if let Some(enc) = publisher.encodings[e].as_mut() {
            enc.rate.bytes += bytes;
            enc.last_packet = arrived;
        }
        if let Some(codec) = publisher.video_codecs[(packet.header.payload_type & 0x7f) as usize] {
            let start = codec::frame_start(codec, &packet.payload);
            keyframe = start.keyframe;
            if let Some((w, h)) = start.size {
                let shared = &stream.encodings[e];
                shared.width.store(w, Ordering::Relaxed);
                shared.height.store(h, Ordering::Relaxed);
            }
        }
    }
    let slot = forward::cache_slot(kind, encoding);
    publisher.continuity[slot].rewrite(&mut packet.header, arrived);
    refresh_tap(registry, publisher, stream);
    let tapped =
        kind == MediaKind::Audio || tap_takes_video(publisher, stream, encoding, keyframe, arrived);
    if tapped && let Some(taps) = &publisher.tap {
        let (sequence_number, timestamp) = match kind {
            MediaKind::Audio => (packet.header.sequence_number, packet.header.timestamp),
            MediaKind::Video => publisher.tap_video.map(
                packet.header.sequence_number,
                packet.header.timestamp,
                arrived,
            ),
        };
        // A refcount on the payload, a few header fields; each tap queues or drops.
        for (_, tap) in taps.iter() {
            tap.packet(TapPacket {
                kind,
                payload_type: packet.header.payload_type,
                sequence_number,
                timestamp,
                marker: packet.header.marker,
                payload: packet.payload.clone(),
                arrived,
            });
        }
    }
    Some(Forward {
        stream: stream.id,
        epoch: publisher.epoch,
        kind,
        encoding,
        keyframe,
        packet,
        arrived,
    })
}

/// A tapped layer with no packet for this long has stopped (the browser
/// paused it): the tap moves down to a layer that still sends.
const TAP_LAYER_STOPPED: Duration = Duration::from_millis(1000);

/// Whether this video packet (of `encoding`) goes to the taps, moving the
/// tap to another simulcast layer when that is better (see
/// [`Publisher::tap_layer`]). A move happens at the other layer's key frame
/// (one is asked for when it does not come), so the tap's video decodes
/// across it; the tap's numbering runs on through it (`tap_video`).
fn tap_takes_video(
    publisher: &mut Publisher,
    stream: &StreamShared,
    encoding: u8,
    keyframe: bool,
    arrived: Instant,
) -> bool {
    if encoding > publisher.tap_encoding {
        return false;
    }
    let current = match publisher.tap_layer {
        None => {
            // The first layer to send: a recorder waits for its key frame.
            publisher.tap_layer = Some(encoding);
            return true;
        }
        Some(current) if current == encoding => return true,
        Some(current) => current,
    };
    let stopped = publisher.encodings[current as usize]
        .as_ref()
        .is_none_or(|e| arrived.saturating_duration_since(e.last_packet) > TAP_LAYER_STOPPED);
    if encoding < current && !stopped {
        return false;
    }
    if !keyframe {
        stream.want_keyframe(encoding as usize);
        return false;
    }
    tracing::debug!(stream = %stream.name, from = current, to = encoding, "the tap moves to another simulcast layer");
    publisher.tap_layer = Some(encoding);
    publisher.tap_video.switch_source(1);
    true
}

/// Re-reads the stream's taps when the registry's taps changed (one relaxed load
/// per packet otherwise). A tap that was not in the old list is told the
/// tracks already open (it was added while the publisher is on).
fn refresh_tap(registry: &Registry, publisher: &mut Publisher, stream: &StreamShared) {
    let generation = registry.taps_generation.load(Ordering::Acquire);
    if generation == publisher.tap_generation {
        return;
    }
    publisher.tap_generation = generation;
    let old = std::mem::replace(&mut publisher.tap, registry.taps(&stream.name));
    let Some(new) = &publisher.tap else {
        return;
    };
    for (_, tap) in new.iter() {
        let known = old
            .iter()
            .flat_map(|o| o.iter())
            .any(|(_, t)| Arc::ptr_eq(t, tap));
        if known {
            continue;
        }
        for kind in [MediaKind::Audio, MediaKind::Video] {
            if let Some(codecs) = &publisher.tap_codecs[kind.index()] {
                tap.track_opened(kind, codecs);
            }
        }
    }
}

fn stun_route(registry: &Registry, data: &[u8]) -> Option<Route> {
    let ufrag = crate::stun::local_ufrag(data)?;
    registry.ufrags.get(ufrag).map(|r| *r)
}

/// Registers a publisher track: its kind and SSRC for keyframe requests, its
/// codecs for the stream's viewers, and a fresh base for the stream's numbering.
/// With simulcast each encoding opens on its own (same track, its own rid and SSRC).
fn open_publisher_track(
    s: &mut Session,
    init: RTCTrackEventInit,
    now: Instant,
    metrics: &MediaMetrics,
) {
    let Role::Publisher(publisher) = &mut s.role else {
        return;
    };
    let Some(mut receiver) = s.pc.rtp_receiver(init.receiver_id) else {
        return;
    };
    let track = receiver.track();
    let kind = match track.kind() {
        RtpCodecKind::Audio => MediaKind::Audio,
        _ => MediaKind::Video,
    };
    let media_ssrc = if init.ssrc != 0 {
        init.ssrc
    } else {
        track.ssrcs().next().unwrap_or(0)
    };
    let codec = track.codec(media_ssrc);
    let clock_rate = codec.map(|c| c.clock_rate).unwrap_or(90_000);
    if let (Some(codec), Ok(mut active)) = (codec, s.stream.active_codecs.lock()) {
        active[kind.index()] = Some(codec.mime_type.clone());
    }
    let codecs = receiver.get_parameters().rtp_parameters.codecs.clone();
    let encoding = match (&init.rid, kind) {
        (Some(rid), MediaKind::Video) => {
            let rids = s.stream.rids();
            match rids.iter().position(|r| r == rid) {
                Some(i) => i,
                None => {
                    tracing::warn!(session = log_id(&s.id), rid = %rid, "encoding with a rid the offer did not list; ignored");
                    return;
                }
            }
        }
        _ => 0,
    };
    // Video: the first encoding to open tells the taps (every encoding of the
    // track has the same codecs; the tap starts on whichever layer sends first).
    let video_told = kind == MediaKind::Video && publisher.tap_codecs[kind.index()].is_some();
    if !video_told && encoding <= publisher.tap_encoding as usize {
        let tapped: Vec<TapCodec> = codecs
            .iter()
            .map(|c| TapCodec {
                payload_type: c.payload_type,
                mime_type: c.rtp_codec.mime_type.clone(),
                clock_rate: c.rtp_codec.clock_rate,
                channels: c.rtp_codec.channels,
                fmtp: c.rtp_codec.sdp_fmtp_line.clone(),
            })
            .collect();
        for (_, tap) in publisher.tap.iter().flat_map(|t| t.iter()) {
            tap.track_opened(kind, &tapped);
        }
        // Kept for a tap added later (a restream started while live).
        publisher.tap_codecs[kind.index()] = Some(tapped);
    }
    if kind == MediaKind::Video {
        for c in &codecs {
            if let Some(slot) = publisher
                .video_codecs
                .get_mut((c.payload_type & 0x7f) as usize)
            {
                *slot = VideoCodec::from_mime(&c.rtp_codec.mime_type);
            }
        }
        publisher.encodings[encoding] = Some(PublisherEncoding {
            ssrc: media_ssrc,
            receiver: init.receiver_id,
            rate: RateMeter::new(now),
            last_packet: now,
            keyframes: Default::default(),
        });
        s.stream.encodings[encoding]
            .active
            .store(true, Ordering::Release);
    }
    publisher.tracks.insert(init.track_id.clone(), kind);
    publisher.continuity[forward::cache_slot(kind, encoding as u8)].rebase(clock_rate);
    if let Ok(mut current) = s.stream.codecs.write() {
        let mut merged: Vec<_> = current
            .iter()
            .filter(|c| !codecs.iter().any(|n| n.payload_type == c.payload_type))
            .cloned()
            .collect();
        merged.extend(codecs);
        *current = Arc::new(merged);
    }
    if !s.stream.live.swap(true, Ordering::AcqRel) {
        metrics.streams_live.inc();
    }
    s.stream.keyframe_wanted.store(true, Ordering::Release);
    tracing::info!(session = log_id(&s.id), stream = %s.stream.name, kind = ?kind, ssrc = media_ssrc, rid = init.rid.as_deref().unwrap_or(""), "publisher track open");
}

#[cfg(test)]
mod tap_tests {
    //! Several taps on one stream: each gets every packet, a tap set while the
    //! publisher is on is told the open tracks first, a removed one hears no more.

    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::config::MediaConfig;
    use crate::registry::SessionObserver;
    use crate::tap::StreamTap;

    struct Quiet;
    impl SessionObserver for Quiet {
        fn session_started(&self, _: &SessionSummary) {}
        fn session_ended(&self, _: &SessionSummary) {}
    }

    /// What a tap heard: "open audio", "packet 7", "left".
    #[derive(Default)]
    struct Heard(Mutex<Vec<String>>);

    impl StreamTap for Heard {
        fn track_opened(&self, kind: MediaKind, codecs: &[TapCodec]) {
            self.0
                .lock()
                .unwrap()
                .push(format!("open {kind:?} {}", codecs[0].mime_type));
        }
        fn packet(&self, packet: TapPacket) {
            self.0
                .lock()
                .unwrap()
                .push(format!("packet {}", packet.payload.len()));
        }
        fn publisher_left(&self) {
            self.0.lock().unwrap().push("left".into());
        }
    }

    impl Heard {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    fn publisher(now: Instant) -> Publisher {
        Publisher {
            tracks: HashMap::new(),
            encodings: Default::default(),
            video_codecs: [None; 128],
            continuity: [
                Continuity::new(48_000),
                Continuity::new(90_000),
                Continuity::new(90_000),
                Continuity::new(90_000),
            ],
            epoch: 1,
            keyframes: Default::default(),
            rate: RateMeter::new(now),
            tap: None,
            tap_generation: u64::MAX,
            tap_codecs: Default::default(),
            tap_encoding: 0,
            tap_layer: None,
            tap_video: Continuity::new(90_000),
        }
    }

    fn audio(len: usize) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number: 1,
                timestamp: 960,
                ssrc: 5,
                ..Default::default()
            },
            payload: Bytes::from(vec![0u8; len]),
        }
    }

    /// A VP8 packet of simulcast encoding `ssrc` (1 = q, 2 = h, 3 = f): a key
    /// frame's start (with its size) or a delta frame's.
    fn vp8(ssrc: u32, seq: u16, ts: u32, key: bool) -> rtc::rtp::Packet {
        let mut payload = vec![0x10]; // S=1, PID 0
        if key {
            let (w, h) = (160u16 * ssrc as u16, 90u16 * ssrc as u16);
            payload.extend([0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
            payload.extend(w.to_le_bytes());
            payload.extend(h.to_le_bytes());
        } else {
            payload.extend([0x01, 0x00, 0x00]);
        }
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                marker: true,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        }
    }

    /// Seen by a tap: (sequence, timestamp, payload's first frame byte).
    #[derive(Default)]
    struct Numbers(Mutex<Vec<(u16, u32, u8)>>);

    impl StreamTap for Numbers {
        fn track_opened(&self, _: MediaKind, _: &[TapCodec]) {}
        fn packet(&self, p: TapPacket) {
            self.0
                .lock()
                .unwrap()
                .push((p.sequence_number, p.timestamp, p.payload[1]));
        }
        fn publisher_left(&self) {}
    }

    /// The CI failure of issue 14's Chromium class: `q` and `h` sent from the
    /// start, `f` 4.2 s later (Chromium's bandwidth estimate). The tap waited
    /// for `f` alone, so the recorder saw audio only, and its init segment
    /// (after its 3 s grace) left the video out of the whole class. Now the
    /// tap starts on the first layer, moves up at `h`'s and `f`'s key frames,
    /// down when `f` stops, in one numbering with a hole at each move.
    #[test]
    fn the_tap_records_the_best_simulcast_layer_that_sends() {
        let metrics = MediaMetrics::register(&prometheus::Registry::new()).unwrap();
        let registry = Registry::new(MediaConfig::default(), 5000, 1, metrics, Arc::new(Quiet));
        let stream = StreamShared::new(1, Arc::from("live"), 1);
        let t0 = Instant::now();
        let mut p = publisher(t0);
        p.tap_encoding = 2; // q, h, f: f preferred
        p.video_codecs[96] = Some(VideoCodec::Vp8);
        for e in 0..3 {
            p.encodings[e] = Some(PublisherEncoding {
                ssrc: e as u32 + 1,
                receiver: Default::default(),
                rate: RateMeter::new(t0),
                last_packet: t0,
                keyframes: Default::default(),
            });
        }
        let tap = Arc::new(Numbers::default());
        registry.set_tap("live", "recording", tap.clone());
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let send = |p: &mut Publisher, ssrc: u32, seq: u16, ts: u32, key: bool, ms: u64| {
            let packet = vp8(ssrc, seq, ts, key);
            forward_packet(&registry, p, &stream, MediaKind::Video, packet, at(ms)).is_some()
        };
        // q's key frame first: the tap starts on q.
        assert!(send(&mut p, 1, 100, 1000, true, 0));
        // h's key frame: better, the tap moves up; q is no longer tapped.
        assert!(send(&mut p, 2, 500, 7000, true, 10));
        assert!(send(&mut p, 1, 101, 4000, false, 40));
        assert!(send(&mut p, 2, 501, 10_000, false, 40));
        // f opens 4.2 s later: a delta frame does not move the tap (a key frame is
        // asked for), its key frame does.
        assert!(send(&mut p, 3, 900, 50, false, 4200));
        assert!(stream.encodings[2].keyframe_wanted.load(Ordering::Acquire));
        assert!(send(&mut p, 3, 901, 3050, true, 4230));
        assert!(send(&mut p, 2, 502, 13_000, false, 4240));
        assert!(send(&mut p, 3, 902, 6050, false, 4260));
        // f stops (the browser paused it): after a second the tap takes h back at
        // its next key frame.
        assert!(send(&mut p, 2, 503, 200_000, false, 5300));
        assert!(stream.encodings[1].keyframe_wanted.load(Ordering::Acquire));
        assert!(send(&mut p, 2, 504, 203_000, true, 5330));
        let seen = tap.0.lock().unwrap().clone();
        let frames: Vec<u8> = seen.iter().map(|s| s.2).collect();
        // 0x00 is a key frame's tag, 0x01 a delta frame's.
        assert_eq!(frames, vec![0x00, 0x00, 0x01, 0x00, 0x01, 0x00], "{seen:?}");
        let seqs: Vec<u16> = seen.iter().map(|s| s.0).collect();
        assert_eq!(
            seqs,
            vec![100, 102, 103, 105, 106, 108],
            "a hole at each move: {seen:?}"
        );
        // Timestamps run on by the wall time at each move, then by the layer's own.
        let ts: Vec<u32> = seen.iter().map(|s| s.1).collect();
        assert_eq!(ts[1], 1000 + 900, "10 ms after q's frame");
        assert_eq!(ts[2], ts[1] + 3000);
        assert_eq!(
            ts[3],
            ts[2] + 4190 * 90,
            "f's key frame 4.19 s after h's frame"
        );
        assert_eq!(ts[4], ts[3] + 3000);
        assert_eq!(ts[5], ts[4] + 1070 * 90);
    }

    #[test]
    fn every_tap_gets_each_packet_and_a_late_tap_hears_the_open_tracks() {
        let metrics = MediaMetrics::register(&prometheus::Registry::new()).unwrap();
        let registry = Registry::new(MediaConfig::default(), 5000, 1, metrics, Arc::new(Quiet));
        let stream = StreamShared::new(1, Arc::from("live"), 1);
        let now = Instant::now();
        let mut p = publisher(now);
        let recorder = Arc::new(Heard::default());
        registry.set_tap("live", "recording", recorder.clone());
        refresh_tap(&registry, &mut p, &stream);
        assert_eq!(recorder.take(), Vec::<String>::new(), "no track open yet");
        // The publisher's audio opens (what open_publisher_track keeps).
        p.tap_codecs[MediaKind::Audio.index()] = Some(vec![TapCodec {
            payload_type: 111,
            mime_type: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            fmtp: String::new(),
        }]);
        forward_packet(&registry, &mut p, &stream, MediaKind::Audio, audio(10), now);
        assert_eq!(recorder.take(), vec!["packet 10"]);

        // A second owner mid-stream: told the open track, then both get packets.
        let restream = Arc::new(Heard::default());
        registry.set_tap("live", "restream", restream.clone());
        forward_packet(&registry, &mut p, &stream, MediaKind::Audio, audio(11), now);
        assert_eq!(restream.take(), vec!["open Audio audio/opus", "packet 11"]);
        assert_eq!(recorder.take(), vec!["packet 11"], "not told again");

        // Replacing one owner's tap leaves the other alone.
        let restream2 = Arc::new(Heard::default());
        registry.set_tap("live", "restream", restream2.clone());
        forward_packet(&registry, &mut p, &stream, MediaKind::Audio, audio(12), now);
        assert_eq!(restream.take(), Vec::<String>::new());
        assert_eq!(restream2.take(), vec!["open Audio audio/opus", "packet 12"]);
        assert_eq!(recorder.take(), vec!["packet 12"]);

        // Removed: no more packets; the last owner gone removes the stream's entry.
        assert!(registry.remove_tap("live", "recording").is_some());
        assert!(registry.remove_tap("live", "recording").is_none());
        forward_packet(&registry, &mut p, &stream, MediaKind::Audio, audio(13), now);
        assert_eq!(recorder.take(), Vec::<String>::new());
        assert_eq!(restream2.take(), vec!["packet 13"]);
        registry.remove_tap("live", "restream");
        assert!(registry.taps("live").is_none());
        forward_packet(&registry, &mut p, &stream, MediaKind::Audio, audio(14), now);
        assert_eq!(restream2.take(), Vec::<String>::new());
    }
}
